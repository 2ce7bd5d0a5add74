"""One --output_dir holds one run: no run is mixed into another's outputs (prefix_tuning_utils/output_dir.py).

Two tiny adapters are trained once for the module (in-process, a tiny T5 with weights, 2 steps); each test copies
what it changes. A refused run must leave the folder byte for byte as it was.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from prefix_tuning_utils import cli, hub, trainer
from tests.conftest import REPO


QUICKSTART = REPO / "examples" / "quickstart.txt"
LABELLED = "Profit rose .@positive\nSales fell .@negative\nThe office is in Oslo .@neutral\n"


def train_argv(model, out, *extra):
    return [
        "--model_name_or_path", model, "--train_file", QUICKSTART, "--label_words", "negative,neutral,positive",
        "--output_dir", out, "--do_train", "--max_steps", "2", "--save_strategy", "no", "--report_to", "none",
        *extra,
    ]  # fmt: skip


def predict_argv(model, test_file, out, *extra):
    return ["--model_name_or_path", model, "--test_file", test_file, "--output_dir", out, "--do_predict",
            "--report_to", "none", *extra]  # fmt: skip


def run(argv):
    return cli.main([str(arg) for arg in argv])


def refusal(capsys, argv) -> str:
    """The one line of a refused run (exit code 2)."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        cli.cli([str(arg) for arg in argv])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "Traceback" not in err, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    return lines[0]


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(path.relative_to(folder)): path.read_bytes() for path in sorted(folder.rglob("*")) if path.is_file()}


@pytest.fixture(scope="module")
def adapters(tmp_path_factory, tiny_t5_dir):
    """Two finished training runs of different adapters (seeds) on the same base model, and the folder of a
    prediction-only run with the first (`news`); tests copy what they change."""
    root = tmp_path_factory.mktemp("adapters")
    run(train_argv(tiny_t5_dir, root / "a", "--seed", "1"))
    run(train_argv(tiny_t5_dir, root / "b", "--seed", "2"))
    (root / "news.txt").write_text(LABELLED, encoding="utf-8")
    run(predict_argv(root / "a", root / "news.txt", root / "news"))
    return root


def test_training_into_a_prediction_folder_is_refused_then_replaced(adapters, tiny_t5_dir, tmp_path, capsys, caplog):
    news = tmp_path / "news"
    shutil.copytree(adapters / "news", news)
    before = snapshot(news)
    assert {"predictions.jsonl", "predict_results.json", "all_results.json", "run_args.json"} <= set(before)

    line = refusal(capsys, train_argv(tiny_t5_dir, news))
    assert line == (
        f"error: --output_dir {news} holds another run's outputs (predictions.jsonl, predictions.state.json, "
        "predict_results.json, predict_confusion_matrix.png, ... (5 in all)); pass --overwrite_output_dir to replace "
        "it, or choose another --output_dir."
    )
    assert snapshot(news) == before  # nothing written or changed

    (news / "my_notes.txt").write_text("mine")
    with caplog.at_level("WARNING", logger="prefix_tuning_utils.output_dir"):
        run(train_argv(tiny_t5_dir, news, "--overwrite_output_dir"))
    assert (
        f"--overwrite_output_dir: removed predictions.jsonl, predictions.state.json, predict_results.json, "
        f"predict_confusion_matrix.png, all_results.json, run_args.json from {news}"
    ) in caplog.text
    names = {path.name for path in news.iterdir()}
    assert not names & {"predictions.jsonl", "predictions.state.json", "predict_results.json"}
    assert "adapter_model.safetensors" in names and (news / "my_notes.txt").read_text() == "mine"
    results = json.loads((news / "all_results.json").read_text())
    assert "train_loss" in results and not [key for key in results if key.startswith("predict_")]


def test_predicting_with_a_run_into_its_own_folder_stays_allowed(adapters, tmp_path):
    own = tmp_path / "a"
    shutil.copytree(adapters / "a", own)
    run(predict_argv(own, adapters / "news.txt", own))
    results = json.loads((own / "all_results.json").read_text())
    assert results["predict_rows"] == 3 and "train_loss" in results  # the model's own results, side by side
    run(predict_argv(own, adapters / "news.txt", own, "--do_eval", "--validation_file", adapters / "news.txt"))
    assert (own / "eval_results.json").is_file()
    # ... and predicting again with the same model next to its predictions resumes them (predict.py), not refused.
    news = tmp_path / "news"
    shutil.copytree(adapters / "news", news)
    run(predict_argv(adapters / "a", adapters / "news.txt", news))
    assert len((news / "predictions.jsonl").read_text().splitlines()) == 3


def test_predicting_with_another_model_into_a_training_folder_is_refused(adapters, tmp_path, capsys):
    a = tmp_path / "a"
    shutil.copytree(adapters / "a", a)
    before = snapshot(a)
    line = refusal(capsys, predict_argv(adapters / "b", adapters / "news.txt", a))
    assert line.startswith(
        f"error: --output_dir {a} holds a finished training run of another model than --model_name_or_path ("
    ), line
    assert line.endswith("; pass --overwrite_output_dir to replace it, or choose another --output_dir."), line
    # Evaluating only: all_results.json would hold b's eval_* next to a's train_*.
    line = refusal(capsys, [*predict_argv(adapters / "b", adapters / "news.txt", a)[:-2], "--do_predict", "false",
                            "--do_eval", "--validation_file", adapters / "news.txt"])  # fmt: skip
    assert line.startswith(f"error: --output_dir {a} holds a finished training run of another model"), line
    assert snapshot(a) == before


def test_predicting_with_another_model_into_a_prediction_folder_is_refused(adapters, tmp_path, capsys):
    news = tmp_path / "news"
    shutil.copytree(adapters / "news", news)
    before = snapshot(news)
    line = refusal(capsys, predict_argv(adapters / "b", adapters / "news.txt", news))
    assert line == (
        f"error: --output_dir {news} holds another model's outputs (predictions.jsonl, predictions.state.json, "
        "predict_results.json, predict_confusion_matrix.png, ... (6 in all)); pass --overwrite_output_dir to replace "
        "it, or choose another --output_dir."
    )
    assert snapshot(news) == before
    run(predict_argv(adapters / "b", adapters / "news.txt", news, "--overwrite_output_dir"))
    state = json.loads((news / "predictions.state.json").read_text())
    assert state["settings"]["model"] == str(adapters / "b") and state["complete"]


def test_an_unfinished_run_resumes_only_with_the_same_model_and_prefix(
    tiny_t5_dir, tmp_path, capsys, caplog, monkeypatch
):
    out = tmp_path / "unfinished"
    argv = train_argv(tiny_t5_dir, out, "--max_steps", "4", "--save_strategy", "steps", "--save_steps", "2")
    save_checkpoint = trainer.PrefixTuningTrainer._save_checkpoint

    def interrupted(self, model, trial):  # Ctrl-C right after the first checkpoint is complete
        save_checkpoint(self, model, trial)
        raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr(trainer.PrefixTuningTrainer, "_save_checkpoint", interrupted)
        with pytest.raises(KeyboardInterrupt):
            run(argv)
    assert (out / "checkpoint-2").is_dir() and not (out / "train_results.json").exists()
    before = snapshot(out)

    line = refusal(capsys, [*argv, "--num_virtual_tokens", "7"])
    assert line == (
        f"error: --output_dir {out} holds an unfinished training run with other settings (changed: "
        "num_virtual_tokens); pass --overwrite_output_dir to replace it, or choose another --output_dir."
    )
    assert snapshot(out) == before

    with caplog.at_level("WARNING", logger="prefix_tuning_utils.output_dir"):
        resumed = run(argv)
    assert f"{out} holds an unfinished run: resuming from {out / 'checkpoint-2'}." in caplog.text
    assert resumed.state.global_step == 4 and (out / "train_results.json").is_file()


def test_run_args_json_has_every_argument_no_token_and_is_never_published(tiny_t5_dir, tmp_path):
    out = tmp_path / "run"
    run(train_argv(tiny_t5_dir, out, "--token", "hf_secret_value_123", "--num_virtual_tokens", "5"))
    text = (out / "run_args.json").read_text()
    assert "hf_secret_value_123" not in text
    arguments = json.loads(text)
    assert arguments["prefix"]["num_virtual_tokens"] == 5 and arguments["model"]["token"] == "<redacted>"
    assert arguments["command"][arguments["command"].index("--token") + 1] == "<redacted>"
    assert arguments["training"]["max_steps"] == 2 and arguments["identity"]["trains"] is True
    assert "run_args.json" not in hub.files_to_publish(out)
    assert "adapter_model.safetensors" in hub.files_to_publish(out)


@pytest.mark.parametrize("kept", [["adapter_model.safetensors", "adapter_config.json"], ["run_args.json"]])
def test_leftovers_of_another_run_are_not_trained_over(adapters, tiny_t5_dir, tmp_path, capsys, kept):
    """An adapter with no record of its run (copied from elsewhere), or the record of a run that did not train."""
    folder = tmp_path / "leftovers"
    folder.mkdir()
    for name in kept:
        shutil.copy(adapters / ("a" if name.startswith("adapter") else "news") / name, folder / name)
    line = refusal(capsys, train_argv(tiny_t5_dir, folder))
    expected = (
        "adapter_config.json, adapter_model.safetensors" if len(kept) == 2 else "run_args.json: a run without training"
    )
    assert line == (
        f"error: --output_dir {folder} holds another run's outputs ({expected}); pass --overwrite_output_dir to "
        "replace it, or choose another --output_dir."
    )
