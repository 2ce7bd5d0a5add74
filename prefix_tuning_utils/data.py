"""Loading labelled sentences (Financial PhraseBank, local files, Hub datasets) and turning them into examples."""

from __future__ import annotations

import csv
import io
import json
import logging
import zipfile
from collections import Counter
from dataclasses import dataclass

from datasets import Dataset, DatasetDict

from .arguments import ArgumentError, DataTrainingArguments


logger = logging.getLogger(__name__)

__all__ = [
    "FINANCIAL_PHRASEBANK_CONFIGS",
    "FINANCIAL_PHRASEBANK_LABELS",
    "LabelledData",
    "load_financial_phrasebank",
    "get_datasets",
    "parse_phrasebank_lines",
    "read_data_file",
    "stratified_split",
    "to_dataset_dict",
    "warn_conflicting_duplicates",
]

FINANCIAL_PHRASEBANK_REPO = "takala/financial_phrasebank"
FINANCIAL_PHRASEBANK_ARCHIVE = "data/FinancialPhraseBank-v1.0.zip"
FINANCIAL_PHRASEBANK_CONFIGS = {
    "sentences_allagree": "Sentences_AllAgree.txt",
    "sentences_75agree": "Sentences_75Agree.txt",
    "sentences_66agree": "Sentences_66Agree.txt",
    "sentences_50agree": "Sentences_50Agree.txt",
}
FINANCIAL_PHRASEBANK_LABELS = ["negative", "neutral", "positive"]
PHRASEBANK_ENCODING = "iso-8859-1"


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


def parse_phrasebank_lines(raw: bytes, source: str, labels: list[str] | None) -> LabelledData:
    """Parse the Financial PhraseBank format: one `sentence@label` per line, split on the *last* `@`.

    The original files are ISO-8859-1 with CRLF line endings; both are handled here.
    """
    text = raw.decode(PHRASEBANK_ENCODING)
    texts, out_labels, lines = [], [], []
    for number, line in enumerate(text.splitlines(), start=1):
        line = line.strip()
        if not line:
            continue
        sentence, sep, label = line.rpartition("@")
        if not sep:
            raise ArgumentError(f"{source}:{number}: no `@` separating sentence and label; expected `sentence@label`.")
        sentence, label = sentence.strip(), label.strip()
        if not sentence:
            raise ArgumentError(f"{source}:{number}: empty sentence before the `@`.")
        if labels is not None and label not in labels:
            raise ArgumentError(
                f"{source}:{number}: unknown label {label!r}; expected one of {', '.join(labels)} "
                "(set --label_words to change the label set)."
            )
        texts.append(sentence)
        out_labels.append(label)
        lines.append(number)
    if not texts:
        raise ArgumentError(f"{source} holds no examples.")
    return LabelledData(texts, out_labels, lines, source)


def _label_word(value, labels: list[str] | None, where: str) -> str:
    if isinstance(value, bool):
        raise ArgumentError(f"{where}: label {value!r} is not a label word or class id.")
    if isinstance(value, int) or (isinstance(value, str) and value.strip().isdigit() and labels is not None):
        index = int(value)
        if labels is None:
            raise ArgumentError(f"{where}: integer label {value}; pass --label_words to name the classes.")
        if not 0 <= index < len(labels):
            raise ArgumentError(f"{where}: class id {index} is outside 0..{len(labels) - 1} (--label_words).")
        return labels[index]
    word = str(value).strip()
    if labels is not None and word not in labels:
        raise ArgumentError(f"{where}: unknown label {word!r}; expected one of {', '.join(labels)}.")
    return word


def _rows_to_data(rows, path: str, args: DataTrainingArguments, labels: list[str] | None, first_line: int):
    texts, out_labels, lines = [], [], []
    for offset, row in enumerate(rows):
        number = first_line + offset
        where = f"{path}:{number}"
        if not isinstance(row, dict):
            raise ArgumentError(f"{where}: expected an object with {args.text_column!r} and {args.label_column!r}.")
        if args.text_column not in row:
            raise ArgumentError(
                f"{where}: no column {args.text_column!r} (found: {', '.join(map(str, row))}); set --text_column."
            )
        if args.label_column not in row:
            raise ArgumentError(
                f"{where}: no column {args.label_column!r} (found: {', '.join(map(str, row))}); set --label_column."
            )
        text = str(row[args.text_column] or "").strip()
        if not text:
            raise ArgumentError(f"{where}: empty text in column {args.text_column!r}.")
        texts.append(text)
        out_labels.append(_label_word(row[args.label_column], labels, where))
        lines.append(number)
    if not texts:
        raise ArgumentError(f"{path} holds no examples.")
    return LabelledData(texts, out_labels, lines, path)


def _decode_utf8(raw: bytes, path: str) -> str:
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = raw[: err.start].count(b"\n") + 1
        raise ArgumentError(
            f"{path}:{line}: bytes that are not UTF-8; save csv/json files as UTF-8 (only .txt files in the "
            "Financial PhraseBank format are read as ISO-8859-1)."
        ) from None


def read_data_file(path: str, args: DataTrainingArguments, labels: list[str] | None) -> LabelledData:
    """Read one data file in any supported format; errors name the file and line."""
    with open(path, "rb") as handle:
        raw = handle.read()
    if not raw.strip():
        raise ArgumentError(f"{path} is empty.")
    suffix = path.lower().rsplit(".", 1)[-1]
    if suffix == "txt":
        return parse_phrasebank_lines(raw, path, labels)
    text = _decode_utf8(raw, path)
    if suffix == "csv":
        return _rows_to_data(csv.DictReader(io.StringIO(text)), path, args, labels, first_line=2)
    if suffix == "jsonl":
        rows = []
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                rows.append((number, json.loads(line)))
            except json.JSONDecodeError as err:
                raise ArgumentError(f"{path}:{number}: malformed JSON ({err.msg}).") from None
        data = _rows_to_data([row for _, row in rows], path, args, labels, first_line=1)
        data.lines = [number for number, _ in rows]
        return data
    try:
        loaded = json.loads(text)
    except json.JSONDecodeError as err:
        raise ArgumentError(f"{path}:{err.lineno}: malformed JSON ({err.msg}).") from None
    if isinstance(loaded, dict) and "data" in loaded:
        loaded = loaded["data"]
    if not isinstance(loaded, list):
        raise ArgumentError(f'{path}: expected a JSON list of objects (or {{"data": [...]}}).')
    return _rows_to_data(loaded, path, args, labels, first_line=1)


def load_financial_phrasebank(
    config_name: str = "sentences_allagree",
    revision: str = "main",
    cache_dir: str | None = None,
    token: str | None = None,
) -> LabelledData:
    """Download the original Financial PhraseBank archive from the Hub and parse one agreement level.

    `datasets>=4` no longer runs the dataset's loading script, so we fetch the archive it used
    (`data/FinancialPhraseBank-v1.0.zip` in `takala/financial_phrasebank`) and parse it ourselves.
    """
    from huggingface_hub import hf_hub_download

    if config_name not in FINANCIAL_PHRASEBANK_CONFIGS:
        raise ArgumentError(
            f"--dataset_config_name {config_name!r} is not a financial_phrasebank configuration; use one of "
            f"{', '.join(FINANCIAL_PHRASEBANK_CONFIGS)}."
        )
    archive = hf_hub_download(
        FINANCIAL_PHRASEBANK_REPO,
        FINANCIAL_PHRASEBANK_ARCHIVE,
        repo_type="dataset",
        revision=revision,
        cache_dir=cache_dir,
        token=token,
    )
    member = f"FinancialPhraseBank-v1.0/{FINANCIAL_PHRASEBANK_CONFIGS[config_name]}"
    with zipfile.ZipFile(archive) as zipped:
        raw = zipped.read(member)
    return parse_phrasebank_lines(raw, f"{FINANCIAL_PHRASEBANK_REPO}:{member}", FINANCIAL_PHRASEBANK_LABELS)


def _load_hub_dataset(args: DataTrainingArguments, model_cache_dir, token, labels):
    import datasets

    loaded = datasets.load_dataset(
        args.dataset_name,
        args.dataset_config_name,
        revision=args.dataset_revision,
        cache_dir=model_cache_dir,
        token=token,
    )
    out = {}
    for split, dataset in loaded.items():
        feature = dataset.features.get(args.label_column)
        split_labels = labels
        if split_labels is None and feature is not None and hasattr(feature, "names"):
            split_labels = list(feature.names)
        out[split] = _rows_to_data(dataset, f"{args.dataset_name}[{split}]", args, split_labels, first_line=0)
    return out


def stratified_split(data: LabelledData, percentage: float, seed: int) -> tuple[LabelledData, LabelledData]:
    """Hold out `percentage` % of the examples, stratified by label (scikit-learn's algorithm, fixed seed)."""
    from sklearn.model_selection import train_test_split

    counts = Counter(data.labels)
    indices = list(range(len(data)))
    try:
        train_idx, held_idx = train_test_split(
            indices, test_size=percentage / 100, stratify=data.labels, random_state=seed
        )
    except ValueError as err:
        rare = ", ".join(f"{label} ({n})" for label, n in sorted(counts.items()) if n < 2)
        raise ArgumentError(
            f"Cannot hold out {percentage:g} % of {data.source} stratified by label: {err}"
            + (f" Labels with fewer than 2 examples: {rare}." if rare else "")
            + " Change --validation_split_percentage or pass --validation_file."
        ) from None
    held_labels = set(data.labels[i] for i in held_idx)
    missing = sorted(set(counts) - held_labels)
    if missing:
        raise ArgumentError(
            f"Holding out {percentage:g} % of {data.source} leaves no validation example of label(s) "
            f"{', '.join(missing)}; raise --validation_split_percentage or pass --validation_file."
        )

    def take(idx):
        idx = sorted(idx)
        return LabelledData(
            [data.texts[i] for i in idx], [data.labels[i] for i in idx], [data.lines[i] for i in idx], data.source
        )

    return take(train_idx), take(held_idx)


def warn_conflicting_duplicates(data: LabelledData) -> list[tuple[str, list[int]]]:
    """Warn about sentences that occur several times with different labels (they exist in Sentences_50Agree)."""
    seen: dict[str, list[tuple[int, str]]] = {}
    for text, label, line in zip(data.texts, data.labels, data.lines):
        seen.setdefault(text, []).append((line, label))
    conflicts = []
    for text, occurrences in seen.items():
        if len({label for _, label in occurrences}) > 1:
            lines = [line for line, _ in occurrences]
            conflicts.append((text, lines))
            detail = ", ".join(f"line {line}: {label}" for line, label in occurrences)
            logger.warning("%s: the same sentence has conflicting labels (%s): %.60s", data.source, detail, text)
    return conflicts


def get_datasets(
    args: DataTrainingArguments, cache_dir: str | None = None, token: str | None = None
) -> tuple[dict[str, LabelledData], list[str]]:
    """Return the splits (`train`, `validation`, `test`, as available) and the list of label words."""
    labels = args.label_list
    splits: dict[str, LabelledData] = {}
    if args.dataset_name is not None:
        if args.dataset_name.rstrip("/").split("/")[-1] == "financial_phrasebank":
            labels = labels or list(FINANCIAL_PHRASEBANK_LABELS)
            splits["train"] = load_financial_phrasebank(
                args.dataset_config_name or "sentences_allagree", args.dataset_revision, cache_dir, token
            )
        else:
            splits.update(_load_hub_dataset(args, cache_dir, token, labels))
    # --test_file is not read here: batch prediction (predict.py) streams it.
    for split, path in (("train", args.train_file), ("validation", args.validation_file)):
        if path is not None:
            splits[split] = read_data_file(path, args, labels)
    if labels is None:
        seen = set()
        for split in ("train", "validation"):
            if split in splits:
                seen.update(splits[split].labels)
        labels = sorted(label for label in seen if label is not None)
    for data in splits.values():
        warn_conflicting_duplicates(data)
    if "train" in splits and "validation" not in splits:
        splits["train"], splits["validation"] = stratified_split(
            splits["train"], args.validation_split_percentage, args.split_seed
        )
    if len(labels) < 2 and not splits and args.test_file is not None:
        raise ArgumentError(
            "Prediction needs the label words: pass --label_words, or a --model_name_or_path trained by this script "
            "(its prefix_tuning.json names them)."
        )
    if len(labels) < 2:
        raise ArgumentError(f"The data has fewer than two labels ({', '.join(labels) or 'none'}); check the files.")
    return splits, labels


def to_dataset_dict(splits: dict[str, LabelledData]) -> DatasetDict:
    return DatasetDict({name: data.to_dataset() for name, data in splits.items()})
