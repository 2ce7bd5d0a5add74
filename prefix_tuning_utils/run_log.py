"""What a run tells the user, and the record of its arguments.

`save_run_args` writes `run_args.json` into --output_dir at the start of every run: the command (tokens redacted),
every argument (no token), and the run's identity, which `output_dir` reads to keep runs from mixing. It is never
uploaded (`hub` publishes an allow-list that does not name it).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os

from .model_card import REDACTED, redact_argv
from .output_dir import RUN_ARGS_FILE, RunIdentity


logger = logging.getLogger(__name__)

__all__ = ["run_arguments", "save_run_args"]


def run_arguments(argv, model_args, data_args, prefix_args, predict_args, training_args, identity: RunIdentity):
    """Every argument of the run as JSON values, with no token in them."""
    model = dataclasses.asdict(model_args)
    model["token"] = REDACTED if model_args.token else None
    return {
        "command": redact_argv(list(argv), [model_args.token]),
        "identity": identity.as_dict(),
        "model": model,
        "data": dataclasses.asdict(data_args),
        "prefix": dataclasses.asdict(prefix_args),
        "predict": dataclasses.asdict(predict_args),
        # transformers' own JSON form: enums as their value, its token fields masked (the Hub token is not there
        # anyway: hub.take_hub_settings moved it out).
        "training": json.loads(training_args.to_json_string()),
    }


def save_run_args(output_dir: str, arguments: dict) -> str:
    """Write `run_args.json` (main process only); returns its path."""
    os.makedirs(output_dir, exist_ok=True)
    path = os.path.join(output_dir, RUN_ARGS_FILE)
    with open(path, "w", encoding="utf-8") as handle:
        json.dump(arguments, handle, indent=2, ensure_ascii=False, default=str)
        handle.write("\n")
    return path
