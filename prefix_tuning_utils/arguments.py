"""Command-line and recipe arguments, validated up front: one parser (`_Parser`) and one set of recipe rules for
training (`parse_args`) and for its subcommands (`parse_push_args`: `prefix-tuning push`).

The rules, the same for every command: a recipe (.yaml/.yml/.json) given first supplies the keys it knows (a recipe
may hold the keys of another command, which are ignored there; any other key is refused, with the nearest known
name), flags override it, an unknown flag is refused with the nearest known one (no abbreviations), and every
refusal is one line (an `ArgumentError`, exit code 2).
"""

from __future__ import annotations

import difflib
import importlib.metadata
import importlib.util
import os
import sys
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Literal

import torch
import transformers
import yaml
from transformers import HfArgumentParser, Seq2SeqTrainingArguments

from .errors import ArgumentError  # re-exported: `from prefix_tuning_utils.arguments import ArgumentError` still works
from .input_format import DEFAULT_MAX_SOURCE_LENGTH, DEFAULT_MAX_TARGET_LENGTH, DEFAULT_PROMPT_TEMPLATE
from .readers import DATA_EXTENSIONS  # the formats readers.py reads (re-exported)


__all__ = [
    "DataTrainingArguments",
    "ModelArguments",
    "PrefixArguments",
    "PrefixTrainingArguments",
    "PredictArguments",
    "ArgumentError",
    "PushArguments",
    "build_parser",
    "build_push_parser",
    "parse_args",
    "parse_push_args",
    "DATA_EXTENSIONS",
    "DATA_SOURCE_FLAGS",
    "DATA_SOURCE_KEYS",
]

RECIPE_EXTENSIONS = (".yaml", ".yml", ".json")
# Where the training data comes from. A recipe's source is replaced as a whole when the command line names a source:
# giving any of DATA_SOURCE_FLAGS drops every one of the recipe's DATA_SOURCE_KEYS (the other data keys still apply).
DATA_SOURCE_FLAGS = ("dataset_name", "train_file", "validation_file")
DATA_SOURCE_KEYS = ("dataset_name", "dataset_config_name", "dataset_revision", "train_file", "validation_file")
DEBUG_HELP = (
    "A bare --debug (no value) shows the full traceback of an error instead of its one-line message. With a value, "
    "the Trainer's debug features: "
)
# The console script (setup.cfg) and its subcommand that publishes a finished run.
PROGRAM = "prefix-tuning"
PUSH_PROG = f"{PROGRAM} push"
PUSH_USAGE = (
    f"{PUSH_PROG} --output_dir DIR [--hub_model_id ID] [--hub_token TOKEN] [--hub_revision BRANCH] "
    "[--hub_private_repo true]"
)
# --help starts with what a newcomer types: a training run (recipe first, flags override it) and the subcommands.
TRAINING_USAGE = (
    f"{PROGRAM} [RECIPE.yaml] [FLAGS]        train / evaluate / predict (`python run_prefix_tuning.py` is the same)\n"
    f"       {PUSH_PROG} [RECIPE.yaml] --output_dir DIR --hub_model_id ID   publish a finished run\n"
    f"       {PROGRAM} serve [RECIPE.yaml] --adapter NAME=PATH ...   answer over HTTP\n"
    f"       {PROGRAM} --version"
)
# Flags of the Trainer's arguments that are ours to explain (--help shows them in an `output` group before the Trainer's).
OUTPUT_FLAGS = ("output_dir", "overwrite_output_dir", "debug")
MAX_CHOICES_SHOWN = 8  # a longer list of choices is a metavar in --help (--optim has 41)
PUSH_HINT = (
    f"To publish a finished run again without training (e.g. after a failed push): {PUSH_USAGE} (also "
    f"`python run_prefix_tuning.py push ...`; `{PUSH_PROG} --help` lists its flags). Its old spelling, "
    "`--push_only --output_dir DIR ...`, still works. Publishing is described in docs/publishing.md."
)


# The learning rate each --tuning_method gets when none is given: the recipe of record for prefix tuning (1e-2, as in
# peft's prefix-tuning guide), peft's usual rates for prompt tuning and LoRA, transformers' default for full tuning.
DEFAULT_LEARNING_RATES = {"prefix": 1e-2, "prompt": 1e-2, "lora": 1e-3, "full": 5e-5}


@dataclass
class ModelArguments:
    """Which model to adapt."""

    _argument_group_name = "model (ModelArguments)"  # HfArgumentParser: the --help section of these flags

    model_name_or_path: str | None = field(
        default=None,
        metadata={
            "help": "Hub id or local folder of the pretrained model (e.g. t5-large). A local folder holding only a "
            "config.json (no weights) gives a randomly initialised model, which is what the quickstart uses."
        },
    )
    tokenizer_name: str | None = field(
        default=None, metadata={"help": "Tokenizer to use, if not the one of --model_name_or_path."}
    )
    model_revision: str = field(default="main", metadata={"help": "Branch, tag or commit of the model on the Hub."})
    cache_dir: str | None = field(
        default=None, metadata={"help": "Where to store models and datasets downloaded from the Hub."}
    )
    token: str | None = field(
        default=None,
        repr=False,  # the arguments are logged: keep the token out of their repr
        metadata={
            "help": "Hub token for private models or datasets; by default the one saved by `hf auth login`. "
            "Never written to any output file."
        },
    )
    trust_remote_code: bool = field(
        default=False, metadata={"help": "Allow models that ship their own modelling code on the Hub."}
    )
    gguf_file: str | None = field(
        default=None,
        metadata={
            "help": "Load the model from this GGUF file inside --model_name_or_path (dequantised to full precision "
            "by transformers; needs the `gguf` package)."
        },
    )


TUNING_METHODS = ("prefix", "prompt", "lora", "full")


@dataclass
class PrefixArguments:
    """The prefix: the only parameters that are trained (or, as a baseline, another tuning method)."""

    _argument_group_name = "prefix (PrefixArguments)"

    tuning_method: Literal["prefix", "prompt", "lora", "full"] = field(
        default="prefix",
        metadata={
            "help": "What to train: `prefix` (prefix tuning, the point of this package), or the baselines `prompt` "
            "(prompt tuning: virtual input embeddings), `lora` (low-rank adapters, --lora_r) and `full` (every "
            "weight). Data, split, evaluation and outputs are the same for all four."
        },
    )
    num_virtual_tokens: int = field(
        default=20, metadata={"help": "Length of the prefix: virtual key/value vectors in every attention layer."}
    )
    prefix_projection: bool = field(
        default=False,
        metadata={
            "help": "Reparametrise the prefix by a two-layer MLP during training (Li & Liang, 2021). Only the "
            "resulting prefix is saved in the adapter."
        },
    )
    encoder_hidden_size: int | None = field(
        default=None,
        metadata={"help": "Hidden size of the --prefix_projection MLP (default: the model's hidden size)."},
    )
    init_weights: Literal["random", "zero"] = field(
        default="random",
        metadata={
            "help": "How to initialise the prefix: `random` (peft's default, normal(0, 1)) or `zero` (the "
            "projection's last layer, or the prefix itself, starts at zero)."
        },
    )
    prefix_scope: Literal["decoder", "all"] = field(
        default="decoder",
        metadata={
            "help": "Which attention layers get a prefix. `decoder`: peft's prefix, in the decoder's self-attention "
            "only; the adapter loads with plain `PeftModel.from_pretrained`. `all`: also encoder self-attention and "
            "cross-attention prefixes in every layer (Li & Liang, 2021), each behind a per-head gate that starts at "
            "zero (T5 and mT5; --prefix_projection and --num_virtual_tokens apply to them, they always start "
            "random); load it after `import prefix_tuning_utils` (docs/python_api.md)."
        },
    )

    cache_encoder_outputs: bool = field(
        default=False,
        metadata={
            "help": "Run the frozen encoder once over the training set before training and reuse its output every "
            "epoch (exact, and faster: training runs only the decoder). Turns the encoder's dropout off (the "
            "decoder's is kept); costs input tokens x d_model x 4 bytes (fp32; 2 under --bf16 on a CPU) of device "
            "memory. Needs --tuning_method prefix with --prefix_scope decoder on a seq2seq model."
        },
    )
    prefix_init_text: str | None = field(
        default=None,
        metadata={
            "help": "Initialise the prefix from real text: the frozen model's own keys and values for the first "
            "--num_virtual_tokens tokens of this text (e.g. a task description), instead of random values. The "
            "untrained model then behaves as if the text preceded every input. Needs --prefix_projection off."
        },
    )
    lora_r: int = field(default=8, metadata={"help": "LoRA rank (--tuning_method lora)."})
    lora_alpha: int = field(default=16, metadata={"help": "LoRA scaling alpha (--tuning_method lora)."})
    lora_dropout: float = field(default=0.05, metadata={"help": "LoRA dropout (--tuning_method lora)."})

    def __post_init__(self):
        if self.tuning_method not in TUNING_METHODS:
            raise ArgumentError(
                f"--tuning_method must be one of {', '.join(TUNING_METHODS)}, got {self.tuning_method!r}."
            )
        if self.prefix_init_text is not None and (self.prefix_projection or self.tuning_method != "prefix"):
            raise ArgumentError("--prefix_init_text needs --tuning_method prefix without --prefix_projection.")
        if self.lora_r < 1:
            raise ArgumentError(f"--lora_r must be at least 1, got {self.lora_r}.")
        if self.prefix_scope not in ("decoder", "all"):
            raise ArgumentError(f"--prefix_scope must be `decoder` or `all`, got {self.prefix_scope!r}.")
        if self.prefix_scope == "all" and self.tuning_method != "prefix":
            raise ArgumentError("--prefix_scope all needs --tuning_method prefix.")
        if self.cache_encoder_outputs and (self.tuning_method != "prefix" or self.prefix_scope != "decoder"):
            raise ArgumentError(
                "--cache_encoder_outputs needs --tuning_method prefix with --prefix_scope decoder (otherwise training "
                f"changes the encoder's output), got --tuning_method {self.tuning_method} --prefix_scope "
                f"{self.prefix_scope}: drop --cache_encoder_outputs."
            )
        if self.num_virtual_tokens < 1:
            raise ArgumentError(f"--num_virtual_tokens must be at least 1, got {self.num_virtual_tokens}.")
        if self.encoder_hidden_size is not None and self.encoder_hidden_size < 1:
            raise ArgumentError(f"--encoder_hidden_size must be at least 1, got {self.encoder_hidden_size}.")
        if self.init_weights not in ("random", "zero"):
            raise ArgumentError(f"--init_weights must be `random` or `zero`, got {self.init_weights!r}.")


@dataclass
class DataTrainingArguments:
    """What data to train and evaluate on, and how to turn it into text-to-text examples."""

    _argument_group_name = "data (DataTrainingArguments)"

    dataset_name: str | None = field(
        default=None,
        metadata={
            "help": "Dataset on the Hub. `financial_phrasebank` is read from its original archive "
            "(takala/financial_phrasebank); any other name is loaded with `datasets.load_dataset`."
        },
    )
    dataset_config_name: str | None = field(
        default=None,
        metadata={
            "help": "Dataset configuration, e.g. sentences_allagree, sentences_75agree, sentences_66agree or "
            "sentences_50agree for financial_phrasebank."
        },
    )
    dataset_revision: str = field(default="main", metadata={"help": "Branch, tag or commit of the Hub dataset."})
    train_file: str | None = field(
        default=None,
        metadata={
            "help": "Training data: .txt in the Financial PhraseBank format (`sentence@label` per line), or "
            ".csv/.json/.jsonl with --text_column and --label_column."
        },
    )
    validation_file: str | None = field(
        default=None,
        metadata={"help": "Validation data (same formats). Without it, --validation_split_percentage is held out."},
    )
    test_file: str | None = field(
        default=None,
        metadata={
            "help": "Data for --do_predict: the same formats with labels optional; a .txt line is `sentence@label` "
            "when the text after its last `@` is a single word, otherwise a bare sentence."
        },
    )
    text_column: str = field(default="sentence", metadata={"help": "Column with the input text (csv/json)."})
    label_column: str = field(default="label", metadata={"help": "Column with the label (csv/json)."})
    label_words: str | None = field(
        default=None,
        metadata={
            "help": "Comma-separated label words in class-id order, used when labels are integers and as the label "
            "set (default for financial_phrasebank: negative,neutral,positive)."
        },
    )
    validation_split_percentage: float = field(
        default=10.0,
        metadata={"help": "Percentage of the training data held out for validation (stratified by label)."},
    )
    split_seed: int = field(default=42, metadata={"help": "Seed of the held-out split (independent of --seed)."})
    source_prefix: str = field(
        default="", metadata={"help": "Text put before every input of a seq2seq model, e.g. `sentiment: `."}
    )
    prompt_template: str = field(
        default=DEFAULT_PROMPT_TEMPLATE,
        metadata={
            "help": "Prompt of a decoder-only model; `{text}` is replaced by the sentence and the model continues "
            "with a space and the label word."
        },
    )
    eval_mode: Literal["auto", "generate", "score"] = field(
        default="auto",
        metadata={
            "help": "How evaluation picks the answer: `generate` (the model writes it; answers that are no label "
            "count as wrong), `score` (rank classification: the label word with the highest log-probability), or "
            "`auto`: generate for seq2seq models, score for decoder-only models."
        },
    )
    max_source_length: int = field(
        default=DEFAULT_MAX_SOURCE_LENGTH,
        metadata={"help": "Inputs are truncated to this many tokens (padding is per batch)."},
    )
    max_target_length: int = field(
        default=DEFAULT_MAX_TARGET_LENGTH, metadata={"help": "Targets (label words) are truncated to this."}
    )
    max_train_samples: int | None = field(
        default=None, metadata={"help": "Use only the first N training examples (debugging, quick runs)."}
    )
    max_eval_samples: int | None = field(default=None, metadata={"help": "Use only the first N validation examples."})
    max_predict_samples: int | None = field(default=None, metadata={"help": "Use only the first N test examples."})
    preprocessing_num_workers: int | None = field(
        default=None, metadata={"help": "Processes for tokenisation (default: one)."}
    )
    overwrite_cache: bool = field(default=False, metadata={"help": "Recompute the tokenised datasets."})
    file_encoding: str = field(
        default="auto",
        metadata={
            "help": "Encoding of --train_file, --validation_file and --test_file. `auto`: UTF-8 when the whole file "
            "is valid UTF-8, otherwise ISO-8859-1 (the original Financial PhraseBank files); or any encoding "
            "Python knows (utf-8, iso-8859-1, cp1252, ...). `--test_file_encoding` is an old name of this flag.",
            "aliases": ["--test_file_encoding"],
        },
    )

    def __post_init__(self):
        import codecs

        if self.file_encoding != "auto":
            try:
                codecs.lookup(self.file_encoding)
            except LookupError:
                raise ArgumentError(
                    f"--file_encoding {self.file_encoding!r} is not an encoding Python knows; use auto, or e.g. "
                    "utf-8, iso-8859-1, cp1252."
                ) from None
        if (
            self.dataset_name is None
            and self.train_file is None
            and self.validation_file is None
            and (self.test_file is None)
        ):
            raise ArgumentError(
                "No data given: pass --dataset_name (e.g. financial_phrasebank) or --train_file/--validation_file."
            )
        for flag in ("train_file", "validation_file", "test_file"):
            path = getattr(self, flag)
            if path is None:
                continue
            if os.path.splitext(path)[1].lower() not in DATA_EXTENSIONS:  # what readers.data_extension refuses
                raise ArgumentError(f"--{flag} must end in {', '.join(DATA_EXTENSIONS)}, got {path}.")
            if not os.path.isfile(path):
                raise ArgumentError(f"--{flag} {path} does not exist.")
            if os.path.getsize(path) == 0:
                raise ArgumentError(f"--{flag} {path} is empty.")
        if not 0 < self.validation_split_percentage < 100:
            raise ArgumentError(
                f"--validation_split_percentage must be between 0 and 100, got {self.validation_split_percentage}."
            )
        if "{text}" not in self.prompt_template:
            raise ArgumentError(f"--prompt_template must contain {{text}}, got {self.prompt_template!r}.")
        if self.eval_mode not in ("auto", "generate", "score"):
            raise ArgumentError(f"--eval_mode must be auto, generate or score, got {self.eval_mode!r}.")
        if self.label_words is not None:
            names = self.label_list
            if len(names) < 2 or len(set(names)) != len(names) or any(not n for n in names):
                raise ArgumentError(f"--label_words needs at least two distinct words, got {self.label_words!r}.")

    @property
    def label_list(self) -> list[str] | None:
        if self.label_words is None:
            return None
        return [name.strip() for name in self.label_words.split(",")]


@dataclass
class PrefixTrainingArguments(Seq2SeqTrainingArguments):
    """`Seq2SeqTrainingArguments` plus the output-folder policy of this package, and defaults for prefix tuning."""

    _argument_group_name = "trainer (transformers' Seq2SeqTrainingArguments, as PrefixTrainingArguments)"

    learning_rate: float | None = field(
        default=None,
        metadata={
            "help": "Peak learning rate of AdamW. Default by --tuning_method: "
            + ", ".join(f"{method} {rate:g}" for method, rate in DEFAULT_LEARNING_RATES.items())
            + " (a prefix needs a rate about 200x that of full fine-tuning)."
        },
    )

    train_sampling_strategy: str = field(
        default="group_by_length",
        metadata={
            "help": "Order of training examples. `group_by_length` (default): shuffled, then batches of sentences of "
            "similar length, so little compute goes to padding; the same batches on any number of processes and "
            "after a resume. `random`: plain shuffling (each batch padded to its longest sentence). Also "
            "`sequential`, `batch_rebalance` (transformers' own).",
            "choices": ["group_by_length", "random", "sequential", "batch_rebalance"],
        },
    )

    overwrite_output_dir: bool = field(
        default=False,
        metadata={
            "help": "Replace the run in --output_dir: the files this package writes there (checkpoints, adapter, "
            "results, predictions, run_args.json, ...) are removed first, nothing else. Without it, a folder holding "
            "another run's outputs is refused, and an unfinished training run of the same model is resumed."
        },
    )

    def __post_init__(self):
        # No --learning_rate: the prefix-tuning rate for now; parse_args sets the one of --tuning_method.
        self.learning_rate_given = self.learning_rate is not None
        if self.learning_rate is None:
            self.learning_rate = DEFAULT_LEARNING_RATES["prefix"]
        super().__post_init__()
        # transformers would fail later, in the Trainer, with a traceback; transformers also accepts tensorboardX.
        if "tensorboard" in (self.report_to or []) and not any(
            importlib.util.find_spec(name) for name in ("tensorboard", "tensorboardX")
        ):
            raise ArgumentError(
                "--report_to tensorboard needs the tensorboard package: pip install -e '.[tracking]' "
                "(or pass --report_to none)."
            )


# --- batch prediction (--do_predict); the work is in prefix_tuning_utils/predict.py ---


@dataclass
class PredictArguments:
    """How --do_predict answers --test_file (or the dataset's test split) and writes predictions.jsonl."""

    _argument_group_name = "predict (PredictArguments)"

    predict_mode: Literal["score", "generate"] = field(
        default="score",
        metadata={
            "help": "`score`: rank classification, every input gets the label word with the highest log-probability "
            "and a probability per label; `generate`: the model writes its answer (an answer that is no label word "
            "gets label null)."
        },
    )
    on_bad_row: Literal["error", "skip"] = field(
        default="error",
        metadata={
            "help": "What to do with bad input rows (empty text, bytes that do not decode, a label outside the label "
            "set): `error` stops before writing anything and names their lines; `skip` leaves them out, lists them "
            "in predict_bad_rows.jsonl and counts them in predict_results.json."
        },
    )
    predict_chunk_size: int = field(
        default=512,
        metadata={
            "help": "Rows read, answered (split across processes) and appended to predictions.jsonl at a time; memory "
            "depends on it, not on the size of the input."
        },
    )
    predictions_csv: bool = field(
        default=False, metadata={"help": "Also write predictions.csv (the same rows) when the run is complete."}
    )
    overwrite_predictions: bool = field(
        default=False,
        metadata={
            "help": "Start again instead of resuming, and replace predictions in --output_dir that were made from "
            "another input or with other settings (without it such a run is refused)."
        },
    )

    def __post_init__(self):
        if self.predict_mode not in ("score", "generate"):
            raise ArgumentError(f"--predict_mode must be score or generate, got {self.predict_mode!r}.")
        if self.on_bad_row not in ("error", "skip"):
            raise ArgumentError(f"--on_bad_row must be error or skip, got {self.on_bad_row!r}.")
        if self.predict_chunk_size < 1:
            raise ArgumentError(f"--predict_chunk_size must be at least 1, got {self.predict_chunk_size}.")


# --- end of batch prediction arguments ---


@dataclass
class PushArguments:
    """`prefix-tuning push`: publish a finished run again, without training (for example after a failed push)."""

    output_dir: str | None = field(
        default=None,
        metadata={
            "help": "The finished run's folder: its adapter, tokenizer, results and a freshly rendered model card are "
            "published."
        },
    )
    hub_model_id: str | None = field(
        default=None,
        metadata={"help": "Repo to publish to, `name` or `namespace/name` (default: the name of --output_dir)."},
    )
    hub_token: str | None = field(
        default=None, repr=False, metadata={"help": "Hub token with write access (default: `hf auth login`'s)."}
    )
    hub_private_repo: bool | None = field(
        default=None, metadata={"help": "Create the repo private (ignored when it already exists)."}
    )
    hub_revision: str | None = field(default=None, metadata={"help": "Branch to push to (created if missing)."})

    def __post_init__(self):
        if self.output_dir is None:
            raise ArgumentError(f"`{PUSH_PROG}` needs --output_dir: the folder of the finished run to publish.")


def _check_training_args(model_args: ModelArguments, training_args: Seq2SeqTrainingArguments) -> None:
    if model_args.model_name_or_path is None:
        raise ArgumentError("--model_name_or_path is required (e.g. t5-large, or a local model folder).")
    if training_args.gradient_checkpointing:
        raise ArgumentError(
            "--gradient_checkpointing does not work with prefix tuning (the prefix is a key/value cache that "
            "checkpointed layers drop); remove the flag and lower --per_device_train_batch_size instead."
        )
    if not (training_args.do_train or training_args.do_eval or training_args.do_predict):
        raise ArgumentError("Nothing to do: pass at least one of --do_train, --do_eval, --do_predict.")


TRAINING_ARGUMENTS = (
    ModelArguments,
    DataTrainingArguments,
    PrefixArguments,
    PredictArguments,
    PrefixTrainingArguments,
)
TRAINING_HELP = "python run_prefix_tuning.py --help"


def _recipe_keys(dataclass_types) -> set[str]:
    """The keys a recipe may set for these argument dataclasses: their fields' names."""
    return {f.name for dtype in dataclass_types for f in fields(dtype) if f.init}


def _unknown_keys_hint(unknown: list[str], known: set[str]) -> str:
    """`Did you mean x?` for the unknown keys that are close to a known one ('' for none)."""
    close = [(key, difflib.get_close_matches(key, known, n=1)) for key in unknown]
    close = [(key, match[0]) for key, match in close if match]
    if not close:
        return ""
    if len(unknown) == 1:
        return f" Did you mean {close[0][1]}?"
    return " Did you mean " + ", ".join(f"{match} (for {key})" for key, match in close) + "?"


def _recipe_defaults(parser: HfArgumentParser, path: str, ignored: set[str] = frozenset(), help_command=TRAINING_HELP):
    """The values of the recipe `path` that `parser` knows; `ignored`: keys of another command, left out."""
    if not os.path.isfile(path):
        raise ArgumentError(f"Recipe {path} does not exist.")
    try:
        config = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        raise ArgumentError(f"Recipe {path} is not valid YAML/JSON{where}: {getattr(err, 'problem', err)}.") from None
    if config is None:
        return {}
    if not isinstance(config, dict):
        raise ArgumentError(f"Recipe {path} must be a mapping of argument names to values.")
    known = _recipe_keys(parser.dataclass_types)
    unknown = sorted(set(config) - known - set(ignored))
    if unknown:
        raise ArgumentError(
            f"Recipe {path} has unknown key(s): {', '.join(unknown)}.{_unknown_keys_hint(unknown, known | ignored)} "
            f"See `{help_command}`."
        )
    return {key: value for key, value in config.items() if key in known}


def _split_recipe(
    parser: HfArgumentParser, argv: list[str], ignored: set[str] = frozenset(), help_command=TRAINING_HELP
) -> tuple[dict, list[str]]:
    """(the recipe's values, the flags after it) when `argv` starts with a recipe file, else ({}, argv)."""
    if argv and not argv[0].startswith("-") and argv[0].lower().endswith(RECIPE_EXTENSIONS):
        return _recipe_defaults(parser, argv[0], ignored, help_command), list(argv[1:])
    return {}, list(argv)


def _use_recipe(parser: HfArgumentParser, recipe: dict) -> None:
    """A recipe value becomes the default of its flag, so any flag given on the command line wins."""
    parser.set_defaults(**recipe)
    for action in parser._actions:
        if action.dest in recipe and action.required:
            action.required = False


class _Parser(HfArgumentParser):
    """HfArgumentParser whose errors are one line (an ArgumentError) instead of the full usage text."""

    def error(self, message: str):
        raise ArgumentError(f"{message}; see --help.")


def version_line() -> str:
    """What `--version` prints: this package's version and those of the libraries that decide its results."""
    from . import __version__  # the package is initialised by the time a parser is built

    return (
        f"{PROGRAM} {__version__} (torch {torch.__version__}, transformers {transformers.__version__}, "
        f"peft {importlib.metadata.version('peft')})"
    )


def _arrange_help(parser: HfArgumentParser) -> None:
    """--help: our groups first (model, prefix, data, predict, output), then the Trainer's flags in their own section,
    where a long list of choices (`--optim`: 41 names) is a metavar in the help, still checked on parsing."""
    groups = {group.title.split()[0]: group for group in parser._action_groups if group.title}
    trainer = groups["trainer"]
    output = parser.add_argument_group("output (ours, among the Trainer's arguments)")
    for dest in OUTPUT_FLAGS:
        action = next(action for action in trainer._group_actions if action.dest == dest)
        trainer._group_actions.remove(action)
        output._group_actions.append(action)
    for action in trainer._group_actions:
        if action.choices is not None and len(action.choices) > MAX_CHOICES_SHOWN:
            names = [str(choice) for choice in action.choices]
            action.metavar = "NAME"
            action.help = (action.help or "") + (
                f" One of {len(names)} names ({', '.join(names[:3])}, ...; a wrong one is refused with the list)."
            )
    order = ("options", "model", "prefix", "data", "predict", "output", "trainer")
    words = [(group.title or "").split(" ")[0] for group in parser._action_groups]
    ranks = {
        id(group): order.index(word) if word in order else -1 for group, word in zip(parser._action_groups, words)
    }
    parser._action_groups.sort(key=lambda group: ranks[id(group)])


def build_parser() -> HfArgumentParser:
    """The parser of every training argument: no abbreviations (`--num_virtual_token` is not `--num_virtual_tokens`)."""
    parser = _Parser(TRAINING_ARGUMENTS, prog=PROGRAM, usage=TRAINING_USAGE, epilog=PUSH_HINT, allow_abbrev=False)
    parser.add_argument("--version", action="version", version=version_line(), help="Print the versions and exit.")
    debug = parser._option_string_actions["--debug"]
    debug.help = DEBUG_HELP + (debug.help or "")
    _arrange_help(parser)
    if not torch.accelerator.is_available():
        # No GPU: train on CPU explicitly. Without it `--bf16` is refused, and processes started by
        # `accelerate launch` (torchrun) do not join a gloo process group: each would train alone on all the data.
        parser.set_defaults(use_cpu=True)
    return parser


def build_push_parser() -> HfArgumentParser:
    """The parser of `prefix-tuning push`: the same parser class and rules as training, over `PushArguments`."""
    return _Parser(
        PushArguments,
        prog=PUSH_PROG,
        description=PushArguments.__doc__,
        epilog="A recipe given first supplies --output_dir and the hub_* settings; its training keys are ignored. "
        "Publishing is described in docs/publishing.md.",
        allow_abbrev=False,
    )


def _flags_given(parser: HfArgumentParser, cli: list[str]) -> set[str]:
    """The argument names (dests) of the flags written on the command line."""
    actions = parser._option_string_actions
    return {actions[arg.split("=", 1)[0]].dest for arg in cli if arg.split("=", 1)[0] in actions}


def nearest_flag(parser: HfArgumentParser, arg: str) -> str | None:
    """The known flag closest to a misspelt one (`--num_virtual_token` -> `--num_virtual_tokens`), or None."""
    close = difflib.get_close_matches(arg.split("=", 1)[0], parser._option_string_actions, n=1)
    return parser._option_string_actions[close[0]].option_strings[0] if close else None


def _refuse_unknown(
    parser: HfArgumentParser, cli: list[str], foreign: set[str] = frozenset(), takes_only: str | None = None
) -> None:
    """An unknown flag is named with the nearest known one; any other left-over word is named as it is.

    `foreign`: flags of another command, which are not typos of this one's; they are refused with `takes_only`.
    """
    _, rest = parser.parse_known_args(cli)
    for arg in rest:
        flag = arg.split("=", 1)[0]
        if arg.startswith("-") and flag not in foreign:
            close = nearest_flag(parser, arg)
            raise ArgumentError(f"unknown flag {flag}; {f'did you mean {close}?' if close else 'see --help.'}")
    if rest and takes_only is not None:
        raise ArgumentError(f"{takes_only}; got {' '.join(rest)}.")
    if rest:
        raise ArgumentError(
            f"unexpected argument(s): {' '.join(rest)}. Values follow their flag; a recipe (.yaml/.json) comes first."
        )


def _into_dataclasses(parser: HfArgumentParser, cli: list[str]) -> tuple:
    try:
        return parser.parse_args_into_dataclasses(args=cli)
    except ArgumentError:
        raise
    except ValueError as err:  # transformers' own checks, e.g. conflicting training arguments
        raise ArgumentError(" ".join(str(err).split())) from None


def parse_args(
    argv: list[str] | None = None,
) -> tuple[ModelArguments, DataTrainingArguments, PrefixArguments, PredictArguments, PrefixTrainingArguments]:
    """Parse a recipe file (optional, first argument) and command-line flags; flags override the recipe.

    A data source on the command line (--dataset_name, --train_file or --validation_file) replaces the recipe's data
    source as a whole (DATA_SOURCE_KEYS), so that a recipe's Hub dataset is never mixed with the user's files.
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser()
    recipe, cli = _split_recipe(parser, argv)
    if _flags_given(parser, cli) & set(DATA_SOURCE_FLAGS):
        recipe = {key: value for key, value in recipe.items() if key not in DATA_SOURCE_KEYS}
    _use_recipe(parser, recipe)
    _refuse_unknown(parser, cli)
    model_args, data_args, prefix_args, predict_args, training_args = _into_dataclasses(parser, cli)
    if not training_args.learning_rate_given:
        training_args.learning_rate = DEFAULT_LEARNING_RATES[prefix_args.tuning_method]
    _check_training_args(model_args, training_args)
    return model_args, data_args, prefix_args, predict_args, training_args


def parse_push_args(argv: list[str]) -> PushArguments:
    """`prefix-tuning push [RECIPE] FLAGS`: the rules of `parse_args`. The recipe's training keys are ignored, and
    a training flag is refused as such (not taken for a typo of a push flag)."""
    parser = build_push_parser()
    recipe, cli = _split_recipe(
        parser, argv, ignored=_recipe_keys(TRAINING_ARGUMENTS), help_command=f"{PUSH_PROG} --help"
    )
    _use_recipe(parser, recipe)
    *flags, last = [action.option_strings[0] for action in parser._actions if action.dest != "help"]
    push_flags = f"{', '.join(flags)} and {last}"
    _refuse_unknown(
        parser,
        cli,
        foreign=set(build_parser()._option_string_actions),
        takes_only=f"`{PUSH_PROG}` publishes a finished run and takes only {push_flags} (or a recipe)",
    )
    (args,) = _into_dataclasses(parser, cli)
    return args
