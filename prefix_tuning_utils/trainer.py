"""The Trainer: `Seq2SeqTrainer` plus evaluation by label scoring or by generation for any model type."""

from __future__ import annotations

import logging

import torch
from accelerate.utils import gather_object
from transformers import Seq2SeqTrainer

from .data import LabelledData
from .metrics import classification_metrics
from .modeling import save_task_settings
from .scoring import LabelScorer


logger = logging.getLogger(__name__)

__all__ = ["PrefixTuningTrainer"]


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

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        """Save as usual, plus `prefix_tuning.json` (label words, input format), so the model scores on its own."""
        super()._save(output_dir, state_dict=state_dict)
        if self.scorer is not None and self.args.should_save:
            save_task_settings(
                output_dir or self.args.output_dir, self.scorer.labels, self.scorer.data_args, self.scorer.task
            )

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
        return classification_metrics(answers, examples.labels, self.scorer.labels)
