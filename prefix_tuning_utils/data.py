"""The splits to train and evaluate on: Financial PhraseBank, local files, Hub datasets; the held-out split.

Files are read by `readers.py` (one reader for every format, also used by batch prediction).
"""

from __future__ import annotations

import io
import logging
import zipfile
from collections import Counter

from datasets import DatasetDict

from .arguments import DataTrainingArguments
from .errors import ArgumentError
from .hub_files import get_hub_file
from .readers import InputReader, LabelledData, collect, read_data_file, read_records


logger = logging.getLogger(__name__)

__all__ = [
    "FINANCIAL_PHRASEBANK_CONFIGS",
    "FINANCIAL_PHRASEBANK_LABELS",
    "LabelledData",
    "load_financial_phrasebank",
    "get_datasets",
    "hub_dataset_repo",
    "is_financial_phrasebank",
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
    if config_name not in FINANCIAL_PHRASEBANK_CONFIGS:
        raise ArgumentError(
            f"--dataset_config_name {config_name!r} is not a financial_phrasebank configuration; use one of "
            f"{', '.join(FINANCIAL_PHRASEBANK_CONFIGS)}."
        )
    archive = get_hub_file(
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
    name = f"{FINANCIAL_PHRASEBANK_REPO}:{member}"
    reader = InputReader(name, FINANCIAL_PHRASEBANK_LABELS, require_labels=True, opener=lambda: io.BytesIO(raw))
    return collect(reader, name)


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
        out[split] = read_records(dataset, f"{args.dataset_name}[{split}]", args, split_labels, first_line=0)
    return out


def stratified_split(data: LabelledData, percentage: float, seed: int) -> tuple[LabelledData, LabelledData]:
    """Hold out `percentage` % of the examples, stratified by label (scikit-learn's algorithm, fixed seed).

    Not `datasets.Dataset.train_test_split(stratify_by_column=...)`: its own port of the algorithm holds out other
    examples for the same seed (227 of Sentences_AllAgree, but not the ones every run so far was evaluated on).
    """
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


def is_financial_phrasebank(dataset_name: str) -> bool:
    return dataset_name.rstrip("/").split("/")[-1] == "financial_phrasebank"


def hub_dataset_repo(dataset_name: str) -> str:
    """The Hub dataset repo --dataset_name downloads from (financial_phrasebank: the repo of its original archive)."""
    return FINANCIAL_PHRASEBANK_REPO if is_financial_phrasebank(dataset_name) else dataset_name


def get_datasets(
    args: DataTrainingArguments, cache_dir: str | None = None, token: str | None = None
) -> tuple[dict[str, LabelledData], list[str]]:
    """Return the splits (`train`, `validation`, `test`, as available) and the list of label words."""
    labels = args.label_list
    splits: dict[str, LabelledData] = {}
    if args.dataset_name is not None:
        if is_financial_phrasebank(args.dataset_name):
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
