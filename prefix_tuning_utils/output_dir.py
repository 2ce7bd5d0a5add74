"""--output_dir safety: one folder holds one run's outputs, never two runs mixed.

`prepare_output_dir` decides, before anything is loaded or written, what a run does with an existing folder:

* no outputs of this package in it: a fresh run;
* a training run into a folder holding an *unfinished* training run of the same model and prefix (checkpoints, no
  train_results.json): resumed from its last complete checkpoint;
* a run that does not train (`--do_eval` / `--do_predict` only) into the folder of the very model it uses
  (`--model_name_or_path runs/x --output_dir runs/x`), or into a folder holding only its own model's evaluation or
  predictions: allowed (predictions resume or are refused by `predict`, which compares their settings);
* anything else of ours (a finished training run, another run's predictions or results, another model's training
  run): refused in one line, unless `--overwrite_output_dir`, which removes the files this package writes there
  (they are named in the log) and nothing else.

The folder's run is known from `run_args.json` (written by `run_log.save_run_args`: by a training run before its first
weight, by a run that does not train once it is done) and, for predictions, from `predictions.state.json`.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from dataclasses import asdict, dataclass, field

from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from .errors import ArgumentError
from .run_files import (
    ADAPTER_CONFIG_FILE,
    ADAPTER_FILES,
    ALL_RESULTS_FILE,
    BAD_ROWS_FILE,
    BASE_MODEL_DIR,
    CARD_FILE,
    CHECKPOINT_COMPLETE_FILE,
    EVAL_RESULTS_FILE,
    GENERATION_CONFIG_FILE,
    MODEL_CONFIG_FILE,
    PLOT_FILES,
    PREDICT_CONFUSION_PNG,
    PREDICT_RESULTS_FILE,
    PREDICTIONS_CSV_FILE,
    PREDICTIONS_FILE,
    PREDICTIONS_STATE_FILE,
    RUN_ARGS_FILE,
    RUN_RECORD_FILE,
    TOKENIZER_FILES,
    TRAIN_RESULTS_FILE,
    TRAINER_STATE_FILE,
    TRAINING_ARGS_FILE,
    WEIGHT_FILES,
)


logger = logging.getLogger(__name__)

__all__ = [
    "CHECKPOINT_COMPLETE_FILE",
    "FINISHED_MARKER",
    "RUN_ARGS_FILE",
    "FolderContents",
    "RunIdentity",
    "last_complete_checkpoint",
    "prepare_output_dir",
    "read_contents",
]

# Written at the end of a successful training run (by `trainer.save_metrics("train", ...)`).
FINISHED_MARKER = TRAIN_RESULTS_FILE
RESULTS_FILE = ALL_RESULTS_FILE  # the Trainer merges every phase's metrics into it

# Every file this package (or the Trainer, on its behalf) writes at the top of --output_dir, by the phase that writes
# it. Only these names, the checkpoints and base_model/ are ever removed; TensorBoard's runs/ (one subfolder per run,
# by date) is kept.
TRAINING_FILES = (
    FINISHED_MARKER,
    TRAINER_STATE_FILE,
    TRAINING_ARGS_FILE,
    *ADAPTER_FILES,  # adapter_model.safetensors, adapter_config.json, all_layer_prefix.safetensors, prefix_tuning.json
    RUN_RECORD_FILE,
    *PLOT_FILES,
    MODEL_CONFIG_FILE,  # --tuning_method full saves a whole model
    GENERATION_CONFIG_FILE,
    *WEIGHT_FILES[1:],  # the index files; the weight shards are FULL_MODEL_SHARDS
    *TOKENIZER_FILES,
)
FULL_MODEL_SHARDS = re.compile(r"model(-\d+-of-\d+)?\.safetensors")
EVALUATION_FILES = (EVAL_RESULTS_FILE,)
PREDICTION_FILES = (
    PREDICTIONS_FILE,
    PREDICTIONS_CSV_FILE,
    PREDICTIONS_STATE_FILE,
    PREDICT_RESULTS_FILE,
    PREDICT_CONFUSION_PNG,
    BAD_ROWS_FILE,
)
SHOWN_NAMES = 4


@dataclass(frozen=True)
class RunIdentity:
    """What a run is, for deciding whether its outputs may go next to a folder's: the model it uses (as given to
    --model_name_or_path, made absolute when it is a local folder), whether it trains, and, for a training run, what
    its checkpoints are made of (a checkpoint of another base model or prefix shape cannot be resumed)."""

    model: str
    trains: bool
    settings: dict = field(default_factory=dict)

    @classmethod
    def of(cls, model_name: str, model_args, prefix_args, trains: bool) -> RunIdentity:
        settings = {}
        if trains:
            settings = {
                "model_name_or_path": _normalised(model_args.model_name_or_path),
                "model_revision": model_args.model_revision,
                "gguf_file": model_args.gguf_file,
                **{
                    name: getattr(prefix_args, name)
                    for name in (
                        "tuning_method",
                        "num_virtual_tokens",
                        "prefix_projection",
                        "encoder_hidden_size",
                        "prefix_scope",
                        "lora_r",
                    )
                },  # fmt: skip
            }
        return cls(_normalised(model_name), trains, settings)

    def as_dict(self) -> dict:
        return asdict(self)


def _normalised(model: str | None) -> str | None:
    return os.path.realpath(model) if model is not None and os.path.isdir(model) else model


@dataclass
class FolderContents:
    """What of ours an --output_dir holds, by the phase that wrote it."""

    training: list[str]  # names; folders end in "/"
    evaluation: list[str]
    prediction: list[str]
    results: list[str]  # all_results.json, run_args.json
    run_args: dict | None
    predicted_with: str | None  # the model of predictions.state.json, normalised

    @property
    def names(self) -> list[str]:
        return self.training + self.evaluation + self.prediction + self.results

    @property
    def finished(self) -> bool:
        return FINISHED_MARKER in self.training

    @property
    def recorded(self) -> RunIdentity | None:
        identity = (self.run_args or {}).get("identity")
        if not isinstance(identity, dict) or not isinstance(identity.get("model"), str):
            return None
        return RunIdentity(identity["model"], bool(identity.get("trains")), identity.get("settings") or {})


def _read_json(path: str) -> dict | None:
    try:
        with open(path, encoding="utf-8") as handle:
            value = json.load(handle)
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def read_contents(output_dir: str) -> FolderContents:
    names = set(os.listdir(output_dir))
    folders = {name for name in names if os.path.isdir(os.path.join(output_dir, name))}
    training = sorted(f"{name}/" for name in folders if name.startswith(f"{PREFIX_CHECKPOINT_DIR}-"))
    training += [f"{BASE_MODEL_DIR}/"] if BASE_MODEL_DIR in folders else []
    files = names - folders
    training += sorted(name for name in files if name in TRAINING_FILES or FULL_MODEL_SHARDS.fullmatch(name))
    if CARD_FILE in files and files & {ADAPTER_CONFIG_FILE, RUN_RECORD_FILE}:
        training.append(CARD_FILE)  # our card, or peft's blank one, next to the adapter it describes
    state = _read_json(os.path.join(output_dir, PREDICTIONS_STATE_FILE)) or {}
    return FolderContents(
        training=training,
        evaluation=sorted(files & set(EVALUATION_FILES)),
        prediction=[name for name in PREDICTION_FILES if name in files],
        results=sorted(files & {RESULTS_FILE, RUN_ARGS_FILE}),
        run_args=_read_json(os.path.join(output_dir, RUN_ARGS_FILE)),
        predicted_with=_normalised((state.get("settings") or {}).get("model")),
    )


def _checkpoints(output_dir: str) -> list[str]:
    return sorted(
        os.path.join(output_dir, name)
        for name in os.listdir(output_dir)
        if name.startswith(f"{PREFIX_CHECKPOINT_DIR}-") and os.path.isdir(os.path.join(output_dir, name))
    )


def last_complete_checkpoint(output_dir: str) -> str | None:
    """The checkpoint of the highest step that was written completely, or None."""
    if not os.path.isdir(output_dir):
        return None
    complete = [c for c in _checkpoints(output_dir) if os.path.isfile(os.path.join(c, CHECKPOINT_COMPLETE_FILE))]
    return max(complete, key=lambda c: int(c.rsplit("-", 1)[-1]), default=None)


def _shown(names: list[str]) -> str:
    more = f", ... ({len(names)} in all)" if len(names) > SHOWN_NAMES else ""
    return ", ".join(names[:SHOWN_NAMES]) + more


def _conflict(contents: FolderContents, run: RunIdentity, output_dir: str) -> str | None:
    """What in the folder this run's outputs would be mixed with, described for the refusal; None if nothing."""
    recorded = contents.recorded
    if run.trains:
        if contents.finished:
            return f"a finished training run ({FINISHED_MARKER})"
        others = contents.evaluation + contents.prediction + [RESULTS_FILE] * (RESULTS_FILE in contents.results)
        if others:
            return f"another run's outputs ({_shown(others)})"
        if recorded is not None and not recorded.trains:
            return f"another run's outputs ({RUN_ARGS_FILE}: a run without training)"
        if contents.training and recorded is None and not _checkpoints(output_dir):
            return f"another run's outputs ({_shown(contents.training)})"  # an adapter, no checkpoint to resume
        changed = [
            key for key in run.settings if recorded is not None and recorded.settings.get(key) != run.settings[key]
        ]
        if changed:
            return f"an unfinished training run with other settings (changed: {', '.join(changed)})"
        return None  # an unfinished training run of this model and prefix: resumed
    if run.model == _normalised(output_dir):
        return None  # the model's own folder: its evaluation and predictions go next to it
    if contents.training or (recorded is not None and recorded.trains):
        what = "a finished training run" if contents.finished else "a training run"
        return f"{what} of another model than --model_name_or_path ({_shown(contents.training or [RUN_ARGS_FILE])})"
    made_by = {recorded.model} if recorded is not None else set()
    made_by |= {contents.predicted_with} if contents.predicted_with is not None else set()
    if contents.names and made_by != {run.model}:
        whose = "another model's" if made_by else "another run's"
        return f"{whose} outputs ({_shown(contents.evaluation + contents.prediction + contents.results)})"
    return None


def _remove_ours(output_dir: str, contents: FolderContents) -> list[str]:
    removed = []
    for name in contents.names:
        path = os.path.join(output_dir, name.rstrip("/"))
        if name.endswith("/"):
            shutil.rmtree(path, ignore_errors=True)  # other processes of the run may be removing it too
        else:
            try:
                os.remove(path)
            except FileNotFoundError:
                pass
        removed.append(name)
    return removed


def _resume_unfinished(output_dir: str, resume_from_checkpoint: str | None) -> str | None:
    """An unfinished training run of the same model: the checkpoint to resume from (its last complete one)."""
    if resume_from_checkpoint is not None:
        return resume_from_checkpoint
    last = last_complete_checkpoint(output_dir)
    last_step = int(last.rsplit("-", 1)[-1]) if last else -1
    for checkpoint in _checkpoints(output_dir):
        if int(checkpoint.rsplit("-", 1)[-1]) > last_step:
            # Written by a run killed while saving it: incomplete, and in the way of the resumed run's own save.
            logger.warning("Removing %s: the run was killed while saving it.", checkpoint)
            shutil.rmtree(checkpoint, ignore_errors=True)
    if last is not None:
        logger.warning("%s holds an unfinished run: resuming from %s.", output_dir, last)
    return last


def prepare_output_dir(
    output_dir: str, run: RunIdentity, overwrite: bool, resume_from_checkpoint: str | None
) -> str | None:
    """Decide what this run does with an existing --output_dir (module doc); return the checkpoint to resume from.

    Raises `ArgumentError` (one line, nothing changed) when the folder holds another run's outputs and `overwrite`
    is not set. With `overwrite`, a training run always starts afresh (our files removed first); a run that does not
    train removes them only where they would mix with its own (never the model it uses).
    """
    if not os.path.isdir(output_dir):
        return resume_from_checkpoint
    contents = read_contents(output_dir)
    if not contents.names:
        return resume_from_checkpoint
    conflict = _conflict(contents, run, output_dir)
    if conflict is not None and not overwrite:
        raise ArgumentError(
            f"--output_dir {output_dir} holds {conflict}; pass --overwrite_output_dir to replace it, or choose "
            "another --output_dir."
        )
    if overwrite and (run.trains or conflict is not None):
        removed = _remove_ours(output_dir, contents)
        logger.warning(
            "--overwrite_output_dir: removed %s from %s (files this package writes; nothing else).",
            ", ".join(removed), output_dir,
        )  # fmt: skip
        return resume_from_checkpoint
    if run.trains:
        return _resume_unfinished(output_dir, resume_from_checkpoint)
    return resume_from_checkpoint
