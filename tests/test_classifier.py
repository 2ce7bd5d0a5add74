"""The Python API (prefix_tuning_utils/classifier.py) answers exactly as `--do_predict` does.

Tiny seq2seq (T5) and decoder-only (Llama) models are trained in-process for a few steps with every
--tuning_method (and --prefix_scope all), each run also answering the first quickstart sentences with --do_predict;
`PrefixClassifier.from_pretrained` on the saved folder (or the loopback fake Hub) must give the same labels and
probabilities, in score and generate modes, batched or one by one.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from transformers import T5ForConditionalGeneration

from prefix_tuning_utils.answering import LabelScorer
from prefix_tuning_utils.arguments import ArgumentError
from prefix_tuning_utils.classifier import InputFormat, PrefixClassifier
from prefix_tuning_utils.run_files import TASK_SETTINGS_FILE
from tests.conftest import REPO
from tests.helpers import run_main


LABELS = ["negative", "neutral", "positive"]
QUICKSTART = REPO / "examples" / "quickstart.txt"
ROWS = 16  # quickstart sentences answered by --do_predict

# name: (base model fixture, extra training flags)
CASES = {
    "t5-prefix": ("tiny_t5_dir", ["--source_prefix", "sentiment : ", "--max_steps", "4"]),
    "t5-prefix-all": ("tiny_t5_dir", ["--prefix_scope", "all", "--max_steps", "4"]),
    "t5-prompt": ("tiny_t5_dir", ["--tuning_method", "prompt", "--max_steps", "4"]),
    "t5-lora": ("tiny_t5_dir", ["--tuning_method", "lora", "--max_steps", "4"]),
    # learns to write the label words, so generate mode answers with labels
    "t5-full": ("tiny_t5_dir", ["--tuning_method", "full", "--learning_rate", "4e-3", "--num_train_epochs", "2"]),
    "llama-prefix": ("tiny_llama_dir", ["--prompt_template", "Text: {text}\nLabel:", "--max_steps", "4"]),
    "llama-prompt": ("tiny_llama_dir", ["--tuning_method", "prompt", "--max_steps", "4"]),
    "llama-lora": ("tiny_llama_dir", ["--tuning_method", "lora", "--max_steps", "4"]),
    "llama-full": (
        "tiny_llama_dir",
        ["--tuning_method", "full", "--learning_rate", "1e-2", "--num_train_epochs", "3"],
    ),
}


def predict_argv(model, output_dir, mode):
    return [
        "--model_name_or_path", model, "--test_file", QUICKSTART, "--max_predict_samples", ROWS,
        "--output_dir", output_dir, "--do_predict", "--predict_mode", mode, "--report_to", "none",
        "--per_device_eval_batch_size", "16",
    ]  # fmt: skip


def read_rows(output_dir) -> list[dict]:
    with open(Path(output_dir) / "predictions.jsonl", encoding="utf-8") as handle:
        return [json.loads(line) for line in handle]


@pytest.fixture(scope="module")
def trained(request, tmp_path_factory):
    """Train each case once (lazily): returns {name: folder}, with `score/` and `generate/` predictions in it."""
    cache: dict[str, Path] = {}

    def get(name: str) -> Path:
        if name not in cache:
            base_fixture, extra = CASES[name]
            base = request.getfixturevalue(base_fixture)
            out = tmp_path_factory.mktemp(name)
            learning_rate = [] if "--learning_rate" in extra else ["--learning_rate", "1e-2"]
            run_main(
                ["--model_name_or_path", base, "--train_file", QUICKSTART, "--label_words", ",".join(LABELS),
                 "--output_dir", out / "model", "--do_train", "--per_device_train_batch_size", "8",
                 "--save_strategy", "no", "--report_to", "none", "--disable_tqdm", "true", "--seed", "0",
                 *learning_rate, *extra]
            )  # fmt: skip
            for mode in ("score", "generate"):  # --do_predict on the saved folder, as a user runs it
                run_main(predict_argv(out / "model", out / mode, mode))
            cache[name] = out
        return cache[name]

    return get


def assert_same_as_do_predict(classifier: PrefixClassifier, rows: list[dict], mode: str) -> None:
    texts = [row["text"] for row in rows]
    if mode == "score":
        answers = classifier(texts, top_k=None)
        assert [answer[0]["label"] for answer in answers] == [row["label"] for row in rows]
        got = torch.tensor(
            [[{a["label"]: a["score"] for a in answer}[label] for label in LABELS] for answer in answers]
        )
        expected = torch.tensor([[row["probabilities"][label] for label in LABELS] for row in rows])
        torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)
        assert all(sorted(a["score"] for a in answer)[::-1] == [a["score"] for a in answer] for answer in answers)
    else:
        answers = classifier(texts)
        assert [a["label"] for a in answers] == [row["label"] for row in rows]
        assert [a["answer"] for a in answers] == [row["answer"] for row in rows]


# Full fine-tuning trains for epochs, not 4 steps: its cases run with the slow tests (CI runs them all).
SLOW_CASES = {"t5-full", "llama-full"}


def case(name: str):
    return pytest.param(name, marks=pytest.mark.slow) if name in SLOW_CASES else name


@pytest.mark.parametrize("mode", ["score", "generate"])
@pytest.mark.parametrize("name", [case(name) for name in CASES])
def test_api_equals_do_predict_from_a_folder(trained, name, mode):
    out = trained(name)
    rows = read_rows(out / mode)
    assert len(rows) == ROWS
    classifier = PrefixClassifier.from_pretrained(str(out / "model"), mode=mode, device="cpu", batch_size=5)
    assert classifier.labels == LABELS
    assert classifier.task == ("seq2seq" if name.startswith("t5") else "causal")
    assert_same_as_do_predict(classifier, rows, mode)


def test_models_that_learnt_the_label_words_write_them(trained):
    """Generate mode is only checked for real where the model writes label words (else every label is None)."""
    for name in ("t5-full", "llama-full"):
        rows = read_rows(trained(name) / "generate")
        assert sum(row["label"] is not None for row in rows) >= ROWS // 2, (name, [row["answer"] for row in rows])


@pytest.mark.parametrize("name", ["t5-prefix", "llama-prefix"])
def test_api_equals_do_predict_from_the_fake_hub(trained, name, tmp_path, monkeypatch):
    from huggingface_hub import HfApi

    from tests.fake_hub import FakeHub

    out = trained(name)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
    with FakeHub(hub_cache=tmp_path / "hub_cache") as hub:
        api = HfApi(token="hf_test_x")
        api.create_repo("me/adapter")
        api.upload_folder(repo_id="me/adapter", folder_path=out / "model", ignore_patterns=["base_model/*"])
        for mode in ("score", "generate"):
            classifier = PrefixClassifier.from_pretrained(
                "me/adapter", mode=mode, device="cpu", cache_dir=str(tmp_path / "cache")
            )
            assert_same_as_do_predict(classifier, read_rows(out / mode), mode)
        assert hub.unhandled == [], [r.path for r in hub.unhandled]


@pytest.mark.parametrize("name", [case(name) for name in ("t5-prefix", "llama-prefix", "t5-full")])
def test_batched_equals_one_by_one(trained, name):
    texts = [row["text"] for row in read_rows(trained(name) / "score")][:12]
    for mode in ("score", "generate"):
        batched = PrefixClassifier.from_pretrained(str(trained(name) / "model"), mode=mode, batch_size=8)
        single = PrefixClassifier(batched.scorer, mode=mode, batch_size=1)
        together = batched(texts)
        alone = [single(text)[0] for text in texts]
        assert [a["label"] for a in together] == [a["label"] for a in alone]
        assert [a.get("answer") for a in together] == [a.get("answer") for a in alone]
        torch.testing.assert_close(
            torch.tensor([a["score"] for a in together]), torch.tensor([a["score"] for a in alone]), rtol=0, atol=1e-5
        )


def test_pipeline_shapes_and_top_k(trained):
    classifier = PrefixClassifier.from_pretrained(str(trained("t5-prefix") / "model"))
    texts = ["Acme Corp said its net sales rose 12 percent .", "Borealis Bank will publish its results on Tuesday ."]
    one = classifier(texts[0])
    assert isinstance(one, list) and len(one) == 1 and set(one[0]) == {"label", "score"}
    every = classifier(texts[0], top_k=None)
    assert [a["label"] for a in every] != [] and sorted(a["label"] for a in every) == LABELS
    assert sum(a["score"] for a in every) == pytest.approx(1.0, abs=1e-5)
    assert every[0]["label"] == one[0]["label"]
    assert [a["score"] for a in every] == sorted((a["score"] for a in every), reverse=True)
    assert classifier(texts[0], top_k=2) == every[:2]
    many = classifier(texts)
    assert isinstance(many, list) and len(many) == 2 and all(isinstance(a, dict) for a in many)
    assert many[0]["label"] == one[0]["label"]
    nested = classifier(texts, top_k=None)
    assert len(nested) == 2 and all(len(answer) == 3 for answer in nested)
    assert classifier(tuple(texts)) == many  # any sequence of strings


def test_generate_score_is_the_probability_of_the_sequence_the_model_wrote(trained):
    """Generate mode's score for a label answer equals what generate() itself reports for its greedy sequence."""
    classifier = PrefixClassifier.from_pretrained(str(trained("t5-full") / "model"), mode="generate")
    texts = [row["text"] for row in read_rows(trained("t5-full") / "generate")][:12]
    answers = classifier(texts)
    labelled = [(text, a) for text, a in zip(texts, answers) if a["label"] is not None]
    assert labelled, "the fully fine-tuned model should write some label words"
    model, tokenizer = classifier.model, classifier.tokenizer
    for text, answer in labelled:
        inputs = tokenizer([text], return_tensors="pt")
        out = model.generate(
            **inputs, max_new_tokens=8, do_sample=False, output_scores=True, return_dict_in_generate=True
        )
        transition = model.compute_transition_scores(out.sequences, out.scores, normalize_logits=True)
        assert answer["score"] == pytest.approx(float(transition[0].sum().exp()), rel=1e-4)
    # An answer that is no label word: the probability of writing none of them.
    unlabelled = PrefixClassifier.from_pretrained(str(trained("t5-prefix") / "model"), mode="generate")
    answers = unlabelled(texts)
    assert any(answer["label"] is None for answer in answers), [a["answer"] for a in answers]
    for text, answer in zip(texts, answers):
        if answer["label"] is None:
            written = torch.exp(unlabelled.scorer.log_scores([text]))[0]
            assert answer["score"] == pytest.approx(1.0 - float(written.sum()), abs=1e-6)


def test_bad_input_is_refused_with_a_clear_error(tiny_t5_dir, tokenizer):
    model = T5ForConditionalGeneration.from_pretrained(tiny_t5_dir)
    fmt = InputFormat.from_settings({}, "seq2seq")
    classifier = PrefixClassifier(LabelScorer(model, tokenizer, LABELS, fmt))
    assert classifier("fine")[0]["label"] in LABELS
    with pytest.raises(ValueError, match="got an empty list"):
        classifier([])
    with pytest.raises(TypeError, match="got int"):
        classifier(3)
    with pytest.raises(TypeError, match="Input 1 is a int, not a string"):
        classifier(["fine", 3])
    with pytest.raises(ValueError, match="Input 0 is empty"):
        classifier(["  "])
    with pytest.raises(ValueError, match="top_k must be a positive integer or None"):
        classifier("fine", top_k=0)
    with pytest.raises(ValueError, match="top_k applies to mode='score'"):
        PrefixClassifier(classifier.scorer, mode="generate")("fine", top_k=None)
    with pytest.raises(ValueError, match="batch_size must be a positive integer"):
        PrefixClassifier(classifier.scorer, batch_size=0)


def test_from_pretrained_refuses_what_it_cannot_use(tiny_t5_dir, tmp_path):
    with pytest.raises(ValueError, match="mode must be 'score' or 'generate'"):
        PrefixClassifier.from_pretrained(str(tiny_t5_dir), mode="rank")
    with pytest.raises(ArgumentError, match="not written by run_prefix_tuning.py"):
        PrefixClassifier.from_pretrained(str(tiny_t5_dir))
    with pytest.raises(ArgumentError, match="no such folder"):
        PrefixClassifier.from_pretrained(str(tmp_path / "missing" / "run"))
    full = tmp_path / "full"  # a complete model with its task settings, as --tuning_method full writes
    shutil.copytree(tiny_t5_dir, full)
    (full / TASK_SETTINGS_FILE).write_text(json.dumps({"format": 1, "task": "seq2seq", "label_words": LABELS}))
    assert PrefixClassifier.from_pretrained(str(full)).labels == LABELS
    with pytest.raises(ArgumentError, match="float16 makes t5 models overflow"):
        PrefixClassifier.from_pretrained(str(full), dtype=torch.float16)
    (full / TASK_SETTINGS_FILE).write_text(json.dumps({"format": 1, "task": "seq2seq"}))
    with pytest.raises(ArgumentError, match="pass label_words="):
        PrefixClassifier.from_pretrained(str(full))
    assert PrefixClassifier.from_pretrained(str(full), label_words=["no", "yes"]).labels == ["no", "yes"]


def test_dtype_is_applied(trained, monkeypatch):
    # bf16 needs a CPU with bf16 kernels (refused elsewhere: tests/test_precision.py); this one counts as such.
    monkeypatch.setattr("prefix_tuning_utils.precision.cpu_bf16_support", lambda: "native")
    classifier = PrefixClassifier.from_pretrained(str(trained("llama-prefix") / "model"), torch_dtype="bfloat16")
    assert classifier.model.get_base_model().dtype == torch.bfloat16
    answers = classifier("Acme Corp said its net sales rose 12 percent .", top_k=None)
    assert sum(a["score"] for a in answers) == pytest.approx(1.0, abs=1e-3)


# --- generate mode: what the model wrote, matched to a label word (case and spaces only) ---

# What the model writes -> the label it counts as: literals, with the model's output fixed by the test.
WRITTEN = [
    ("positive", "positive"),
    (" Positive ", "positive"),
    ("POSITIVE", "positive"),
    ("positive\n", "positive"),
    ("  NeGaTiVe", "negative"),
    ("neutral  ", "neutral"),
    ("posi tive", None),  # a space inside is another word
    ("positive.", None),
    ("positively", None),
    ("positive neutral", None),
    ("not positive", None),
    ("", None),
]


def test_generate_mode_matches_the_written_answer_to_a_label_word(tiny_t5_dir, tokenizer, monkeypatch):
    scorer = LabelScorer(
        T5ForConditionalGeneration.from_pretrained(tiny_t5_dir), tokenizer, LABELS, InputFormat("seq2seq")
    )
    texts = [f"Sentence number {i} ." for i in range(len(WRITTEN))]
    writes = {text: written for text, (written, _) in zip(texts, WRITTEN)}
    monkeypatch.setattr(scorer, "generate", lambda batch, **kwargs: [writes[text] for text in batch])
    answers = PrefixClassifier(scorer, mode="generate", batch_size=5)(texts)
    assert [(a["answer"], a["label"]) for a in answers] == WRITTEN
    # The score: the probability of writing exactly that label word (its label's), else of writing none of them.
    written = torch.exp(scorer.log_scores(texts))
    for answer, probabilities in zip(answers, written):
        expected = 1.0 - float(probabilities.sum())
        if answer["label"] is not None:
            expected = float(probabilities[LABELS.index(answer["label"])])
        assert answer["score"] == pytest.approx(expected, abs=1e-6)


def test_generate_mode_collapses_spaces_inside_a_label_of_several_words(tiny_t5_dir, tokenizer, monkeypatch):
    labels = ["very negative", "neutral", "very positive"]
    scorer = LabelScorer(
        T5ForConditionalGeneration.from_pretrained(tiny_t5_dir), tokenizer, labels, InputFormat("seq2seq")
    )
    written = ["very   positive", " Very\tNegative", "verypositive", "very positive ."]
    monkeypatch.setattr(scorer, "generate", lambda batch, **kwargs: written[: len(batch)])
    answers = PrefixClassifier(scorer, mode="generate")([f"Text {i} ." for i in range(len(written))])
    assert [a["label"] for a in answers] == ["very positive", "very negative", None, None]


def test_do_predict_generate_mode_counts_written_answers_as_labels(tiny_t5_dir, tmp_path, monkeypatch):
    """--do_predict --predict_mode generate with the model's answers fixed: labels, accuracy, invalid rate and the
    confusion matrix are hand counts."""
    rows = [  # text, gold, what the model writes, the label it counts as
        ("Acme profit rose .", "positive", " Positive ", "positive"),
        ("Acme sales fell .", "negative", "NEGATIVE", "negative"),
        ("Acme is flat .", "neutral", "neu tral", None),
        ("Borealis profit rose .", "positive", "positive.", None),
        ("Borealis sales fell .", "negative", "Neutral", "neutral"),
        ("Fjord is flat .", "neutral", "neutral\n", "neutral"),
    ]
    writes = {text: written for text, _, written, _ in rows}
    monkeypatch.setattr(LabelScorer, "generate", lambda self, batch, **kwargs: [writes[text] for text in batch])
    test_file = tmp_path / "news.txt"
    test_file.write_text("".join(f"{text}@{gold}\n" for text, gold, _, _ in rows), encoding="utf-8")
    out = tmp_path / "out"
    run_main(
        ["--model_name_or_path", tiny_t5_dir, "--label_words", ",".join(LABELS), "--test_file", test_file,
         "--output_dir", out, "--do_predict", "--predict_mode", "generate", "--report_to", "none",
         "--per_device_eval_batch_size", "4"]
    )  # fmt: skip
    assert [(r["line"], r["answer"], r["label"], r["gold"]) for r in read_rows(out)] == [
        (line, written, label, gold) for line, (_, gold, written, label) in enumerate(rows, start=1)
    ]
    results = json.loads((out / "predict_results.json").read_text())
    assert results["predict_accuracy"] == 0.5 and results["predict_invalid_rate"] == pytest.approx(2 / 6)
    assert results["predict_confusion_matrix"] == {
        "negative": {"negative": 1, "neutral": 1, "positive": 0, "(no label)": 0},
        "neutral": {"negative": 0, "neutral": 1, "positive": 0, "(no label)": 1},
        "positive": {"negative": 0, "neutral": 0, "positive": 1, "(no label)": 1},
    }
    # F1 by hand: negative P 1/1 R 1/2 -> 2/3; neutral P 1/2 R 1/2 -> 1/2; positive P 1/1 R 1/2 -> 2/3.
    assert results["predict_f1_negative"] == pytest.approx(2 / 3)
    assert results["predict_f1_neutral"] == pytest.approx(1 / 2)
    assert results["predict_macro_f1"] == pytest.approx((2 / 3 + 1 / 2 + 2 / 3) / 3)


@pytest.mark.gpu
def test_gpu_answers_equal_cpu(trained):
    folder = str(trained("t5-prefix") / "model")
    texts = [row["text"] for row in read_rows(trained("t5-prefix") / "score")]
    on_gpu = PrefixClassifier.from_pretrained(folder, device="cuda")
    assert on_gpu.device.type == "cuda"
    assert_same_as_do_predict(on_gpu, read_rows(trained("t5-prefix") / "score"), "score")
    assert len(on_gpu(texts)) == len(texts)
