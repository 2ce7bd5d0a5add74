"""Classification metrics for text-to-text answers: the model writes a label word, we score the words."""

from __future__ import annotations

import numpy as np


__all__ = [
    "build_compute_metrics",
    "classification_metrics",
    "confusion_matrix",
    "confusion_metrics",
    "normalise_answer",
]


def normalise_answer(text: str) -> str:
    return " ".join(text.strip().lower().split())


def classification_metrics(predictions: list[str], references: list[str], labels: list[str]) -> dict[str, float]:
    """Accuracy, macro-F1, per-label F1 and the share of answers that are no label at all.

    An answer that is not a label word counts as wrong (a false negative for its gold label).
    """
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions for {len(references)} references.")
    norm = {normalise_answer(label): label for label in labels}
    confusion: dict[str, dict[str | None, int]] = {}
    for prediction, reference in zip(predictions, references):
        gold = norm.get(normalise_answer(reference), reference)
        answer = norm.get(normalise_answer(prediction))
        row = confusion.setdefault(gold, {})
        row[answer] = row.get(answer, 0) + 1
    return confusion_metrics(confusion, labels)


def confusion_matrix(predictions: list[str], references: list[str], labels: list[str]) -> list[list[int]]:
    """Counts: one row per gold label, one column per label plus a last column for answers that are no label."""
    norm = {normalise_answer(label): i for i, label in enumerate(labels)}
    counts = [[0] * (len(labels) + 1) for _ in labels]
    for prediction, reference in zip(predictions, references):
        row = norm.get(normalise_answer(reference))
        if row is not None:
            counts[row][norm.get(normalise_answer(prediction), len(labels))] += 1
    return counts


def confusion_metrics(confusion: dict[str, dict[str | None, int]], labels: list[str]) -> dict[str, float]:
    """The metrics of :func:`classification_metrics` from a confusion matrix (counts, not lists of answers).

    `confusion[gold][predicted]` counts the examples of gold label `gold` answered `predicted` (None: no label
    at all). Used by batch prediction, whose memory must not grow with the number of rows.
    """
    total = sum(sum(row.values()) for row in confusion.values())
    correct = sum(confusion.get(label, {}).get(label, 0) for label in labels)
    invalid = sum(row.get(None, 0) for row in confusion.values())
    metrics: dict[str, float] = {
        "accuracy": correct / total if total else 0.0,
        "invalid_rate": invalid / total if total else 0.0,
    }
    f1s = []
    for label in labels:
        tp = confusion.get(label, {}).get(label, 0)
        fp = sum(row.get(label, 0) for gold, row in confusion.items() if gold != label)
        fn = sum(confusion.get(label, {}).values()) - tp
        f1 = 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0
        metrics[f"f1_{label}"] = f1
        f1s.append(f1)
    metrics["macro_f1"] = float(np.mean(f1s))
    metrics["samples"] = total
    return metrics


def build_compute_metrics(tokenizer, labels: list[str]):
    """`compute_metrics` for `Seq2SeqTrainer(predict_with_generate=True)`: decode, then compare label words.

    The decoded answers and gold labels of the latest call stay in `compute_metrics.last_answers` (a pair of
    lists), for the confusion matrix of the model card.
    """

    def decode(ids) -> list[str]:
        ids = np.asarray(ids)
        ids = np.where(ids < 0, tokenizer.pad_token_id, ids)
        return tokenizer.batch_decode(ids, skip_special_tokens=True)

    def compute_metrics(eval_prediction) -> dict[str, float]:
        predictions = eval_prediction.predictions
        if isinstance(predictions, tuple):
            predictions = predictions[0]
        answers, references = decode(predictions), decode(eval_prediction.label_ids)
        compute_metrics.last_answers = (answers, references)
        return classification_metrics(answers, references, labels)

    compute_metrics.last_answers = None
    return compute_metrics
