#!/usr/bin/env python
"""Prefix-tune a frozen seq2seq model (T5) on a text classification task, text-to-text.

    accelerate launch run_prefix_tuning.py recipes/t5-large_financial_phrasebank.yaml
    python run_prefix_tuning.py recipes/quickstart.yaml --num_train_epochs 2   # flags override the recipe
    python run_prefix_tuning.py --help

Only the prefix (a few virtual key/value vectors per attention layer) is trained; the adapter written to
--output_dir loads with plain `PeftModel.from_pretrained`.
"""

import logging
import os
import sys

import datasets
import transformers
from transformers import set_seed
from transformers.trainer_utils import get_last_checkpoint

from prefix_tuning_utils.arguments import ArgumentError, parse_args
from prefix_tuning_utils.data import get_datasets, to_dataset_dict
from prefix_tuning_utils.metrics import build_compute_metrics
from prefix_tuning_utils.modeling import (
    build_model,
    build_peft_config,
    check_model_config,
    find_trained_model,
    get_model_config,
    get_tokenizer,
    initialises_from_config,
    load_base_model,
    save_initialised_base,
    trainable_parameters,
)
from prefix_tuning_utils.predict import predict
from prefix_tuning_utils.preprocessing import get_data_collator, max_label_tokens, tokenize_dataset
from prefix_tuning_utils.scoring import LabelScorer
from prefix_tuning_utils.trainer import PrefixTuningTrainer


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
    model_args, data_args, prefix_args, predict_args, training_args = parse_args(argv)
    setup_logging(training_args)
    logger.info(
        f"Model {model_args}\nData {data_args}\nPrefix {prefix_args}\nPredict {predict_args}\nTraining {training_args}"
    )

    # Without --do_train, a model or adapter written by this script is used as it is, with the label words and input
    # format saved next to it; an adapter's base model is found from its config.
    model_name = model_args.model_name_or_path
    trained = None if training_args.do_train else find_trained_model(model_args)
    if trained is not None:
        trained.apply_settings(data_args)
        model_args = trained.base_args

    # Checks that need no weights: config, tokenizer, data.
    config = get_model_config(model_args)
    task = check_model_config(config, fp16=training_args.fp16)
    tokenizer = get_tokenizer(model_args, task)
    splits, labels = get_datasets(data_args, model_args.cache_dir, model_args.token)
    if training_args.do_train and "train" not in splits:
        raise ArgumentError("--do_train needs training data: --dataset_name or --train_file.")
    if training_args.do_eval and "validation" not in splits:
        raise ArgumentError("--do_eval needs validation data: --validation_file, or training data to hold out from.")
    if training_args.do_predict and "test" not in splits and data_args.test_file is None:
        raise ArgumentError("--do_predict needs test data: --test_file, or a --dataset_name with a test split.")
    for split, limit in (
        ("train", data_args.max_train_samples),
        ("validation", data_args.max_eval_samples),
        ("test", data_args.max_predict_samples),
    ):
        if limit is not None and split in splits:
            splits[split] = splits[split].head(limit)
    sizes = ", ".join(f"{name}: {len(data)}" for name, data in splits.items())
    logger.info(f"Task: {task}; labels: {', '.join(labels)}; examples: {sizes}")

    # Evaluation: seq2seq models generate their answer through Seq2SeqTrainer (predict_with_generate); label
    # scoring, and any evaluation of a decoder-only model, is done by our trainer's own loop.
    eval_mode = (
        data_args.eval_mode if data_args.eval_mode != "auto" else ("generate" if task == "seq2seq" else "score")
    )
    trainer_generates = task == "seq2seq" and eval_mode == "generate"
    training_args.predict_with_generate = trainer_generates
    if training_args.generation_max_length is None:
        training_args.generation_max_length = max_label_tokens(tokenizer, labels, task) + 2

    last_checkpoint = None
    if os.path.isdir(training_args.output_dir) and training_args.do_train:
        last_checkpoint = get_last_checkpoint(training_args.output_dir)
        if last_checkpoint is not None and training_args.resume_from_checkpoint is None:
            logger.info(f"Checkpoint found, resuming training at {last_checkpoint}.")
    set_seed(training_args.seed)

    # Model: frozen base + trainable prefix (or a baseline method).
    model = load_base_model(model_args, config, task)
    if trained is not None:
        model = trained.load(model)
    elif training_args.do_train:
        model = build_model(model, build_peft_config(config, prefix_args, task))
    # else: evaluation / prediction only, with the pretrained model as it is (no new, untrained prefix)
    if initialises_from_config(model_args) and training_args.should_save:
        save_initialised_base(model, tokenizer, training_args.output_dir)
    trainable, total = trainable_parameters(model)
    if training_args.do_train:
        logger.info(
            f"Tuning method: {prefix_args.tuning_method}; trainable parameters: {trainable:,} of {total:,} "
            f"({100 * trainable / total:.3f} %)"
        )
    else:
        logger.info(f"No training: {model_name} is used as it is ({total:,} parameters).")

    with training_args.main_process_first(desc="tokenisation"):
        tokenized = {
            name: tokenize_dataset(dataset, tokenizer, data_args, name, task)
            for name, dataset in to_dataset_dict(splits).items()
            if name != "test"  # prediction reads its rows itself, as a stream
        }

    trainer = PrefixTuningTrainer(
        model=model,
        args=training_args,
        train_dataset=tokenized.get("train") if training_args.do_train else None,
        eval_dataset=tokenized.get("validation") if training_args.do_eval else None,
        processing_class=tokenizer,
        data_collator=get_data_collator(tokenizer, pad_to_multiple_of=8 if training_args.bf16 else None),
        compute_metrics=build_compute_metrics(tokenizer, labels) if trainer_generates else None,
        scorer=LabelScorer(model, tokenizer, labels, data_args, task),
        eval_examples=splits.get("validation"),
        eval_mode=eval_mode,
    )

    if training_args.do_train:
        logger.info("*** Train ***")
        checkpoint = training_args.resume_from_checkpoint or last_checkpoint
        train_result = trainer.train(resume_from_checkpoint=checkpoint)
        trainer.save_model()
        metrics = train_result.metrics
        metrics["train_samples"] = len(tokenized["train"])
        metrics["tuning_method"] = prefix_args.tuning_method
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
        metrics = predict(trainer, data_args, predict_args, model_args, splits.get("test"), model_name)
        trainer.log_metrics("predict", {key: value for key, value in metrics.items() if not isinstance(value, dict)})
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
