"""Ctrl-C: what an interrupted run kept, and the exact command that goes on from there, in one line.

`cli` catches the KeyboardInterrupt and prints `interrupted: <what_was_kept(argv)>` (exit code 130). The output
folder says what the run had done (the arguments are parsed again; nothing is loaded):

* training, unfinished: its last complete checkpoint, resumed by the same command (`output_dir` resumes an
  unfinished run of the same model); or no checkpoint yet, and the same command starts again;
* training finished, evaluation or prediction not: the same command with the trained model as `--model_name_or_path`
  and no training (predicting again from the first row: the model changed);
* prediction (`--do_predict` alone): the rows already in predictions.jsonl, continued by the same command.
"""

from __future__ import annotations

import json
import os
import shlex
import sys

from tqdm import tqdm

from .arguments import parse_args
from .model_card import redact_argv
from .output_dir import FINISHED_MARKER, last_complete_checkpoint
from .predict import count_complete_rows
from .run_files import PREDICTIONS_FILE
from .run_files import PREDICTIONS_STATE_FILE as STATE_FILE


__all__ = ["close_progress_bars", "resume_command", "what_was_kept"]


def resume_command(argv: list[str], secrets: list[str | None] = ()) -> str:
    """The command as it was run (`python run_prefix_tuning.py ...` or `prefix-tuning ...`), tokens redacted."""
    program = sys.argv[0] if sys.argv and sys.argv[0] else ""
    if os.path.basename(program) == "prefix-tuning":
        launcher = ["prefix-tuning"]
    else:
        launcher = ["python", program if program.endswith("run_prefix_tuning.py") else "run_prefix_tuning.py"]
    return shlex.join(launcher + redact_argv(list(argv), list(secrets)))


def _predictions_kept(output_dir: str) -> tuple[int, int | None] | None:
    """(complete rows in predictions.jsonl, rows to answer) of an unfinished prediction, or None if there is none."""
    path = os.path.join(output_dir, PREDICTIONS_FILE)
    if not os.path.isfile(path):
        return None
    try:
        with open(os.path.join(output_dir, STATE_FILE), encoding="utf-8") as handle:
            total = json.load(handle).get("rows")
    except (OSError, ValueError):
        total = None
    return count_complete_rows(path), total


def what_was_kept(argv: list[str]) -> str:
    """What an interrupted run with the command line `argv` kept, and the command that goes on from there."""
    try:
        model_args, _, _, _, args = parse_args(argv)
    except Exception:  # noqa: BLE001 - interrupted before its arguments were checked: nothing to look at
        return f"nothing was written; run the command again: {resume_command(argv)}"
    secrets = [model_args.token, args.hub_token]
    again = resume_command(argv, secrets)
    out = args.output_dir
    if args.do_train and not os.path.isfile(os.path.join(out, FINISHED_MARKER)):
        checkpoint = last_complete_checkpoint(out)
        if checkpoint is None:
            return (
                f"training stopped before its first checkpoint (--save_strategy {args.save_strategy.value}), so it "
                f"starts again from the beginning; run: {again}"
            )
        return f"training stopped; {checkpoint} is kept. To resume from it, run the same command: {again}"
    if args.do_train:
        extra = ["--model_name_or_path", out, "--do_train", "false"]
        extra += ["--overwrite_predictions"] if args.do_predict else []
        extra += ["--push_to_hub", "false"] if args.push_to_hub else []
        return (
            f"training had finished (its model is saved in {out}), but not the evaluation or prediction after it. "
            f"To run them with the trained model: {resume_command([*argv, *extra], secrets)}"
        )
    kept = _predictions_kept(out) if args.do_predict else None
    if kept is not None:
        rows, total = kept
        of = f" of {total}" if total is not None else ""
        return (
            f"the first {rows}{of} rows are kept in {os.path.join(out, PREDICTIONS_FILE)}. To answer the rest, "
            f"run the same command: {again}"
        )
    return f"nothing was kept; run the command again: {again}"


def close_progress_bars() -> None:
    """Close the progress bars left open by the interrupt (their last state stays on screen), so that none is redrawn
    after the one line that reports it."""
    for bar in list(getattr(tqdm, "_instances", ())):
        bar.close()
