"""Many adapters of one base model in one batch: every row must be answered exactly as its adapter alone answers it.

Tiny T5 and Llama models (weights scaled up so that answers differ clearly) get several adapters each, saved as
`run_prefix_tuning.py` saves them (peft's files and `prefix_tuning.json`): prefix tuning with different
`--num_virtual_tokens`, `--prefix_scope all` (T5), prompt tuning. A batch mixes them in a seeded random order, with
rows for the base model too. The reference for each row is the adapter loaded alone, through peft
(`PrefixClassifier.from_pretrained(folder)`: peft's own forward and `generate`, one adapter active), or the bare base
model for a base row: it shares no code with the bank's per-row virtual tokens. Scores must agree within 1e-5 and
the generated text must be the same; and the adapters must really answer differently, so that a row given another
row's adapter would fail.
"""

from __future__ import annotations

import json
import random
import shutil

import pytest
import torch
from transformers import LlamaForCausalLM, T5ForConditionalGeneration

from prefix_tuning_utils.answering import LabelScorer
from prefix_tuning_utils.arguments import ArgumentError
from prefix_tuning_utils.classifier import PrefixClassifier
from prefix_tuning_utils.input_format import InputFormat
from tests.tiny_adapters import LABELS, save_adapter, save_base


TEXTS = [
    "Profit rose .",
    "Operating profit fell to EUR 1.2 mn from EUR 3.4 mn in the corresponding period of the previous year .",
    "Sales were flat .",
    "The company expects its net sales in 2008 to increase by 10 % from 2007 .",
    "Shares fell .",
    "Net sales decreased .",
    "The board proposes a dividend of EUR 0.50 a share .",
    "Orders grew strongly in the quarter .",
    "Costs went up .",
    "The deal is worth EUR 30 mn .",
]

# name: (kind, num_virtual_tokens, extra); `scope` "all" adds the encoder and cross-attention prefixes (T5 only)
ADAPTERS = {
    "seq2seq": {
        "p4": ("prefix", 4, {"source_prefix": "sentiment : "}),
        "p7": ("prefix", 7, {"max_source_length": 12}),
        "p2": ("prefix", 2, {}),
        "all5": ("prefix_all", 5, {}),
        "all3": ("prefix_all", 3, {"source_prefix": "classify : "}),
        "q3": ("prompt", 3, {}),
        "q6": ("prompt", 6, {"source_prefix": "sentiment : "}),
    },
    "causal": {
        "p4": ("prefix", 4, {"prompt_template": "Text : {text} Label :"}),
        "p7": ("prefix", 7, {}),
        "p2": ("prefix", 2, {"max_source_length": 10}),
        "q3": ("prompt", 3, {}),
        "q5": ("prompt", 5, {"prompt_template": "Review : {text} Sentiment :"}),
    },
}
# Which adapters each case mixes; None in a case's list stands for rows of the base model.
CASES = {
    "prefix": ["p4", "p2"],
    "prefix_lengths": ["p4", "p7", "p2"],
    "prefix_all": ["all5", "all3", "p4"],
    "prompt": ["q3", "q6"],
    "base_rows": ["p4", None],
    "everything": ["p4", "p7", "all5", "all3", "q3", "q6", "p2", None],
}
CAUSAL_CASES = {
    "prefix": ["p4", "p2"],
    "prefix_lengths": ["p4", "p7", "p2"],
    "prompt": ["q3", "q5"],
    "base_rows": ["p7", None],
    "everything": ["p4", "p7", "p2", "q3", "q5", None],
}


@pytest.fixture(scope="module")
def adapters(tmp_path_factory, tokenizer, tokenizer_dir):
    """{task: {name: folder}} of saved adapters, and the base folders."""
    folders = {}
    for task in ("seq2seq", "causal"):
        base_dir = save_base(task, tmp_path_factory.mktemp(f"base-{task}"), tokenizer, tokenizer_dir)
        folders[task] = {"__base__": base_dir}
        for name, (kind, virtual, fmt) in ADAPTERS[task].items():
            out = tmp_path_factory.mktemp(f"{task}-{name}")
            save_adapter(base_dir, task, name, kind, virtual, fmt, out)
            folders[task][name] = out
    return folders


def _alone(folders, task: str, name: str | None, mode: str) -> PrefixClassifier:
    """The reference for one row: the adapter alone through peft, or the bare base model."""
    if name is not None:
        return PrefixClassifier.from_pretrained(str(folders[task][name]), mode=mode, device="cpu")
    model_class = T5ForConditionalGeneration if task == "seq2seq" else LlamaForCausalLM
    base = model_class.from_pretrained(folders[task]["__base__"]).eval()
    classifier = PrefixClassifier.from_pretrained(str(folders[task][next(iter(ADAPTERS[task]))]), mode=mode)
    scorer = LabelScorer(base, classifier.tokenizer, LABELS, InputFormat(task))
    return PrefixClassifier(scorer, mode=mode)


def _mix(names: list[str | None], seed: int) -> list[str | None]:
    """Every name at least once, the rest drawn at random (seeded), in a random order that reads differently
    backwards (so that rows handed each other's adapters in reverse could not pass)."""
    rng = random.Random(seed)
    rows = names + [rng.choice(names) for _ in range(len(TEXTS) - len(names))]
    rng.shuffle(rows)
    while rows == rows[::-1]:
        rng.shuffle(rows)
    return rows


def _check_mixed_batch(adapters, task: str, names: list[str | None], seed: int) -> None:
    mix = _mix(names, seed)
    sources = {name: str(adapters[task][name]) for name in names if name is not None}
    bank = PrefixClassifier.from_pretrained(sources, mode="generate", device="cpu")
    references = {name: _alone(adapters, task, name, "generate") for name in set(mix)}

    got_scores = bank.scorer.log_scores(TEXTS, mix)
    got_text = bank.scorer.generate(TEXTS, mix, max_new_tokens=6)
    for row, (text, name) in enumerate(zip(TEXTS, mix)):
        reference = references[name]
        expected = reference.scorer.log_scores([text])[0]
        torch.testing.assert_close(got_scores[row], expected, rtol=0, atol=1e-5, msg=f"row {row} ({name})")
        assert got_text[row] == reference.scorer.generate([text], max_new_tokens=6)[0], f"row {row} ({name})"
        # beams keep each row with its adapter too
    beams = bank.scorer.generate(TEXTS, mix, max_new_tokens=6, num_beams=3)
    for row, (text, name) in enumerate(zip(TEXTS, mix)):
        assert beams[row] == references[name].scorer.generate([text], max_new_tokens=6, num_beams=3)[0], row

    # The check means something: the adapters answer the same text differently, so a row read with another row's
    # adapter would not pass.
    distinct = [name for name in dict.fromkeys(mix)]
    for text in TEXTS[:3]:
        scores = [references[name].scorer.log_scores([text])[0] for name in distinct]
        for i in range(len(scores)):
            for j in range(i + 1, len(scores)):
                assert (scores[i] - scores[j]).abs().max() > 1e-2, (text, distinct[i], distinct[j])


def _cases(cases: dict) -> list:
    """Every kind on its own is a slow test; the batch that mixes them all runs in the default suite."""
    return [case if case == "everything" else pytest.param(case, marks=pytest.mark.slow) for case in cases]


@pytest.mark.parametrize("case", _cases(CASES))
def test_seq2seq_mixed_batch_answers_each_row_as_its_adapter_alone(adapters, case):
    _check_mixed_batch(adapters, "seq2seq", CASES[case], seed=len(case))


@pytest.mark.parametrize("case", _cases(CAUSAL_CASES))
def test_causal_mixed_batch_answers_each_row_as_its_adapter_alone(adapters, case):
    _check_mixed_batch(adapters, "causal", CAUSAL_CASES[case], seed=len(case))


def test_classifier_call_routes_texts_to_their_adapters(adapters):
    task = "seq2seq"
    names = ["p4", "q3"]
    classify = PrefixClassifier.from_pretrained({name: str(adapters[task][name]) for name in names})
    assert classify.adapter_names == names
    mix = ["q3", "p4", "p4", "p4"]
    got = classify(TEXTS[:4], adapter=mix, top_k=None)
    for text, name, ranked in zip(TEXTS[:4], mix, got):
        alone = _alone(adapters, task, name, "score")(text, top_k=None)
        assert [item["label"] for item in ranked] == [item["label"] for item in alone]
        for a, b in zip(ranked, alone):
            assert a["score"] == pytest.approx(b["score"], abs=1e-5)
    one = classify(TEXTS[0], adapter="q3")
    assert one[0]["label"] == got[0][0]["label"]
    with pytest.raises(ValueError, match="Name the adapter to answer with: adapter= one of p4, q3"):
        classify(TEXTS[0])
    with pytest.raises(ValueError, match="Unknown adapter 'acme' \\(text 0\\); this classifier has p4, q3"):
        classify(TEXTS[0], adapter="acme")
    with pytest.raises(ValueError, match="adapter= has 1 names for 2 texts"):
        classify(TEXTS[:2], adapter=["p4"])


def test_a_bank_refuses_what_it_cannot_mix(adapters, tmp_path, tiny_t5_dir):
    seq2seq = adapters["seq2seq"]
    # Label words that differ: refused in score mode (one set of labels is ranked), fine in generate mode.
    other = tmp_path / "other-labels"
    shutil.copytree(seq2seq["p2"], other)
    settings = json.loads((other / "prefix_tuning.json").read_text())
    settings["label_words"] = ["down", "flat", "up"]
    (other / "prefix_tuning.json").write_text(json.dumps(settings))
    with pytest.raises(ArgumentError, match="Adapter 'other' answers with the label words down, flat, up"):
        PrefixClassifier.from_pretrained({"p4": str(seq2seq["p4"]), "other": str(other)})
    mixed = PrefixClassifier.from_pretrained({"p4": str(seq2seq["p4"]), "other": str(other)}, mode="generate")
    assert mixed.labels == LABELS + ["down", "flat", "up"]
    # label_words= cannot rename the words an adapter was saved with (they would be ignored): refused, naming it.
    with pytest.raises(ArgumentError, match="adapter 'other' .* answers with its own: down, flat, up. Leave label_"):
        PrefixClassifier.from_pretrained({"p4": str(seq2seq["p4"]), "other": str(other)}, label_words=LABELS)
    same = PrefixClassifier.from_pretrained({"p4": str(seq2seq["p4"]), "p2": str(seq2seq["p2"])}, label_words=LABELS)
    assert same.labels == LABELS
    # Saved without label words: label_words= gives them (and without it, the adapter is refused by name).
    bare = tmp_path / "bare"
    shutil.copytree(seq2seq["p2"], bare)
    settings.pop("label_words")
    (bare / "prefix_tuning.json").write_text(json.dumps(settings))
    with pytest.raises(
        ArgumentError,
        match="Adapter 'bare' .* has no prefix_tuning.json with its label words: it was "
        "not written by run_prefix_tuning.py.$",
    ):
        PrefixClassifier.from_pretrained({"p4": str(seq2seq["p4"]), "bare": str(bare)})
    given = PrefixClassifier.from_pretrained({"p4": str(seq2seq["p4"]), "bare": str(bare)}, label_words=LABELS)
    assert given.bank.adapter("bare").labels == tuple(LABELS)
    # Another base model: named, with both bases.
    with pytest.raises(ArgumentError, match="Adapter 'llama' .* was trained on .*base-causal"):
        PrefixClassifier.from_pretrained({"p4": str(seq2seq["p4"]), "llama": str(adapters["causal"]["p4"])})
    # A copy of the base folder with the same weights is the same base (compared by the weights' digest).
    copy = tmp_path / "base-copy"
    shutil.copytree(seq2seq["__base__"], copy)
    moved = tmp_path / "moved"
    shutil.copytree(seq2seq["p2"], moved)
    config = json.loads((moved / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = str(copy)
    (moved / "adapter_config.json").write_text(json.dumps(config))
    assert PrefixClassifier.from_pretrained({"p4": str(seq2seq["p4"]), "moved": str(moved)}).adapter_names == [
        "p4",
        "moved",
    ]
    # A full fine-tuned model cannot share a batch: refused by name; served alone it works.
    full = tmp_path / "full"
    shutil.copytree(tiny_t5_dir, full)
    (full / "prefix_tuning.json").write_text(json.dumps({"format": 1, "task": "seq2seq", "label_words": LABELS}))
    with pytest.raises(ArgumentError, match="Adapter 'full' .* is a fully fine-tuned model, which changes"):
        PrefixClassifier.from_pretrained({"p4": str(seq2seq["p4"]), "full": str(full)})
    alone = PrefixClassifier.from_pretrained({"full": str(full)})
    assert alone.adapter_names == ["full"] and alone.bank is None
    assert alone(TEXTS[0], adapter="full")[0]["label"] in LABELS


WEIGHTS = ("adapter_config.json", "adapter_model.safetensors")


def test_adapters_from_the_hub_with_a_revision(adapters, tmp_path, monkeypatch):
    """`org/name@revision` loads that revision: three adapters from one Hub repo (main and two branches) answer as the
    local copies they were uploaded from."""
    from huggingface_hub import HfApi

    from tests.fake_hub import FakeHub

    seq2seq = adapters["seq2seq"]
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
    with FakeHub(hub_cache=tmp_path / "hub_cache") as hub:
        api = HfApi(token="hf_test_x")
        api.create_repo("me/sentiment")
        api.upload_folder(repo_id="me/sentiment", folder_path=seq2seq["p4"])
        api.create_branch("me/sentiment", branch="v2")
        api.upload_folder(repo_id="me/sentiment", folder_path=seq2seq["q6"], revision="v2")
        api.create_branch("me/sentiment", branch="v3")  # --prefix_scope all: a third file, on this branch only
        api.upload_folder(repo_id="me/sentiment", folder_path=seq2seq["all5"], revision="v3")
        sources = {"main": "me/sentiment", "v2": "me/sentiment@v2", "v3": "me/sentiment@v3"}
        before = len(hub.requests)
        bank = PrefixClassifier.from_pretrained(
            sources, device="cpu", cache_dir=str(tmp_path / "cache"), token="hf_bank_token"
        )
        assert [bank.bank.adapter(name).kind for name in sources] == ["prefix", "prompt", "prefix"]
        assert [bank.bank.adapter(name).revision for name in sources] == ["main", "v2", "v3"]
        assert bank.bank.adapter("v3").prefix_scope == "all"
        mix = ["v2", "main", "v3", "v2", "main"]
        got = bank.scorer.log_scores(TEXTS[:5], mix)
        assert hub.unhandled == [], [r.path for r in hub.unhandled]
        # Every file came with the token given, into the cache_dir given: both adapters' config and weights.
        downloads = [r for r in hub.requests[before:] if "/resolve/" in r.path]
        assert {r.headers["Authorization"] for r in downloads} == {"Bearer hf_bank_token"}
        for revision, name in [(revision, name) for revision in ("main", "v2", "v3") for name in WEIGHTS] + [
            ("v3", "all_layer_prefix.safetensors")
        ]:
            assert any(r.path.endswith(f"/resolve/{revision}/{name}") for r in downloads), (revision, name)
        cached = sorted(
            path.name for path in (tmp_path / "cache").rglob("*") if path.is_file() and "snapshots" in str(path)
        )
        assert cached.count("adapter_model.safetensors") == 3 and cached.count("adapter_config.json") == 3, cached
    local = {"main": _alone(adapters, "seq2seq", "p4", "score"), "v2": _alone(adapters, "seq2seq", "q6", "score"),
             "v3": _alone(adapters, "seq2seq", "all5", "score")}  # fmt: skip
    for row, (text, name) in enumerate(zip(TEXTS[:5], mix)):
        torch.testing.assert_close(got[row], local[name].scorer.log_scores([text])[0], rtol=0, atol=1e-5)
