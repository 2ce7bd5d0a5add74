"""The command line: `prefix-tuning` (console script) and `python run_prefix_tuning.py` run `cli()`.

    accelerate launch --quiet --config_file accelerate_configs/default.yaml run_prefix_tuning.py \
        recipes/t5-large_financial_phrasebank.yaml
    prefix-tuning recipes/quickstart.yaml --num_train_epochs 2   # flags override the recipe
    prefix-tuning --help
    prefix-tuning serve --adapter acme=runs/acme --adapter globex=org/globex-prefix   # HTTP server (serving/)

Only the prefix (a few virtual key/value vectors per attention layer) is trained; the adapter written to
--output_dir loads with plain `PeftModel.from_pretrained` (with --prefix_scope all: after `import prefix_tuning_utils`).
With --push_to_hub it is published with a model card; `prefix-tuning push --output_dir DIR --hub_model_id ID`
publishes a finished run again.

The first word of the command line may name a subcommand (`SUBCOMMANDS`: `push`, `serve`); anything else is a training
run.
Every command is parsed by the same parser class and recipe rules (`arguments`) and logs through `setup_logging`.
`--push_only`, the old spelling of `push`, is still accepted, with a deprecation warning (`DEPRECATED_FLAGS`).

`main()` reads as the phases of a transformers example: resolve and check the arguments (all of it in
`resolve_and_validate`, before any weight is loaded or file written), then the output folder, the model,
tokenisation, the trainer, train / evaluate / predict, the model card and the push.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from dataclasses import dataclass

from transformers import PretrainedConfig, set_seed

from . import hub, interrupts, model_card, run_log
from .all_layer_prefix import check_scope_supported
from .answering import LabelScorer
from .arguments import (
    PROGRAM,
    DataTrainingArguments,
    ModelArguments,
    PredictArguments,
    PrefixArguments,
    PrefixTrainingArguments,
    parse_args,
    parse_push_args,
)
from .data import LabelledData, get_datasets, hub_dataset_repo, to_dataset_dict
from .errors import ArgumentError, HubUnavailableError, PushError, TrainingDivergedError
from .input_format import InputFormat
from .metrics import build_compute_metrics
from .modeling import (
    build_model,
    build_peft_config,
    check_model_config,
    get_model_config,
    get_tokenizer,
    initialises_from_config,
    load_base_model,
    trainable_parameters,
)
from .network import bound_hub_timeouts, data_advice, hub_step, model_advice
from .output_dir import RunIdentity, prepare_output_dir
from .precision import Precision, check_bf16_supported, plan_precision, store_frozen_weights
from .predict import predict
from .prefix_init import init_prefix_from_text
from .preprocessing import get_data_collator, max_label_tokens, tokenize_dataset
from .run_folder import TrainedModel, find_trained_model, save_initialised_base
from .run_log import setup_logging
from .trainer import PrefixTuningTrainer, set_sample_count


logger = logging.getLogger(__name__)

__all__ = [
    "SUBCOMMANDS",
    "Run",
    "cli",
    "main",
    "push",
    "resolve_and_validate",
    "serve",
    "setup_logging",
    "split_subcommand",
]


@dataclass
class Run:
    """The arguments of one run, resolved and checked, with what checking them loaded (config, tokenizer, data)."""

    argv: list[str]
    model_args: ModelArguments
    data_args: DataTrainingArguments
    prefix_args: PrefixArguments
    predict_args: PredictArguments
    training_args: PrefixTrainingArguments
    hub_settings: hub.HubSettings
    model_name: str  # --model_name_or_path as given (a trained model's base is in model_args)
    trained: TrainedModel | None  # a model or adapter written by this script, used as it is (no --do_train)
    config: PretrainedConfig
    task: str
    tokenizer: object
    splits: dict[str, LabelledData]
    labels: list[str]
    eval_mode: str
    publishable: bool
    precision: Precision  # the dtypes of the model's parts (precision.py)

    @property
    def trainer_generates(self) -> bool:
        return self.task == "seq2seq" and self.eval_mode == "generate"


def resolve_and_validate(argv: list[str]) -> Run:
    """Parse `argv`, resolve what the arguments leave open and refuse bad input, before any weight is loaded.

    Every check of the user's input runs from here (besides the argument dataclasses' own `__post_init__`): the Hub
    settings, the model config and tokenizer, the prefix scope, the data files and splits, publishing. A refusal is
    an `ArgumentError`: one line, exit code 2.
    """
    model_args, data_args, prefix_args, predict_args, training_args = parse_args(argv)
    # The Trainer must neither push nor pickle the token (training_args.bin): the Hub settings move out of its args.
    hub_settings = hub.take_hub_settings(training_args, model_args)
    setup_logging(training_args)
    logger.debug(  # --log_level debug; run_args.json in --output_dir holds them too
        f"Model {model_args}\nData {data_args}\nPrefix {prefix_args}\nPredict {predict_args}\nTraining {training_args}"
    )
    # bf16 from --bf16 or from an accelerate config (mixed_precision: bf16); refused where it cannot be computed.
    bf16 = training_args.bf16 or training_args.mixed_precision == "bf16"
    device_type = training_args.device.type
    if bf16:
        what = "--bf16" if training_args.bf16 else "mixed_precision bf16 (accelerate config)"
        check_bf16_supported(device_type, what, fix="drop --bf16" if training_args.bf16 else "set it to no")
    precision = plan_precision(bf16, device_type, training_args.do_train, prefix_args.tuning_method)
    (logger.info if bf16 else logger.debug)(f"Precision: {precision.describe()}")

    # Without --do_train, a model or adapter written by this script is used as it is, with the label words and input
    # format saved next to it; an adapter's base model is found from its config.
    model_name = model_args.model_name_or_path
    with hub_step(f"looking up {model_name} on the Hub", model_advice(model_name, model_args.cache_dir)):
        trained = None if training_args.do_train else find_trained_model(model_args)
    if trained is not None:
        trained.apply_settings(data_args)
        model_args = trained.base_args

    # Checks that need no weights: config, tokenizer, data.
    advice = model_advice(model_args.model_name_or_path, model_args.cache_dir)
    with hub_step(f"loading the model config of {model_args.model_name_or_path}", advice):
        config = get_model_config(model_args)
    # fp16 can also come from the accelerate config (mixed_precision: fp16) without --fp16.
    task = check_model_config(config, fp16=training_args.fp16 or training_args.mixed_precision == "fp16")
    tokenizer_name = model_args.tokenizer_name or model_args.model_name_or_path
    with hub_step(f"loading the tokenizer of {tokenizer_name}", model_advice(tokenizer_name, model_args.cache_dir)):
        tokenizer = get_tokenizer(model_args, task)
    check_scope_supported(config, prefix_args.prefix_scope)
    data_repo = hub_dataset_repo(data_args.dataset_name or "")
    with hub_step(f"downloading the dataset {data_args.dataset_name}", data_advice(data_repo, model_args.cache_dir)):
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
    eval_mode = data_args.eval_mode
    if eval_mode == "auto":
        eval_mode = "generate" if task == "seq2seq" else "score"
    training_args.predict_with_generate = task == "seq2seq" and eval_mode == "generate"
    if training_args.generation_max_length is None:
        training_args.generation_max_length = max_label_tokens(tokenizer, labels, task) + 2
    return Run(
        argv, model_args, data_args, prefix_args, predict_args, training_args, hub_settings, model_name, trained,
        config, task, tokenizer, splits, labels, eval_mode, publishable, precision,
    )  # fmt: skip


def build_run_model(run: Run, checkpoint: str | None):
    """The frozen base with a trainable prefix (or a baseline method), a trained model, or the base as it is; its
    parts in the dtypes of `run.precision` (a model that only answers loaded in bf16 under --bf16; the frozen weights
    of a CPU training run stored in bf16 once the trainable parts are built)."""
    model_args, prefix_args, training_args = run.model_args, run.prefix_args, run.training_args
    advice = model_advice(model_args.model_name_or_path, model_args.cache_dir)
    with hub_step(f"downloading the weights of {model_args.model_name_or_path}", advice, any_os_error=True):
        model = load_base_model(model_args, run.config, run.task, dtype=run.precision.load_dtype)
        if run.trained is not None:
            model = run.trained.load(model)
    if run.trained is None and training_args.do_train:
        model = build_model(model, build_peft_config(run.config, prefix_args, run.task), prefix_args.prefix_scope)
        if prefix_args.prefix_init_text is not None and checkpoint is None:
            init_prefix_from_text(model, run.tokenizer, prefix_args.prefix_init_text, run.task)
    # else: evaluation / prediction only, with the pretrained model as it is (no new, untrained prefix)
    if initialises_from_config(model_args) and training_args.should_save:
        save_initialised_base(model, run.tokenizer, training_args.output_dir)  # in fp32, as initialised
    cast = store_frozen_weights(model, run.precision.frozen_dtype)
    if cast:
        logger.info(f"{cast:,} frozen parameters stored in {run.precision.frozen_dtype} (--bf16 on CPU).")
    trainable, total = trainable_parameters(model)
    if training_args.do_train:
        logger.info(
            f"Tuning method: {prefix_args.tuning_method}; trainable parameters: {trainable:,} of {total:,} "
            f"({100 * trainable / total:.3f} %)"
        )
    else:
        logger.info(f"No training: {run.model_name} is used as it is ({total:,} parameters).")
    return model, (trainable, total)


def answering_scorer(run: Run, model) -> LabelScorer:
    """The answering core around `model`, with the run's label words and input format."""
    return LabelScorer(model, run.tokenizer, run.labels, InputFormat.from_args(run.data_args, run.task))


def build_trainer(run: Run, model, tokenized: dict) -> PrefixTuningTrainer:
    args = run.training_args
    trainer = PrefixTuningTrainer(
        model=model,
        args=args,
        train_dataset=tokenized.get("train") if args.do_train else None,
        eval_dataset=tokenized.get("validation") if args.do_eval else None,
        processing_class=run.tokenizer,
        data_collator=get_data_collator(run.tokenizer, pad_to_multiple_of=run.precision.pad_to_multiple_of),
        compute_metrics=build_compute_metrics(run.tokenizer, run.labels) if run.trainer_generates else None,
        scorer=answering_scorer(run, model),
        eval_examples=run.splits.get("validation"),
        eval_mode=run.eval_mode,
        cache_encoder_outputs=run.prefix_args.cache_encoder_outputs,
        callbacks=hub.get_callbacks(run.hub_settings),
    )
    run_log.use_quiet_progress(trainer)
    return trainer


def train(trainer, run: Run, checkpoint: str | None, train_samples: int, parameters: tuple[int, int]) -> None:
    logger.info("*** Train ***")
    train_result = trainer.train(resume_from_checkpoint=checkpoint)
    trainer.save_model()
    trainable, total = parameters
    metrics = train_result.metrics
    metrics["train_samples"] = train_samples
    metrics["tuning_method"] = run.prefix_args.tuning_method
    metrics["trainable_parameters"] = trainable
    metrics["trainable_percent"] = 100 * trainable / total
    run_log.log_metrics(trainer, "train", metrics)
    trainer.save_metrics("train", metrics)
    trainer.save_state()


def evaluate(trainer, eval_samples: int) -> list:
    """Evaluate on the validation split; return the answers given (for the model card)."""
    logger.info("*** Evaluate ***")
    metrics = trainer.evaluate(metric_key_prefix="eval")
    set_sample_count(metrics, "eval", eval_samples)
    run_log.log_metrics(trainer, "eval", metrics)
    trainer.save_metrics("eval", metrics)
    compute_metrics = trainer.compute_metrics
    return compute_metrics.last_answers if compute_metrics is not None else trainer.last_eval_answers


def predict_test(trainer, run: Run) -> None:
    logger.info("*** Predict ***")
    metrics = predict(trainer, run.data_args, run.predict_args, run.model_args, run.splits.get("test"), run.model_name)
    run_log.log_metrics(
        trainer, "predict", {key: value for key, value in metrics.items() if not isinstance(value, dict)}
    )
    trainer.save_metrics("predict", metrics)


def write_card_and_publish(trainer, run: Run, parameters: tuple[int, int], eval_answers) -> None:
    logger.info("*** Model card ***")  # always saved locally, before anything is pushed
    with trainer.accelerator.autocast():  # the card's example answer computed as evaluation computes (precision.py)
        record = model_card.build_run_record(
            trainer,
            argv=run.argv,
            model_args=run.model_args,
            data_args=run.data_args,
            prefix_args=run.prefix_args,
            labels=run.labels,
            split_sizes={name: len(data) for name, data in run.splits.items()},
            parameters=parameters,
            eval_answers=eval_answers,
            hub_settings=run.hub_settings,
            scorer=answering_scorer(run, trainer.accelerator.unwrap_model(trainer.model)),
        )
    model_card.save_run_card(run.training_args.output_dir, record, trainer.state.log_history)
    if run.hub_settings.push_to_hub:
        logger.info("*** Push to the Hub ***")
        hub.push_run(run.hub_settings)


def push(argv: list[str]) -> str:
    """`prefix-tuning push [RECIPE] --output_dir DIR [--hub_model_id ID] ...`: publish a finished run, nothing else;
    returns the commit URL."""
    return hub.push_run(hub.push_settings(parse_push_args(argv)))


def serve(argv: list[str]) -> None:
    """`prefix-tuning serve [RECIPE] --adapter NAME=SOURCE ...`: the HTTP server of many adapters
    (prefix_tuning_utils/serving), until SIGTERM. Its packages (the `serve` extra) are imported only here."""
    from .serving.cli import main as serve_main

    return serve_main(argv)


# The subcommands, by the first word of the command line: name -> function of the rest, returning what main returns.
SUBCOMMANDS: dict[str, Callable[[list[str]], object]] = {"push": push, "serve": serve}
# Old spellings of a subcommand as a flag anywhere on the command line (with an optional true/false value).
DEPRECATED_FLAGS = {"--push_only": "push"}
_BOOLEAN_WORDS = ("true", "false", "yes", "no", "t", "f", "y", "n", "1", "0")


def split_subcommand(argv: list[str]) -> tuple[str | None, list[str], str | None]:
    """(the subcommand `argv` names, None for a training run; the rest of the command line; the deprecated flag
    that named it, if one did)."""
    if argv and argv[0] in SUBCOMMANDS:
        return argv[0], argv[1:], None
    for flag, name in DEPRECATED_FLAGS.items():
        for index, arg in enumerate(argv):
            if arg == flag or arg.startswith(flag + "="):
                with_value = arg == flag and index + 1 < len(argv) and argv[index + 1].lower() in _BOOLEAN_WORDS
                return name, argv[:index] + argv[index + (2 if with_value else 1) :], flag
    return None, argv, None


def main(argv: list[str] | None = None):
    """Run the command line `argv` (default: sys.argv[1:]); return the trainer (or what the subcommand returns: for
    `push`, the commit URL; for `serve`, None once the server has stopped)."""
    argv = sys.argv[1:] if argv is None else [str(arg) for arg in argv]
    bound_hub_timeouts()  # a silent Hub fails the step instead of hanging the run
    subcommand, argv, deprecated = split_subcommand(argv)
    if subcommand is not None:
        setup_logging()
        if deprecated is not None:
            logger.warning("%s is deprecated: use `%s %s ...` instead.", deprecated, PROGRAM, subcommand)
        return SUBCOMMANDS[subcommand](argv)
    run = resolve_and_validate(argv)
    args = run.training_args
    identity = RunIdentity.of(run.model_name, run.model_args, run.prefix_args, args.do_train)
    checkpoint = prepare_output_dir(args.output_dir, identity, args.overwrite_output_dir, args.resume_from_checkpoint)
    arguments = run_log.run_arguments(
        run.argv, run.model_args, run.data_args, run.prefix_args, run.predict_args, args, identity
    )
    if args.do_train and args.should_save:  # the folder is this run's from now on: its arguments, before any weight
        run_log.save_run_args(args.output_dir, arguments)
    set_seed(args.seed)

    model, parameters = build_run_model(run, checkpoint)
    with args.main_process_first(desc="tokenisation"):
        tokenized = {
            name: tokenize_dataset(dataset, run.tokenizer, run.data_args, name, run.task)
            for name, dataset in to_dataset_dict(run.splits).items()
            if name != "test"  # prediction reads its rows itself, as a stream
        }
    trainer = build_trainer(run, model, tokenized)

    if args.do_train:
        train(trainer, run, checkpoint, len(tokenized["train"]), parameters)
    eval_answers = evaluate(trainer, len(tokenized["validation"])) if args.do_eval else None
    if args.do_predict:
        predict_test(trainer, run)
    if args.do_train and run.publishable and trainer.is_world_process_zero():
        write_card_and_publish(trainer, run, parameters, eval_answers)
    if not args.do_train and args.should_save:  # written last: bad input rows leave the folder as it was
        run_log.save_run_args(args.output_dir, arguments)
    return trainer


def _bare_debug(argv: list[str]) -> bool:
    """A bare --debug (last, or followed by another flag) is ours; `--debug underflow_overflow` stays the Trainer's."""
    if "--debug" not in argv:
        return False
    index = argv.index("--debug")
    return index == len(argv) - 1 or argv[index + 1][:2] == "--"


def cli(argv: list[str] | None = None) -> None:
    """Run `main`; a problem with the user's input is one line on stderr and exit code 2 (traceback: --debug), and so
    is Ctrl-C, with exit code 130."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = _bare_debug(argv)
    if debug:
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
    except (PushError, HubUnavailableError) as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:  # Ctrl-C: what was kept and the command that goes on, in one line (traceback: --debug)
        if debug:
            raise
        interrupts.close_progress_bars()
        print(f"\ninterrupted: {interrupts.what_was_kept(argv)}", file=sys.stderr)
        sys.exit(130)
