"""The formats the reader reads are the ones the argument check accepts: one map of extensions, in readers.py."""

from __future__ import annotations

import pytest

from prefix_tuning_utils import arguments, readers
from prefix_tuning_utils.arguments import ArgumentError, DataTrainingArguments
from prefix_tuning_utils.readers import InputReader


LABELS = ["negative", "positive"]
ROWS = [("Profit rose .", "positive"), ("Sales fell .", "negative")]
CONTENT = {
    ".txt": "Profit rose .@positive\nSales fell .@negative\n",
    ".csv": 'sentence,label\n"Profit rose .",positive\n"Sales fell .",negative\n',
    ".json": '[{"sentence": "Profit rose .", "label": "positive"}, {"sentence": "Sales fell .", "label": "negative"}]',
    ".jsonl": '{"sentence": "Profit rose .", "label": "positive"}\n{"sentence": "Sales fell .", "label": "negative"}\n',
}
# JSON content under names the reader does not know: read as JSON, they would give the rows above.
JSON_LINES = CONTENT[".jsonl"]


def test_the_four_formats_are_read_by_their_own_reader(tmp_path):
    assert readers.DATA_EXTENSIONS == (".txt", ".csv", ".json", ".jsonl")
    for extension, text in CONTENT.items():
        for name in (f"data{extension}", f"DATA{extension.upper()}"):
            path = tmp_path / name
            path.write_text(text, encoding="utf-8")
            rows = [(row.text, row.gold) for row in InputReader(str(path), LABELS)]
            assert rows == ROWS, (name, rows)


@pytest.mark.parametrize("name", ["data.tsv", "data.ndjson", "data", "data.json.bak", ".json"])
def test_an_unknown_extension_is_refused_by_the_reader_and_the_argument_check(tmp_path, name):
    """Never read as JSON (a .ndjson file would otherwise pass for a .json list and fail as malformed JSON)."""
    path = tmp_path / name
    path.write_text(JSON_LINES, encoding="utf-8")
    with pytest.raises(ArgumentError, match=r"a data file must end in \.txt, \.csv, \.json, \.jsonl, got "):
        InputReader(str(path), LABELS)
    with pytest.raises(ArgumentError, match=r"^--train_file must end in \.txt, \.csv, \.json, \.jsonl, got "):
        DataTrainingArguments(train_file=str(path), label_words=",".join(LABELS))


def test_an_extension_added_to_the_argument_check_only_is_still_refused_by_the_reader(tmp_path, monkeypatch):
    """The check takes its list from readers; were another list added to it alone, the reader would still refuse
    the file instead of reading it as JSON."""
    monkeypatch.setattr(arguments, "DATA_EXTENSIONS", (*readers.DATA_EXTENSIONS, ".tsv"))
    path = tmp_path / "data.tsv"
    path.write_text(JSON_LINES, encoding="utf-8")
    args = DataTrainingArguments(train_file=str(path), label_words=",".join(LABELS))  # passes the widened check
    with pytest.raises(ArgumentError, match=r"data\.tsv: a data file must end in .*, got \.tsv\.$"):
        readers.read_data_file(args.train_file, args, LABELS)
