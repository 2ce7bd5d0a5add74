"""Data loading: the Financial PhraseBank format, csv/json/jsonl, the held-out split and the Hub loader."""

from __future__ import annotations

import io
import json
import zipfile
from collections import Counter

import pytest

from prefix_tuning_utils.arguments import ArgumentError, DataTrainingArguments
from prefix_tuning_utils.data import (
    FINANCIAL_PHRASEBANK_CONFIGS,
    FINANCIAL_PHRASEBANK_LABELS,
    get_datasets,
    load_financial_phrasebank,
    read_data_file,
    stratified_split,
)
from tests.fake_hub import FakeHub


LABELS = FINANCIAL_PHRASEBANK_LABELS


def data_args(**kwargs) -> DataTrainingArguments:
    kwargs.setdefault("label_words", ",".join(LABELS))
    return DataTrainingArguments(**kwargs)


def test_phrasebank_file_is_parsed_exactly(phrasebank_dir):
    path = str(phrasebank_dir / "Sentences_AllAgree.txt")
    data = read_data_file(path, data_args(train_file=path), LABELS)
    assert len(data) == 2264
    assert Counter(data.labels) == {"negative": 303, "neutral": 1391, "positive": 570}
    assert data.lines[:3] == [1, 2, 3] and data.lines[-1] == 2264
    # ISO-8859-1 bytes are decoded, CRLF is gone, the split is on the last '@'.
    assert not any(text.endswith("\r") or "\r" in label for text, label in zip(data.texts, data.labels))
    assert any("+é" in text or "ñ" in text for text in data.texts)
    assert any(text.startswith("The Lithuanian beer market made up 14.41 million liters") for text in data.texts)


def test_held_out_split_is_stratified_and_fixed(phrasebank_dir):
    path = str(phrasebank_dir / "Sentences_AllAgree.txt")
    splits, labels = get_datasets(data_args(train_file=path))
    assert labels == LABELS
    assert (len(splits["train"]), len(splits["validation"])) == (2037, 227)
    held = Counter(splits["validation"].labels)
    assert held == {"negative": 30, "neutral": 140, "positive": 57}
    again, _ = get_datasets(data_args(train_file=path))
    assert again["validation"].lines == splits["validation"].lines
    other, _ = get_datasets(data_args(train_file=path, split_seed=1))
    assert other["validation"].lines != splits["validation"].lines
    assert not set(splits["train"].lines) & set(splits["validation"].lines)


@pytest.mark.parametrize("suffix", ["csv", "json", "jsonl"])
def test_csv_json_jsonl_with_named_columns(tmp_path, suffix):
    rows = [{"body": f"Sentence number {i} .", "sentiment": LABELS[i % 3]} for i in range(9)]
    path = tmp_path / f"data.{suffix}"
    if suffix == "csv":
        path.write_text("body,sentiment\n" + "".join(f"{r['body']},{r['sentiment']}\n" for r in rows))
    elif suffix == "json":
        path.write_text(json.dumps(rows))
    else:
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    data = read_data_file(
        str(path), data_args(train_file=str(path), text_column="body", label_column="sentiment"), LABELS
    )
    assert data.texts == [r["body"] for r in rows] and data.labels == [r["sentiment"] for r in rows]


def test_integer_labels_are_named_by_label_words(tmp_path):
    path = tmp_path / "data.jsonl"
    path.write_text("".join(json.dumps({"sentence": f"s {i}", "label": i % 3}) + "\n" for i in range(6)))
    data = read_data_file(str(path), data_args(train_file=str(path)), LABELS)
    assert data.labels == LABELS * 2


@pytest.mark.parametrize(
    "content, message",
    [
        (b"A sentence without a label\r\n", "data.txt:1: no `@`"),
        (
            b"Fine sentence .@positive\r\nOther sentence .@bullish\r\n",
            "data.txt:2: label 'bullish' is not one of negative, neutral, positive",
        ),
        (b"@neutral\r\n", "data.txt:1: empty text before the `@`"),
    ],
)
def test_bad_phrasebank_lines_name_file_and_line(tmp_path, content, message):
    path = tmp_path / "data.txt"
    path.write_bytes(content)
    with pytest.raises(ArgumentError, match=message.replace("(", r"\(")):
        read_data_file(str(path), data_args(train_file=str(path)), LABELS)


def test_split_that_leaves_a_label_without_validation_example_is_refused():
    from prefix_tuning_utils.data import LabelledData

    data = LabelledData(["a"] * 20 + ["b", "b"], ["neutral"] * 20 + ["positive"] * 2, list(range(1, 23)), "x.txt")
    with pytest.raises(ArgumentError, match="validation"):
        stratified_split(data, 5, 42)


def _phrasebank_archive(phrasebank_dir) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zipped:
        for name in FINANCIAL_PHRASEBANK_CONFIGS.values():
            zipped.write(phrasebank_dir / name, f"FinancialPhraseBank-v1.0/{name}")
    return buffer.getvalue()


def test_hub_loader_matches_local_files(tmp_path, phrasebank_dir):
    """`--dataset_name financial_phrasebank` downloads the original archive from the Hub and parses it."""
    with FakeHub(hub_cache=tmp_path / "cache") as hub:
        hub.add_file(
            "takala/financial_phrasebank",
            "data/FinancialPhraseBank-v1.0.zip",
            _phrasebank_archive(phrasebank_dir),
            repo_type="dataset",
        )
        for config, name in FINANCIAL_PHRASEBANK_CONFIGS.items():
            from_hub = load_financial_phrasebank(config)
            local_path = str(phrasebank_dir / name)
            local = read_data_file(local_path, data_args(train_file=local_path), LABELS)
            assert (from_hub.texts, from_hub.labels) == (local.texts, local.labels), config
        splits, labels = get_datasets(
            data_args(dataset_name="financial_phrasebank", dataset_config_name="sentences_allagree")
        )
        assert (len(splits["train"]), len(splits["validation"])) == (2037, 227) and labels == LABELS
        assert any("FinancialPhraseBank-v1.0.zip" in r.path for r in hub.requests)


def test_unknown_phrasebank_config_is_refused():
    with pytest.raises(ArgumentError, match="sentences_allagree"):
        load_financial_phrasebank("sentences_90agree")


def test_conflicting_duplicates_are_warned_with_line_numbers(phrasebank_dir, caplog):
    path = str(phrasebank_dir / "Sentences_50Agree.txt")
    with caplog.at_level("WARNING"):
        data = read_data_file(path, data_args(train_file=path), LABELS)
        from prefix_tuning_utils.data import warn_conflicting_duplicates

        conflicts = warn_conflicting_duplicates(data)
    assert sorted(lines for _, lines in conflicts) == [[79, 80], [789, 790]]
    assert "line 79: neutral" in caplog.text
