"""Quiet logs (prefix_tuning_utils/run_log.py): the quickstart's whole output fits on a screen, the detail is one flag
away, and the warnings we filter are still raised upstream (or the filter goes)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import types
import warnings

import pytest
from peft import PrefixTuningConfig, TaskType, get_peft_model
from transformers import T5ForConditionalGeneration

from prefix_tuning_utils import cli, run_log
from prefix_tuning_utils.arguments import ArgumentError
from tests.conftest import REPO, tiny_t5_config


def output_lines(output: bytes) -> list[str]:
    """The lines a log file of the output holds: split on newlines, blank ones left out. A progress bar redraws its
    line with carriage returns and ends it with one newline, so each bar counts once (its final state). (Read as
    bytes: text mode would turn every carriage return into a newline.)"""
    return [line for line in output.decode().split("\n") if line.strip()]


@pytest.mark.slow  # a subprocess: the quickstart in a fresh interpreter, as a new user runs it (15-40 s)
def test_the_quickstart_writes_under_40_lines_with_its_bars_and_metrics(tmp_path):
    result = subprocess.run(
        [sys.executable, "run_prefix_tuning.py", "recipes/quickstart.yaml", "--output_dir", str(tmp_path / "qs")],
        cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    lines = output_lines(result.stdout) + output_lines(result.stderr)
    stdout, stderr = result.stdout.decode(), result.stderr.decode()
    assert len(lines) < 40, "\n".join(lines)
    text = "\n".join(lines)
    # What stays: the summary line, the phases, a loss and an evaluation line per epoch, the bars, the metrics.
    assert len(re.findall(r"Process rank: 0 of 1", text)) == 1
    assert len(re.findall(r"^\{'loss': ", stdout, re.M)) == 5
    assert len(re.findall(r"^\{'eval_loss': ", stdout, re.M)) == 5
    assert "***** train metrics *****" in text and "***** eval metrics *****" in text and "eval_accuracy" in text
    assert re.search(r"100%\|.*\| 95/95 ", stderr) and "Tokenising train: 100%" in stderr
    # What goes: the arguments (debug level), the libraries' info lines, nested evaluation bars, upstream warnings.
    for gone in ("TrainingArguments(", "loading configuration file", "FutureWarning", "Writing model shards",
                 "max_new_tokens", "\x1b[A"):  # fmt: skip
        assert gone not in stdout + stderr, gone


def run_until_the_data_check(tmp_path, *flags):
    """A run that stops right after its arguments are logged (--do_predict without test data): no model is loaded."""
    with pytest.raises(ArgumentError, match="--do_predict needs test data"):
        cli.main(
            ["--model_name_or_path", str(REPO / "examples" / "tiny-t5"), "--train_file",
             str(REPO / "examples" / "quickstart.txt"), "--do_predict", "--output_dir", str(tmp_path / "out"),
             "--num_virtual_tokens", "7", "--report_to", "none", *flags]
        )  # fmt: skip


def test_the_arguments_are_logged_at_debug_level(tmp_path, caplog):
    caplog.set_level("DEBUG")
    run_until_the_data_check(tmp_path)
    ours = [record for record in caplog.records if "PrefixTrainingArguments(" in record.getMessage()]
    assert ours == []  # not even created at the default level
    assert not [record for record in caplog.records if record.name.startswith("transformers")]

    caplog.clear()
    run_until_the_data_check(tmp_path, "--log_level", "debug")
    (dump,) = [record for record in caplog.records if "PrefixTrainingArguments(" in record.getMessage()]
    assert dump.levelname == "DEBUG" and dump.name == "prefix_tuning_utils.cli"
    assert "num_virtual_tokens=7" in dump.getMessage() and "ModelArguments(" in dump.getMessage()

    caplog.clear()  # --log_level info: the libraries' detail, not the arguments
    run_until_the_data_check(tmp_path, "--log_level", "info")
    assert "loading configuration file" in caplog.text
    assert "PrefixTrainingArguments(" not in caplog.text


def test_metrics_are_written_several_to_a_line(capsys):
    trainer = types.SimpleNamespace(is_world_process_zero=lambda: True)
    metrics = {"train_loss": 2.72981, "epoch": 5.0, "train_runtime": 3.0, "tuning_method": "prefix", "total_flos": 9e9}
    run_log.log_metrics(trainer, "train", metrics)
    # Cells of 13 + 3 + 10 characters, 3 apart: four fill 2 + 4 x 26 + 3 x 3 = 115 of the 119 columns.
    assert capsys.readouterr().out == (
        "***** train metrics *****\n"
        "  epoch         =        5.0   total_flos    =        8GF   train_loss    =     2.7298   train_runtime = 0:00:03.00\n"
        "  tuning_method =     prefix\n"
    )


def test_the_filtered_upstream_warnings_are_still_raised_upstream():
    """Each UPSTREAM_WARNINGS entry must still be needed: the library still warns (else this fails and the entry goes),
    and with the filter nothing reaches the user."""
    model = T5ForConditionalGeneration(tiny_t5_config(32))
    config = PrefixTuningConfig(task_type=TaskType.SEQ_2_SEQ_LM, num_virtual_tokens=2)
    with warnings.catch_warnings(record=True) as raised:
        warnings.simplefilter("always")
        get_peft_model(model, config)
    for category, message, cause in run_log.UPSTREAM_WARNINGS:
        assert [w for w in raised if issubclass(w.category, category) and re.search(message, str(w.message))], cause
    with warnings.catch_warnings(record=True) as raised:
        warnings.simplefilter("always")
        run_log.filter_upstream_warnings()
        get_peft_model(T5ForConditionalGeneration(tiny_t5_config(32)), config)
    assert [str(w.message) for w in raised] == []
