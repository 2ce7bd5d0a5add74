"""The label side of answering: from a scorer's output to answers, the one answering path of the package.

Evaluation (the trainer), ``--do_predict``, the model card's example, the Python API and the server all call
:class:`Answerer`. Two modes, as `--predict_mode`:

* ``score`` (rank classification): every label word is scored; each answer lists the labels best first with their
  probability, the softmax of the summed log-probabilities of the label's tokens over the label set.
* ``generate``: the model writes its answer; ``label`` is the label word it wrote (compared after lower-casing and
  collapsing spaces) or None, ``answer`` the text it wrote, and ``score`` the probability the model gives to writing
  exactly that label word and stopping (for an answer that is no label word: one minus the sum over the labels).

``adapters`` (one name per text, None for the base model) selects each row's adapter when the scorer holds an
:class:`~.bank.AdapterBank`; in generate mode each row is matched against its own adapter's label words.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..metrics import normalise_answer
from .scorer import LabelScorer


__all__ = ["MODES", "Answerer"]

MODES = ("score", "generate")


class Answerer:
    """Answers for one batch of texts, in one mode (module docstring)."""

    def __init__(self, scorer: LabelScorer, mode: str = "score", num_beams: int = 1):
        if mode not in MODES:
            raise ValueError(f"mode must be 'score' or 'generate', got {mode!r}.")
        if not isinstance(num_beams, int) or num_beams < 1:
            raise ValueError(f"num_beams must be a positive integer, got {num_beams!r}.")
        self.scorer, self.mode, self.num_beams = scorer, mode, num_beams

    @property
    def labels(self) -> list[str]:
        return list(self.scorer.labels)

    def _row_labels(self, count: int, adapters: Sequence[str | None] | None) -> list[list[str]]:
        """The label words each row is matched against: its adapter's (a bank) or the scorer's."""
        bank = self.scorer.bank
        if adapters is None or bank is None:
            return [self.labels] * count
        return [self.labels if name is None else list(bank.adapter(name).labels) for name in adapters]

    def score_batch(
        self, texts: list[str], adapters: Sequence[str | None] | None = None
    ) -> tuple[list[list[dict]], torch.Tensor]:
        """Score mode's answers for one batch, and the summed log-probabilities they come from, shape (texts, labels):
        evaluation reads the loss of the true label from them instead of running the model once more."""
        log_scores = self.scorer.log_scores(texts, adapters=adapters)
        ranked = [
            sorted(
                ({"label": label, "score": p} for label, p in zip(self.labels, probs)), key=lambda item: -item["score"]
            )
            for probs in torch.softmax(log_scores, dim=1).tolist()
        ]
        return ranked, log_scores

    def answer_batch(
        self, texts: list[str], adapters: Sequence[str | None] | None = None, with_scores: bool = True
    ) -> list[list[dict]]:
        """One batch, as it goes through the model: for each text, its labels best first (score mode) or the one
        answer it wrote (generate mode). Texts are used as they are (no checks, no stripping). ``with_scores=False``
        skips the extra scoring pass of generate mode (``score`` is then None), for callers that keep only the
        answer."""
        if self.mode == "score":
            return self.score_batch(texts, adapters)[0]
        answers = self.scorer.generate(texts, adapters=adapters, num_beams=self.num_beams)
        if with_scores:  # P(the model writes the label + end of sequence)
            written = torch.exp(self.scorer.log_scores(texts, adapters=adapters)).tolist()
        else:
            written = [None] * len(texts)
        index = {label: k for k, label in enumerate(self.labels)}
        out = []
        for answer, probs, labels in zip(answers, written, self._row_labels(len(texts), adapters)):
            words = {normalise_answer(label): label for label in labels}
            label = words.get(normalise_answer(answer))
            if probs is None:
                score = None
            elif label is None:
                score = max(0.0, 1.0 - sum(probs[index[word]] for word in labels))
            else:
                score = probs[index[label]]
            out.append([{"label": label, "score": score, "answer": answer}])
        return out
