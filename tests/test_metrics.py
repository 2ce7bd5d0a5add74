"""prefix_tuning_utils/metrics.py: the scikit-learn metrics give exactly the figures of the hand-written counting
they replaced (kept below as the reference), and the confusion-matrix PNG is drawn."""

from __future__ import annotations

import numpy as np
import pytest

from prefix_tuning_utils import metrics
from prefix_tuning_utils.predict import save_confusion_matrix


LABELS = ["positive", "negative", "neutral"]


# The hand-written metrics that metrics.py held before it used scikit-learn (the reference, not the code tested).
def _reference_metrics(predictions, references, labels):
    norm = {metrics.normalise_answer(label): label for label in labels}
    confusion = {}
    for prediction, reference in zip(predictions, references):
        gold = norm.get(metrics.normalise_answer(reference), reference)
        answer = norm.get(metrics.normalise_answer(prediction))
        row = confusion.setdefault(gold, {})
        row[answer] = row.get(answer, 0) + 1
    total = sum(sum(row.values()) for row in confusion.values())
    correct = sum(confusion.get(label, {}).get(label, 0) for label in labels)
    invalid = sum(row.get(None, 0) for row in confusion.values())
    out = {"accuracy": correct / total if total else 0.0, "invalid_rate": invalid / total if total else 0.0}
    f1s = []
    for label in labels:
        tp = confusion.get(label, {}).get(label, 0)
        fp = sum(row.get(label, 0) for gold, row in confusion.items() if gold != label)
        fn = sum(confusion.get(label, {}).values()) - tp
        f1 = 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0
        out[f"f1_{label}"] = f1
        f1s.append(f1)
    out["macro_f1"] = float(np.mean(f1s))
    out["samples"] = total
    return out, confusion


CASES = {
    # `neutral` is never answered: its F1 is 0 and it counts in the macro average.
    "label never predicted": (
        ["positive", "negative", "positive", "negative", "positive"],
        ["positive", "negative", "neutral", "neutral", "negative"],
    ),
    # generate mode: answers that are no label word (and casing/spacing variants that are).
    "invalid answers": (
        ["Positive ", "the stock", "", "negative", "neutral", "NEUTRAL", "maybe"],
        ["positive", "positive", "negative", "negative", "neutral", "negative", "neutral"],
    ),
    # a label with no gold example and no answer at all, every answer invalid.
    "all invalid": (["?", "??"], ["positive", "negative"]),
    "gold value that is no label word": (["positive", "neutral", "x"], ["positive", "mixed", "mixed"]),
    "perfect": (LABELS * 3, LABELS * 3),
    "empty": ([], []),
}


@pytest.mark.parametrize("case", list(CASES))
def test_metrics_equal_the_hand_written_ones(case):
    predictions, references = CASES[case]
    expected, confusion = _reference_metrics(predictions, references, LABELS)
    got = metrics.classification_metrics(predictions, references, LABELS)
    assert got == expected and list(got) == list(expected)  # same values, same keys in the same order
    assert all(type(value) in (float, int) for value in got.values())  # plain JSON numbers, no numpy scalars
    # the streaming form batch prediction uses (counts, not answers) gives the same figures
    assert metrics.confusion_metrics(confusion, LABELS) == expected


def test_hand_computed_figures():
    got = metrics.classification_metrics(*CASES["invalid answers"], LABELS)
    # positive: tp 1, fn 1 (invalid), fp 0 -> 2/3; negative: tp 1, fn 2, fp 0 -> 2/4; neutral: tp 1, fn 1, fp 1 -> 2/4
    assert got["accuracy"] == pytest.approx(3 / 7) and got["invalid_rate"] == pytest.approx(3 / 7)
    assert (got["f1_positive"], got["f1_negative"], got["f1_neutral"]) == pytest.approx((2 / 3, 0.5, 0.5))
    assert got["macro_f1"] == pytest.approx((2 / 3 + 0.5 + 0.5) / 3) and got["samples"] == 7
    never = metrics.classification_metrics(*CASES["label never predicted"], LABELS)
    assert never["f1_neutral"] == 0.0 and never["accuracy"] == pytest.approx(2 / 5)


def test_confusion_matrix_and_per_label_report():
    predictions, references = CASES["invalid answers"]
    counts = metrics.confusion_matrix(predictions, references, LABELS)
    assert counts == [[1, 0, 0, 1], [0, 1, 1, 1], [0, 0, 1, 1]]  # last column: no label word
    assert metrics.confusion_matrix(*CASES["gold value that is no label word"], LABELS)[0] == [1, 0, 0, 0]
    report = {row["label"]: row for row in metrics.label_report(counts, LABELS)}
    assert report["neutral"]["precision"] == pytest.approx(1 / 2)  # one right, one `negative` example answered it
    assert report["negative"]["recall"] == pytest.approx(1 / 3) and report["negative"]["support"] == 3
    assert report["positive"]["f1"] == pytest.approx(2 / 3)  # the invalid answer counts against recall
    never = metrics.label_report(metrics.confusion_matrix(*CASES["label never predicted"], LABELS), LABELS)
    assert never[2] == {"label": "neutral", "precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 2}


def test_confusion_matrix_png(tmp_path):
    confusion = {"positive": {"positive": 5, "negative": 1, metrics.NO_LABEL: 2}, "negative": {"positive": 0,
                 "negative": 7, metrics.NO_LABEL: 0}}  # fmt: skip
    path = tmp_path / "cm.png"
    save_confusion_matrix(confusion, str(path))
    from matplotlib.image import imread

    image = imread(path)
    assert image.shape[:2] == (400, 640)  # 100 dpi: 1.1 in per gold row, 1.3 in per column
    assert (image[..., :3] < 0.5).any()  # something dark was drawn (the 7 cell)


# --- round two: what mutation testing (tools/mutation.sh metrics) showed no test checked ---

WORDS = ["negative", "neutral", "positive"]  # in this order below
# Counts with cells above 1 (batch prediction weighs each cell by its count): gold rows, predicted columns.
WEIGHTED = {
    "negative": {"negative": 3, "neutral": 1, "positive": 0, None: 0},
    "neutral": {"negative": 0, "neutral": 2, "positive": 0, None: 2},
    "positive": {"negative": 1, "neutral": 0, "positive": 1, None: 0},
}


def test_confusion_metrics_weigh_each_cell_by_its_count():
    """By hand: 10 rows, 6 right, 2 answered no label. negative P 3/4 R 3/4; neutral P 2/3 R 2/4; positive P 1 R 1/2."""
    got = metrics.confusion_metrics(WEIGHTED, WORDS)
    f1 = {"negative": 0.75, "neutral": 4 / 7, "positive": 2 / 3}
    assert got == pytest.approx(
        {"accuracy": 0.6, "invalid_rate": 0.2, **{f"f1_{k}": v for k, v in f1.items()}, "macro_f1": sum(f1.values()) / 3,
         "samples": 10}
    )  # fmt: skip


def test_label_report_weighs_counts_and_keeps_a_label_with_no_example():
    counts = [[3, 1, 0, 0], [0, 2, 0, 2], [1, 0, 1, 0]]  # WEIGHTED as confusion_matrix's rows
    report = metrics.label_report(counts, WORDS)
    assert report == [
        {"label": "negative", "precision": 0.75, "recall": 0.75, "f1": 0.75, "support": 4},
        {
            "label": "neutral",
            "precision": pytest.approx(2 / 3),
            "recall": 0.5,
            "f1": pytest.approx(4 / 7),
            "support": 4,
        },
        {"label": "positive", "precision": 1.0, "recall": 0.5, "f1": pytest.approx(2 / 3), "support": 2},
    ]
    no_positive = metrics.label_report([[3, 1, 0, 0], [1, 2, 0, 0], [0, 0, 0, 0]], WORDS)
    assert [(r["label"], r["precision"], r["recall"], r["support"]) for r in no_positive] == [
        ("negative", 0.75, 0.75, 4),
        ("neutral", pytest.approx(2 / 3), pytest.approx(2 / 3), 3),
        ("positive", 0.0, 0.0, 0),
    ]
    assert metrics.label_report([[0] * 4] * 3, WORDS) == [
        {"label": label, "precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0} for label in WORDS
    ]


def test_gold_values_outside_the_label_set_are_never_right():
    """Two different unknown gold values answered with no label word: both wrong (1 of 3 right)."""
    got = metrics.classification_metrics(["x", "y", "negative"], ["bullish", "bearish", "negative"], WORDS)
    assert got["accuracy"] == pytest.approx(1 / 3) and got["invalid_rate"] == pytest.approx(2 / 3)
    assert metrics.confusion_matrix(["negative"], ["bullish"], WORDS) == [[0, 0, 0, 0]] * 3
    counted = metrics.confusion_metrics(
        {"bullish": {None: 1}, "bearish": {None: 1}, "negative": {"negative": 1}}, WORDS
    )
    assert counted["accuracy"] == pytest.approx(1 / 3) and counted["invalid_rate"] == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match=r"^2 predictions for 1 references\.$"):
        metrics.classification_metrics(["a", "b"], ["a"], WORDS)


def test_compute_metrics_decodes_generated_ids_and_padded_labels(tokenizer):
    """Seq2SeqTrainer hands compute_metrics token ids: predictions padded with the pad token or -100 (gathered across
    processes), labels with -100; special tokens are not part of the answer."""
    from transformers import EvalPrediction

    def ids(words: list[str], width: int, pad: int) -> np.ndarray:
        rows = [tokenizer(text_target=word)["input_ids"] for word in words]
        return np.asarray([row + [pad] * (width - len(row)) for row in rows])

    answers = ["positive", "negative", "neutral", "positive"]
    references = ["positive", "neutral", "neutral", "negative"]
    predictions = ids(answers, 6, -100)
    predictions[1, -1] = tokenizer.pad_token_id
    compute_metrics = metrics.build_compute_metrics(tokenizer, WORDS)
    assert compute_metrics.last_answers is None
    got = compute_metrics(EvalPrediction(predictions=(predictions, None), label_ids=ids(references, 5, -100)))
    assert compute_metrics.last_answers == (answers, references)
    assert got["accuracy"] == 0.5 and got["invalid_rate"] == 0.0 and got["samples"] == 4
    assert got["f1_neutral"] == pytest.approx(2 / 3)  # P 1/1, R 1/2


def test_wilson_interval_against_hand_computed_values():
    """The 95 % Wilson interval (z = 1.959964): centre (p + z²/2n) / (1 + z²/n), half-width
    z / (1 + z²/n) * sqrt(p (1 - p) / n + z² / 4n²). By hand: 0 of 10 -> [0, z² / (n + z²)] = [0, 3.84146 / 13.84146];
    5 of 10 -> 0.5 -+ 1.41600 * sqrt(0.025 + 0.0096036) = 0.5 -+ 0.263406; 221 of 227 (the PEFT guide's 97.36 %)
    -> the roots of |p - 0.97357| = z sqrt(p (1 - p) / 227): 0.943544 and 0.987831, about +-2 points."""
    low, high = metrics.wilson_interval(0, 10)
    assert low == pytest.approx(0.0, abs=1e-12) and high == pytest.approx(0.277533, abs=1e-6)
    assert metrics.wilson_interval(5, 10) == pytest.approx((0.236594, 0.763406), abs=1e-6)
    assert metrics.wilson_interval(221, 227) == pytest.approx((0.943544, 0.987831), abs=1e-6)
    assert metrics.wilson_interval(10, 10)[1] == 1.0
    # Wider at 99 %, narrower with more sentences.
    assert metrics.wilson_interval(221, 227, confidence=0.99)[0] < 0.943544
    assert metrics.wilson_interval(2210, 2270)[0] > 0.943544
    for bad in ((11, 10), (-1, 10), (0, 0)):
        with pytest.raises(ValueError, match="wilson_interval needs"):
            metrics.wilson_interval(*bad)
