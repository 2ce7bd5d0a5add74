"""Score-mode evaluation reads `eval_loss` from the label scores: the model runs once, the loss is the loss pass's."""

from __future__ import annotations

import contextlib
import json

import pytest

from tests.conftest import REPO
from tests.helpers import run_main


@contextlib.contextmanager
def counting_forwards(module):
    calls = []
    handle = module.register_forward_hook(lambda *_: calls.append(1))
    try:
        yield calls
    finally:
        handle.remove()


@contextlib.contextmanager
def loss_pass_forced(trainer):
    """The evaluation as it was before the loss came from the scores: the Trainer's loss pass runs."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(trainer, "loss_from_scores", lambda *args, **kwargs: False)
        yield


@pytest.mark.parametrize(("model", "method"), [("t5", "prefix"), ("llama", "prefix"), ("llama", "lora")])
def test_eval_loss_from_the_label_scores_equals_the_loss_pass(tmp_path, tiny_t5_dir, tiny_llama_dir, model, method):
    out = tmp_path / "run"
    trainer = run_main(
        [
            "--model_name_or_path", str(tiny_t5_dir if model == "t5" else tiny_llama_dir),
            "--train_file", str(REPO / "examples" / "quickstart.txt"),
            "--label_words", "negative,neutral,positive",
            "--tuning_method", method, "--eval_mode", "score",
            "--do_train", "--do_eval", "--max_steps", "2", "--learning_rate", "5e-2",
            # The 17 held-out sentences in one batch: the loss pass's mean of per-batch means is then the mean
            # over all target tokens, which is what the scores give whatever the batches.
            "--per_device_eval_batch_size", "32",
            "--output_dir", str(out), "--report_to", "none", "--disable_tqdm", "true",
        ]
    )  # fmt: skip
    written = json.loads((out / "all_results.json").read_text())
    base = trainer.model.get_base_model()
    with counting_forwards(base) as from_scores:
        metrics = trainer.evaluate()
    with counting_forwards(base) as with_loss_pass, loss_pass_forced(trainer):
        reference = trainer.evaluate()
    assert len(with_loss_pass) - len(from_scores) == 1, "the scores must replace the loss pass's one batch"
    assert metrics["eval_loss"] == pytest.approx(reference["eval_loss"], rel=1e-5, abs=1e-6)
    assert written["eval_loss"] == pytest.approx(metrics["eval_loss"], rel=1e-6)
    assert metrics["eval_accuracy"] == reference["eval_accuracy"] and metrics["eval_samples"] == 17
    # Another dataset (here the same, passed in): its loss, from the loss pass; no accuracy, which would be the
    # trainer's own held-out sentences' (the scorer answers those, not the token ids passed in).
    with counting_forwards(base) as calls:
        other = trainer.evaluate(eval_dataset=trainer.eval_dataset)
    assert len(calls) == 1 and other["eval_loss"] == pytest.approx(reference["eval_loss"], rel=1e-6)
    assert "eval_accuracy" not in other and "eval_macro_f1" not in other, other


def test_the_loss_pass_runs_where_the_scores_cannot_give_the_loss(tmp_path, tiny_t5_dir):
    """A label word cut by --max_target_length is trained on fewer tokens than it is scored on."""
    out = tmp_path / "run"
    trainer = run_main(
        [
            "--model_name_or_path", str(tiny_t5_dir), "--train_file", str(REPO / "examples" / "quickstart.txt"),
            "--label_words", "negative,neutral,positive", "--eval_mode", "score", "--max_target_length", "1",
            "--do_train", "--do_eval", "--max_steps", "1", "--per_device_eval_batch_size", "32",
            "--output_dir", str(out), "--report_to", "none", "--disable_tqdm", "true",
        ]
    )  # fmt: skip
    assert max(len(answer) for answer in trainer.scorer.answers) > 1
    base = trainer.model.get_base_model()
    with counting_forwards(base) as calls:
        own = trainer.evaluate()
    with counting_forwards(base) as reference_calls, loss_pass_forced(trainer):
        reference = trainer.evaluate()
    assert len(calls) == len(reference_calls) and own["eval_loss"] == pytest.approx(reference["eval_loss"], rel=1e-6)
