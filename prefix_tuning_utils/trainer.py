"""The Trainer: `Seq2SeqTrainer` plus evaluation by label scoring or by generation for any model type."""

from __future__ import annotations

import logging
import math
import os

import torch
from accelerate.utils import gather_object
from peft import PeftModel, PeftType
from safetensors.torch import load_file, save_file
from transformers import Seq2SeqTrainer
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from .data import LabelledData
from .metrics import classification_metrics
from .output_dir import CHECKPOINT_COMPLETE_FILE, last_complete_checkpoint
from .scoring import LabelScorer


logger = logging.getLogger(__name__)

__all__ = ["CHECKPOINT_COMPLETE_FILE", "PREFIX_ENCODER_FILE", "PrefixTuningTrainer", "TrainingDivergedError"]

# Checkpoints of `--prefix_projection` runs hold the whole prefix encoder (embedding + MLP) in this file: peft's
# adapter file keeps only the projected prefix, from which training cannot continue.
PREFIX_ENCODER_FILE = "prefix_encoder.safetensors"


class TrainingDivergedError(RuntimeError):
    """The training loss became NaN or infinite; the message names the step and the last good checkpoint."""


def _projected_prefix_encoder(model):
    """The trainable prefix encoder (with its MLP) of a `--prefix_projection` peft model, else None."""
    if not isinstance(model, PeftModel):
        return None
    config = model.active_peft_config
    if config.peft_type != PeftType.PREFIX_TUNING or not config.prefix_projection or config.inference_mode:
        return None
    return model.prompt_encoder[model.active_adapter]


class PrefixTuningTrainer(Seq2SeqTrainer):
    """`Seq2SeqTrainer` whose evaluation also computes the classification metrics itself when asked.

    `eval_mode="generate"` on a seq2seq model is Seq2SeqTrainer's own `predict_with_generate` evaluation. In the
    other cases (`score`, or any mode on a decoder-only model, whose training inputs already hold the answer),
    the evaluation loop computes the loss as usual and then answers the held-out sentences with
    :class:`LabelScorer`, split across processes and gathered once, so every example counts exactly once.
    """

    def __init__(self, *args, scorer: LabelScorer | None = None, eval_examples: LabelledData | None = None,
                 eval_mode: str = "generate", **kwargs):  # fmt: skip
        super().__init__(*args, **kwargs)
        self.scorer, self.eval_examples, self.eval_mode = scorer, eval_examples, eval_mode
        self.last_eval_answers: tuple[list[str], list[str]] | None = None

    # --- checkpoints that hold what training needs -------------------------------------------------------------

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False):
        self._check_finite_parameters()
        super().save_model(output_dir, _internal_call=_internal_call)
        encoder = _projected_prefix_encoder(self.accelerator.unwrap_model(self.model))
        if _internal_call and encoder is not None and self.args.should_save:
            # A checkpoint (not the final adapter, which keeps only the resulting prefix): add the MLP.
            state = {key: value.detach().cpu().contiguous() for key, value in encoder.state_dict().items()}
            save_file(state, os.path.join(output_dir or self.args.output_dir, PREFIX_ENCODER_FILE))

    def _save_checkpoint(self, model, trial):
        super()._save_checkpoint(model, trial)
        if self.args.should_save:
            folder = os.path.join(
                self._get_output_dir(trial=trial), f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
            )
            if os.path.isdir(folder):
                open(os.path.join(folder, CHECKPOINT_COMPLETE_FILE), "w").close()

    def _load_prefix_encoder(self, checkpoint: str, model) -> bool:
        encoder = _projected_prefix_encoder(self.accelerator.unwrap_model(model))
        if encoder is None:
            return False
        path = os.path.join(checkpoint, PREFIX_ENCODER_FILE)
        if not os.path.isfile(path):
            raise ValueError(
                f"{checkpoint} has no {PREFIX_ENCODER_FILE}: it holds only the projected prefix of a "
                "--prefix_projection run, from which training cannot continue exactly. Resume from a checkpoint "
                "written by this package, or start without --resume_from_checkpoint."
            )
        encoder.load_state_dict(load_file(path, device=str(next(encoder.parameters()).device)))
        return True

    def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
        if not self._load_prefix_encoder(resume_from_checkpoint, model if model is not None else self.model):
            super()._load_from_checkpoint(resume_from_checkpoint, model=model)

    def _load_best_model(self):
        if not self._load_prefix_encoder(self.state.best_model_checkpoint, self.model):
            super()._load_best_model()

    # --- divergence guard -----------------------------------------------------------------------------------

    def _diverged(self, what: str, step: int) -> TrainingDivergedError:
        output_dir = self.args.output_dir
        checkpoint = last_complete_checkpoint(output_dir)
        kept = f"the last good checkpoint is {checkpoint}" if checkpoint else "no checkpoint was saved"
        return TrainingDivergedError(
            f"{what} at step {step}; training stopped and nothing more was saved, {kept}. "
            f"Lower --learning_rate (now {self.args.learning_rate:g}) or set --max_grad_norm."
        )

    def _check_finite_parameters(self) -> None:
        """Never save NaN/inf weights: the last checkpoint on disk stays a good one."""
        for name, param in self.model.named_parameters():
            if param.requires_grad and not torch.isfinite(param).all():
                raise self._diverged(f"trainable parameter {name} became NaN or infinite", self.state.global_step)

    def training_step(self, model, inputs, num_items_in_batch=None):
        loss = super().training_step(model, inputs, num_items_in_batch)
        value = loss.detach().float().item()
        if not math.isfinite(value):
            raise self._diverged(f"training loss became {value}", self.state.global_step + 1)
        return loss

    # --- evaluation -----------------------------------------------------------------------------------------

    @property
    def own_metrics(self) -> bool:
        return (
            self.scorer is not None
            and self.eval_examples is not None
            and (self.eval_mode == "score" or self.scorer.task == "causal")
        )

    def evaluation_loop(self, dataloader, description, prediction_loss_only=None, ignore_keys=None,
                        metric_key_prefix="eval"):  # fmt: skip
        output = super().evaluation_loop(
            dataloader, description, prediction_loss_only=prediction_loss_only, ignore_keys=ignore_keys,
            metric_key_prefix=metric_key_prefix,
        )  # fmt: skip
        if self.own_metrics and metric_key_prefix == "eval":
            metrics = self.answer_metrics(self.eval_examples)
            output.metrics.update({f"{metric_key_prefix}_{key}": value for key, value in metrics.items()})
        return output

    def answer(self, texts: list[str]) -> list[str]:
        """The label (score mode) or the decoded answer (generate mode) for each text, across all processes."""
        batch_size = self.args.per_device_eval_batch_size
        with self.accelerator.split_between_processes(list(range(len(texts)))) as indices:
            answers = []
            for start in range(0, len(indices), batch_size):
                chunk = [texts[i] for i in indices[start : start + batch_size]]
                if self.eval_mode == "score":
                    best = self.scorer.log_scores(chunk).argmax(dim=1)
                    answers.extend(self.scorer.labels[i] for i in best.tolist())
                else:
                    answers.extend(self.scorer.generate(chunk, num_beams=self.args.generation_num_beams or 1))
        # split_between_processes gives contiguous chunks in rank order, so gathering restores the input order.
        return gather_object(answers) if self.accelerator.num_processes > 1 else answers

    def answer_metrics(self, examples: LabelledData) -> dict[str, float]:
        model = self.model
        self.scorer.model = self.accelerator.unwrap_model(model) if hasattr(self, "accelerator") else model
        with torch.no_grad():
            answers = self.answer(examples.texts)
        self.last_eval_answers = (answers, list(examples.labels))  # for the model card's confusion matrix
        return classification_metrics(answers, examples.labels, self.scorer.labels)
