"""Classification metrics for text-to-text answers: the model writes a label word, we score the words.

The one place where answers are counted and scored (scikit-learn's `accuracy_score`,
`precision_recall_fscore_support` and `confusion_matrix`) and where the confusion matrix is drawn
(`ConfusionMatrixDisplay`): evaluation (`build_compute_metrics`, the trainer's score mode), batch prediction and the
model card all call it. An answer that is no label word is coded as one extra class, "no label", which is never a
gold label: it counts against the recall of its gold label and against no label's precision.
"""

from __future__ import annotations

import math
import os
from statistics import NormalDist

import numpy as np
from sklearn import metrics as skm

from .run_files import NO_LABEL


__all__ = [
    "NO_LABEL",
    "build_compute_metrics",
    "classification_metrics",
    "confusion_matrix",
    "confusion_metrics",
    "label_report",
    "normalise_answer",
    "plot_confusion_matrix",
    "wilson_interval",
]


def wilson_interval(correct: float, total: int, confidence: float = 0.95) -> tuple[float, float]:
    """The Wilson score interval of an accuracy of `correct` out of `total` (held-out sentences), at `confidence`.

    Unlike the normal approximation (p +- z sqrt(p (1 - p) / n)) it stays inside [0, 1] and is not empty at 0 or
    `total` correct: 221 of 227 (97.36 %) gives 94.4-98.8 %, about +-2 points. It covers the sampling of the
    held-out sentences only, not the spread over seeds or training runs. `correct` may be a mean over runs scored on
    the same sentences (not a whole number).
    """
    if total < 1 or not 0 <= correct <= total:
        raise ValueError(f"wilson_interval needs 0 <= correct <= total and total >= 1, got {correct} of {total}.")
    z = NormalDist().inv_cdf(0.5 + confidence / 2)
    p, n = correct / total, total
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return max(0.0, centre - half), min(1.0, centre + half)


def normalise_answer(text: str) -> str:
    return " ".join(text.strip().lower().split())


def _codes(predictions: list[str], references: list[str], labels: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Label i is code i, an answer that is no label word is len(labels), a gold value that is no label word gets a
    code of its own above that (it is scored: never right, and a false positive for the label answered)."""
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions for {len(references)} references.")
    codes = {normalise_answer(label): i for i, label in enumerate(labels)}
    other_gold: dict[str, int] = {}
    y_true = [
        codes.get(normalise_answer(reference))
        if normalise_answer(reference) in codes
        else other_gold.setdefault(reference, len(labels) + 1 + len(other_gold))
        for reference in references
    ]
    y_pred = [codes.get(normalise_answer(prediction), len(labels)) for prediction in predictions]
    return np.asarray(y_true, dtype=np.int64), np.asarray(y_pred, dtype=np.int64)


def _scores(y_true: np.ndarray, y_pred: np.ndarray, labels: list[str], weights: np.ndarray | None) -> dict:
    """Accuracy, share of no-label answers, per-label and macro F1, number of answers: from coded answers."""
    total = int(weights.sum()) if weights is not None else len(y_true)
    if not total:
        metrics = {"accuracy": 0.0, "invalid_rate": 0.0} | {f"f1_{label}": 0.0 for label in labels}
        return metrics | {"macro_f1": 0.0, "samples": 0}
    invalid = np.average(y_pred == len(labels), weights=weights)
    # zero_division=0: a label with no gold example and no answer has F1 0 (and counts in the macro average).
    _, _, f1, _ = skm.precision_recall_fscore_support(
        y_true, y_pred, labels=list(range(len(labels))), sample_weight=weights, zero_division=0
    )
    accuracy = skm.accuracy_score(y_true, y_pred, sample_weight=weights)
    metrics = {"accuracy": float(accuracy), "invalid_rate": float(invalid)}
    metrics.update({f"f1_{label}": float(value) for label, value in zip(labels, f1)})
    metrics["macro_f1"] = float(np.mean(f1))
    metrics["samples"] = total
    return metrics


def classification_metrics(predictions: list[str], references: list[str], labels: list[str]) -> dict[str, float]:
    """Accuracy, macro-F1, per-label F1 and the share of answers that are no label at all.

    An answer that is not a label word counts as wrong (a false negative for its gold label).
    """
    y_true, y_pred = _codes(predictions, references, labels)
    return _scores(y_true, y_pred, labels, None)


def confusion_metrics(confusion: dict[str, dict[str | None, int]], labels: list[str]) -> dict[str, float]:
    """The metrics of :func:`classification_metrics` from counts instead of lists of answers.

    `confusion[gold][predicted]` counts the examples of gold label `gold` answered `predicted` (None: no label
    at all). Used by batch prediction, whose memory must not grow with the number of rows: each cell is one
    weighted sample.
    """
    cells = [(gold, predicted, n) for gold, row in confusion.items() for predicted, n in row.items() if n]
    index = {label: i for i, label in enumerate(labels)}
    other_gold = [gold for gold in dict.fromkeys(gold for gold, _, _ in cells) if gold not in index]
    index.update({gold: len(labels) + 1 + i for i, gold in enumerate(other_gold)})
    y_true = np.asarray([index[gold] for gold, _, _ in cells], dtype=np.int64)
    y_pred = np.asarray([index.get(predicted, len(labels)) for _, predicted, _ in cells], dtype=np.int64)
    weights = np.asarray([n for _, _, n in cells], dtype=np.int64)
    return _scores(y_true, y_pred, labels, weights)


def confusion_matrix(predictions: list[str], references: list[str], labels: list[str]) -> list[list[int]]:
    """Counts: one row per gold label, one column per label plus a last column for answers that are no label.

    Examples whose gold value is no label word are left out."""
    y_true, y_pred = _codes(predictions, references, labels)
    known = y_true < len(labels)
    if not known.any():
        return [[0] * (len(labels) + 1) for _ in labels]
    counts = skm.confusion_matrix(y_true[known], y_pred[known], labels=list(range(len(labels) + 1)))
    return counts[: len(labels)].tolist()


def label_report(counts: list[list[int]], labels: list[str]) -> list[dict]:
    """Precision, recall, F1 and support of each label from :func:`confusion_matrix`'s counts (the model card's
    table); an answer that is no label word counts against recall."""
    n = len(labels)
    cells = [(i, j, count) for i, row in enumerate(counts) for j, count in enumerate(row) if count]
    if not cells:
        return [{"label": label, "precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0} for label in labels]
    y_true, y_pred, weights = (np.asarray(column, dtype=np.int64) for column in zip(*cells))
    precision, recall, f1, _ = skm.precision_recall_fscore_support(
        y_true, y_pred, labels=list(range(n)), sample_weight=weights, zero_division=0
    )
    return [
        {"label": label, "precision": float(p), "recall": float(r), "f1": float(f), "support": int(sum(counts[i]))}
        for i, (label, p, r, f) in enumerate(zip(labels, precision, recall, f1))
    ]


def plot_confusion_matrix(
    counts: list[list[int]], rows: list[str], columns: list[str], path: str | os.PathLike, title: str
) -> None:
    """A PNG of a confusion matrix (gold labels as rows, answers as columns, counts in the cells), drawn with
    scikit-learn's `ConfusionMatrixDisplay` on a bare matplotlib `Figure` (Agg canvas: no GUI, no global backend
    change). Batch prediction and the model card both draw theirs here."""
    from matplotlib.figure import Figure

    counts = np.asarray(counts, dtype=np.int64)
    # ConfusionMatrixDisplay draws square matrices: the no-label column gets a row of zeros, drawn and then cut off.
    square = np.zeros((len(columns), len(columns)), dtype=np.int64)
    square[: len(rows)] = counts
    figure = Figure(figsize=(1.3 * len(columns) + 2.5, 1.1 * len(rows) + 1.8), dpi=100)
    axes = figure.subplots()
    display = skm.ConfusionMatrixDisplay(square, display_labels=columns)
    display.plot(ax=axes, cmap="Blues", colorbar=True, values_format="d", xticks_rotation=30)
    for text in display.text_[len(rows) :].ravel():
        text.remove()
    axes.set_yticks(range(len(rows)), rows)
    axes.set_ylim(len(rows) - 0.5, -0.5)
    axes.set_xlabel("answer")
    axes.set_ylabel("gold label")
    axes.set_title(title)
    figure.tight_layout()
    figure.savefig(path)


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
