"""--output_dir safety: a finished run is never overwritten unless asked, a partial one is resumed."""

from __future__ import annotations

import logging
import os
import shutil

from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from .errors import ArgumentError
from .run_files import CHECKPOINT_COMPLETE_FILE, RESULT_FILES, TRAIN_RESULTS_FILE, TRAINER_STATE_FILE


logger = logging.getLogger(__name__)

__all__ = ["CHECKPOINT_COMPLETE_FILE", "FINISHED_MARKER", "last_complete_checkpoint", "prepare_output_dir"]

# Written at the end of a successful training run (by `trainer.save_metrics("train", ...)`).
FINISHED_MARKER = TRAIN_RESULTS_FILE
# Files a finished run leaves that would mislead a new run into the same folder; all are written by this package or
# the Trainer under these exact names. Nothing else in the folder is ever deleted. A checkpoint folder without
# CHECKPOINT_COMPLETE_FILE (a run killed while saving it) must not be resumed from.
STALE_RESULTS = (*RESULT_FILES, TRAINER_STATE_FILE)


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


def prepare_output_dir(
    output_dir: str, do_train: bool, overwrite: bool, resume_from_checkpoint: str | None
) -> str | None:
    """Decide what a training run does with an existing --output_dir; return the checkpoint to resume from.

    * missing or without our files: a fresh run;
    * a finished run (train_results.json): refused, unless --overwrite_output_dir, which removes its checkpoints
      and result files (only those) before training again;
    * checkpoints but no finished run (a killed run): resumed from the last checkpoint, unless --overwrite_output_dir.
    """
    if not do_train or not os.path.isdir(output_dir):
        return resume_from_checkpoint
    finished = os.path.isfile(os.path.join(output_dir, FINISHED_MARKER))
    if finished and not overwrite:
        raise ArgumentError(
            f"--output_dir {output_dir} holds a finished training run ({FINISHED_MARKER}); pass "
            "--overwrite_output_dir to train again there, or choose another --output_dir."
        )
    if overwrite:
        for checkpoint in _checkpoints(output_dir):
            shutil.rmtree(checkpoint)
        for name in STALE_RESULTS:
            path = os.path.join(output_dir, name)
            if os.path.isfile(path):
                os.remove(path)
        if finished or resume_from_checkpoint is None:
            logger.info("--overwrite_output_dir: starting a fresh run in %s.", output_dir)
        return resume_from_checkpoint
    if resume_from_checkpoint is not None:
        return resume_from_checkpoint
    last = last_complete_checkpoint(output_dir)
    last_step = int(last.rsplit("-", 1)[-1]) if last else -1
    for checkpoint in _checkpoints(output_dir):
        if int(checkpoint.rsplit("-", 1)[-1]) > last_step:
            # Written by a run killed while saving it: incomplete, and in the way of the resumed run's own save.
            logger.warning("Removing %s: the run was killed while saving it.", checkpoint)
            shutil.rmtree(checkpoint)
    if last is not None:
        logger.warning("%s holds an unfinished run: resuming from %s.", output_dir, last)
    return last
