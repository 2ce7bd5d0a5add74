"""Guards that each test here proves: take the guard out of the source and its test fails.

* the training-loss check stops a run before the optimizer step (the weight check at saving is a second line);
* `--load_best_model_at_end` ends with the best checkpoint's prefix, when the best is not the last;
* the held-out split is stratified by label, on synthetic data (always runs; the Financial PhraseBank split is
  checked in tests/test_data.py where the files are present).
"""

from __future__ import annotations

import json
import math
from collections import Counter

import pytest
import torch
from safetensors.torch import load_file

from prefix_tuning_utils import cli
from prefix_tuning_utils.data import LabelledData, stratified_split
from prefix_tuning_utils.trainer import PrefixTuningTrainer
from tests.conftest import REPO


QUICKSTART = str(REPO / "examples" / "quickstart.txt")


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")], ids=["nan", "inf", "-inf"])
def test_a_nan_loss_stops_training_before_the_optimizer_step(tmp_path, tiny_t5_dir, capsys, monkeypatch, bad):
    """The loss of step 3 is NaN, +inf or -inf: the run stops there, and the prefix in memory is still finite (not
    stepped)."""
    original = PrefixTuningTrainer.compute_loss
    trainers = []

    def nan_at_step_3(self, model, inputs, *args, **kwargs):
        trainers.append(self)
        loss = original(self, model, inputs, *args, **kwargs)
        if self.state.global_step == 2:  # the third optimizer step
            if torch.is_tensor(loss):
                loss = loss * 0 + bad  # the graph is kept: backward still runs, as with a real overflow
            else:
                loss = (loss[0] * 0 + bad, *loss[1:])
        return loss

    monkeypatch.setattr(PrefixTuningTrainer, "compute_loss", nan_at_step_3)
    out = tmp_path / "run"
    with pytest.raises(SystemExit) as exit_info:
        cli.cli(
            ["--model_name_or_path", str(tiny_t5_dir), "--train_file", QUICKSTART, "--output_dir", str(out),
             "--do_train", "--max_steps", "6", "--report_to", "none", "--save_strategy", "no"]
        )  # fmt: skip
    assert exit_info.value.code == 1
    err = capsys.readouterr().err
    assert f"training loss became {bad} at step 3;" in err, err
    trainable = [p for p in trainers[-1].model.parameters() if p.requires_grad]
    assert trainable and all(torch.isfinite(p).all() for p in trainable)
    assert not (out / "adapter_model.safetensors").exists()


@pytest.mark.parametrize("projection", [False, True], ids=["plain", "prefix_projection"])
def test_load_best_model_at_end_restores_a_best_checkpoint_that_is_not_the_last(tmp_path, tiny_t5_dir, projection):
    """Eval loss falls at every step here, so "best" = the highest eval loss makes the first checkpoint the best.

    With --prefix_projection the checkpoint's adapter file holds only the projected prefix; the best checkpoint's
    prefix encoder (embedding and MLP) must be what is loaded, and the final adapter is then its prefix."""
    out = tmp_path / "best"
    trainer = cli.main(
        ["--model_name_or_path", str(tiny_t5_dir), "--train_file", QUICKSTART, "--output_dir", str(out),
         "--do_train", "--do_eval", "--max_steps", "6", "--learning_rate", "0.05", "--eval_strategy", "steps",
         "--eval_steps", "2", "--save_strategy", "steps", "--save_steps", "2", "--load_best_model_at_end",
         "--metric_for_best_model", "eval_loss", "--greater_is_better", "true", "--report_to", "none",
         "--eval_mode", "score", *(["--prefix_projection", "--encoder_hidden_size", "16"] if projection else [])]
    )  # fmt: skip
    history = [entry["eval_loss"] for entry in trainer.state.log_history if "eval_loss" in entry][:3]
    assert history == sorted(history, reverse=True) and history[0] > history[-1], history  # the premise
    assert trainer.state.best_model_checkpoint == str(out / "checkpoint-2")
    final, best, last = (
        load_file(path / "adapter_model.safetensors") for path in (out, out / "checkpoint-2", out / "checkpoint-6")
    )
    for key in final:
        torch.testing.assert_close(final[key], best[key], rtol=0, atol=0)
    assert any(not torch.equal(final[key], last[key]) for key in final)
    if projection:  # the model in memory holds the best checkpoint's whole prefix encoder, not the last one's
        encoder = trainer.model.prompt_encoder["default"]
        saved = load_file(out / "checkpoint-2" / "prefix_encoder.safetensors")
        for key, value in encoder.state_dict().items():
            torch.testing.assert_close(value, saved[key], rtol=0, atol=0)
    results = json.loads((out / "all_results.json").read_text())
    assert math.isclose(results["eval_loss"], history[0], rel_tol=1e-5)


def test_held_out_split_is_stratified_on_synthetic_data():
    labels = ["negative"] * 60 + ["neutral"] * 300 + ["positive"] * 140
    texts = [f"sentence {i}" for i in range(len(labels))]
    data = LabelledData(texts, labels, list(range(1, len(labels) + 1)), "synthetic.txt")
    train, held = stratified_split(data, 10, seed=42)
    assert Counter(held.labels) == {"negative": 6, "neutral": 30, "positive": 14}
    assert Counter(train.labels) == {"negative": 54, "neutral": 270, "positive": 126}
    assert sorted(train.texts + held.texts) == sorted(texts)  # a partition: nothing lost, nothing twice
    again_train, again_held = stratified_split(data, 10, seed=42)
    assert again_held.texts == held.texts  # the same examples for the same seed
    assert stratified_split(data, 10, seed=43)[1].texts != held.texts
