"""What a run tells the user, and the record of its arguments.

The transformers examples' logging block, quiet by default (`--log_level passive`, the Trainer's default): one summary
line per process, this package's own lines (the phases, what was read and saved) and warnings at info, the libraries'
at warning, the Trainer's progress bars and metrics; `--log_level info` adds the libraries' detail and `--log_level
debug` every argument. Warnings nothing in this package can act on are filtered, each with its upstream cause
(`UPSTREAM_WARNINGS`). `QuietProgressCallback` shows an evaluation during training in the training bar instead of a
nested bar, and `log_metrics` writes the metrics several to a line.

`save_run_args` writes `run_args.json` into --output_dir: the command (tokens redacted), every argument (no token), and
the run's identity, which `output_dir` reads to keep runs from mixing. It is never uploaded (`hub` publishes an
allow-list that does not name it).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import sys
import warnings

import datasets
import huggingface_hub
import transformers
from transformers.trainer_callback import ProgressCallback
from transformers.trainer_pt_utils import metrics_format

from .model_card import REDACTED, redact_argv
from .output_dir import RunIdentity
from .run_files import RUN_ARGS_FILE


logger = logging.getLogger(__name__)

__all__ = [
    "UPSTREAM_WARNINGS",
    "QuietProgressCallback",
    "filter_upstream_warnings",
    "log_metrics",
    "run_arguments",
    "save_run_args",
    "setup_logging",
    "use_quiet_progress",
]

LOG_FORMAT = "%(asctime)s - %(levelname)s - %(name)s - %(message)s"
DATE_FORMAT = "%m/%d/%Y %H:%M:%S"
LINE_WIDTH = 119
# (category, message regex, upstream cause): warnings raised inside the libraries about their own calls.
UPSTREAM_WARNINGS = (
    (
        FutureWarning,
        r"`is_gradient_checkpointing` is deprecated",
        # peft 0.21.2 (peft_model.py, PeftModel.__init__: `getattr(model, "is_gradient_checkpointing", True)`) reads
        # the property transformers 5.25 deprecated for `is_activation_checkpointing`; nothing here reads it. Drop
        # this entry once peft reads the new name (the test of this module fails when no warning is filtered).
        "peft reads transformers' deprecated `is_gradient_checkpointing`",
    ),
)


def setup_logging(training_args=None, level: str | None = None) -> None:
    """Levels, handlers and warning filters of a run (module doc). Every log line goes to stdout through the root
    handler, so that stderr holds only progress bars and, when the run fails, its one-line error.

    Without training arguments (a subcommand, `push` or `serve`: one process): this package at `level` (default
    info), the libraries at warning or above, and no per-process summary line."""
    logging.basicConfig(format=LOG_FORMAT, datefmt=DATE_FORMAT, handlers=[logging.StreamHandler(sys.stdout)])
    passive = training_args is None or training_args.log_level == "passive"
    if training_args is None:
        ours = logging.getLevelName((level or "info").upper())
        libraries = max(ours, logging.WARNING)
    elif passive and training_args.should_log:
        ours, libraries = logging.INFO, logging.WARNING
    else:  # an explicit --log_level on the main process, --log_level_replica (warning) on the others
        ours = libraries = training_args.get_process_log_level()
    logging.getLogger("prefix_tuning_utils").setLevel(ours)
    if not (passive and os.environ.get("TRANSFORMERS_VERBOSITY")):  # the user's own default for transformers
        transformers.utils.logging.set_verbosity(libraries)
    datasets.utils.logging.set_verbosity(libraries)
    huggingface_hub.utils.logging.set_verbosity(libraries)
    transformers.utils.logging.disable_default_handler()
    for library in (transformers, datasets, huggingface_hub):
        library.utils.logging.enable_propagation()
    for name in ("datasets", "huggingface_hub"):  # their own stderr handlers (no disable_default_handler there)
        logging.getLogger(name).handlers.clear()
    filter_upstream_warnings()
    if training_args is None:
        return
    logging.getLogger("prefix_tuning_utils.cli").warning(
        f"Process rank: {training_args.process_index} of {training_args.world_size}, device: {training_args.device}, "
        f"n_gpu: {training_args.n_gpu}, distributed: {training_args.parallel_mode.value}, "
        f"mixed precision: {training_args.mixed_precision}"
    )


def filter_upstream_warnings() -> None:
    """Ignore the warnings of UPSTREAM_WARNINGS (for the rest of the process)."""
    for category, message, _cause in UPSTREAM_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category)


class QuietProgressCallback(ProgressCallback):
    """transformers' progress bars, with an evaluation during training shown in the training bar ("evaluating 3/8")
    rather than in a nested bar: written to a log file (no terminal), a nested bar leaves blank and half-drawn lines
    at every evaluation. The training's final summary is left to `log_metrics`."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._evaluated = 0  # batches of the evaluation in progress during training

    def on_prediction_step(self, args, state, control, eval_dataloader=None, **kwargs):
        if self.training_bar is None:
            return super().on_prediction_step(args, state, control, eval_dataloader=eval_dataloader, **kwargs)
        if state.is_world_process_zero:
            self._evaluated += 1
            total = (
                len(eval_dataloader) if eval_dataloader is not None and hasattr(eval_dataloader, "__len__") else "?"
            )
            self.training_bar.set_postfix_str(f"evaluating {self._evaluated}/{total}")

    def on_evaluate(self, args, state, control, **kwargs):
        if self.training_bar is not None and state.is_world_process_zero:
            self._evaluated = 0
            self.training_bar.set_postfix_str("")
        return super().on_evaluate(args, state, control, **kwargs)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs is not None and "train_runtime" in logs:
            return  # the final training summary: log_metrics writes it, with the package's own metrics
        return super().on_log(args, state, control, logs=logs, **kwargs)


def use_quiet_progress(trainer) -> None:
    """Swap the Trainer's progress callback for `QuietProgressCallback` (nothing to do with --disable_tqdm)."""
    if trainer.pop_callback(ProgressCallback) is not None:
        trainer.add_callback(QuietProgressCallback)


def log_metrics(trainer, split: str, metrics: dict) -> None:
    """`trainer.log_metrics` (main process, transformers' formatting, sorted), several `key = value` to a line."""
    if not trainer.is_world_process_zero():
        return
    formatted = metrics_format(metrics)
    key_width = max(len(str(key)) for key in formatted)
    value_width = max(len(str(value)) for value in formatted.values())
    cells = [f"{key:<{key_width}} = {formatted[key]!s:>{value_width}}" for key in sorted(formatted)]
    per_line = max(1, (LINE_WIDTH - 2 + 3) // (key_width + value_width + 3 + 3))
    lines = [f"***** {split} metrics *****"]
    lines += ["  " + "   ".join(cells[start : start + per_line]) for start in range(0, len(cells), per_line)]
    # On stdout, unprefixed, as the Trainer's own log_metrics prints it: a table, not log records.
    sys.stdout.write("\n".join(lines) + "\n")
    sys.stdout.flush()


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
