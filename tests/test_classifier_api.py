"""`PrefixClassifier.__call__` (prefix_tuning_utils/classifier.py) around a scorer with fixed outputs: the
pipeline's shapes, batches, `top_k`, the checks of its input and `adapter=`, worked out by hand.

That the classifier answers as `--do_predict` does on real models is tests/test_classifier.py; routing texts to
their adapters in a real bank is tests/test_mixed_adapters.py.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from prefix_tuning_utils.classifier import PrefixClassifier
from tests.test_answers import FixedScorer


LABELS = ["negative", "neutral", "positive"]
# P(label) of each text; the softmax of their logs is the same distribution
PROBABILITIES = {
    "t0": [0.7, 0.2, 0.1],
    "t1": [0.1, 0.3, 0.6],
    "t2": [0.2, 0.5, 0.3],
    "t3": [0.6, 0.1, 0.3],
    "t4": [0.25, 0.25, 0.5],
}
BEST = {"t0": "negative", "t1": "positive", "t2": "neutral", "t3": "negative", "t4": "positive"}


def bank_of(*names: str):
    adapters = {name: SimpleNamespace(labels=tuple(LABELS)) for name in names}
    return SimpleNamespace(names=list(names), adapter=lambda name: adapters[name])


def test_the_pipelines_shapes_batches_and_top_k():
    scorer = FixedScorer(LABELS, PROBABILITIES)
    classifier = PrefixClassifier(scorer, batch_size=2)
    texts = ["t0", "t1", "t2", "t3", "t4"]
    answers = classifier(texts)
    assert [a["label"] for a in answers] == [BEST[t] for t in texts]
    assert [a["score"] for a in answers] == pytest.approx([0.7, 0.6, 0.5, 0.6, 0.5])
    assert [call[1] for call in scorer.calls] == [["t0", "t1"], ["t2", "t3"], ["t4"]]  # batches of 2, in order
    one = classifier("t1")
    assert len(one) == 1 and one[0]["label"] == "positive" and one[0]["score"] == pytest.approx(0.6)
    every = classifier("t2", top_k=None)
    assert [a["label"] for a in every] == ["neutral", "positive", "negative"]
    assert [a["score"] for a in every] == pytest.approx([0.5, 0.3, 0.2])
    two = classifier(["t0", "t3"], top_k=2)
    assert [[a["label"] for a in answer] for answer in two] == [["negative", "neutral"], ["negative", "positive"]]
    assert [[a["label"] for a in answer] for answer in classifier(("t4",), top_k=None)] == [
        ["positive", "negative", "neutral"]
    ]  # a tuple is a list of texts; ties keep the label order
    assert classifier(text for text in ["t0"])[0]["label"] == "negative"  # any iterable of strings
    assert classifier("t0", top_k=5) == classifier("t0", top_k=None)  # more than there are labels: all of them


@pytest.mark.parametrize("top_k", [0, -1, 1.0, True, "1"])
def test_top_k_must_be_a_positive_integer_or_none(top_k):
    classifier = PrefixClassifier(FixedScorer(LABELS, PROBABILITIES))
    with pytest.raises(ValueError) as error:
        classifier("t0", top_k=top_k)
    assert str(error.value) == f"top_k must be a positive integer or None (every label), got {top_k!r}."


def test_generate_mode_answers_with_top_k_one_only():
    scorer = FixedScorer(LABELS, PROBABILITIES, writes={"t0": "Negative", "t1": "bof"})
    classifier = PrefixClassifier(scorer, mode="generate", num_beams=2)
    assert classifier(["t0", "t1"]) == [
        {"label": "negative", "score": pytest.approx(0.7), "answer": "Negative"},
        {"label": None, "score": pytest.approx(0.0), "answer": "bof"},
    ]
    assert scorer.calls[0][3] == {"num_beams": 2}
    for top_k in (None, 2):
        with pytest.raises(ValueError, match=r"^top_k applies to mode='score'; in generate mode the model writes one"):
            classifier("t0", top_k=top_k)


@pytest.mark.parametrize(
    "inputs, error, message",
    [
        ([], ValueError, "Expected a string or a list of strings, got an empty list."),
        (3, TypeError, "Expected a string or a list of strings, got int."),
        (b"t0", TypeError, "Expected a string or a list of strings, got bytes."),
        ({"t0": 1}, TypeError, "Expected a string or a list of strings, got dict."),
        (["t0", 3], TypeError, "Input 1 is a int, not a string."),
        (["t0", " \t"], ValueError, "Input 1 is empty: there is nothing to classify."),
        ("", ValueError, "Input 0 is empty: there is nothing to classify."),
    ],
)
def test_bad_input_is_refused_before_the_model_runs(inputs, error, message):
    scorer = FixedScorer(LABELS, PROBABILITIES)
    with pytest.raises(error) as raised:
        PrefixClassifier(scorer)(inputs)
    assert str(raised.value) == message
    assert scorer.calls == []


def test_adapter_picks_each_texts_adapter_of_a_bank():
    scorer = FixedScorer(LABELS, PROBABILITIES, bank=bank_of("a", "b"))
    classifier = PrefixClassifier(scorer, batch_size=2)
    assert classifier.adapter_names == ["a", "b"]
    classifier(["t0", "t1", "t2"], adapter=["b", None, "a"])
    assert [call[2] for call in scorer.calls] == [["b", None], ["a"]]  # sliced with the batches; None: base model
    classifier(["t0", "t1", "t2"], adapter="a")
    assert [call[2] for call in scorer.calls[2:]] == [["a", "a"], ["a"]]
    refusals = [
        ({}, ValueError, "Name the adapter to answer with: adapter= one of a, b."),
        ({"adapter": ["a"]}, ValueError, "adapter= has 1 names for 2 texts: give one per text."),
        ({"adapter": ["a", "c"]}, ValueError, "Unknown adapter 'c' (text 1); this classifier has a, b."),
        ({"adapter": "c"}, ValueError, "Unknown adapter 'c' (text 0); this classifier has a, b."),
        ({"adapter": 3}, TypeError, "adapter must be a name or a list of names, got int."),
    ]
    for kwargs, error, message in refusals:
        with pytest.raises(error) as raised:
            classifier(["t0", "t1"], **kwargs)
        assert str(raised.value) == message
    assert len(scorer.calls) == 4


def test_a_bank_of_one_adapter_needs_no_name_and_a_model_alone_gets_no_rows():
    scorer = FixedScorer(LABELS, PROBABILITIES, bank=bank_of("only"))
    PrefixClassifier(scorer)(["t0", "t1"])
    assert scorer.calls[-1][2] == ["only", "only"]
    alone = FixedScorer(LABELS, PROBABILITIES)  # one model served under a name: it answers every row itself
    named = PrefixClassifier(alone, adapter_names=["solo"])
    assert named(["t0"], adapter="solo")[0]["label"] == "negative"
    assert alone.calls[-1][2] is None
    with pytest.raises(ValueError, match=r"^Unknown adapter None \(text 0\); this classifier has solo\.$"):
        named(["t0"], adapter=[None])  # no bank: no base model to answer with
    with pytest.raises(ValueError) as raised:
        PrefixClassifier(alone)("t0", adapter="solo")
    assert str(raised.value) == "adapter= applies to a classifier of several adapters (from_pretrained({name: ...}))."


@pytest.mark.parametrize("batch_size", [0, 2.0, None])
def test_batch_size_must_be_a_positive_integer(batch_size):
    with pytest.raises(ValueError) as error:
        PrefixClassifier(FixedScorer(LABELS, PROBABILITIES), batch_size=batch_size)
    assert str(error.value) == f"batch_size must be a positive integer, got {batch_size!r}."


def test_defaults_one_beam_and_batches_of_one_allowed():
    scorer = FixedScorer(LABELS, PROBABILITIES, writes={"t0": "neutral", "t1": "positive"})
    answers = PrefixClassifier(scorer, mode="generate", batch_size=1)(["t0", "t1"])
    assert [a["label"] for a in answers] == ["neutral", "positive"]
    assert [call[:2] for call in scorer.calls] == [
        ("generate", ["t0"]), ("log_scores", ["t0"]), ("generate", ["t1"]), ("log_scores", ["t1"])
    ]  # fmt: skip
    assert scorer.calls[0][3] == {"num_beams": 1}  # greedy unless asked: beams change the answers


def test_batch_methods_pass_each_rows_adapter_and_the_scoring_choice_on():
    scorer = FixedScorer(LABELS, PROBABILITIES, writes={"t0": "neutral"}, bank=bank_of("a", "b"))
    classifier = PrefixClassifier(scorer)
    ranked, log_scores = classifier.score_batch(["t0", "t1"], ["b", None])
    assert [answer[0]["label"] for answer in ranked] == ["negative", "positive"] and log_scores.shape == (2, 3)
    assert scorer.calls[-1] == ("log_scores", ["t0", "t1"], ["b", None])
    written = PrefixClassifier(scorer, mode="generate").answer_batch(["t0"], ["a"], with_scores=False)
    assert written == [[{"label": "neutral", "score": None, "answer": "neutral"}]]
    assert scorer.calls[-1][:3] == ("generate", ["t0"], ["a"])  # and no scoring pass after it
    alone = FixedScorer(LABELS, PROBABILITIES)
    PrefixClassifier(alone, adapter_names=["solo"]).score_batch(["t0"], ["solo"])
    assert alone.calls == [("log_scores", ["t0"], None)]  # a model alone answers every row itself


def test_every_name_after_a_base_model_row_is_checked():
    classifier = PrefixClassifier(FixedScorer(LABELS, PROBABILITIES, bank=bank_of("a", "b")))
    with pytest.raises(ValueError) as raised:
        classifier(["t0", "t1", "t2"], adapter=[None, "a", "c"])
    assert str(raised.value) == "Unknown adapter 'c' (text 2); this classifier has a, b."
