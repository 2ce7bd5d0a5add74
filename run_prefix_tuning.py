#!/usr/bin/env python
"""Prefix-tune a frozen seq2seq model (T5) on a text classification task, text-to-text.

    accelerate launch run_prefix_tuning.py recipes/t5-large_financial_phrasebank.yaml
    python run_prefix_tuning.py recipes/quickstart.yaml --num_train_epochs 2   # flags override the recipe
    python run_prefix_tuning.py --help

Only the prefix (a few virtual key/value vectors per attention layer) is trained; the adapter written to
--output_dir loads with plain `PeftModel.from_pretrained` (with --prefix_scope all: after `import prefix_tuning_utils`).
"""

import logging
import os
import sys

import datasets
import transformers
from transformers import Seq2SeqTrainer, set_seed
from transformers.trainer_utils import get_last_checkpoint

from prefix_tuning_utils.all_layer_prefix import check_scope_supported
from prefix_tuning_utils.arguments import ArgumentError, parse_args
from prefix_tuning_utils.data import get_datasets, to_dataset_dict
from prefix_tuning_utils.metrics import build_compute_metrics
from prefix_tuning_utils.modeling import (
    build_prefix_config,
    build_prefix_model,
    check_model_config,
    get_model_config,
    get_tokenizer,
    initialises_from_config,
    load_base_model,
    save_initialised_base,
    trainable_parameters,
)
from prefix_tuning_utils.preprocessing import get_data_collator, max_label_tokens, tokenize_dataset


logger = logging.getLogger(__name__)


def setup_logging(training_args) -> None:
    logging.basicConfig(
        format="%(asctime)s - %(levelname)s - %(name)s - %(message)s",
        datefmt="%m/%d/%Y %H:%M:%S",
        handlers=[logging.StreamHandler(sys.stdout)],
    )
    if training_args.should_log:
        transformers.utils.logging.set_verbosity_info()
    log_level = training_args.get_process_log_level()
    logger.setLevel(log_level)
    logging.getLogger("prefix_tuning_utils").setLevel(log_level)
    datasets.utils.logging.set_verbosity(log_level)
    transformers.utils.logging.set_verbosity(log_level)
    transformers.utils.logging.enable_default_handler()
    transformers.utils.logging.enable_explicit_format()
    logger.warning(
        f"Process rank: {training_args.process_index}, device: {training_args.device}, "
        f"n_gpu: {training_args.n_gpu}, distributed: {training_args.parallel_mode.value}, "
        f"bf16: {training_args.bf16}"
    )


def main(argv=None):
    model_args, data_args, prefix_args, training_args = parse_args(argv)
    setup_logging(training_args)
    logger.info(f"Model {model_args}\nData {data_args}\nPrefix {prefix_args}\nTraining {training_args}")

    # Checks that need no weights: config, tokenizer, data.
    config = get_model_config(model_args)
    check_model_config(config, fp16=training_args.fp16)
    check_scope_supported(config, prefix_args.prefix_scope)
    tokenizer = get_tokenizer(model_args)
    splits, labels = get_datasets(data_args, model_args.cache_dir, model_args.token)
    if training_args.do_train and "train" not in splits:
        raise ArgumentError("--do_train needs training data: --dataset_name or --train_file.")
    if training_args.do_eval and "validation" not in splits:
        raise ArgumentError("--do_eval needs validation data: --validation_file, or training data to hold out from.")
    if training_args.do_predict and "test" not in splits:
        raise ArgumentError("--do_predict needs test data: --test_file.")
    for split, limit in (
        ("train", data_args.max_train_samples),
        ("validation", data_args.max_eval_samples),
        ("test", data_args.max_predict_samples),
    ):
        if limit is not None and split in splits:
            splits[split] = splits[split].head(limit)
    sizes = ", ".join(f"{name}: {len(data)}" for name, data in splits.items())
    logger.info(f"Labels: {', '.join(labels)}; examples: {sizes}")

    last_checkpoint = None
    if os.path.isdir(training_args.output_dir) and training_args.do_train:
        last_checkpoint = get_last_checkpoint(training_args.output_dir)
        if last_checkpoint is not None and training_args.resume_from_checkpoint is None:
            logger.info(f"Checkpoint found, resuming training at {last_checkpoint}.")
    set_seed(training_args.seed)

    # Model: frozen base + trainable prefix.
    model = load_base_model(model_args, config)
    model = build_prefix_model(model, build_prefix_config(config, prefix_args), prefix_args.prefix_scope)
    if initialises_from_config(model_args) and training_args.should_save:
        save_initialised_base(model, tokenizer, training_args.output_dir)
    trainable, total = trainable_parameters(model)
    logger.info(f"Trainable parameters: {trainable:,} of {total:,} ({100 * trainable / total:.3f} %)")

    label_length = max_label_tokens(tokenizer, labels)
    if training_args.generation_max_length is None:
        training_args.generation_max_length = label_length + 2
    with training_args.main_process_first(desc="tokenisation"):
        tokenized = {
            name: tokenize_dataset(dataset, tokenizer, data_args, name)
            for name, dataset in to_dataset_dict(splits).items()
        }

    trainer = Seq2SeqTrainer(
        model=model,
        args=training_args,
        train_dataset=tokenized.get("train") if training_args.do_train else None,
        eval_dataset=tokenized.get("validation") if training_args.do_eval else None,
        processing_class=tokenizer,
        data_collator=get_data_collator(tokenizer, pad_to_multiple_of=8 if training_args.bf16 else None),
        compute_metrics=build_compute_metrics(tokenizer, labels) if training_args.predict_with_generate else None,
    )

    if training_args.do_train:
        logger.info("*** Train ***")
        checkpoint = training_args.resume_from_checkpoint or last_checkpoint
        train_result = trainer.train(resume_from_checkpoint=checkpoint)
        trainer.save_model()
        metrics = train_result.metrics
        metrics["train_samples"] = len(tokenized["train"])
        metrics["trainable_parameters"] = trainable
        metrics["trainable_percent"] = 100 * trainable / total
        trainer.log_metrics("train", metrics)
        trainer.save_metrics("train", metrics)
        trainer.save_state()

    if training_args.do_eval:
        logger.info("*** Evaluate ***")
        metrics = trainer.evaluate(metric_key_prefix="eval")
        metrics["eval_samples"] = len(tokenized["validation"])
        trainer.log_metrics("eval", metrics)
        trainer.save_metrics("eval", metrics)

    if training_args.do_predict:
        logger.info("*** Predict ***")
        results = trainer.predict(tokenized["test"], metric_key_prefix="predict")
        metrics = results.metrics
        metrics["predict_samples"] = len(tokenized["test"])
        trainer.log_metrics("predict", metrics)
        trainer.save_metrics("predict", metrics)

    return trainer


def cli() -> None:
    try:
        main()
    except ArgumentError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    cli()
