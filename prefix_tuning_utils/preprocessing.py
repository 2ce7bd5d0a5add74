"""Turning labelled sentences into model inputs: text-to-text (seq2seq) or prompt + answer (decoder-only)."""

from __future__ import annotations

from datasets import Dataset
from transformers import DataCollatorForSeq2Seq

from .arguments import DataTrainingArguments
from .input_format import InputFormat, answer_token_ids


__all__ = ["get_data_collator", "max_label_tokens", "tokenize_dataset"]


def tokenize_dataset(
    dataset: Dataset, tokenizer, args: DataTrainingArguments, description: str, task: str = "seq2seq"
) -> Dataset:
    """Tokenise `text` and the label word; no padding here (it is done per batch).

    seq2seq: the input is --source_prefix + text, the target the label word.
    causal: the input is the --prompt_template followed by " label</s>"; the loss is on the answer tokens only.
    """

    fmt = InputFormat.from_args(args, task)

    def tokenize_seq2seq(batch):
        inputs = [fmt.source(text) for text in batch["text"]]
        features = tokenizer(inputs, max_length=args.max_source_length, truncation=True)
        targets = tokenizer(text_target=batch["label"], max_length=args.max_target_length, truncation=True)
        features["labels"] = targets["input_ids"]
        return features

    def tokenize_causal(batch):
        prompts = tokenizer(
            [fmt.source(text) for text in batch["text"]], max_length=args.max_source_length, truncation=True
        )["input_ids"]
        answers = answer_token_ids(tokenizer, batch["label"], "causal")
        input_ids = [p + a[: args.max_target_length] for p, a in zip(prompts, answers)]
        labels = [[-100] * len(p) + a[: args.max_target_length] for p, a in zip(prompts, answers)]
        return {"input_ids": input_ids, "attention_mask": [[1] * len(ids) for ids in input_ids], "labels": labels}

    return dataset.map(
        tokenize_seq2seq if task == "seq2seq" else tokenize_causal,
        batched=True,
        remove_columns=dataset.column_names,
        num_proc=args.preprocessing_num_workers,
        load_from_cache_file=not args.overwrite_cache,
        desc=f"Tokenising {description}",
    )


def max_label_tokens(tokenizer, labels: list[str], task: str = "seq2seq") -> int:
    """Length in tokens of the longest answer (with the end-of-sequence token)."""
    return max(len(ids) for ids in answer_token_ids(tokenizer, labels, task))


def get_data_collator(tokenizer, pad_to_multiple_of: int | None = None) -> DataCollatorForSeq2Seq:
    """Pad each batch to its longest example; label padding is -100 so it is ignored by the loss.

    Works for both tasks: a decoder-only example's input_ids and labels have the same length, so padding both
    on the tokenizer's side keeps them aligned.
    """
    return DataCollatorForSeq2Seq(
        tokenizer, label_pad_token_id=-100, pad_to_multiple_of=pad_to_multiple_of, return_tensors="pt"
    )
