"""The one data reader: encoding detection (`--file_encoding auto`), the .txt rules for training and prediction.

Batch prediction of these files end to end (predictions.jsonl, exit code 2) is in tests/test_predict.py.
"""

from __future__ import annotations

import json
import logging
from types import SimpleNamespace

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


# --- rows read exactly: each expectation below is a literal, written by hand from the file's bytes ---


def rows_of(path, labels=LABELS, **kwargs) -> list[tuple[int, str, str | None, str | None]]:
    return [(row.line, row.text, row.gold, row.error) for row in InputReader(str(path), labels, **kwargs)]


def test_txt_line_splits_on_its_last_at_sign(tmp_path):
    """The README: a line is `sentence@label` split on the *last* `@`; an `@` inside the sentence stays in it."""
    path = tmp_path / "at.txt"
    path.write_text(
        "Write to ir@acme.com for the report .@neutral\nProfit @ Acme rose ; see @ir@positive\na@b@c@negative\n",
        encoding="utf-8",
    )
    assert rows_of(path) == [
        (1, "Write to ir@acme.com for the report .", "neutral", None),
        (2, "Profit @ Acme rose ; see @ir", "positive", None),
        (3, "a@b@c", "negative", None),
    ]
    data = read_data_file(str(path), data_args(train_file=str(path)), LABELS)  # training reads the same rows
    assert data.texts == ["Write to ir@acme.com for the report .", "Profit @ Acme rose ; see @ir", "a@b@c"]
    assert data.labels == ["neutral", "positive", "negative"]


def test_txt_bare_sentences_with_an_at_sign_keep_their_whole_text(tmp_path):
    """After the last `@` is no single word: the whole line is the sentence, with no label (prediction input)."""
    path = tmp_path / "bare.txt"
    path.write_text("Mail mail@example.com today\nMeet at @ 3 pm .\nPrice rose 5 % @ 12.5\n", encoding="utf-8")
    assert rows_of(path) == [
        (1, "Mail mail@example.com today", None, None),
        (2, "Meet at @ 3 pm .", None, None),
        (3, "Price rose 5 % @ 12.5", None, None),
    ]


BOM = "\ufeff"
BOM_FILES = {
    "txt": "Profit rose .@positive\nSales fell .@negative\n",
    "csv": "sentence,label\nProfit rose .,positive\nSales fell .,negative\n",
    "jsonl": '{"sentence": "Profit rose .", "label": "positive"}\n{"sentence": "Sales fell .", "label": "negative"}\n',
    "json": '[{"sentence": "Profit rose .", "label": "positive"}, {"sentence": "Sales fell .", "label": "negative"}]',
}


@pytest.mark.parametrize("suffix", list(BOM_FILES))
@pytest.mark.parametrize("encoding", ["auto", "utf-8"])
def test_a_utf8_byte_order_mark_is_not_part_of_the_first_row(tmp_path, suffix, encoding):
    """Windows tools (Notepad, Excel's "CSV UTF-8") start a file with a byte-order mark: the first text must not
    start with it, and a CSV header's first column must still be found."""
    path = tmp_path / f"bom.{suffix}"
    path.write_bytes((BOM + BOM_FILES[suffix]).encode("utf-8"))
    expected = [(1, "Profit rose .", "positive", None), (2, "Sales fell .", "negative", None)]
    if suffix == "csv":
        expected = [(2, "Profit rose .", "positive", None), (3, "Sales fell .", "negative", None)]
    assert rows_of(path, encoding=encoding) == expected
    data = read_data_file(str(path), data_args(train_file=str(path), file_encoding=encoding), LABELS)
    assert data.texts == ["Profit rose .", "Sales fell ."] and data.labels == ["positive", "negative"]


def test_a_byte_order_mark_after_the_start_is_text(tmp_path):
    """Only the file's first bytes are a byte-order mark; U+FEFF elsewhere is a character of the sentence."""
    path = tmp_path / "inner.txt"
    path.write_bytes(f"One .@positive\nT{BOM}wo .@negative\n".encode())
    assert rows_of(path) == [(1, "One .", "positive", None), (2, f"T{BOM}wo .", "negative", None)]


@pytest.mark.parametrize("suffix", ["csv", "jsonl", "json"])
def test_labels_with_spaces_around_them_are_the_label_word(tmp_path, suffix):
    path = tmp_path / f"spaces.{suffix}"
    cells = [("Profit rose .", " positive "), ("Sales fell .", "negative  "), ("Flat .", "\tneutral"), ("Id .", " 2 ")]
    if suffix == "csv":
        path.write_text("sentence , label\n" + "".join(f"{t},{lab}\n" for t, lab in cells), encoding="utf-8")
    else:
        items = [{"sentence": t, "label": lab} for t, lab in cells]
        path.write_text(
            "".join(json.dumps(i) + "\n" for i in items) if suffix == "jsonl" else json.dumps(items), encoding="utf-8"
        )
    first = 2 if suffix == "csv" else 1
    assert rows_of(path) == [
        (first, "Profit rose .", "positive", None),
        (first + 1, "Sales fell .", "negative", None),
        (first + 2, "Flat .", "neutral", None),
        (first + 3, "Id .", "positive", None),  # class id 2 of --label_words
    ]


@pytest.mark.parametrize("suffix", ["csv", "jsonl"])
def test_label_set_seen_in_the_data_is_of_stripped_words(tmp_path, suffix):
    """Without --label_words the label set is the words seen: "positive", not " positive " beside "positive"."""
    path = tmp_path / f"seen.{suffix}"
    cells = [("Up .", "positive"), ("Up again .", " positive "), ("Down .", "negative "), ("Down again .", "negative")]
    if suffix == "csv":
        path.write_text("sentence,label\n" + "".join(f"{t},{lab}\n" for t, lab in cells), encoding="utf-8")
    else:
        path.write_text("".join(json.dumps({"sentence": t, "label": lab}) + "\n" for t, lab in cells))
    splits, labels = get_datasets(DataTrainingArguments(train_file=str(path), validation_file=str(path)))
    assert labels == ["negative", "positive"]
    assert splits["train"].labels == ["positive", "positive", "negative", "negative"]


def test_crlf_blank_lines_and_line_numbers(tmp_path):
    """Windows line ends are no part of a label or text; blank lines are no rows but count in the line numbers."""
    txt = tmp_path / "crlf.txt"
    txt.write_bytes(b"Profit rose .@positive\r\n\r\n   \r\nSales fell .@negative\r\nNo label here .\r\n")
    assert rows_of(txt) == [
        (1, "Profit rose .", "positive", None),
        (4, "Sales fell .", "negative", None),
        (5, "No label here .", None, None),
    ]
    csv_path = tmp_path / "crlf.csv"
    csv_path.write_bytes(
        b'sentence,label\r\nProfit rose .,positive\r\n,\r\n"Two\r\nlines",neutral\r\n"Three\r\n\r\nlines",negative\r\n'
        b"Last .,positive\r\n"
    )
    assert rows_of(csv_path) == [
        (2, "Profit rose .", "positive", None),
        (4, "Two\r\nlines", "neutral", None),  # a quoted cell keeps its line break; the row starts on line 4
        (6, "Three\r\n\r\nlines", "negative", None),
        (9, "Last .", "positive", None),
    ]
    jsonl = tmp_path / "crlf.jsonl"
    jsonl.write_bytes(
        b'{"sentence": "Up .", "label": "positive"}\r\n\r\n{"sentence": "Down .", "label": "negative"}\r\n'
    )
    assert rows_of(jsonl) == [(1, "Up .", "positive", None), (3, "Down .", "negative", None)]


@pytest.mark.parametrize(
    "label, gold, error",
    [
        (True, None, "label True is not a label word or class id"),  # JSON true is no class id 1
        (False, None, "label False is not a label word or class id"),
        (1.0, None, "label 1.0 is not a label word or class id"),
        (0, "negative", None),
        (2, "positive", None),
        (3, None, "class id 3 is outside 0..2 (--label_words negative,neutral,positive)"),
        (-1, None, "class id -1 is outside 0..2 (--label_words negative,neutral,positive)"),
        ("1", "neutral", None),
        (None, None, None),
        ("", None, None),
        (["positive"], None, "label ['positive'] is not a label word or class id"),
    ],
)
def test_json_label_values(tmp_path, label, gold, error):
    path = tmp_path / "labels.jsonl"
    path.write_text(json.dumps({"sentence": "Profit rose .", "label": label}) + "\n", encoding="utf-8")
    assert rows_of(path) == [(1, "Profit rose .", gold, error)]


def test_integer_labels_need_label_words(tmp_path):
    path = tmp_path / "ids.jsonl"
    path.write_text('{"sentence": "Up .", "label": 2}\n', encoding="utf-8")
    assert rows_of(path, labels=None) == [(1, "Up .", None, "integer label 2; pass --label_words to name the classes")]


def test_csv_columns_first_of_two_of_one_name_short_rows_and_blank_records(tmp_path):
    path = tmp_path / "cols.csv"
    path.write_text(
        "label,sentence,sentence,extra\n"
        "positive,First text .,Second text .,x\n"
        ",,,\n"  # blank record: no row
        "negative,Short row .\n"  # fewer cells than columns: the missing ones are empty
        "neutral\n",  # no text cell at all
        encoding="utf-8",
    )
    assert rows_of(path) == [
        (2, "First text .", "positive", None),
        (4, "Short row .", "negative", None),
        (5, "", "neutral", "empty text in column 'sentence'"),
    ]


def test_json_data_key_and_row_numbers(tmp_path):
    path = tmp_path / "data.json"
    path.write_text(
        json.dumps({"data": [{"sentence": "One .", "label": "neutral"}, {"text": "x"}, {"sentence": " Three . "}]}),
        encoding="utf-8",
    )
    assert rows_of(path) == [
        (1, "One .", "neutral", None),
        (2, "", None, "no field 'sentence' (found: text); set --text_column"),
        (3, "Three .", None, None),
    ]


# --- round two: what mutation testing (tools/mutation.sh readers) showed no test checked ---


def test_rows_of_an_in_memory_split_are_checked_like_a_files(tmp_path):
    """--do_predict on a Hub dataset's test split reads LabelledData: texts stripped, labels parsed, bad rows named."""
    data = readers.LabelledData(
        [" Profit rose . ", "Sales fell .", "   ", "Flat .", "Odd ."],
        [" positive ", "0", "neutral", None, "bullish"],
        [0, 1, 2, 3, 4],
        "fpb[test]",
    )
    assert rows_of_data(data) == [
        (0, "Profit rose .", "positive", None),
        (1, "Sales fell .", "negative", None),  # class id 0 of --label_words
        (2, "", "neutral", "empty text"),
        (3, "Flat .", None, None),
        (4, "Odd .", None, "label 'bullish' is not one of negative, neutral, positive"),
    ]


def rows_of_data(data):
    return [(row.line, row.text, row.gold, row.error) for row in InputReader(data, LABELS)]


def test_json_objects_that_are_no_rows(tmp_path):
    path = tmp_path / "odd.jsonl"
    path.write_text(
        '{"sentence": null, "label": "positive"}\n"just a string"\n{}\n{"sentence": 12, "label": "neutral"}\n',
        encoding="utf-8",
    )
    assert rows_of(path) == [
        (1, "", "positive", "empty text in field 'sentence'"),  # null is no text (not the text "None")
        (2, "", None, "expected an object with 'sentence', got str"),
        (3, "", None, "no field 'sentence' (found: nothing); set --text_column"),
        (4, "12", "neutral", None),
    ]


@pytest.mark.parametrize(
    "name, content, message",
    [
        ("rows.json", b'{"rows": [{"sentence": "Up ."}]}', "{path}: expected a JSON list of objects (or {{\"data\": [...]}})."),
        ("scalar.json", b"42", "{path}: expected a JSON list of objects (or {{\"data\": [...]}})."),
        ("broken.json", b'[\n{"sentence": "Up ."},\n{"sentence": }\n]', "{path}:3: malformed JSON (Expecting value)."),
        ("bytes.json", b'[\n{"sentence": "Up ."},\n{"sentence": "Caf\xe9"}\n]', "{path}:3: bytes that are not utf-8."),
        ("empty.csv", b"", "{path} is empty."),
        ("blank.txt", b"\n  \n\n", "{path} holds no examples."),
        ("nocol.csv", b"text,label\nUp .,positive\n", "{path}:1: no column 'sentence' (found: text, label); set --text_column."),
        ("nolabel.csv", b"sentence,gold\nUp .,positive\n", "{path}:1: no column 'label' (found: sentence, gold); set --label_column."),
    ],
)  # fmt: skip
def test_files_that_cannot_be_read_are_one_line_naming_file_and_line(tmp_path, name, content, message):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(ArgumentError) as error:
        read_data_file(str(path), SimpleNamespace(text_column="sentence", label_column="label", file_encoding="utf-8"),
                       LABELS)  # fmt: skip
    assert str(error.value) == message.format(path=path)


def test_prediction_csv_needs_a_text_column_but_no_label_column(tmp_path):
    path = tmp_path / "in.csv"
    path.write_text("sentence\nUp .\nDown .\n", encoding="utf-8")
    assert rows_of(path) == [(2, "Up .", None, None), (3, "Down .", None, None)]
    path.write_text("text,label\nUp .,positive\n", encoding="utf-8")
    with pytest.raises(
        ArgumentError, match=r"in.csv:1: no column 'sentence' \(found: text, label\); set --text_column"
    ):
        rows_of(path)


def test_messages_name_the_lines_of_both_failed_encodings(tmp_path, caplog):
    path = tmp_path / "quotes.txt"
    path.write_bytes(b"Caf\xe9 ok .\nPlain .\nThe \x93new\x94 plant .\n")
    with pytest.raises(ArgumentError) as error:
        detect_encoding(str(path))
    assert str(error.value) == (
        f"{path} is neither UTF-8 (line 1: byte 0xe9 is not UTF-8) nor ISO-8859-1 text (line 3: byte 0x93 is a "
        "control character in ISO-8859-1); save it as UTF-8, or pass --file_encoding with its encoding (cp1252 for "
        "Windows-1252)."
    )
    with caplog.at_level(logging.INFO, logger="prefix_tuning_utils.readers"):
        assert detect_encoding(str(path), "cp1252") == "cp1252"
    assert f"Reading {path} as cp1252 (--file_encoding)." in caplog.text
    mixed = tmp_path / "mixed.txt"
    mixed.write_bytes(b"Plain .\n" + "Jyväskylä .\n".encode() + b"Caf\xe9 .\n")
    with caplog.at_level(logging.INFO, logger="prefix_tuning_utils.readers"):
        assert detect_encoding(str(mixed)) == "iso-8859-1"
    assert (
        f"{mixed} is read as ISO-8859-1 (line 3: byte 0xe9 is not UTF-8), but line 2 looks like UTF-8: if the file is "
        "UTF-8, fix that byte (or pass --file_encoding utf-8 to have every such line reported)."
    ) in caplog.text
    assert f"Reading {mixed} as ISO-8859-1 (line 3: byte 0xe9 is not UTF-8)." in caplog.text


def test_a_txt_label_that_is_no_label_word_says_how_the_line_was_read(tmp_path):
    path = tmp_path / "mention.txt"
    path.write_text("Shares moved , says @analyst\nNo label here .\n", encoding="utf-8")
    rows = rows_of(path)
    assert rows[0][3] == (
        "label 'analyst' is not one of negative, neutral, positive (a .txt line whose text after the last `@` is one "
        "word is `sentence@label`)"
    )
    with pytest.raises(ArgumentError) as error:
        read_data_file(str(path), data_args(train_file=str(path)), LABELS)
    assert str(error.value).startswith(f"{path}:1: label 'analyst' is not one of")
    path.write_text("Up .@positive\nNo label here .\n", encoding="utf-8")
    with pytest.raises(ArgumentError) as error:
        read_data_file(str(path), data_args(train_file=str(path)), LABELS)
    assert str(error.value) == (
        f"{path}:2: no `@` and label word after the sentence; training and evaluation data need `sentence@label` lines "
        "(a file of bare sentences can only be scored, with --do_predict)."
    )
    path.write_text("Up .@positive\n", encoding="utf-8")
    assert read_data_file(str(path), data_args(train_file=str(path)), LABELS).source == str(path)


def test_control_characters_and_found_fields_in_csv_and_json_rows(tmp_path):
    """Round three: a text with control characters (a Windows-1252 file read as ISO-8859-1) is a bad row in every
    format, and a missing field names every field found."""
    jsonl = tmp_path / "odd.jsonl"
    jsonl.write_text(
        '{"sentence": "The \\u0093new\\u0094 plant", "label": "neutral"}\n{"text": "x", "id": 1}\n', encoding="utf-8"
    )
    assert rows_of(jsonl) == [
        (1, "The \x93new\x94 plant", "neutral", "control characters in the text (a file in another encoding? pass "
         "--file_encoding)"),
        (2, "", None, "no field 'sentence' (found: text, id); set --text_column"),
    ]  # fmt: skip
    csv_path = tmp_path / "odd.csv"
    csv_path.write_bytes(b"sentence,label\nThe \x93new\x94 plant,neutral\n")
    assert rows_of(csv_path, encoding="iso-8859-1")[0][3].startswith("control characters in the text")
    csv_path.write_text("sentence,note\nUp .,x\n", encoding="utf-8")
    with pytest.raises(ArgumentError, match=r"no column 'label' \(found: sentence, note\); set --label_column\.$"):
        read_data_file(str(csv_path), data_args(train_file=str(csv_path)), LABELS)
    csv_path.write_text("sentence,label\n" + "x" * 140_000 + ",neutral\n", encoding="utf-8")
    with pytest.raises(ArgumentError) as error:
        rows_of(csv_path)
    assert str(error.value) == f"{csv_path}:2: malformed CSV (field larger than field limit (131072))."
