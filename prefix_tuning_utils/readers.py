"""Reading data files: one reader of `.txt`, `.csv`, `.json` and `.jsonl` for training, evaluation and prediction.

The formats are the keys of `FORMATS` (extension -> the reader's method for it), the one list of what can be read:
`DATA_EXTENSIONS` comes from it, the argument check of --train_file / --validation_file / --test_file reads it from
here, and a file with any other extension is refused (`data_extension`), never read as JSON.

Every format gives `Row`s (line number, text, gold label, and why the row is bad, if it is) as a stream, so batch
prediction can read a file of any size and list its bad rows; training and evaluation read the same rows and stop at
the first bad one (`read_data_file`), naming its file and line.

- `.txt`: one sentence per non-blank line. A line is `sentence@label` (the Financial PhraseBank format) when the text
  after its last `@` is one word; otherwise the whole line is the sentence, with no label.
- `.csv`: a header, then a record per row (quoted cells may span lines); `.jsonl`: an object per non-blank line;
  `.json`: a list of objects (or `{"data": [...]}`), loaded whole. Text and label in --text_column / --label_column.
- Encoding (`--file_encoding auto`): UTF-8 when the whole file is valid UTF-8, otherwise ISO-8859-1 (the original
  Financial PhraseBank files). A file that is neither (bytes 0x80-0x9f, control characters in ISO-8859-1: usually
  Windows-1252) is refused with the fix. The file is checked in chunks, never loaded whole.

Why not `datasets.load_dataset("csv" / "json")`: its pandas/pyarrow readers drop the line each row came from (every
error here names `file:line`, and prediction lists bad rows by line), guess a type per column (a label column mixing
words and class ids), and load the whole file, where prediction streams it.
"""

from __future__ import annotations

import codecs
import csv
import json
import logging
import os
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import IO

from datasets import Dataset

from .errors import ArgumentError


logger = logging.getLogger(__name__)

__all__ = [
    "DATA_EXTENSIONS",
    "FORMATS",
    "LabelledData",
    "InputReader",
    "Row",
    "collect",
    "data_extension",
    "detect_encoding",
    "parse_label",
    "read_data_file",
    "read_records",
]

# A .txt line is `sentence@label` when the text after its last `@` is one word: a letter, then letters, digits,
# `_` or `-` (so `mail@example.com` or `at @ 3 pm` are bare sentences); that word must then be a label word.
TXT_LABEL = re.compile(r"[^\W\d_][\w-]*")
# Control characters other than tab and line breaks. In ISO-8859-1 the bytes 0x80-0x9f decode to them, which in
# practice means the file is Windows-1252 (curly quotes, dashes, the euro sign) or broken, not ISO-8859-1.
CONTROL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")
C1_BYTE = re.compile(rb"[\x80-\x9f]")
# A multi-byte UTF-8 character, as bytes: in a file that is not valid UTF-8 these suggest a UTF-8 file with a
# stray byte (read as ISO-8859-1, its accents would come out as `Ã©`).
UTF8_SEQUENCE = re.compile(rb"[\xc2-\xdf][\x80-\xbf]|[\xe0-\xef][\x80-\xbf]{2}|[\xf0-\xf4][\x80-\xbf]{3}")
# JSON may escape half of a UTF-16 surrogate pair on its own ("\ud800"): not a character, not writable as UTF-8.
SURROGATE = re.compile("[\ud800-\udfff]")
CHUNK_BYTES = 1 << 20
ENCODING_FLAG = "--file_encoding"


@dataclass
class Row:
    """One input row: its line number (row number in a .json array, index in a Hub split), text and gold label."""

    line: int
    text: str
    gold: str | None
    error: str | None = None  # why the row is bad; None for a good row


@dataclass
class LabelledData:
    """Texts and label words of one split, with the line (or row) each came from for error messages."""

    texts: list[str]
    labels: list[str | None]
    lines: list[int]
    source: str

    def __len__(self) -> int:
        return len(self.texts)

    def head(self, count: int) -> LabelledData:
        return LabelledData(self.texts[:count], self.labels[:count], self.lines[:count], self.source)

    def to_dataset(self) -> Dataset:
        return Dataset.from_dict({"text": self.texts, "label": self.labels, "line": self.lines})


def parse_label(value, labels: list[str] | None) -> tuple[str | None, str | None]:
    """(label word, error) of a label cell, field or `@label`: a label word, a class id, or nothing.

    Nothing (None, or blank text) is no label, not an error; whether a label is required is the caller's rule. With
    `labels` None every word is a label (the label set is then the words seen) and a class id is an error.
    """
    if value is None or (isinstance(value, str) and not value.strip()):
        return None, None
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        return None, f"label {value!r} is not a label word or class id"
    if isinstance(value, int) or (value.strip().isdigit() and labels is not None):
        if labels is None:
            return None, f"integer label {value}; pass --label_words to name the classes"
        index = int(value)
        if not 0 <= index < len(labels):
            return None, f"class id {index} is outside 0..{len(labels) - 1} (--label_words {','.join(labels)})"
        return labels[index], None
    word = value.strip()
    if labels is not None and word not in labels:
        return None, f"label {word!r} is not one of {', '.join(labels)}"
    return word, None


def _line_of(data: bytes, position: int, lines_before: int) -> int:
    return lines_before + data[:position].count(b"\n") + 1


def detect_encoding(path: str, requested: str = "auto", opener: Callable[[], IO[bytes]] | None = None) -> str:
    """The encoding to read `path` with: `requested`, or for `auto` UTF-8 when the whole file is valid UTF-8 and
    ISO-8859-1 otherwise. The file is read in chunks through an incremental decoder; the choice is logged."""
    if requested != "auto":
        logger.info("Reading %s as %s (%s).", path, requested, ENCODING_FLAG)
        return requested
    decoder = codecs.getincrementaldecoder("utf-8")()
    lines = 0
    not_utf8 = c1 = looks_utf8 = None  # (line, byte) of the first of each; lines that look like UTF-8
    with (opener or (lambda: open(path, "rb")))() as handle:
        while chunk := handle.read(CHUNK_BYTES):
            if not_utf8 is None:
                try:
                    decoder.decode(chunk)
                except UnicodeDecodeError as err:
                    # err.object is the decoder's buffer (a partial character, no newline) and this chunk.
                    not_utf8 = (_line_of(err.object, err.start, lines), err.object[err.start])
            if c1 is None and (match := C1_BYTE.search(chunk)):
                c1 = (_line_of(chunk, match.start(), lines), chunk[match.start()])
            if looks_utf8 is None and (match := UTF8_SEQUENCE.search(chunk)):
                looks_utf8 = _line_of(chunk, match.start(), lines)
            lines += chunk.count(b"\n")
        if not_utf8 is None:
            try:
                decoder.decode(b"", final=True)
            except UnicodeDecodeError:
                not_utf8 = (lines + 1, None)
    if not_utf8 is None:
        logger.info("Reading %s as UTF-8 (valid UTF-8).", path)
        return "utf-8"
    line, byte = not_utf8
    why = f"line {line}: " + (f"byte 0x{byte:02x} is not UTF-8" if byte is not None else "ends inside a character")
    if c1 is not None:
        raise ArgumentError(
            f"{path} is neither UTF-8 ({why}) nor ISO-8859-1 text (line {c1[0]}: byte 0x{c1[1]:02x} is a control "
            f"character in ISO-8859-1); save it as UTF-8, or pass {ENCODING_FLAG} with its encoding (cp1252 for "
            "Windows-1252)."
        )
    logger.info("Reading %s as ISO-8859-1 (%s).", path, why)
    if looks_utf8 is not None:
        logger.warning(
            "%s is read as ISO-8859-1 (%s), but line %d looks like UTF-8: if the file is UTF-8, fix that byte (or "
            "pass %s utf-8 to have every such line reported).",
            path, why, looks_utf8, ENCODING_FLAG,
        )  # fmt: skip
    return "iso-8859-1"


def object_row(
    number: int,
    item,
    labels: list[str] | None,
    text_column: str,
    label_column: str,
    require_labels: bool = False,
    kind: str = "field",
) -> Row:
    """The row of one object: a .json/.jsonl object, a csv record as a dict, a Hub example (`kind`: what to call
    its keys in messages, `field` or `column`)."""
    if not isinstance(item, dict):
        return Row(number, "", None, f"expected an object with {text_column!r}, got {type(item).__name__}")
    if text_column not in item:
        found = ", ".join(map(str, item)) or "nothing"
        return Row(number, "", None, f"no {kind} {text_column!r} (found: {found}); set --text_column")
    value = item[text_column]
    text = ("" if value is None else str(value)).strip()
    gold, error = parse_label(item.get(label_column), labels)
    if require_labels and label_column not in item:
        found = ", ".join(map(str, item))
        error = error or f"no {kind} {label_column!r} (found: {found}); set --label_column"
    if not text:
        error = f"empty text in {kind} {text_column!r}"
    elif error is None and CONTROL.search(text):
        error = f"control characters in the text (a file in another encoding? pass {ENCODING_FLAG})"
    elif error is None and SURROGATE.search(text):
        error = "a lone UTF-16 surrogate escape (\\ud800-\\udfff) in the text, which is no character"
    if error is None and gold is None and require_labels:
        error = f"no label in {kind} {label_column!r}; training and evaluation data need one in every row"
    return Row(number, text, gold, error)


class InputReader:
    """The rows of a data file (.txt, .csv, .jsonl streamed; .json loaded whole) or of an in-memory split.

    Iterating gives every row, good or bad, in input order; blank lines are not rows. Iterating again reads the
    input again from the start. With `require_labels` (training and evaluation data) a row without a label is bad.
    `opener` reads the bytes from elsewhere than `source` (a member of an archive); `source` still names them.
    """

    def __init__(
        self,
        source: str | LabelledData,
        labels: list[str] | None,
        text_column: str = "sentence",
        label_column: str = "label",
        encoding: str = "auto",
        require_labels: bool = False,
        opener: Callable[[], IO[bytes]] | None = None,
    ):
        self.source, self.labels = source, labels
        self.text_column, self.label_column = text_column, label_column
        self.require_labels = require_labels
        if isinstance(source, str):
            self.suffix = data_extension(source)
            self._open = opener or (lambda: open(source, "rb"))
            self.encoding = detect_encoding(source, encoding or "auto", self._open)
        else:
            self.suffix, self.encoding = None, None

    @property
    def name(self) -> str:
        return self.source if isinstance(self.source, str) else self.source.source

    def __iter__(self) -> Iterator[Row]:
        if isinstance(self.source, LabelledData):
            for text, label, line in zip(self.source.texts, self.source.labels, self.source.lines):
                gold, error = parse_label(label, self.labels)
                yield Row(line, text.strip(), gold, error or (None if text.strip() else "empty text"))
        else:
            yield from FORMATS[self.suffix](self)

    def _decode(self, raw: bytes, number: int) -> tuple[str, str | None]:
        if number == 1 and codecs.lookup(self.encoding).name == "utf-8":
            raw = raw.removeprefix(codecs.BOM_UTF8)
        try:
            return raw.decode(self.encoding), None
        except UnicodeDecodeError as err:
            return raw.decode(self.encoding, "replace"), f"bytes that are not {self.encoding} ({err.reason})"

    def _txt_rows(self) -> Iterator[Row]:
        with self._open() as handle:
            for number, raw in enumerate(handle, start=1):
                line, error = self._decode(raw, number)
                line = line.strip()
                if not line:
                    continue
                sentence, sep, tail = line.rpartition("@")
                text, gold = line, None
                if sep and TXT_LABEL.fullmatch(tail.strip()):
                    text, tail = sentence.strip(), tail.strip()
                    gold, label_error = parse_label(tail, self.labels)
                    if label_error is not None:
                        label_error += " (a .txt line whose text after the last `@` is one word is `sentence@label`)"
                    error = error or label_error
                    if not text:
                        error = error or "empty text before the `@`"
                if error is None and CONTROL.search(text):
                    error = (
                        f"control characters, which {self.encoding} text does not hold: is the file in another "
                        f"encoding (UTF-8, Windows-1252)? Pass {ENCODING_FLAG}"
                    )
                if error is None and gold is None and self.require_labels:
                    error = (
                        "no `@` and label word after the sentence; training and evaluation data need "
                        "`sentence@label` lines (a file of bare sentences can only be scored, with --do_predict)"
                    )
                yield Row(number, text, gold, error)

    def _jsonl_rows(self) -> Iterator[Row]:
        with self._open() as handle:
            for number, raw in enumerate(handle, start=1):
                line, error = self._decode(raw, number)
                if not line.strip():
                    continue
                if error is None:
                    try:
                        item = json.loads(line)
                    except json.JSONDecodeError as err:
                        error = f"malformed JSON ({err.msg})"
                if error is not None:
                    yield Row(number, "", None, error)
                    continue
                yield self._object_row(number, item)

    def _object_row(self, number: int, item, kind: str = "field") -> Row:
        return object_row(number, item, self.labels, self.text_column, self.label_column, self.require_labels, kind)

    def _json_rows(self) -> Iterator[Row]:
        # A JSON array cannot be streamed without a streaming parser: it is loaded whole. Use .jsonl for big inputs.
        with self._open() as handle:
            raw = handle.read()
        try:
            loaded = json.loads(raw.decode(self.encoding).removeprefix("\ufeff"))
        except UnicodeDecodeError as err:
            line = raw[: err.start].count(b"\n") + 1
            raise ArgumentError(f"{self.source}:{line}: bytes that are not {self.encoding}.") from None
        except json.JSONDecodeError as err:
            raise ArgumentError(f"{self.source}:{err.lineno}: malformed JSON ({err.msg}).") from None
        if isinstance(loaded, dict) and "data" in loaded:
            loaded = loaded["data"]
        if not isinstance(loaded, list):
            raise ArgumentError(f'{self.source}: expected a JSON list of objects (or {{"data": [...]}}).')
        for number, item in enumerate(loaded, start=1):
            yield self._object_row(number, item)

    def _csv_rows(self) -> Iterator[Row]:
        undecodable: set[int] = set()
        with self._open() as handle:

            def lines() -> Iterator[str]:
                for number, raw in enumerate(handle, start=1):
                    line, error = self._decode(raw, number)
                    if error is not None:
                        undecodable.add(number)
                    yield line

            reader = csv.reader(lines())
            try:
                header = next(reader, None)
                if header is None:
                    raise ArgumentError(f"{self.source} is empty.")
                header = [name.strip() for name in header]
                for column, flag in ((self.text_column, "text"), (self.label_column, "label")):
                    if column not in header and (flag == "text" or self.require_labels):
                        raise ArgumentError(
                            f"{self.source}:1: no column {column!r} (found: {', '.join(header)}); set --{flag}_column."
                        )
                end = reader.line_num
                for record in reader:
                    start, end = end + 1, reader.line_num
                    if not any(cell.strip() for cell in record):
                        continue
                    bad_bytes = any(number in undecodable for number in range(start, end + 1))
                    undecodable.clear()  # csv.reader reads no further than the end of the record
                    if bad_bytes:
                        yield Row(start, "", None, f"bytes that are not {self.encoding}")
                        continue
                    item: dict[str, str] = {}
                    for index, name in enumerate(header):  # of two columns of one name, the first counts
                        item.setdefault(name, record[index] if index < len(record) else "")
                    yield self._object_row(start, item, "column")
            except csv.Error as err:
                raise ArgumentError(f"{self.source}:{reader.line_num}: malformed CSV ({err}).") from None


# The formats read, by extension (lower case), in the order messages list them.
FORMATS: dict[str, Callable[[InputReader], Iterator[Row]]] = {
    ".txt": InputReader._txt_rows,
    ".csv": InputReader._csv_rows,
    ".json": InputReader._json_rows,
    ".jsonl": InputReader._jsonl_rows,
}
DATA_EXTENSIONS = tuple(FORMATS)


def data_extension(path: str) -> str:
    """The extension of the data file `path`, lower case, as a key of `FORMATS`; any other is refused."""
    extension = os.path.splitext(path)[1].lower()
    if extension not in FORMATS:
        raise ArgumentError(
            f"{path}: a data file must end in {', '.join(DATA_EXTENSIONS)}, got {extension or 'no extension'}."
        )
    return extension


def collect(rows: Iterable[Row], source: str) -> LabelledData:
    """The rows as LabelledData; the first bad row is an error naming its file and line."""
    texts, labels, lines = [], [], []
    for row in rows:
        if row.error is not None:
            raise ArgumentError(f"{source}:{row.line}: {row.error}.")
        texts.append(row.text)
        labels.append(row.gold)
        lines.append(row.line)
    if not texts:
        raise ArgumentError(f"{source} holds no examples.")
    return LabelledData(texts, labels, lines, source)


def read_data_file(
    path: str, args, labels: list[str] | None, opener: Callable[[], IO[bytes]] | None = None
) -> LabelledData:
    """Read a training or evaluation file in any supported format (every row labelled); errors name file and line.

    `args` gives --text_column, --label_column and --file_encoding (a DataTrainingArguments).
    """
    reader = InputReader(
        path, labels, args.text_column, args.label_column, args.file_encoding, require_labels=True, opener=opener
    )
    return collect(reader, path)


def read_records(records: Iterable[dict], source: str, args, labels: list[str] | None, first_line: int = 0):
    """Labelled examples from objects in memory (a Hub dataset split), checked as a file's rows are."""
    rows = (
        object_row(number, item, labels, args.text_column, args.label_column, require_labels=True, kind="column")
        for number, item in enumerate(records, start=first_line)
    )
    return collect(rows, source)
