#!/usr/bin/env python
"""Prefix-tune a frozen seq2seq model (T5) on a text classification task, text-to-text.

    accelerate launch run_prefix_tuning.py recipes/t5-large_financial_phrasebank.yaml
    python run_prefix_tuning.py recipes/quickstart.yaml --num_train_epochs 2   # flags override the recipe
    python run_prefix_tuning.py --help

Only the prefix (a few virtual key/value vectors per attention layer) is trained; the adapter written to
--output_dir loads with plain `PeftModel.from_pretrained` (with --prefix_scope all: after `import prefix_tuning_utils`). With --push_to_hub it is published with a model card;
`python run_prefix_tuning.py --push_only --output_dir DIR --hub_model_id ID` publishes a finished run again.
"""

import logging
import sys

import datasets
import transformers
from transformers import set_seed

from prefix_tuning_utils import hub, model_card
from prefix_tuning_utils.all_layer_prefix import check_scope_supported
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
from prefix_tuning_utils.output_dir import prepare_output_dir
from prefix_tuning_utils.predict import predict
from prefix_tuning_utils.prefix_init import init_prefix_from_text
from prefix_tuning_utils.preprocessing import get_data_collator, max_label_tokens, tokenize_dataset
from prefix_tuning_utils.scoring import LabelScorer
from prefix_tuning_utils.trainer import PrefixTuningTrainer, TrainingDivergedError, set_sample_count


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
    # Every log line goes to stdout through the root handler, so that stderr holds only progress bars and, on bad
    # input, the one-line error.
    transformers.utils.logging.disable_default_handler()
    transformers.utils.logging.enable_propagation()
    logger.warning(
        f"Process rank: {training_args.process_index} of {training_args.world_size}, device: {training_args.device}, "
        f"n_gpu: {training_args.n_gpu}, distributed: {training_args.parallel_mode.value}, "
        f"mixed precision: {training_args.mixed_precision}"
    )


def main(argv=None):
    argv = sys.argv[1:] if argv is None else [str(arg) for arg in argv]
    if hub.is_push_only(argv):  # publish a finished run again, nothing else
        return hub.push_only(argv)
    model_args, data_args, prefix_args, predict_args, training_args = parse_args(argv)
    # The Trainer must neither push nor pickle the token (training_args.bin): the Hub settings move out of its args.
    hub_settings = hub.take_hub_settings(training_args, model_args)
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
    # fp16 can also come from the accelerate config (mixed_precision: fp16) without --fp16.
    task = check_model_config(config, fp16=training_args.fp16 or training_args.mixed_precision == "fp16")
    tokenizer = get_tokenizer(model_args, task)
    check_scope_supported(config, prefix_args.prefix_scope)
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
    publishable = task == "seq2seq" and prefix_args.tuning_method != "full"
    if hub_settings.push_to_hub and not publishable:
        raise ArgumentError(
            "--push_to_hub publishes seq2seq adapters (the model card and its snippets are written for them); "
            f"this run is a {task} model with --tuning_method {prefix_args.tuning_method}. Drop --push_to_hub."
        )
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

    checkpoint = prepare_output_dir(
        training_args.output_dir,
        training_args.do_train,
        training_args.overwrite_output_dir,
        training_args.resume_from_checkpoint,
    )
    set_seed(training_args.seed)

    # Model: frozen base + trainable prefix (or a baseline method).
    model = load_base_model(model_args, config, task)
    if trained is not None:
        model = trained.load(model)
    elif training_args.do_train:
        model = build_model(model, build_peft_config(config, prefix_args, task), prefix_args.prefix_scope)
        if prefix_args.prefix_init_text is not None and checkpoint is None:
            init_prefix_from_text(model, tokenizer, prefix_args.prefix_init_text, task)
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

    compute_metrics = build_compute_metrics(tokenizer, labels) if trainer_generates else None
    trainer = PrefixTuningTrainer(
        model=model,
        args=training_args,
        train_dataset=tokenized.get("train") if training_args.do_train else None,
        eval_dataset=tokenized.get("validation") if training_args.do_eval else None,
        processing_class=tokenizer,
        data_collator=get_data_collator(tokenizer, pad_to_multiple_of=8 if training_args.bf16 else None),
        compute_metrics=compute_metrics,
        scorer=LabelScorer(model, tokenizer, labels, data_args, task),
        eval_examples=splits.get("validation"),
        eval_mode=eval_mode,
        cache_encoder_outputs=prefix_args.cache_encoder_outputs,
        callbacks=hub.get_callbacks(hub_settings),
    )

    if training_args.do_train:
        logger.info("*** Train ***")
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
        set_sample_count(metrics, "eval", len(tokenized["validation"]))
        trainer.log_metrics("eval", metrics)
        trainer.save_metrics("eval", metrics)
        eval_answers = compute_metrics.last_answers if compute_metrics is not None else trainer.last_eval_answers

    if training_args.do_predict:
        logger.info("*** Predict ***")
        metrics = predict(trainer, data_args, predict_args, model_args, splits.get("test"), model_name)
        trainer.log_metrics("predict", {key: value for key, value in metrics.items() if not isinstance(value, dict)})
        trainer.save_metrics("predict", metrics)

    if training_args.do_train and publishable and trainer.is_world_process_zero():
        logger.info("*** Model card ***")  # always saved locally, before anything is pushed
        record = model_card.build_run_record(
            trainer,
            argv=argv,
            model_args=model_args,
            data_args=data_args,
            prefix_args=prefix_args,
            labels=labels,
            split_sizes={name: len(data) for name, data in splits.items()},
            parameters=(trainable, total),
            eval_answers=eval_answers if training_args.do_eval else None,
            hub_settings=hub_settings,
        )
        model_card.save_run_card(training_args.output_dir, record, trainer.state.log_history)
        if hub_settings.push_to_hub:
            logger.info("*** Push to the Hub ***")
            hub.push_run(hub_settings)

    return trainer


def cli(argv=None) -> None:
    """Run `main`; a problem with the user's input is one line on stderr and exit code 2 (traceback: --debug)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv and (
        argv.index("--debug") == len(argv) - 1 or argv[argv.index("--debug") + 1][:2] == "--"
    )
    if debug:  # a bare --debug is ours; `--debug underflow_overflow` stays the Trainer's
        argv.remove("--debug")
    try:
        main(argv)
    except (ArgumentError, TrainingDivergedError) as err:
        if debug:
            raise
        if isinstance(err, TrainingDivergedError):
            print(file=sys.stderr)  # ends the progress bar's line
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2 if isinstance(err, ArgumentError) else 1)
    except hub.PushError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    cli()
