"""Shared fixtures: tiny T5 models built from a config (no downloads), the shipped example data. Shared functions
(running the command line, reference generation) are in tests/helpers.py."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer, T5Config, T5ForConditionalGeneration


REPO = Path(__file__).resolve().parent.parent

import prefix_tuning_utils  # noqa: E402,F401  (applies the generation compatibility layer)


torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

# Markers of tests that need GPUs, and how many. Whatever `-m` expression selects them, such a test is skipped, with
# the reason, on a machine with fewer CUDA devices (`python -m pytest -m "not slow"` passes on a CPU machine).
GPU_MARKERS = {"gpu": 1, "multi_gpu": 2}


def pytest_collection_modifyitems(config, items):
    available = torch.cuda.device_count()
    for item in items:
        for name, needed in GPU_MARKERS.items():
            if item.get_closest_marker(name) is not None and available < needed:
                item.add_marker(
                    pytest.mark.skip(reason=f"@{name} needs {needed} CUDA GPU(s); this machine has {available}")
                )
                break


PHRASEBANK_ENV = "FINANCIAL_PHRASEBANK_DIR"
REQUIRE_DATA_ENV = "PREFIX_TUNING_REQUIRE_DATA"


def tiny_t5_config(vocab_size: int, **overrides) -> T5Config:
    values = dict(
        vocab_size=vocab_size,
        d_model=32,
        d_kv=8,
        num_heads=4,
        d_ff=64,
        num_layers=2,
        num_decoder_layers=2,
        decoder_start_token_id=0,
        pad_token_id=0,
        eos_token_id=1,
    )
    values.update(overrides)
    return T5Config(**values)


@pytest.fixture(scope="session")
def tokenizer_dir() -> Path:
    return REPO / "examples" / "tiny-t5"


@pytest.fixture(scope="session")
def tokenizer(tokenizer_dir):
    return AutoTokenizer.from_pretrained(tokenizer_dir)


@pytest.fixture(scope="session")
def tiny_t5_dir(tmp_path_factory, tokenizer, tokenizer_dir) -> Path:
    """A tiny T5 saved with weights and the example tokenizer, loadable with `from_pretrained`."""
    path = tmp_path_factory.mktemp("tiny-t5")
    torch.manual_seed(0)
    model = T5ForConditionalGeneration(tiny_t5_config(len(tokenizer)))
    model.save_pretrained(path)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(tokenizer_dir / name, path / name)
    return path


@pytest.fixture(scope="session")
def phrasebank_dir() -> Path:
    """The Financial PhraseBank files; skipped with a reason where they are missing (a failure under CI)."""
    path = Path(os.environ.get(PHRASEBANK_ENV, REPO.parent / "shared" / "data" / "financial_phrasebank"))
    if not (path / "Sentences_AllAgree.txt").is_file():
        message = (
            f"Financial PhraseBank files not found in {path}: put Sentences_AllAgree.txt (and the other "
            f"Sentences_*.txt files) there or set {PHRASEBANK_ENV} to their folder."
        )
        if os.environ.get(REQUIRE_DATA_ENV) == "1":
            pytest.fail(message + f" ({REQUIRE_DATA_ENV}=1 turns this skip into a failure.)")
        pytest.skip(message)
    return path


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, tiny_t5_dir) -> Path:
    """The tiny T5 without dropout, so that runs with different batch splits can agree to float precision."""
    path = tmp_path_factory.mktemp("tiny-t5-no-dropout")
    T5ForConditionalGeneration.from_pretrained(tiny_t5_dir, dropout_rate=0.0).save_pretrained(path)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (path / name).write_bytes((tiny_t5_dir / name).read_bytes())
    return path


def tiny_llama_config(vocab_size: int, **overrides):
    from transformers import LlamaConfig

    values = dict(
        vocab_size=vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,  # grouped-query attention, as in SmolLM2
        max_position_embeddings=256,
        pad_token_id=0,
        eos_token_id=1,
        bos_token_id=1,
        tie_word_embeddings=True,
    )
    values.update(overrides)
    return LlamaConfig(**values)


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory, tokenizer, tokenizer_dir) -> Path:
    """A tiny decoder-only (Llama-shaped, grouped-query attention) model with weights and the example tokenizer."""
    from transformers import LlamaForCausalLM

    path = tmp_path_factory.mktemp("tiny-llama")
    torch.manual_seed(0)
    LlamaForCausalLM(tiny_llama_config(len(tokenizer))).save_pretrained(path)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(tokenizer_dir / name, path / name)
    return path


def assert_trained_and_evaluated(trainer, out: Path, steps: int, mode: str) -> None:
    """What an end-to-end training run promises, beyond files and keys: `steps` optimizer steps whose gradients
    reached the trainable weights (non-zero AdamW moments), and an `eval_accuracy` that is the saved model's own:
    recomputed here by loading `out` with `PrefixClassifier` and answering the validation split."""
    import json

    from prefix_tuning_utils.classifier import PrefixClassifier

    assert trainer.state.global_step == steps
    moments = [state["exp_avg"] for state in trainer.optimizer.state.values() if "exp_avg" in state]
    assert moments and any(bool(moment.abs().sum() > 0) for moment in moments), "no gradient reached the weights"
    examples = trainer.eval_examples
    classify = PrefixClassifier.from_pretrained(str(out), mode=mode)
    predicted = [answer["label"] for answer in classify(list(examples.texts))]
    accuracy = sum(p == g for p, g in zip(predicted, examples.labels)) / len(examples.labels)
    results = json.loads((out / "all_results.json").read_text())
    assert results["eval_accuracy"] == pytest.approx(accuracy, abs=1e-9), (results["eval_accuracy"], accuracy)
