"""Batch prediction (`--do_predict`): scores, input formats, bad rows, resuming after kill -9, several processes.

Two tiny T5 models are trained once for the module, in-process, on examples/quickstart.txt: a fully fine-tuned one,
which learns the label words well enough to write one for every sentence (so `score` and `generate` can be
compared), and a prefix adapter trained for a few steps (to load it the way users do: a folder or a Hub id).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from peft import LoraConfig, PrefixTuningConfig, PromptTuningConfig, TaskType, get_peft_model
from transformers import AutoTokenizer, T5ForConditionalGeneration

from prefix_tuning_utils import cli
from prefix_tuning_utils.answering import LabelScorer
from prefix_tuning_utils.arguments import ArgumentError, DataTrainingArguments
from prefix_tuning_utils.input_format import InputFormat
from prefix_tuning_utils.metrics import classification_metrics, confusion_metrics
from prefix_tuning_utils.predict import changed_settings
from prefix_tuning_utils.readers import InputReader
from prefix_tuning_utils.run_files import TASK_SETTINGS_FILE
from tests.conftest import REPO, tiny_t5_config
from tests.helpers import run_main


LABELS = ["negative", "neutral", "positive"]
QUICKSTART = REPO / "examples" / "quickstart.txt"
COMPANIES = ["Delta Freight", "Borealis Bank", "Acme Corp", "Fjord Telecom"]


def train_quickstart(output_dir, *extra):
    """The quickstart recipe, with its relative paths made absolute (module fixtures cannot change directory)."""
    return run_main(
        [REPO / "recipes" / "quickstart.yaml", "--model_name_or_path", REPO / "examples" / "tiny-t5",
         "--train_file", QUICKSTART, "--output_dir", output_dir, "--do_eval", "false", "--eval_strategy", "no", *extra]
    )  # fmt: skip


def predict_argv(model, test_file, output_dir, *extra):
    return [
        "--model_name_or_path", model, "--test_file", test_file, "--output_dir", output_dir,
        "--do_predict", "--report_to", "none", "--per_device_eval_batch_size", "16", *extra,
    ]  # fmt: skip


def read_rows(output_dir) -> list[dict]:
    with open(Path(output_dir) / "predictions.jsonl", encoding="utf-8") as handle:
        return [json.loads(line) for line in handle]


def quickstart_rows() -> list[tuple[str, str]]:
    lines = QUICKSTART.read_text(encoding="iso-8859-1").splitlines()
    return [(text.strip(), label.strip()) for text, _, label in (line.rpartition("@") for line in lines)]


@pytest.fixture(scope="module")
def full_model_dir(tmp_path_factory) -> Path:
    """The tiny T5, fully fine-tuned for 2 epochs: a model folder with prefix_tuning.json, no adapter."""
    out = tmp_path_factory.mktemp("full")
    train_quickstart(out, "--tuning_method", "full", "--learning_rate", "4e-3", "--num_train_epochs", "2")
    return out


@pytest.fixture(scope="module")
def prefix_adapter(tmp_path_factory):
    """A prefix adapter trained for a few steps with a --source_prefix, predicting the quickstart sentences in the
    same run; returns (folder, trained model in memory)."""
    out = tmp_path_factory.mktemp("adapter")
    trainer = train_quickstart(
        out, "--max_steps", "4", "--source_prefix", "sentiment : ", "--do_predict", "--test_file", QUICKSTART
    )
    return out, trainer.model.eval()


# --- acceptance 1: score mode gives a distribution whose argmax is the label, and agrees with generation ---


def test_score_mode_argmax_probabilities_and_agreement_with_generate(full_model_dir, tmp_path):
    run_main(predict_argv(full_model_dir, QUICKSTART, tmp_path / "score", "--predictions_csv"))
    run_main(predict_argv(full_model_dir, QUICKSTART, tmp_path / "generate", "--predict_mode", "generate"))
    scored, generated = read_rows(tmp_path / "score"), read_rows(tmp_path / "generate")
    expected = quickstart_rows()
    assert [row["line"] for row in scored] == [row["line"] for row in generated] == list(range(1, 163))
    assert [(row["text"], row["gold"]) for row in scored] == expected

    for row in scored:
        probabilities = [row["probabilities"][label] for label in LABELS]
        assert sum(probabilities) == pytest.approx(1.0, abs=1e-5)
        assert row["label"] == LABELS[max(range(len(LABELS)), key=probabilities.__getitem__)]

    # Rank classification adds the end-of-sequence token's log-probability to the label word's, greedy generation
    # only looks at the first token; on a model that has learnt to write the label words they must agree.
    writes_label = [(s, g) for s, g in zip(scored, generated) if g["answer"] in LABELS]
    assert len(writes_label) >= 0.9 * len(scored), f"only {len(writes_label)} answers are label words"
    disagree = [(g["line"], s["label"], g["answer"]) for s, g in writes_label if s["label"] != g["answer"]]
    assert not disagree, disagree
    assert all(g["label"] == (g["answer"] if g["answer"] in LABELS else None) for g in generated)

    results = json.loads((tmp_path / "score" / "predict_results.json").read_text())
    reference = classification_metrics([r["label"] for r in scored], [r["gold"] for r in scored], LABELS)
    assert results["predict_accuracy"] == pytest.approx(reference["accuracy"])
    assert results["predict_macro_f1"] == pytest.approx(reference["macro_f1"])
    assert results["predict_rows"] == results["predict_labelled_rows"] == 162
    matrix = results["predict_confusion_matrix"]
    assert sum(sum(row.values()) for row in matrix.values()) == 162
    assert all(matrix[g][p] == sum(r["gold"] == g and r["label"] == p for r in scored) for g in LABELS for p in LABELS)
    assert (tmp_path / "score" / "predict_confusion_matrix.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    csv_lines = (tmp_path / "score" / "predictions.csv").read_text(encoding="utf-8").splitlines()
    assert csv_lines[0] == "line,text,label,gold,p_negative,p_neutral,p_positive" and len(csv_lines) == 163
    generate_results = json.loads((tmp_path / "generate" / "predict_results.json").read_text())
    assert "(no label)" in generate_results["predict_confusion_matrix"]["neutral"]


def test_confusion_metrics_match_classification_metrics():
    predictions = ["negative", "neutral", "nonsense", "positive", "neutral", "negative"]
    references = ["negative", "positive", "neutral", "positive", "neutral", "neutral"]
    confusion = {gold: {p: 0 for p in LABELS + [None]} for gold in LABELS}
    for p, r in zip(predictions, references):
        confusion[r][p if p in LABELS else None] += 1
    assert confusion_metrics(confusion, LABELS) == pytest.approx(
        classification_metrics(predictions, references, LABELS)
    )


# --- the fast path: a seq2seq encoder runs once per batch, not once per label ---


def one_forward_per_label(model, scorer: LabelScorer, texts: list[str]) -> torch.Tensor:
    """The original rank classification: the whole model, with `labels=`, once per label."""
    batch = scorer._encode(texts)
    scores = []
    with torch.no_grad():
        for answer in scorer.answers:
            labels = torch.tensor([answer] * len(texts))
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=labels).logits
            log_probs = torch.log_softmax(logits.float(), dim=-1)
            scores.append(log_probs.gather(-1, labels.unsqueeze(-1)).squeeze(-1).sum(dim=1))
    return torch.stack(scores, dim=1)


@pytest.mark.parametrize("method", ["none", "prefix", "lora", "prompt"])
def test_label_scores_equal_one_forward_per_label(tokenizer, method):
    """The cached scorer (one pass over the input, every label continued from its cache) against the original rank
    classification; equal within 1e-5 (the float sums run in another order, so not bit for bit)."""
    torch.manual_seed(0)
    model = T5ForConditionalGeneration(tiny_t5_config(len(tokenizer)))
    if method != "none":
        config = {
            "prefix": PrefixTuningConfig(task_type=TaskType.SEQ_2_SEQ_LM, num_virtual_tokens=4, num_layers=2,
                                         token_dim=32, num_attention_heads=4),
            "lora": LoraConfig(task_type=TaskType.SEQ_2_SEQ_LM, r=4, init_lora_weights=False),
            "prompt": PromptTuningConfig(task_type=TaskType.SEQ_2_SEQ_LM, num_virtual_tokens=4),
        }[method]  # fmt: skip
        model = get_peft_model(model, config)
    model.eval()
    scorer = LabelScorer(
        model, tokenizer, LABELS, InputFormat.from_args(DataTrainingArguments(test_file=str(QUICKSTART)), "seq2seq")
    )
    texts = [text for text, _ in quickstart_rows()[:24]]
    torch.testing.assert_close(
        scorer.log_scores(texts), one_forward_per_label(model, scorer, texts), rtol=0, atol=1e-5
    )


# --- loading: an adapter folder or Hub id, with the label words and input format saved next to it ---


def test_adapter_folder_predicts_with_its_saved_labels_and_source_prefix(prefix_adapter, tmp_path):
    adapter_dir, model = prefix_adapter
    settings = json.loads((adapter_dir / TASK_SETTINGS_FILE).read_text())
    assert settings["label_words"] == LABELS and settings["source_prefix"] == "sentiment : "
    run_main(predict_argv(adapter_dir, QUICKSTART, tmp_path / "out"))  # no --label_words, no --source_prefix
    rows = read_rows(tmp_path / "out")

    tokenizer = AutoTokenizer.from_pretrained(adapter_dir)
    texts = [row["text"] for row in rows]
    with_prefix = DataTrainingArguments(test_file=str(QUICKSTART), source_prefix="sentiment : ")
    expected = LabelScorer(model, tokenizer, LABELS, InputFormat.from_args(with_prefix, "seq2seq")).probabilities(
        texts
    )
    got = torch.tensor([[row["probabilities"][label] for label in LABELS] for row in rows])
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)
    in_training_run = read_rows(adapter_dir)  # --do_train --do_predict: the model in memory, right after training
    assert [(r["line"], r["label"]) for r in in_training_run] == [(r["line"], r["label"]) for r in rows]
    without = LabelScorer(
        model, tokenizer, LABELS, InputFormat.from_args(DataTrainingArguments(test_file=str(QUICKSTART)), "seq2seq")
    )
    assert not torch.allclose(got, without.probabilities(texts), atol=1e-5), "the saved source_prefix was not used"

    # Predictions written into the model's own folder: the second run finds them complete (results and state files
    # written there do not count as a changed model).
    own = tmp_path / "own"
    shutil.copytree(adapter_dir, own, ignore=shutil.ignore_patterns("predict*"))
    run_main(predict_argv(own, QUICKSTART, own))
    run_main(predict_argv(own, QUICKSTART, own))
    assert read_rows(own) == rows


def test_adapter_from_a_hub_id(prefix_adapter, tmp_path, monkeypatch):
    from huggingface_hub import HfApi

    from tests.fake_hub import FakeHub

    adapter_dir, _ = prefix_adapter
    run_main(predict_argv(adapter_dir, QUICKSTART, tmp_path / "folder"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
    with FakeHub(hub_cache=tmp_path / "hub_cache") as hub:
        HfApi(token="hf_test_x").create_repo("me/fpb-prefix")
        HfApi(token="hf_test_x").upload_folder(
            repo_id="me/fpb-prefix", folder_path=adapter_dir, ignore_patterns=["base_model/*", "predict*"]
        )
        run_main(predict_argv("me/fpb-prefix", QUICKSTART, tmp_path / "hub", "--cache_dir", tmp_path / "cache"))
        assert hub.unhandled == [], [r.path for r in hub.unhandled]
    assert read_rows(tmp_path / "hub") == read_rows(tmp_path / "folder")


# --- input formats and bad rows ---


def test_txt_lines_are_labelled_only_when_they_end_in_at_one_word(tmp_path):
    path = tmp_path / "in.txt"
    path.write_bytes(
        "Profit rose .@positive\r\n"
        "Write to ir@acme.com for the report .\r\n"  # after the last @: not one word -> a bare sentence
        "\r\n"  # blank: not a row
        "Caf\xe9 sales fell@negative\r\n"  # ISO-8859-1
        "Shares moved , says @analyst\n"  # ends in @word: read as a label, which is not one -> bad row
        "@neutral\n"  # empty text
        "Quotes \x93like this\x94 are Windows-1252\n".encode("iso-8859-1")  # control characters in ISO-8859-1
    )
    expected = [
        (1, "Profit rose .", "positive", True),
        (2, "Write to ir@acme.com for the report .", None, True),
        (4, "Café sales fell", "negative", True),
        (5, "Shares moved , says", None, False),
        (6, "", "neutral", False),
        (7, "Quotes \x93like this\x94 are Windows-1252", None, False),
    ]
    # Not UTF-8 and, with 0x93/0x94, not ISO-8859-1 text either: `auto` refuses the file (tests/test_readers.py);
    # forced to ISO-8859-1, the line with control characters is a bad row.
    rows = list(InputReader(str(path), LABELS, encoding="iso-8859-1"))
    assert [(r.line, r.text, r.gold, r.error is None) for r in rows] == expected
    assert "label 'analyst' is not one of negative, neutral, positive" in rows[3].error
    assert "--file_encoding" in rows[5].error
    path.write_bytes(path.read_bytes().rsplit(b"\n", 2)[0] + b"\n")  # without the Windows-1252 line: ISO-8859-1
    rows = list(InputReader(str(path), LABELS))
    assert [(r.line, r.text, r.gold, r.error is None) for r in rows] == expected[:-1]
    utf8 = tmp_path / "utf8.txt"
    utf8.write_text("Café sales fell .\n", encoding="utf-8")
    assert [r.text for r in InputReader(str(utf8), LABELS, encoding="utf-8")] == ["Café sales fell ."]
    assert [r.text for r in InputReader(str(utf8), LABELS)] == ["Café sales fell ."]  # auto: valid UTF-8


def test_csv_jsonl_json_rows_and_their_line_numbers(tmp_path):
    csv_path = tmp_path / "in.csv"
    csv_path.write_bytes(
        b'id,sentence,label\n1,Profit rose .,positive\n2,"A sentence\nover two lines",0\n3,No label here .,\n'
        b"4,,neutral\n5,Bad \xff byte,neutral\n6,Unknown label .,bullish\n"
    )
    rows = list(InputReader(str(csv_path), LABELS, encoding="utf-8"))
    assert [(r.line, r.text, r.gold) for r in rows if r.error is None] == [
        (2, "Profit rose .", "positive"),
        (3, "A sentence\nover two lines", "negative"),
        (5, "No label here .", None),
    ]
    assert [(r.line, r.error.split(" (")[0]) for r in rows if r.error] == [
        (6, "empty text in column 'sentence'"),
        (7, "bytes that are not utf-8"),
        (8, "label 'bullish' is not one of negative, neutral, positive"),
    ]
    # With `auto`, a file that is not valid UTF-8 (the 0xff) is ISO-8859-1, where 0xff is `ÿ`.
    assert [(r.line, r.text) for r in InputReader(str(csv_path), LABELS) if r.line == 7] == [(7, "Bad ÿ byte")]
    jsonl_path = tmp_path / "in.jsonl"
    jsonl_path.write_text(
        '{"sentence": "Profit rose .", "label": "positive"}\n\n{"sentence": "No label ."}\n{"sentence": \n'
        '{"text": "wrong field"}\n{"sentence": "Class id .", "label": 2}\n{"sentence": "Half \\ud800 a pair"}\n',
        encoding="utf-8",
    )
    rows = list(InputReader(str(jsonl_path), LABELS))
    assert [(r.line, r.text, r.gold, r.error and r.error.split(" (")[0]) for r in rows] == [
        (1, "Profit rose .", "positive", None),
        (3, "No label .", None, None),
        (4, "", None, "malformed JSON"),
        (5, "", None, "no field 'sentence'"),
        (6, "Class id .", "positive", None),
        (7, "Half \ud800 a pair", None, "a lone UTF-16 surrogate escape"),
    ]
    json_path = tmp_path / "in.json"
    json_path.write_text(json.dumps({"data": [{"sentence": "One ."}, {"sentence": "Two .", "label": "neutral"}]}))
    assert [(r.line, r.text, r.gold) for r in InputReader(str(json_path), LABELS)] == [
        (1, "One .", None),
        (2, "Two .", "neutral"),
    ]


def test_bad_rows_stop_before_writing_or_are_skipped_and_counted(full_model_dir, tmp_path):
    path = tmp_path / "in.txt"
    path.write_text("Profit rose .@positive\n@neutral\nSales fell .\nThey said .@bogus\nNet sales grew .\n")
    with pytest.raises(ArgumentError) as error:
        run_main(predict_argv(full_model_dir, path, tmp_path / "strict"))
    message = str(error.value)
    assert f"{path}:2: empty text" in message and f"{path}:4: label 'bogus'" in message
    assert "Nothing was written" in message
    assert not (tmp_path / "strict").exists() or not any((tmp_path / "strict").iterdir())

    run_main(predict_argv(full_model_dir, path, tmp_path / "skip", "--on_bad_row", "skip"))
    assert [row["line"] for row in read_rows(tmp_path / "skip")] == [1, 3, 5]
    results = json.loads((tmp_path / "skip" / "predict_results.json").read_text())
    assert results["predict_bad_rows_skipped"] == 2 and results["predict_rows"] == 3
    assert results["predict_labelled_rows"] == 1
    bad = [json.loads(line) for line in (tmp_path / "skip" / "predict_bad_rows.jsonl").read_text().splitlines()]
    assert [row["line"] for row in bad] == [2, 4]


def test_encodings_utf8_and_iso_8859_1_with_no_flag_and_neither_exits_2(
    full_model_dir, phrasebank_dir, tmp_path, capsys
):
    """A UTF-8 .txt (bare sentences and `sentence@label`) and the original ISO-8859-1 lines are scored with no
    encoding flag, their text intact; a Windows-1252 file is one line on stderr, exit code 2, nothing written."""
    utf8 = tmp_path / "news.txt"
    lines = ["Operating profit rose to €5.2 million .@positive", "Sales in Jyväskylä fell – by 12 % .",
             "Net sales grew – to EUR 3 million .@neutral"]  # fmt: skip
    utf8.write_text("\n".join(lines) + "\n", encoding="utf-8")
    run_main(predict_argv(full_model_dir, utf8, tmp_path / "utf8"))
    assert [(row["text"], row["gold"]) for row in read_rows(tmp_path / "utf8")] == [
        ("Operating profit rose to €5.2 million .", "positive"),
        ("Sales in Jyväskylä fell – by 12 % .", None),
        ("Net sales grew – to EUR 3 million .", "neutral"),
    ]

    original = (phrasebank_dir / "Sentences_AllAgree.txt").read_bytes().splitlines(keepends=True)
    accented = [line for line in original if not line.isascii()][:12]
    latin1 = tmp_path / "latin1.txt"
    latin1.write_bytes(b"".join(accented))
    run_main(predict_argv(full_model_dir, latin1, tmp_path / "latin1"))
    expected = [line.decode("iso-8859-1").strip().rpartition("@") for line in accented]
    assert [(row["text"], row["gold"]) for row in read_rows(tmp_path / "latin1")] == [
        (text.strip(), label) for text, _, label in expected
    ]

    cp1252 = tmp_path / "quotes.txt"
    cp1252.write_bytes("Profit rose .\nThe “new” plant opens .\n".encode("cp1252"))
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        cli.cli([str(a) for a in predict_argv(full_model_dir, cp1252, tmp_path / "neither")])
    assert exit_info.value.code == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith(f"error: {cp1252} is neither UTF-8 (line 2: byte 0x93")
    assert errors[0].endswith("pass --file_encoding with its encoding (cp1252 for Windows-1252).")  # all of it
    assert not (tmp_path / "neither").exists() or not any((tmp_path / "neither").iterdir())


# --- resuming ---


def test_resume_after_a_partial_write_and_refusal_of_other_predictions(full_model_dir, tmp_path, monkeypatch):
    out = tmp_path / "out"
    argv = predict_argv(full_model_dir, QUICKSTART, out, "--predict_chunk_size", "32")
    run_main(argv)
    complete = read_rows(out)
    # Interrupted mid-write: 50 complete rows and half of the 51st. The 50 kept rows carry a sentinel, which a resume
    # that recomputed them would lose.
    lines = (out / "predictions.jsonl").read_bytes().splitlines(keepends=True)
    kept = [json.dumps({**json.loads(line), "sentinel": i}).encode() + b"\n" for i, line in enumerate(lines[:50])]
    (out / "predictions.jsonl").write_bytes(b"".join(kept) + lines[50][:20])
    answered = []
    original = LabelScorer.log_scores
    monkeypatch.setattr(
        LabelScorer,
        "log_scores",
        lambda self, texts, **kwargs: answered.extend(texts) or original(self, texts, **kwargs),
    )
    run_main(argv)
    monkeypatch.undo()
    assert len(answered) == 162 - 50  # only the rows after the 50 complete ones were answered
    assert answered[0] != complete[0]["text"] and set(answered) == {r["text"] for r in complete[50:]}
    resumed = read_rows(out)
    assert [r.pop("sentinel", None) for r in resumed] == list(range(50)) + [None] * 112
    assert [r["line"] for r in resumed] == [r["line"] for r in complete] == list(range(1, 163))
    assert [r["label"] for r in resumed] == [r["label"] for r in complete]
    for a, b in zip(resumed, complete):
        assert a["probabilities"] == pytest.approx(b["probabilities"], abs=1e-5)

    other = tmp_path / "other.txt"
    other.write_text(QUICKSTART.read_text(encoding="iso-8859-1").replace("Delta", "Gamma"), encoding="iso-8859-1")
    refusal = (
        f"{out / 'predictions.jsonl'} holds predictions made from another input or with other settings (changed: "
        "{}); pass --overwrite_predictions to start again, or choose another --output_dir."
    )
    with pytest.raises(ArgumentError) as error:  # a new path: named, its digest follows from it
        run_main(predict_argv(full_model_dir, other, out))
    assert str(error.value) == refusal.format("input")
    with pytest.raises(ArgumentError) as error:  # score mode records no beams: only the mode changed
        run_main(argv + ["--predict_mode", "generate"])
    assert str(error.value) == refusal.format("predict_mode")
    run_main(predict_argv(full_model_dir, other, out, "--overwrite_predictions"))
    assert read_rows(out)[0]["text"].startswith("Gamma Freight")


NEWS = [f"{COMPANIES[i % 4]} reported {i} new orders in the quarter ." for i in range(20)]


def interrupted_predictions(model, out, *flags) -> bytes:
    """Predict NEWS (bare sentences) with `flags`, then cut predictions.jsonl to 9 rows and part of the 10th, as a
    run killed mid-write leaves it; returns the bytes left."""
    test_file = out.parent / "news.txt"
    test_file.write_text("".join(text + "\n" for text in NEWS), encoding="utf-8")
    run_main(predict_argv(model, test_file, out, "--predict_chunk_size", "8", *flags))
    lines = (out / "predictions.jsonl").read_bytes().splitlines(keepends=True)
    assert len(lines) == 20
    (out / "predictions.jsonl").write_bytes(b"".join(lines[:9]) + lines[9][:15])
    return (out / "predictions.jsonl").read_bytes()


WORDS = ["--label_words", ",".join(LABELS)]


@pytest.mark.parametrize(
    "model, first, second, changed",
    [
        ("tiny_t5_dir", [*WORDS, "--source_prefix", "sentiment : "], [*WORDS, "--source_prefix", "mood : "],
         "source_prefix"),
        ("tiny_t5_dir", [*WORDS, "--source_prefix", "sentiment : "], WORDS, "source_prefix"),
        ("tiny_t5_dir", [*WORDS, "--max_source_length", "64"], [*WORDS, "--max_source_length", "6"],
         "max_source_length"),
        ("tiny_llama_dir", WORDS, [*WORDS, "--prompt_template", "Text: {text}\nLabel:"], "prompt_template"),
        ("tiny_t5_dir", WORDS, ["--label_words", "bad,so-so,good"], "labels"),
        ("tiny_t5_dir", WORDS, ["--label_words", "positive,neutral,negative"], "labels"),
        # Score mode records no beams: switching to generate names the mode only (issue 30, item 7) ...
        ("tiny_t5_dir", WORDS, [*WORDS, "--predict_mode", "generate", "--generation_num_beams", "2"],
         "predict_mode"),
        # ... and in generate mode a change of beams alone is named.
        ("tiny_t5_dir", [*WORDS, "--predict_mode", "generate"],
         [*WORDS, "--predict_mode", "generate", "--generation_num_beams", "2"], "num_beams"),
    ],
)  # fmt: skip
def test_resuming_with_settings_that_change_the_answers_is_refused(request, tmp_path, model, first, second, changed):
    """A rerun with another input format or label set would mix answers of two settings in one file: refused,
    naming what changed, with the file left as it was; the first settings still resume it."""
    model_dir = request.getfixturevalue(model)
    out = tmp_path / "out"
    left = interrupted_predictions(model_dir, out, *first)
    with pytest.raises(ArgumentError, match=rf"with other settings \(changed: {changed}\); pass --overwrite_pred"):
        run_main(predict_argv(model_dir, tmp_path / "news.txt", out, "--predict_chunk_size", "8", *second))
    assert (out / "predictions.jsonl").read_bytes() == left
    run_main(predict_argv(model_dir, tmp_path / "news.txt", out, "--predict_chunk_size", "8", *first))
    assert [row["text"] for row in read_rows(out)] == NEWS


def test_resuming_after_the_input_was_edited_or_the_model_retrained_in_place_is_refused(tiny_t5_dir, tmp_path):
    model_dir = tmp_path / "model"
    shutil.copytree(tiny_t5_dir, model_dir)
    out = tmp_path / "out"
    left = interrupted_predictions(model_dir, out, *WORDS)
    argv = predict_argv(model_dir, tmp_path / "news.txt", out, "--predict_chunk_size", "8", *WORDS)
    news = tmp_path / "news.txt"
    news.write_text(news.read_text().replace("reported 3 new", "reported 4 new"), encoding="utf-8")
    with pytest.raises(ArgumentError, match=r"\(changed: input_digest\)"):
        run_main(argv)
    news.write_text("".join(text + "\n" for text in NEWS), encoding="utf-8")
    model = T5ForConditionalGeneration.from_pretrained(model_dir)  # trained further, saved over the same folder
    with torch.no_grad():
        model.lm_head.weight.mul_(1.5)
    model.save_pretrained(model_dir)
    with pytest.raises(ArgumentError, match=r"\(changed: base_model_files, model_files\)"):
        run_main(argv)
    assert (out / "predictions.jsonl").read_bytes() == left


def test_a_refusal_names_only_the_settings_the_user_changed():
    score = {"input": "/a.txt", "input_digest": "d1", "model": "runs/a", "model_files": [["x", 1, 2]],
             "base_model": "t5", "base_model_files": "t5", "task": "seq2seq", "labels": ["neg", "pos"],
             "predict_mode": "score", "num_beams": None, "source_prefix": "", "prompt_template": None,
             "max_source_length": 256}  # fmt: skip
    generate = {**score, "predict_mode": "generate", "num_beams": 1}
    assert changed_settings(score, generate) == ["predict_mode"]
    assert changed_settings(generate, {**generate, "num_beams": 4}) == ["num_beams"]
    assert changed_settings(score, {**score, "input_digest": "d2"}) == ["input_digest"]  # the same file, edited
    assert changed_settings(score, {**score, "input": "/b.txt", "input_digest": "d2"}) == ["input"]
    assert changed_settings(score, {**score, "model_files": [["x", 1, 3]]}) == ["model_files"]  # retrained in place
    other_model = {**score, "model": "runs/b", "model_files": [], "labels": ["bad", "good"], "max_source_length": 64}
    assert changed_settings(score, other_model) == ["max_source_length", "model"]
    assert changed_settings(score, {**generate, "num_beams": 4, "source_prefix": "s: "}) == [
        "predict_mode", "source_prefix"
    ]  # fmt: skip


# --- acceptance 2: kill -9 part-way through 20,000 rows, restart, every row exactly once, in order ---


def subprocess_env(tmp_path) -> dict:
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", HF_HOME=str(tmp_path / "hf_home"))
    env.pop("ACCELERATE_USE_CPU", None)
    return env


@pytest.mark.slow
def test_kill_9_part_way_then_resume_gives_every_row_once_in_order(full_model_dir, tmp_path):
    big = tmp_path / "big.txt"
    texts = [f"{COMPANIES[i % 4]} has {i} offices ." for i in range(20_000)]
    big.write_text("".join(text + "\n" for text in texts))
    out = tmp_path / "out"
    command = [sys.executable, "run_prefix_tuning.py"] + [str(a) for a in predict_argv(full_model_dir, big, out)]
    command += ["--per_device_eval_batch_size", "128", "--predict_chunk_size", "512"]
    env = subprocess_env(tmp_path)
    predictions = out / "predictions.jsonl"
    with open(tmp_path / "first.log", "wb") as log:
        process = subprocess.Popen(command, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 300
            while not (predictions.is_file() and predictions.stat().st_size > 0):
                assert process.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
                assert time.monotonic() < deadline, "no rows written in 300 s"
                time.sleep(0.02)
            os.kill(process.pid, signal.SIGKILL)
        finally:
            process.wait()
    assert process.returncode == -signal.SIGKILL
    written = predictions.read_bytes().count(b"\n")
    assert 0 < written < 20_000, written

    second = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    assert f"{written} were already done" in second.stdout + second.stderr
    rows = read_rows(out)
    assert len(rows) == 20_000
    assert [row["line"] for row in rows] == list(range(1, 20_001))
    assert [row["text"] for row in rows] == texts
    assert all(row["label"] in LABELS for row in rows)


# --- acceptance 3: two processes under `accelerate launch` write the same file as one ---


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.slow
def test_two_processes_under_accelerate_launch_write_the_same_file(full_model_dir, tmp_path):
    # Sentences of different lengths, labelled and not, so chunks and batches are uneven.
    mixed = tmp_path / "mixed.txt"
    lines = QUICKSTART.read_text(encoding="iso-8859-1").splitlines()
    mixed.write_text("\n".join(line if i % 3 else line.rpartition("@")[0] for i, line in enumerate(lines)) + "\n")
    args = predict_argv(full_model_dir, mixed, "OUT", "--use_cpu", "--per_device_eval_batch_size", "8",
                        "--predict_chunk_size", "60", "--predictions_csv")  # fmt: skip
    env = subprocess_env(tmp_path)

    def command(output_dir):
        return [str(output_dir) if a == "OUT" else str(a) for a in args]

    one = subprocess.run(
        [sys.executable, "run_prefix_tuning.py", *command(tmp_path / "one")],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert one.returncode == 0, one.stderr[-3000:]
    launch = [
        sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
        "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
        "--main_process_port", str(free_port()), "run_prefix_tuning.py", *command(tmp_path / "two"),
    ]  # fmt: skip
    two = subprocess.run(launch, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    log = two.stdout + two.stderr
    assert two.returncode == 0, log[-3000:]
    # Really two processes: rank 1 reported itself, and the rows were split between two.
    assert "Process rank: 1" in log and "distributed: distributed" in log, log[-3000:]
    assert "on 2 process(es)" in log
    for name in ("predictions.jsonl", "predictions.csv"):
        assert (tmp_path / "two" / name).read_bytes() == (tmp_path / "one" / name).read_bytes(), name
    results = [json.loads((tmp_path / d / "predict_results.json").read_text()) for d in ("one", "two")]
    for r in results:
        r.pop("predict_rows_per_second")
    assert results[0] == results[1]
