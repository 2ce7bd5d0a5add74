"""--cache_encoder_outputs: exact (losses and prefix of an uncached run with encoder dropout off), resumable, on 2
processes, and refused where it cannot be exact."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from prefix_tuning_utils import cli
from prefix_tuning_utils.arguments import ArgumentError, parse_args
from prefix_tuning_utils.encoder_cache import EncoderOutputCache, encoder_dropout_off
from prefix_tuning_utils.trainer import PrefixTuningTrainer
from tests.conftest import REPO
from tests.test_distributed import TRAIN_ARGS, model_dir, results, run_launch  # noqa: F401 - model_dir: a fixture


# The quickstart (tiny T5 with dropout 0.1, length-grouped batches of 8) on 48 sentences, 3 epochs of 6 steps.
ARGS = ["recipes/quickstart.yaml", "--max_train_samples", "48", "--num_train_epochs", "3", "--eval_strategy", "no",
        "--do_eval", "false", "--logging_steps", "1", "--disable_tqdm", "true"]  # fmt: skip


def train(monkeypatch, out: Path, *extra, encoder_dropout: bool = True):
    """Run main(); return (loss of every step, trained prefix, calls of the encoder during training steps)."""
    losses, calls, in_step = [], [], []
    original_step, original_init = PrefixTuningTrainer.training_step, PrefixTuningTrainer.__init__

    def training_step(self, *args, **kwargs):
        in_step.append(True)
        try:
            loss = original_step(self, *args, **kwargs)
        finally:
            in_step.pop()
        losses.append(loss.item())
        return loss

    def init(self, *args, **kwargs):
        original_init(self, *args, **kwargs)
        encoder = self.model.get_base_model().get_encoder()
        encoder.register_forward_hook(lambda *_: calls.append(1) if in_step else None)
        if not encoder_dropout:
            encoder_dropout_off(encoder)

    monkeypatch.setattr(PrefixTuningTrainer, "training_step", training_step)
    monkeypatch.setattr(PrefixTuningTrainer, "__init__", init)
    monkeypatch.chdir(REPO)
    cli.main([*ARGS, "--output_dir", str(out), *map(str, extra)])
    monkeypatch.undo()
    return losses, load_file(out / "adapter_model.safetensors")["prompt_embeddings"], len(calls)


def test_cached_run_equals_uncached_run_with_encoder_dropout_off(tmp_path, monkeypatch):
    cached_losses, cached_prefix, cached_calls = train(monkeypatch, tmp_path / "cached", "--cache_encoder_outputs")
    plain_losses, plain_prefix, plain_calls = train(monkeypatch, tmp_path / "plain", encoder_dropout=False)
    assert len(cached_losses) == len(plain_losses) == 3 * 6
    assert cached_calls == 0 and plain_calls == len(plain_losses)  # the cached run never ran the encoder in training
    torch.testing.assert_close(torch.tensor(cached_losses), torch.tensor(plain_losses), rtol=0, atol=1e-6)
    torch.testing.assert_close(cached_prefix, plain_prefix, rtol=0, atol=1e-6)
    # The comparison is sharp: with the encoder's dropout on (the default without the flag), the run differs.
    dropout_losses, dropout_prefix, _ = train(monkeypatch, tmp_path / "dropout")
    assert abs(dropout_losses[0] - plain_losses[0]) > 1e-4
    assert (dropout_prefix - plain_prefix).abs().max() > 1e-3


def test_cache_holds_each_examples_unpadded_output_whatever_the_batching(tiny_t5_dir):
    from datasets import Dataset
    from transformers import T5ForConditionalGeneration

    encoder = T5ForConditionalGeneration.from_pretrained(tiny_t5_dir).get_encoder().eval()
    rows = [[5, 6, 7, 1], [8, 1], [9, 10, 11, 12, 13, 1], [14, 15, 1]]
    data = Dataset.from_dict({"input_ids": rows, "attention_mask": [[1] * len(r) for r in rows]})
    for batch_size in (1, 3):
        cache = EncoderOutputCache.build(encoder, data, batch_size=batch_size, device="cpu", show_progress=False)
        assert cache.nbytes == sum(map(len, rows)) * encoder.config.d_model * 4  # the README's formula
        got = cache.encoder_outputs(torch.tensor([3, 0]), width=5).last_hidden_state
        with torch.no_grad():
            for r, i in enumerate((3, 0)):
                alone = encoder(input_ids=torch.tensor([rows[i]])).last_hidden_state[0]
                torch.testing.assert_close(got[r, : len(rows[i])], alone, rtol=0, atol=1e-6)
                assert got[r, len(rows[i]) :].abs().sum() == 0
    with pytest.raises(RuntimeError, match="training set changed"):
        cache.encoder_outputs(torch.tensor([2]), width=4)


def test_cached_run_resumes_to_the_same_prefix(tmp_path, monkeypatch):
    """A run resumed from its epoch-1 checkpoint has the losses and the prefix of the uninterrupted run."""
    common = ["--cache_encoder_outputs", "--save_strategy", "epoch"]
    whole_losses, whole_prefix, _ = train(monkeypatch, tmp_path / "whole", *common)
    resumed = tmp_path / "resumed"
    resumed.mkdir()
    shutil.copytree(tmp_path / "whole" / "checkpoint-6", resumed / "checkpoint-6")
    losses, resumed_prefix, _ = train(monkeypatch, resumed, *common)  # an unfinished run: resumed
    assert len(losses) == 2 * 6  # only epochs 2 and 3 ran
    assert losses == whole_losses[6:]
    torch.testing.assert_close(resumed_prefix, whole_prefix, rtol=0, atol=0)


@pytest.mark.parametrize(
    "flags, message",
    [
        (
            ["--prefix_scope", "all"],
            "--cache_encoder_outputs needs --tuning_method prefix with --prefix_scope decoder",
        ),
        (["--tuning_method", "prompt"], "got --tuning_method prompt"),
        (["--tuning_method", "lora"], "got --tuning_method lora"),
        (["--tuning_method", "full"], "got --tuning_method full"),
    ],
)
def test_flags_where_the_cache_cannot_be_exact_are_refused(flags, message):
    with pytest.raises(ArgumentError, match=message):
        parse_args(["recipes/quickstart.yaml", "--cache_encoder_outputs", *flags])


def test_decoder_only_model_is_refused_in_one_line_exit_2(tmp_path, tiny_llama_dir, capsys, monkeypatch):
    monkeypatch.chdir(REPO)
    argv = ["recipes/quickstart.yaml", "--model_name_or_path", tiny_llama_dir, "--cache_encoder_outputs",
            "--output_dir", tmp_path / "out"]  # fmt: skip
    with pytest.raises(SystemExit) as exit_info:
        cli.cli([str(a) for a in argv])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: --cache_encoder_outputs needs a seq2seq model"), err


@pytest.mark.slow
def test_two_cpu_processes_with_the_cache_match_one_without(tmp_path, model_dir):  # noqa: F811
    """multi_cpu.yaml: 2 processes x batch 4, cached, give the uncached 1 process x batch 8 run (no dropout)."""
    common = [*TRAIN_ARGS, "--model_name_or_path", model_dir, "--do_eval", "false", "--eval_strategy", "no"]
    one = tmp_path / "one"
    cli.main([str(a) for a in [*common, "--per_device_train_batch_size", "8", "--output_dir", one]])
    two = tmp_path / "two"
    log = run_launch(
        "--config_file", "accelerate_configs/multi_cpu.yaml", "run_prefix_tuning.py", *common,
        "--per_device_train_batch_size", "4", "--output_dir", two, "--cache_encoder_outputs",
    )  # fmt: skip
    assert "Process rank: 1 of 2" in log and "Encoder outputs of 144 training examples" in log
    (res_one, state_one), (res_two, state_two) = results(one), results(two)
    losses_one = [e["loss"] for e in state_one["log_history"] if "loss" in e]
    losses_two = [e["loss"] for e in state_two["log_history"] if "loss" in e]
    assert len(losses_one) == len(losses_two) > 10
    assert losses_two == pytest.approx(losses_one, rel=1e-4)
    assert res_two["train_loss"] == pytest.approx(res_one["train_loss"], rel=1e-5)
    prefix_one, prefix_two = (load_file(d / "adapter_model.safetensors")["prompt_embeddings"] for d in (one, two))
    torch.testing.assert_close(prefix_two, prefix_one, atol=1e-4, rtol=1e-4)


def test_trainer_refuses_models_whose_encoder_training_can_change(tiny_t5_dir):
    """The trainer's own check (for callers that bypass the argument checks): prefix tuning of a frozen encoder only."""
    from peft import LoraConfig, PrefixTuningConfig, PromptTuningConfig, TaskType, get_peft_model
    from transformers import T5ForConditionalGeneration

    from prefix_tuning_utils.trainer import check_encoder_cacheable

    def t5():
        return T5ForConditionalGeneration.from_pretrained(tiny_t5_dir)

    task = TaskType.SEQ_2_SEQ_LM
    check_encoder_cacheable(get_peft_model(t5(), PrefixTuningConfig(task_type=task, num_virtual_tokens=4)), True)
    for model in (
        t5(),  # full fine-tuning
        get_peft_model(t5(), PromptTuningConfig(task_type=task, num_virtual_tokens=4)),
        get_peft_model(t5(), LoraConfig(task_type=task, r=2, target_modules=["q", "v"])),
    ):
        with pytest.raises(ArgumentError, match="--cache_encoder_outputs needs peft's prefix tuning"):
            check_encoder_cacheable(model, True)


def test_trainer_refuses_a_prefix_in_every_layer(tiny_t5_dir):
    """--prefix_scope all puts a prefix in the encoder: its output changes in training, so no cache (the trainer's
    own check, for callers that bypass the argument checks; the argument check is above)."""
    from transformers import T5ForConditionalGeneration

    from prefix_tuning_utils.arguments import PrefixArguments
    from prefix_tuning_utils.modeling import build_model, build_peft_config
    from prefix_tuning_utils.trainer import check_encoder_cacheable

    for scope in ("decoder", "all"):
        base = T5ForConditionalGeneration.from_pretrained(tiny_t5_dir)
        args = PrefixArguments(num_virtual_tokens=4, prefix_scope=scope)
        model = build_model(base, build_peft_config(base.config, args), scope)
        assert not any(p.requires_grad for p in model.get_base_model().get_encoder().parameters())  # the premise
        if scope == "decoder":
            check_encoder_cacheable(model, True)
        else:
            with pytest.raises(ArgumentError, match="--cache_encoder_outputs needs peft's prefix tuning with "):
                check_encoder_cacheable(model, True)
