"""Tokenisation of labelled sentences into text-to-text training examples, and batching."""

from __future__ import annotations

from datasets import Dataset
from transformers import DataCollatorForSeq2Seq

from .arguments import DataTrainingArguments


__all__ = ["tokenize_dataset", "get_data_collator", "max_label_tokens"]


def tokenize_dataset(
    dataset: Dataset, tokenizer, args: DataTrainingArguments, description: str, with_labels: bool = True
) -> Dataset:
    """Tokenise `text` (with --source_prefix) and the label word; no padding here (it is done per batch)."""

    def tokenize(batch):
        inputs = [args.source_prefix + text for text in batch["text"]]
        features = tokenizer(inputs, max_length=args.max_source_length, truncation=True)
        if with_labels:
            targets = tokenizer(text_target=batch["label"], max_length=args.max_target_length, truncation=True)
            features["labels"] = targets["input_ids"]
        return features

    return dataset.map(
        tokenize,
        batched=True,
        remove_columns=dataset.column_names,
        num_proc=args.preprocessing_num_workers,
        load_from_cache_file=not args.overwrite_cache,
        desc=f"Tokenising {description}",
    )


def max_label_tokens(tokenizer, labels: list[str]) -> int:
    """Length in tokens of the longest label word (with the end-of-sequence token)."""
    return max(len(ids) for ids in tokenizer(text_target=labels)["input_ids"])


def get_data_collator(tokenizer, pad_to_multiple_of: int | None = None) -> DataCollatorForSeq2Seq:
    """Pad each batch to its longest example; label padding is -100 so it is ignored by the loss."""
    return DataCollatorForSeq2Seq(
        tokenizer, label_pad_token_id=-100, pad_to_multiple_of=pad_to_multiple_of, return_tensors="pt"
    )
