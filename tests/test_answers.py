"""From label scores (or a written answer) to answers: `Answerer` (prefix_tuning_utils/answering/answers.py).

The model side is fixed here: a scorer whose log-scores and written answers are literals, so every probability,
ranking and label below is worked out by hand. The model side itself is tested against one forward per label in
tests/test_scoring.py and tests/test_mixed_adapters.py.
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from prefix_tuning_utils.answering import Answerer


LABELS = ["negative", "neutral", "positive"]


class FixedScorer:
    """The scorer's interface with fixed outputs: `probabilities[text]` (P of writing each label word) and
    `writes[text]`; records the calls."""

    def __init__(self, labels, probabilities: dict, writes: dict | None = None, bank=None):
        self.labels, self.bank = labels, bank
        self.probabilities, self.writes = probabilities, writes or {}
        self.calls: list[tuple] = []

    def log_scores(self, texts, adapters=None):
        self.calls.append(("log_scores", list(texts), adapters))
        return torch.tensor([[math.log(p) for p in self.probabilities[text]] for text in texts])

    def generate(self, texts, adapters=None, **kwargs):
        self.calls.append(("generate", list(texts), adapters, kwargs))
        return [self.writes[text] for text in texts]


def test_score_mode_ranks_the_labels_by_their_probability():
    # log-scores of 0.1, 0.6, 0.3 and of 0.02, 0.01, 0.01 (the softmax makes the second 0.5, 0.25, 0.25)
    scorer = FixedScorer(LABELS, {"a": [0.1, 0.6, 0.3], "b": [0.02, 0.01, 0.01]})
    ranked, log_scores = Answerer(scorer).score_batch(["a", "b"], adapters=["x", None])
    assert [[item["label"] for item in answer] for answer in ranked] == [
        ["neutral", "positive", "negative"],
        ["negative", "neutral", "positive"],  # a tie keeps the label order
    ]
    assert [[item["score"] for item in answer] for answer in ranked] == [
        pytest.approx([0.6, 0.3, 0.1]),
        pytest.approx([0.5, 0.25, 0.25]),
    ]
    torch.testing.assert_close(log_scores, torch.tensor([[math.log(0.1), math.log(0.6), math.log(0.3)],
                                                         [math.log(0.02), math.log(0.01), math.log(0.01)]]))  # fmt: skip
    assert scorer.calls == [("log_scores", ["a", "b"], ["x", None])]
    assert Answerer(scorer).answer_batch(["a"], adapters=["y"]) == [
        [{"label": "neutral", "score": pytest.approx(0.6)}, {"label": "positive", "score": pytest.approx(0.3)},
         {"label": "negative", "score": pytest.approx(0.1)}]
    ]  # fmt: skip
    assert scorer.calls[-1] == ("log_scores", ["a"], ["y"])  # the row's adapter reaches the scorer


def test_generate_mode_answers_with_the_label_written_and_its_probability():
    probabilities = {"a": [0.1, 0.2, 0.3], "b": [0.1, 0.2, 0.3], "c": [0.1, 0.2, 0.3], "d": [0.5, 0.4, 0.3]}
    writes = {"a": " Positive ", "b": "positive!", "c": "NEUTRAL", "d": "maybe"}
    scorer = FixedScorer(LABELS, probabilities, writes)
    answers = Answerer(scorer, mode="generate", num_beams=3).answer_batch(["a", "b", "c", "d"], adapters=None)
    assert answers == [
        [{"label": "positive", "score": pytest.approx(0.3), "answer": " Positive "}],
        [{"label": None, "score": pytest.approx(0.4), "answer": "positive!"}],  # 1 - (0.1 + 0.2 + 0.3)
        [{"label": "neutral", "score": pytest.approx(0.2), "answer": "NEUTRAL"}],
        [{"label": None, "score": 0.0, "answer": "maybe"}],  # 1 - 1.2: rounding can only make it 0, never negative
    ]
    assert scorer.calls == [
        ("generate", ["a", "b", "c", "d"], None, {"num_beams": 3}),
        ("log_scores", ["a", "b", "c", "d"], None),
    ]


def test_generate_mode_without_scores_runs_no_scoring_pass():
    scorer = FixedScorer(LABELS, {}, {"a": "negative", "b": "no idea"})
    answers = Answerer(scorer, mode="generate").answer_batch(["a", "b"], with_scores=False)
    assert answers == [
        [{"label": "negative", "score": None, "answer": "negative"}],
        [{"label": None, "score": None, "answer": "no idea"}],
    ]
    assert [call[0] for call in scorer.calls] == ["generate"]
    assert scorer.calls[0][3] == {"num_beams": 1}


def test_generate_mode_matches_each_row_to_its_own_adapters_label_words():
    """A bank's rows: the scorer scores the union of the adapters' label words; a row counts only its adapter's."""
    adapters = {"sentiment": SimpleNamespace(labels=("negative", "positive")), "grade": SimpleNamespace(labels=("bad", "good"))}  # fmt: skip
    bank = SimpleNamespace(adapter=lambda name: adapters[name])
    labels = ["negative", "positive", "bad", "good"]
    probabilities = {text: [0.1, 0.2, 0.3, 0.15] for text in "abcd"}
    writes = {"a": "good", "b": "good", "c": "Positive", "d": "good"}
    scorer = FixedScorer(labels, probabilities, writes, bank=bank)
    answers = Answerer(scorer, mode="generate").answer_batch(
        ["a", "b", "c", "d"], ["sentiment", "grade", "grade", None]
    )
    assert [(a[0]["label"], a[0]["score"]) for a in answers] == [
        (None, pytest.approx(0.7)),  # "good" is no label word of this adapter: 1 - (0.1 + 0.2)
        ("good", pytest.approx(0.15)),
        (None, pytest.approx(0.55)),  # 1 - (0.3 + 0.15)
        ("good", pytest.approx(0.15)),  # the base model (None): every label word of the scorer
    ]
    assert scorer.calls == [
        ("generate", ["a", "b", "c", "d"], ["sentiment", "grade", "grade", None], {"num_beams": 1}),
        ("log_scores", ["a", "b", "c", "d"], ["sentiment", "grade", "grade", None]),
    ]  # every row written and scored by its own adapter
    # A bank's scorer without adapters= (every row the base model): the scorer's label words
    answers = Answerer(scorer, mode="generate").answer_batch(["a", "c"], with_scores=False)
    assert [a[0]["label"] for a in answers] == ["good", "positive"]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"mode": "rank"}, "mode must be 'score' or 'generate', got 'rank'."),
        ({"num_beams": 0}, "num_beams must be a positive integer, got 0."),
        ({"num_beams": 2.0}, "num_beams must be a positive integer, got 2.0."),
    ],
)
def test_an_answerer_refuses_what_it_cannot_do(kwargs, message):
    with pytest.raises(ValueError) as error:
        Answerer(FixedScorer(LABELS, {}), **kwargs)
    assert str(error.value) == message
    assert Answerer(FixedScorer(LABELS, {}), mode="generate", num_beams=1).labels == LABELS
