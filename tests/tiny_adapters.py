"""Tiny saved adapters for tests: a tiny T5 or Llama base (weights scaled up, so that answers differ clearly) and
adapters on it, saved as `run_prefix_tuning.py` saves them (peft's files and `prefix_tuning.json`).

Used by tests/test_mixed_adapters.py (every row of a mixed batch against its adapter alone) and the server's tests.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from peft import PrefixTuningConfig, PromptTuningConfig, TaskType, get_peft_model
from transformers import LlamaForCausalLM, T5ForConditionalGeneration

from prefix_tuning_utils import all_layer_prefix
from prefix_tuning_utils.input_format import InputFormat
from tests.conftest import tiny_llama_config, tiny_t5_config


__all__ = ["LABELS", "save_adapter", "save_base", "scaled"]

LABELS = ["negative", "neutral", "positive"]


def scaled(model: torch.nn.Module, std: float = 0.3):
    """`model` with every weight matrix redrawn from normal(0, std) (seeded): far from the init's near-uniform
    answers."""
    torch.manual_seed(1)
    with torch.no_grad():
        for param in model.parameters():
            if param.dim() > 1:
                param.normal_(0.0, std)
    return model


def save_base(task: str, folder: Path, tokenizer, tokenizer_dir: Path) -> Path:
    """A tiny seq2seq (T5) or causal (Llama) base model with scaled weights and the example tokenizer, in `folder`."""
    torch.manual_seed(0)
    if task == "seq2seq":
        base = T5ForConditionalGeneration(tiny_t5_config(len(tokenizer)))
    else:
        base = LlamaForCausalLM(tiny_llama_config(len(tokenizer), tie_word_embeddings=False))
    scaled(base).save_pretrained(folder)
    for file in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(tokenizer_dir / file, folder / file)
    return folder


def save_adapter(base_dir, task: str, name: str, kind: str, virtual: int, fmt: dict, out) -> None:
    """An adapter as the training script writes it: peft's adapter files and prefix_tuning.json. `kind`: prefix,
    prefix_all (``--prefix_scope all``, T5 only) or prompt; `fmt`: InputFormat fields; its values are drawn from a
    seed of `name`."""
    model_class = T5ForConditionalGeneration if task == "seq2seq" else LlamaForCausalLM
    base = model_class.from_pretrained(base_dir)
    task_type = TaskType.SEQ_2_SEQ_LM if task == "seq2seq" else TaskType.CAUSAL_LM
    if kind == "prompt":
        config = PromptTuningConfig(task_type=task_type, num_virtual_tokens=virtual)
    else:
        shape = dict(num_layers=2, token_dim=32, num_attention_heads=4) if task == "seq2seq" else {}
        config = PrefixTuningConfig(task_type=task_type, num_virtual_tokens=virtual, **shape)
    torch.manual_seed(sum(map(ord, name)))
    model = get_peft_model(base, config)
    with torch.no_grad():  # far from the init, so that every adapter answers its own way
        for param in model.prompt_encoder.parameters():
            param.normal_(0.0, 1.0)
    if kind == "prefix_all":
        added = all_layer_prefix.attach(model, trainable=False)
        with torch.no_grad():
            for prefix in (added.encoder_self_attention, added.cross_attention):
                prefix.gate.normal_(0.0, 1.0)
                for table in prefix.prefix:
                    table.normal_(0.0, 1.0)
    model.save_pretrained(out)
    config_path = out / "adapter_config.json"
    adapter_config = json.loads(config_path.read_text())
    adapter_config["base_model_name_or_path"] = str(base_dir)
    config_path.write_text(json.dumps(adapter_config))
    settings = {"format": 1, "task": task, "label_words": LABELS, **InputFormat(task, **fmt).settings()}
    (out / "prefix_tuning.json").write_text(json.dumps(settings))


def answers_alone(folders: dict, first: str):
    """answer(text, adapter) -> every label best first, from the Python API answering that text with that adapter
    alone (None: the base model, with the tokenizer of adapter `first`): the reference a mixed batch is held to."""
    from prefix_tuning_utils.answering import LabelScorer
    from prefix_tuning_utils.classifier import PrefixClassifier

    models: dict = {}

    def answer(text: str, name: str | None) -> list[dict]:
        if name not in models:
            if name is None:
                tokenizer = PrefixClassifier.from_pretrained(str(folders[first])).tokenizer
                base = T5ForConditionalGeneration.from_pretrained(folders["__base__"]).eval()
                models[None] = PrefixClassifier(LabelScorer(base, tokenizer, LABELS, InputFormat("seq2seq")))
            else:
                models[name] = PrefixClassifier.from_pretrained(str(folders[name]), device="cpu")
        return models[name](text, top_k=None)

    return answer


def assert_same_answer(got: list[dict], expected: list[dict]) -> None:
    """The same labels in the same order, each score within 1e-5."""
    import pytest

    assert [item["label"] for item in got] == [item["label"] for item in expected], (got, expected)
    for a, b in zip(got, expected):
        assert a["score"] == pytest.approx(b["score"], abs=1e-5), (got, expected)


def save_seq2seq_adapters(tmp_path_factory, tokenizer, tokenizer_dir, adapters: dict, prefix: str) -> dict:
    """{"__base__": folder, name: folder}: a tiny T5 base and one saved adapter per `adapters` entry
    (name -> (kind, virtual tokens, input format)), in folders named after `prefix`."""
    base = save_base("seq2seq", tmp_path_factory.mktemp(f"{prefix}-base"), tokenizer, tokenizer_dir)
    out = {"__base__": base}
    for name, (kind, virtual, fmt) in adapters.items():
        out[name] = tmp_path_factory.mktemp(f"{prefix}-{name}")
        save_adapter(base, "seq2seq", name, kind, virtual, fmt, out[name])
    return out
