"""The one data reader: encoding detection (`--file_encoding auto`), the .txt rules for training and prediction.

Batch prediction of these files end to end (predictions.jsonl, exit code 2) is in tests/test_predict.py.
"""

from __future__ import annotations

import logging

import pytest

from prefix_tuning_utils import readers
from prefix_tuning_utils.arguments import ArgumentError, DataTrainingArguments, parse_args
from prefix_tuning_utils.data import get_datasets
from prefix_tuning_utils.readers import InputReader, detect_encoding, read_data_file


LABELS = ["negative", "neutral", "positive"]
# Characters whose UTF-8 bytes include 0x80-0x9f (€, –, curly quotes) and ones whose bytes do not (ä).
UTF8_LINES = [
    ("Operating profit rose to EUR 5 million , or €0.04 a share .", "positive"),
    ("Sales in Jyväskylä fell – by 12 % – in the quarter .", "negative"),
    ("The company’s “new” plant opens in Gävle .", "neutral"),
]
WINDOWS_1252 = "The company’s “new” plant opens – on time .@neutral\n"


def data_args(**kwargs) -> DataTrainingArguments:
    kwargs.setdefault("label_words", ",".join(LABELS))
    return DataTrainingArguments(**kwargs)


def test_utf8_txt_is_read_as_utf8_and_the_choice_is_logged(tmp_path, caplog):
    path = tmp_path / "news.txt"
    path.write_text("".join(f"{text}@{label}\n" for text, label in UTF8_LINES), encoding="utf-8")
    with caplog.at_level(logging.INFO, logger="prefix_tuning_utils.readers"):
        splits, labels = get_datasets(data_args(train_file=str(path), validation_file=str(path)))
    assert list(zip(splits["train"].texts, splits["train"].labels)) == UTF8_LINES and labels == LABELS
    assert f"Reading {path} as UTF-8 (valid UTF-8)." in caplog.text
    # Forced to ISO-8859-1, the UTF-8 bytes of € are control characters: the line is refused, naming the flag.
    with pytest.raises(ArgumentError, match=r"news.txt:1: control characters, .* Pass --file_encoding\.$"):
        read_data_file(str(path), data_args(train_file=str(path), file_encoding="iso-8859-1"), LABELS)


def test_original_phrasebank_file_is_iso_8859_1_with_no_flag(phrasebank_dir, caplog):
    path = str(phrasebank_dir / "Sentences_AllAgree.txt")
    with caplog.at_level(logging.INFO, logger="prefix_tuning_utils.readers"):
        assert detect_encoding(path) == "iso-8859-1"
    # Line 7 holds the first non-ASCII byte (`+é`); no UTF-8 look-alikes in the file, so no warning.
    assert f"Reading {path} as ISO-8859-1 (line 7: byte 0x" in caplog.text
    assert "looks like UTF-8" not in caplog.text
    lines = (phrasebank_dir / "Sentences_AllAgree.txt").read_bytes().decode("iso-8859-1").splitlines()
    rows = list(InputReader(path, LABELS))  # as prediction reads it: every line `sentence@label`
    assert [(row.text, row.gold) for row in rows] == [
        (text.strip(), label.strip()) for text, _, label in (line.rpartition("@") for line in lines)
    ]
    assert all(row.error is None for row in rows) and any("é" in row.text for row in rows)


@pytest.mark.parametrize("chunk_bytes", [1, 3, 7, 1 << 20])
def test_utf8_check_is_incremental_across_chunks(tmp_path, monkeypatch, caplog, chunk_bytes):
    """A character split between chunks is still UTF-8; the line of the first bad byte is right for any chunk."""
    monkeypatch.setattr(readers, "CHUNK_BYTES", chunk_bytes)
    path = tmp_path / "in.txt"
    path.write_text("€ – ä\n" * 5, encoding="utf-8")
    assert detect_encoding(str(path)) == "utf-8"
    path.write_bytes(b"plain\n" * 3 + b"Caf\xe9 \xe0 la carte\n" + b"x\n")
    with caplog.at_level(logging.INFO, logger="prefix_tuning_utils.readers"):
        assert detect_encoding(str(path)) == "iso-8859-1"
    assert "(line 4: byte 0xe9 is not UTF-8)" in caplog.text
    path.write_bytes("€\n".encode() * 2 + "€".encode()[:2])  # ends in the middle of a character
    with pytest.raises(ArgumentError, match=r"neither UTF-8 \(line 3: ends inside a character\) nor ISO-8859-1 text"):
        detect_encoding(str(path))


def test_a_file_that_is_neither_utf8_nor_iso_8859_1_is_one_line_error(tmp_path):
    path = tmp_path / "quotes.txt"
    path.write_bytes(b"Profit rose .@positive\n" + WINDOWS_1252.encode("cp1252"))
    with pytest.raises(ArgumentError) as error:
        get_datasets(data_args(train_file=str(path)))
    message = str(error.value)
    assert "\n" not in message
    assert message.startswith(f"{path} is neither UTF-8 (line 2: byte 0x92 is not UTF-8) nor ISO-8859-1 text")
    assert message.endswith("pass --file_encoding with its encoding (cp1252 for Windows-1252).")
    data = read_data_file(str(path), data_args(train_file=str(path), file_encoding="cp1252"), LABELS)
    assert data.texts[1] == WINDOWS_1252.rpartition("@")[0]  # the flag forces the encoding


def test_mixed_file_read_as_iso_8859_1_warns_where_it_looks_like_utf8(tmp_path, caplog):
    path = tmp_path / "mixed.txt"
    path.write_bytes("Jyväskylä sales fell .\n".encode() + b"Caf\xe9 sales rose .\n")
    with caplog.at_level(logging.INFO, logger="prefix_tuning_utils.readers"):
        assert detect_encoding(str(path)) == "iso-8859-1"
    assert "(line 2: byte 0xe9 is not UTF-8), but line 1 looks like UTF-8" in caplog.text


def test_bare_sentences_are_refused_for_training_and_accepted_for_prediction(tmp_path):
    path = tmp_path / "sentences.txt"
    path.write_text("".join(text + "\n" for text, _ in UTF8_LINES), encoding="utf-8")
    with pytest.raises(ArgumentError) as error:
        get_datasets(data_args(train_file=str(path)))
    message = str(error.value)
    assert "\n" not in message
    assert message.startswith(f"{path}:1: no `@` and label word after the sentence;")
    assert "can only be scored, with --do_predict" in message
    rows = list(InputReader(str(path), LABELS))
    assert [(row.text, row.gold, row.error) for row in rows] == [(text, None, None) for text, _ in UTF8_LINES]


@pytest.mark.parametrize("suffix", ["csv", "jsonl"])
def test_training_rows_need_a_label(tmp_path, suffix):
    path = tmp_path / f"data.{suffix}"
    if suffix == "csv":
        path.write_text("sentence,label\nProfit rose .,positive\nNo label .,\n")
        expected = f"{path}:3: no label in column 'label'"
    else:
        path.write_text('{"sentence": "Profit rose .", "label": "positive"}\n{"sentence": "No label ."}\n')
        expected = f"{path}:2: no field 'label' (found: sentence); set --label_column."
    with pytest.raises(ArgumentError, match=expected.replace("(", r"\(").replace(")", r"\)")):
        read_data_file(str(path), data_args(train_file=str(path)), LABELS)
    assert [row.gold for row in InputReader(str(path), LABELS)] == ["positive", None]  # prediction: gold optional


def test_file_encoding_flag_and_its_old_name(tmp_path):
    path = tmp_path / "in.txt"
    path.write_text("Profit rose .\n")
    argv = ["--model_name_or_path", "m", "--test_file", str(path), "--do_predict", "--output_dir", str(tmp_path)]
    assert parse_args(argv)[1].file_encoding == "auto"
    assert parse_args(argv + ["--test_file_encoding", "cp1252"])[1].file_encoding == "cp1252"
    assert parse_args(argv + ["--file_encoding", "utf-8"])[1].file_encoding == "utf-8"
    with pytest.raises(ArgumentError, match="--file_encoding 'utf-9' is not an encoding Python knows"):
        parse_args(argv + ["--file_encoding", "utf-9"])
