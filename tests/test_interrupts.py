"""Ctrl-C (prefix_tuning_utils/interrupts.py): one line that says what was kept and the exact command that goes on,
exit code 130, no traceback; then that command does go on."""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from prefix_tuning_utils import interrupts
from prefix_tuning_utils.output_dir import last_complete_checkpoint
from tests.conftest import REPO


BAR = re.compile(r"\d+%\|")  # a tqdm progress bar's line


def interrupt_when(command: list[str], ready, tmp_path: Path) -> tuple[int, str]:
    """Start `command`, send it SIGINT (Ctrl-C) once `ready()` holds, return (exit code, stderr)."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    with open(tmp_path / "stdout.log", "wb") as stdout, open(tmp_path / "stderr.log", "wb") as stderr:
        process = subprocess.Popen(command, cwd=REPO, env=env, stdout=stdout, stderr=stderr)
        try:
            deadline = time.monotonic() + 300
            while not ready():
                assert process.poll() is None, (tmp_path / "stderr.log").read_text()[-3000:]
                assert time.monotonic() < deadline, "never ready"
                time.sleep(0.02)
            process.send_signal(signal.SIGINT)
            process.wait(timeout=120)
        finally:
            process.kill()
    return process.returncode, (tmp_path / "stderr.log").read_bytes().decode()


def the_one_line(stderr: str) -> str:
    """The interrupt's line: the last of stderr, and the only one that is not a progress bar."""
    assert "Traceback" not in stderr and "KeyboardInterrupt" not in stderr, stderr[-3000:]
    lines = [line for line in stderr.split("\n") if line.strip() and not BAR.search(line)]
    assert len(lines) == 1 and stderr.rstrip().endswith(lines[0]), stderr[-3000:]
    return lines[0]


def run_again(line: str, marker: str, tmp_path: Path) -> subprocess.CompletedProcess:
    """Run the command the line ends with (after `marker`), as a user would paste it."""
    command = shlex.split(line.split(marker, 1)[1])
    assert command[:2] == ["python", "run_prefix_tuning.py"], command
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, *command[1:]], cwd=REPO, env=env, capture_output=True, timeout=600)
    assert result.returncode == 0, result.stderr.decode()[-3000:]
    return result


@pytest.mark.slow  # two subprocesses, 20-60 s on 2 shared cores
def test_ctrl_c_during_training_keeps_the_last_checkpoint_and_its_command_resumes(tmp_path):
    out = tmp_path / "run"
    argv = ["recipes/quickstart.yaml", "--output_dir", str(out), "--max_steps", "40", "--save_strategy", "steps",
            "--save_steps", "4", "--eval_strategy", "no", "--learning_rate", "0.01"]  # fmt: skip
    code, stderr = interrupt_when(
        [sys.executable, "run_prefix_tuning.py", *argv], lambda: (out / "checkpoint-4" / "checkpoint_complete").exists(),
        tmp_path,
    )  # fmt: skip
    assert code == 130
    line = the_one_line(stderr)
    checkpoint = last_complete_checkpoint(str(out))
    assert checkpoint is not None and not (out / "train_results.json").exists()
    assert line == (
        f"interrupted: training stopped; {checkpoint} is kept. To resume from it, run the same command: "
        f"python run_prefix_tuning.py {shlex.join(argv)}"
    )

    result = run_again(line, "run the same command: ", tmp_path)
    assert f"{out} holds an unfinished run: resuming from {checkpoint}." in result.stdout.decode()
    state = json.loads((out / "trainer_state.json").read_text())
    assert state["global_step"] == 40 and (out / "train_results.json").is_file()


@pytest.mark.slow  # two subprocesses, 20-60 s on 2 shared cores
def test_ctrl_c_during_predict_keeps_the_rows_written_and_its_command_answers_the_rest(tmp_path, tiny_t5_dir):
    news = tmp_path / "news.txt"
    texts = [f"Company {i} said its sales {'rose' if i % 2 else 'fell'} {i % 90} percent ." for i in range(3000)]
    news.write_text("".join(text + "\n" for text in texts), encoding="utf-8")
    out = tmp_path / "news"
    predictions = out / "predictions.jsonl"
    argv = ["--model_name_or_path", str(tiny_t5_dir), "--label_words", "negative,neutral,positive",
            "--test_file", str(news), "--do_predict", "--output_dir", str(out), "--predict_chunk_size", "50",
            "--per_device_eval_batch_size", "50", "--report_to", "none"]  # fmt: skip
    code, stderr = interrupt_when(
        [sys.executable, "run_prefix_tuning.py", *argv],
        lambda: predictions.is_file() and predictions.stat().st_size > 0,
        tmp_path,
    )
    assert code == 130
    line = the_one_line(stderr)
    kept = predictions.read_bytes()
    rows = kept.count(b"\n")
    assert 0 < rows < 3000 and kept.endswith(b"\n")  # whole rows only
    assert line == (
        f"interrupted: the first {rows} of 3000 rows are kept in {predictions}. To answer the rest, run the same "
        f"command: python run_prefix_tuning.py {shlex.join(argv)}"
    )

    run_again(line, "run the same command: ", tmp_path)
    written = [json.loads(row) for row in predictions.read_text(encoding="utf-8").splitlines()]
    assert [row["line"] for row in written] == list(range(1, 3001))  # each row once, in input order
    assert [row["text"] for row in written] == texts
    assert predictions.read_bytes().startswith(kept)  # the rows kept were kept, not answered again


# --- what the line says in the other cases (the output folder as the interrupt left it; nothing is run) ---


def quickstart(out, *flags):
    return ["recipes/quickstart.yaml", "--output_dir", str(out), *flags]


@pytest.fixture
def in_repo(monkeypatch):
    monkeypatch.chdir(REPO)
    monkeypatch.setattr(sys, "argv", ["run_prefix_tuning.py"])


def test_before_the_first_checkpoint_the_same_command_starts_again(tmp_path, in_repo):
    argv = quickstart(tmp_path / "run")
    assert interrupts.what_was_kept(argv) == (
        "training stopped before its first checkpoint (--save_strategy no), so it starts again from the beginning; "
        f"run: python run_prefix_tuning.py {shlex.join(argv)}"
    )


def test_after_training_the_command_evaluates_and_predicts_with_the_trained_model(tmp_path, in_repo):
    out = tmp_path / "run"
    out.mkdir()
    (out / "train_results.json").write_text("{}")
    argv = quickstart(out, "--do_predict", "--test_file", "examples/quickstart.txt", "--token", "hf_secret")
    line = interrupts.what_was_kept(argv)
    redacted = [*argv[:-1], "<redacted>"]
    assert line == (
        f"training had finished (its model is saved in {out}), but not the evaluation or prediction after it. To run "
        "them with the trained model: python run_prefix_tuning.py "
        + shlex.join([*redacted, "--model_name_or_path", str(out), "--do_train", "false", "--overwrite_predictions"])
    )


def test_a_prediction_interrupted_before_its_first_row_and_other_commands(tmp_path, in_repo, monkeypatch):
    argv = ["--model_name_or_path", "runs/x", "--test_file", "examples/quickstart.txt", "--do_predict",
            "--output_dir", str(tmp_path / "news")]  # fmt: skip
    assert interrupts.what_was_kept(argv) == (
        f"nothing was kept; run the command again: python run_prefix_tuning.py {shlex.join(argv)}"
    )
    assert interrupts.what_was_kept(["--no_such_flag"]) == (
        "nothing was written; run the command again: python run_prefix_tuning.py --no_such_flag"
    )
    monkeypatch.setattr(sys, "argv", ["/usr/local/bin/prefix-tuning"])
    assert interrupts.resume_command(["recipes/quickstart.yaml"]) == "prefix-tuning recipes/quickstart.yaml"
