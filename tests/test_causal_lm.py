"""Decoder-only models: generation uses the prefix, and every --tuning_method trains and evaluates."""

from __future__ import annotations

import json

import pytest
import torch
from peft import PrefixTuningConfig, TaskType, get_peft_model
from transformers import LlamaForCausalLM

from tests.conftest import REPO, assert_trained_and_evaluated, tiny_llama_config
from tests.helpers import run_main


VOCAB = 48
STEPS = 4


@pytest.fixture(scope="module")
def prefix_llama():
    torch.manual_seed(0)
    base = LlamaForCausalLM(tiny_llama_config(VOCAB, tie_word_embeddings=False)).eval()
    with torch.no_grad():
        # Larger random weights than the default init, so that the answers depend on the prefix.
        for param in base.parameters():
            if param.dim() > 1:
                param.normal_(0.0, 0.5)
    model = get_peft_model(base, PrefixTuningConfig(task_type=TaskType.CAUSAL_LM, num_virtual_tokens=5)).eval()
    with torch.no_grad():
        for param in model.prompt_encoder.parameters():
            param.normal_(0.0, 2.0)
    return base, model


def manual_greedy(model, prompt: list[int], steps=STEPS):
    """Greedy decoding of one unpadded prompt by full forward passes (the training path), no cache."""
    ids = torch.tensor([prompt])
    with torch.no_grad():
        for _ in range(steps):
            logits = model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits
            ids = torch.cat([ids, logits[:, -1:].argmax(-1)], dim=1)
    return ids[0, len(prompt) :].tolist()


PROMPTS = [[5, 6, 7, 8, 9], [10, 11, 12], [13, 14, 15, 16]]


@pytest.mark.parametrize("use_cache", [True, False])
def test_causal_generate_equals_manual_loop_with_left_padding(prefix_llama, use_cache):
    base, model = prefix_llama
    width = max(map(len, PROMPTS))
    input_ids = torch.tensor([[0] * (width - len(p)) + p for p in PROMPTS])
    attention_mask = (
        torch.arange(width).unsqueeze(0) >= torch.tensor([width - len(p) for p in PROMPTS]).unsqueeze(1)
    ).long()
    with torch.no_grad():
        out = model.generate(
            input_ids=input_ids,
            attention_mask=attention_mask,
            max_new_tokens=STEPS,
            min_new_tokens=STEPS,
            do_sample=False,
            use_cache=use_cache,
            pad_token_id=0,
        )
    expected = [manual_greedy(model, p) for p in PROMPTS]
    assert out[:, width:].tolist() == expected
    with model.disable_adapter():
        assert [manual_greedy(base, p) for p in PROMPTS] != expected, "the prefix should change the answers"


@pytest.mark.parametrize("method", ["prefix", "prompt", "lora", "full"])
def test_every_tuning_method_trains_and_evaluates_a_decoder_only_model(tmp_path, tiny_llama_dir, method):
    out = tmp_path / method
    trainer = run_main(
        [
            "--model_name_or_path", str(tiny_llama_dir),
            "--train_file", str(REPO / "examples" / "quickstart.txt"),
            "--tuning_method", method,
            "--output_dir", str(out),
            "--do_train", "--do_eval",
            "--max_steps", "4",
            "--learning_rate", "1e-2" if method != "full" else "1e-3",
            "--per_device_train_batch_size", "8",
            "--per_device_eval_batch_size", "16",
            "--report_to", "none",
        ]
    )  # fmt: skip
    results = json.loads((out / "all_results.json").read_text())
    assert results["tuning_method"] == method
    assert results["eval_samples"] == 17 and 0.0 <= results["eval_accuracy"] <= 1.0
    assert results["eval_invalid_rate"] == 0.0  # label scoring always answers with a label
    assert "eval_loss" in results and "eval_macro_f1" in results
    trainable = results["trainable_parameters"]
    total = sum(p.numel() for p in trainer.model.parameters())
    if method == "full":
        assert trainable == total and (out / "model.safetensors").is_file()
    else:
        assert 0 < trainable < total and (out / "adapter_model.safetensors").is_file()
    assert_trained_and_evaluated(trainer, out, steps=4, mode="score")


@pytest.mark.parametrize("method", ["prompt", "lora", "full"])
def test_baseline_methods_on_seq2seq(tmp_path, tiny_t5_dir, method):
    out = tmp_path / method
    trainer = run_main(
        [
            "--model_name_or_path", str(tiny_t5_dir),
            "--train_file", str(REPO / "examples" / "quickstart.txt"),
            "--tuning_method", method,
            "--output_dir", str(out),
            "--do_train", "--do_eval",
            "--max_steps", "3",
            "--report_to", "none",
        ]
    )  # fmt: skip
    results = json.loads((out / "all_results.json").read_text())
    assert results["tuning_method"] == method and "eval_accuracy" in results
    assert_trained_and_evaluated(trainer, out, steps=3, mode="generate")


def test_score_mode_evaluation_on_seq2seq(tmp_path, tiny_t5_dir):
    out = tmp_path / "score"
    run_main(
        [
            "--model_name_or_path", str(tiny_t5_dir),
            "--train_file", str(REPO / "examples" / "quickstart.txt"),
            "--eval_mode", "score",
            "--output_dir", str(out),
            "--do_train", "--do_eval",
            "--max_steps", "2",
            "--report_to", "none",
        ]
    )  # fmt: skip
    results = json.loads((out / "all_results.json").read_text())
    assert results["eval_invalid_rate"] == 0.0 and results["eval_samples"] == 17


def test_prefix_initialised_from_text_acts_like_the_text_written_before_the_input(tokenizer):
    from peft import PrefixTuningConfig, TaskType, get_peft_model

    from prefix_tuning_utils.prefix_init import init_prefix_from_text

    torch.manual_seed(0)
    base = LlamaForCausalLM(tiny_llama_config(len(tokenizer), tie_word_embeddings=False)).eval()
    text = "acme corp said its net sales rose 12 percent ."
    count = len(tokenizer(text, add_special_tokens=False)["input_ids"]) - 2
    model = get_peft_model(base, PrefixTuningConfig(task_type=TaskType.CAUSAL_LM, num_virtual_tokens=count)).eval()
    used = init_prefix_from_text(model, tokenizer, text, "causal")
    assert len(used) == count
    x = torch.tensor([[20, 21, 22, 23]])
    with torch.no_grad():
        prefixed = model(input_ids=x, attention_mask=torch.ones_like(x)).logits
        with model.disable_adapter():
            written = base(input_ids=torch.cat([torch.tensor([used]), x], dim=1)).logits[:, count:]
    torch.testing.assert_close(prefixed, written, atol=1e-4, rtol=1e-4)
    # ... and generation agrees with the training-time forward pass.
    assert model.generate(input_ids=x, max_new_tokens=3, do_sample=False)[0, 4:].tolist() == manual_greedy(
        model, x[0].tolist(), steps=3
    )


def test_prefix_init_text_that_is_too_short_is_refused(tokenizer):
    from peft import PrefixTuningConfig, TaskType, get_peft_model

    from prefix_tuning_utils.arguments import ArgumentError
    from prefix_tuning_utils.prefix_init import init_prefix_from_text

    base = LlamaForCausalLM(tiny_llama_config(len(tokenizer)))
    model = get_peft_model(base, PrefixTuningConfig(task_type=TaskType.CAUSAL_LM, num_virtual_tokens=50))
    with pytest.raises(ArgumentError, match="fewer than --num_virtual_tokens 50"):
        init_prefix_from_text(model, tokenizer, "too short", "causal")


def test_prefix_init_text_on_t5_runs_end_to_end(tmp_path, tiny_t5_dir):
    out = tmp_path / "t5-init"
    trainer = run_main(
        [
            "--model_name_or_path", str(tiny_t5_dir), "--train_file", str(REPO / "examples" / "quickstart.txt"),
            "--num_virtual_tokens", "4", "--prefix_init_text", "acme corp said its net sales rose",
            "--output_dir", str(out), "--do_train", "--do_eval", "--max_steps", "2", "--report_to", "none",
        ]
    )  # fmt: skip
    assert json.loads((out / "all_results.json").read_text())["eval_samples"] == 17
    assert_trained_and_evaluated(trainer, out, steps=2, mode="generate")


@pytest.mark.parametrize("method", ["prefix", "prompt", "full"])
def test_trainer_loss_equals_the_models_own_loss_for_decoder_only(method):
    """PrefixTuningTrainer computes the loss itself (exact under data parallelism); on one process and one batch it
    must equal the model's own (shifted, token-mean) loss, prompt tuning's virtual positions included."""
    from peft import PromptTuningConfig

    from prefix_tuning_utils.trainer import token_mean_loss

    torch.manual_seed(0)
    base = LlamaForCausalLM(tiny_llama_config(VOCAB)).eval()
    if method == "prefix":
        model = get_peft_model(base, PrefixTuningConfig(task_type=TaskType.CAUSAL_LM, num_virtual_tokens=3))
    elif method == "prompt":
        model = get_peft_model(base, PromptTuningConfig(task_type=TaskType.CAUSAL_LM, num_virtual_tokens=3))
    else:
        model = base
    input_ids = torch.tensor([[5, 6, 7, 8, 9, 1], [10, 11, 12, 13, 0, 0]])
    attention_mask = (input_ids != 0).long()
    labels = torch.tensor([[-100, -100, -100, 8, 9, 1], [-100, -100, 12, 13, -100, -100]])
    with torch.no_grad():
        own = model(input_ids=input_ids, attention_mask=attention_mask, labels=labels).loss
        outputs = model(input_ids=input_ids, attention_mask=attention_mask)
    ours = token_mean_loss(outputs, labels, shift=True)
    torch.testing.assert_close(ours, own, atol=1e-5, rtol=1e-5)
