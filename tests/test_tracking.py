"""`--report_to tensorboard`: a tiny run writes an event file that TensorBoard's own reader reads back.

tensorboard is imported at module level on purpose: where it is missing (`pip install -e ".[tracking]"`, part of
`.[dev]`), collecting this file fails instead of skipping.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from prefix_tuning_utils import cli
from prefix_tuning_utils.arguments import parse_args
from prefix_tuning_utils.metrics import classification_metrics
from tests.conftest import REPO


QUICKSTART = REPO / "examples" / "quickstart.txt"


def read_scalars(output_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar of every event file under `output_dir` (the Trainer writes them to output_dir/runs/<run>/)."""
    files = sorted(output_dir.glob("runs/*/events.out.tfevents.*"))
    assert files, f"no TensorBoard event file under {output_dir / 'runs'}: {sorted(output_dir.rglob('*'))}"
    scalars: dict[str, list[tuple[int, float]]] = {}
    for path in files:
        accumulator = EventAccumulator(str(path))
        accumulator.Reload()
        for tag in accumulator.Tags()["scalars"]:
            scalars.setdefault(tag, []).extend((event.step, event.value) for event in accumulator.Scalars(tag))
    return scalars


@pytest.mark.parametrize(
    "base_fixture, eval_mode", [("tiny_t5_dir", "generate"), ("tiny_llama_dir", "score")], ids=["t5", "llama"]
)
def test_report_to_tensorboard_writes_loss_accuracy_and_macro_f1(request, tmp_path, base_fixture, eval_mode):
    base = request.getfixturevalue(base_fixture)
    out = tmp_path / "run"
    cli.main(
        ["--model_name_or_path", str(base), "--train_file", str(QUICKSTART), "--output_dir", str(out),
         "--do_train", "--do_eval", "--eval_mode", eval_mode, "--max_steps", "4", "--logging_steps", "1",
         "--eval_strategy", "steps", "--eval_steps", "2", "--learning_rate", "1e-2", "--save_strategy", "no",
         "--per_device_train_batch_size", "8", "--per_device_eval_batch_size", "16", "--disable_tqdm", "true",
         "--report_to", "tensorboard"]
    )  # fmt: skip
    scalars = read_scalars(out)
    assert [step for step, _ in scalars["train/loss"]] == [1, 2, 3, 4]
    assert all(loss > 0 for _, loss in scalars["train/loss"])
    # Evaluated at steps 2 and 4 during training, then once more by --do_eval (at the last step, 4).
    assert [step for step, _ in scalars["eval/accuracy"]] == [2, 4, 4]
    assert [step for step, _ in scalars["eval/macro_f1"]] == [2, 4, 4]
    assert all(0.0 <= value <= 1.0 for tag in ("eval/accuracy", "eval/macro_f1") for _, value in scalars[tag])

    # The values are the ones the run reports in its results file (float32 in the event file).
    results = json.loads((out / "eval_results.json").read_text())
    assert scalars["eval/accuracy"][-1][1] == pytest.approx(results["eval_accuracy"], abs=1e-6)
    assert scalars["eval/macro_f1"][-1][1] == pytest.approx(results["eval_macro_f1"], abs=1e-6)


def test_recipe_of_record_logs_to_tensorboard(monkeypatch, tmp_path):
    monkeypatch.chdir(REPO)
    *_, training_args = parse_args(["recipes/t5-large_financial_phrasebank.yaml", "--output_dir", str(tmp_path)])
    assert training_args.report_to == ["tensorboard"]


def test_accuracy_and_macro_f1_are_scikit_learns():
    """The numbers logged (and in eval_results.json) are scikit-learn's accuracy and macro-F1 over the label words,
    an answer that is no label word counting as wrong; so `evaluate` (whose accuracy / f1 scripts wrap them) would
    give the same."""
    import random

    from sklearn.metrics import accuracy_score, f1_score

    labels = ["negative", "neutral", "positive"]
    rng = random.Random(0)
    references = [rng.choice(labels) for _ in range(200)]
    predictions = [rng.choice(labels + ["Positive ", "maybe"]) for _ in range(200)]
    ours = classification_metrics(predictions, references, labels)
    normalised = [p.strip().lower() if p.strip().lower() in labels else "(no label)" for p in predictions]
    assert ours["accuracy"] == pytest.approx(accuracy_score(references, normalised))
    assert ours["macro_f1"] == pytest.approx(f1_score(references, normalised, labels=labels, average="macro"))
    per_label = f1_score(references, normalised, labels=labels, average=None)
    assert [ours[f"f1_{label}"] for label in labels] == pytest.approx(list(per_label))


def test_report_to_tensorboard_without_the_package_is_one_line(monkeypatch):
    """Without tensorboard (nor tensorboardX), --report_to tensorboard is refused up front, not by a traceback later."""
    import importlib.util

    from prefix_tuning_utils.arguments import ArgumentError

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *args: None if name in ("tensorboard", "tensorboardX") else real_find_spec(name, *args),
    )
    argv = ["--model_name_or_path", str(REPO / "examples" / "tiny-t5"), "--train_file",
            str(REPO / "examples" / "quickstart.txt"), "--output_dir", "unused", "--report_to", "tensorboard"]  # fmt: skip
    with pytest.raises(ArgumentError, match=r"--report_to tensorboard needs the tensorboard package"):
        parse_args(argv)
