"""Reliability: bad input refused up front in one line, exact resume after SIGKILL, the divergence guard."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

from prefix_tuning_utils import cli
from tests.conftest import REPO
from tests.helpers import run_main


GOOD_TXT = "".join(
    f"Sentence {i} about sales .@{label}\r\n" for i in range(12) for label in ("negative", "neutral", "positive")
)


def write(path, content: str | bytes):
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    return path


def bad_input_cases(tmp_path, tiny_t5_dir):
    """(argv overrides, expected words in the message) for every kind of bad input."""
    good = write(tmp_path / "good.txt", GOOD_TXT)
    bert = tmp_path / "bert"
    bert.mkdir()
    (bert / "config.json").write_text(json.dumps({"model_type": "bert", "architectures": ["BertModel"]}))
    rare = write(
        tmp_path / "rare.txt", "".join(f"Flat sales {i} .@neutral\r\n" for i in range(30)) + "Up .@positive\r\n"
    )
    return {
        "missing file": (["--train_file", tmp_path / "nope.txt"], "does not exist"),
        "empty file": (["--train_file", write(tmp_path / "empty.txt", "")], "is empty"),
        "no @": (
            ["--train_file", write(tmp_path / "noat.txt", "A sentence\r\nOther .@neutral\r\n")],
            "noat.txt:1: no `@`",
        ),
        "unknown label": (
            [
                "--train_file",
                write(tmp_path / "lab.txt", "Up .@positive\r\nHm .@bullish\r\n"),
                "--label_words",
                "negative,neutral,positive",
            ],
            "lab.txt:2: label 'bullish' is not one of negative, neutral, positive",
        ),
        "undecodable bytes": (  # neither UTF-8 nor ISO-8859-1 text (Windows-1252 quotes); na\xefve alone is ISO-8859-1
            ["--train_file", write(tmp_path / "bad.csv", b"sentence,label\nna\xefve \x93quote\x94,neutral\n")],
            "bad.csv is neither UTF-8 (line 2: byte 0xef is not UTF-8) nor ISO-8859-1 text",
        ),
        "missing column": (
            ["--train_file", write(tmp_path / "col.csv", "text,label\nUp,positive\n")],
            "no column 'sentence'",
        ),
        "malformed json": (
            [
                "--train_file",
                write(tmp_path / "bad.jsonl", '{"sentence": "Up", "label": "positive"}\n{"sentence": \n'),
            ],
            "bad.jsonl:2: malformed JSON",
        ),
        "label without validation example": (["--train_file", rare], "positive"),
        "num_virtual_tokens < 1": (["--num_virtual_tokens", "0"], "--num_virtual_tokens must be at least 1"),
        "encoder-only model": (["--model_name_or_path", bert], "neither a seq2seq nor a causal"),
        "model path missing": (["--model_name_or_path", tmp_path / "no-model"], "no such folder"),
        "fp16 with T5": (["--fp16"], "use --bf16"),
        "gradient checkpointing": (["--gradient_checkpointing"], "--gradient_checkpointing does not work"),
        "predict without test data": (["--do_predict"], "--do_predict needs test data"),
        "unknown flag": (["--num_virtual_tokenz", "3"], "--num_virtual_tokenz"),
        "bad prompt template": (["--prompt_template", "Sentence:"], "--prompt_template must contain {text}"),
        "__good__": (["--train_file", good], None),
    }


CASES = [
    "missing file", "empty file", "no @", "unknown label", "undecodable bytes", "missing column", "malformed json",
    "label without validation example", "num_virtual_tokens < 1", "encoder-only model", "model path missing",
    "fp16 with T5", "gradient checkpointing", "predict without test data", "unknown flag", "bad prompt template",
]  # fmt: skip


@pytest.mark.parametrize("case", CASES)
def test_bad_input_is_one_line_exit_2_and_nothing_written(tmp_path, tiny_t5_dir, capsys, case):
    cases = bad_input_cases(tmp_path, tiny_t5_dir)
    good_args, _ = cases["__good__"]
    overrides, expected = cases[case]
    out = tmp_path / "out"
    argv = ["--model_name_or_path", tiny_t5_dir, *good_args, "--output_dir", out, "--do_train", "--report_to", "none"]
    argv += overrides  # later flags win
    with pytest.raises(SystemExit) as exit_info:
        cli.cli([str(a) for a in argv])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: "), err
    assert expected in err, err
    assert "Traceback" not in err
    assert not out.exists()


def test_debug_flag_shows_the_traceback(tmp_path, tiny_t5_dir):
    from prefix_tuning_utils.arguments import ArgumentError

    argv = ["--model_name_or_path", str(tiny_t5_dir), "--train_file", str(tmp_path / "nope.txt")]
    with pytest.raises(ArgumentError):
        cli.cli([*argv, "--output_dir", str(tmp_path / "o"), "--do_train", "--debug"])


@pytest.mark.slow
def test_bad_input_exit_code_in_a_real_process(tmp_path):
    result = subprocess.run(
        [sys.executable, "run_prefix_tuning.py", "recipes/quickstart.yaml", "--output_dir", str(tmp_path / "o"),
         "--train_file", str(tmp_path / "missing.txt")],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 2 and result.stderr.strip().splitlines() == [
        f"error: --train_file {tmp_path / 'missing.txt'} does not exist."
    ]


def test_finished_run_is_not_overwritten_unless_asked(tmp_path, tiny_t5_dir, capsys):
    out = tmp_path / "run"
    argv = ["--model_name_or_path", str(tiny_t5_dir), "--train_file", str(REPO / "examples" / "quickstart.txt"),
            "--output_dir", str(out), "--do_train", "--max_steps", "2", "--report_to", "none"]  # fmt: skip
    run_main(argv)
    (out / "my_notes.txt").write_text("mine")
    adapter = (out / "adapter_model.safetensors").read_bytes()
    with pytest.raises(SystemExit) as exit_info:
        cli.cli(argv)
    assert exit_info.value.code == 2 and "--overwrite_output_dir" in capsys.readouterr().err
    assert (out / "adapter_model.safetensors").read_bytes() == adapter
    run_main([*argv, "--overwrite_output_dir", "--learning_rate", "0.5"])
    assert (out / "adapter_model.safetensors").read_bytes() != adapter
    assert (out / "my_notes.txt").read_text() == "mine"  # files we did not write are never deleted


def test_divergence_guard_stops_and_keeps_last_good_checkpoint(tmp_path, capsys):
    # AdamW's decoupled weight decay multiplies the prefix by (1 - lr * wd) = -1e37 each step: finite after step 1,
    # infinite after step 2.
    out = tmp_path / "nan"
    argv = ["recipes/quickstart.yaml", "--output_dir", str(out), "--learning_rate", "1", "--weight_decay", "1e37",
            "--save_strategy", "steps", "--save_steps", "1", "--max_steps", "6", "--eval_strategy", "no"]  # fmt: skip
    cwd = os.getcwd()
    os.chdir(REPO)
    try:
        with pytest.raises(SystemExit) as exit_info:
            cli.cli(argv)
    finally:
        os.chdir(cwd)
    assert exit_info.value.code == 1
    err = capsys.readouterr().err
    assert "became NaN or infinite at step 2" in err and str(out / "checkpoint-1") in err
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-1"]
    assert not (out / "adapter_model.safetensors").exists()
    from peft import PeftModel
    from transformers import AutoModelForSeq2SeqLM

    model = PeftModel.from_pretrained(AutoModelForSeq2SeqLM.from_pretrained(out / "base_model"), out / "checkpoint-1")
    assert all(torch.isfinite(p).all() for p in model.parameters())


def _train_command(out, projection: bool):
    return [
        sys.executable, "run_prefix_tuning.py", "recipes/quickstart.yaml",
        "--output_dir", str(out), "--max_steps", "40", "--save_strategy", "steps", "--save_steps", "4",
        "--eval_strategy", "no", "--logging_steps", "4", "--learning_rate", "0.01",
        *(["--prefix_projection", "--encoder_hidden_size", "16"] if projection else []),
    ]  # fmt: skip


def _run(command, env):
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]


def _final_state(out):
    return load_file(out / "adapter_model.safetensors"), json.loads((out / "all_results.json").read_text())


# Killed the moment checkpoint-k appears (of checkpoints every 4 steps, 40 steps), which may well be in the middle of
# writing it: early and late, with and without the projection MLP. Fixed cases, the same on every run.
@pytest.mark.parametrize(
    "projection,kill_at", [(False, 8), (True, 20)], ids=["plain-step8", "prefix_projection-step20"]
)
@pytest.mark.slow
def test_killed_run_resumes_to_the_same_adapter_and_metrics(tmp_path, projection, kill_at):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    reference = tmp_path / "reference"
    subprocess.run(
        _train_command(reference, projection), cwd=REPO, env=env, check=True, capture_output=True, timeout=600
    )

    killed = tmp_path / "killed"
    proc = subprocess.Popen(_train_command(killed, projection), cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    target = killed / f"checkpoint-{kill_at}"
    deadline = time.time() + 300
    while not target.exists():
        assert proc.poll() is None and time.time() < deadline, f"the run ended before {target.name}"
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (killed / "train_results.json").exists(), "killed too late: the run had already finished"

    _run(_train_command(killed, projection), env)
    ref_tensors, ref_results = _final_state(reference)
    got_tensors, got_results = _final_state(killed)
    assert ref_tensors.keys() == got_tensors.keys()
    for key in ref_tensors:
        torch.testing.assert_close(got_tensors[key], ref_tensors[key], rtol=0, atol=0)
    for key in ("eval_accuracy", "eval_macro_f1", "eval_loss"):
        assert got_results[key] == ref_results[key], key
    if projection:
        assert (killed / "checkpoint-40" / "prefix_encoder.safetensors").is_file()
        assert not (killed / "prefix_encoder.safetensors").exists()  # the final adapter keeps only the prefix


@pytest.mark.parametrize("projection", [False, True], ids=["plain", "prefix_projection"])
def test_load_best_model_at_end_with_prefix_models(tmp_path, tiny_t5_dir, projection):
    out = tmp_path / "best"
    trainer = run_main(
        [
            "--model_name_or_path", str(tiny_t5_dir), "--train_file", str(REPO / "examples" / "quickstart.txt"),
            "--output_dir", str(out), "--do_train", "--do_eval", "--max_steps", "6", "--learning_rate", "0.05",
            "--eval_strategy", "steps", "--eval_steps", "2", "--save_strategy", "steps", "--save_steps", "2",
            "--load_best_model_at_end", "--metric_for_best_model", "eval_loss", "--report_to", "none",
            *(["--prefix_projection"] if projection else []),
        ]
    )  # fmt: skip
    best = trainer.state.best_model_checkpoint
    assert best is not None and os.path.isdir(best)
    # The model in memory at the end is the best checkpoint's.
    results = json.loads((out / "all_results.json").read_text())
    assert results["eval_loss"] == pytest.approx(trainer.state.best_metric, rel=1e-5)
