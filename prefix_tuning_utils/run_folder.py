"""The run folder: what a training run writes next to its model for later use, and reading it back.

A run folder (`--output_dir`, or a trained model given to `--model_name_or_path`, locally or as a Hub repo) holds
the adapter or model, `prefix_tuning.json` (label words, input format, task: `save_task_settings`) and, for a base
model initialised from a config, that base model (`save_initialised_base`). `find_trained_model` reads it back:
whether it was written by this package, its base model (from `adapter_config.json`, falling back to the folder's
own `base_model/`), its tokenizer and settings, as a `TrainedModel` that `--do_eval` / `--do_predict` without
`--do_train` and `PrefixClassifier` use as it is.

Moved out of `modeling.py`, which keeps loading the base model and wrapping it in peft. File names: `run_files`.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os

from peft import PeftModel
from transformers.utils import logging as hf_logging

from .arguments import DataTrainingArguments, ModelArguments
from .errors import ArgumentError
from .hub_files import find_model_file
from .input_format import SAVED_FIELDS, InputFormat
from .modeling import initialises_from_config
from .run_files import ADAPTER_CONFIG_FILE, BASE_MODEL_DIR, TASK_SETTINGS_FILE, TOKENIZER_CONFIG_FILE


logger = logging.getLogger(__name__)

__all__ = [
    "TASK_SETTINGS_FIELDS",
    "TrainedModel",
    "find_trained_model",
    "save_initialised_base",
    "save_task_settings",
]

# What turns a sentence into model input and names the answers; saved next to every model this script writes.
TASK_SETTINGS_FIELDS = SAVED_FIELDS


def save_initialised_base(model, tokenizer, output_dir: str) -> str:
    """Save a base model that was initialised from its config next to the adapter, and point the adapter at it.

    Without this, `PeftModel.from_pretrained(AutoModelForSeq2SeqLM.from_pretrained(base_model_name_or_path))`
    would load the adapter onto *other* random weights. Returns the folder (absolute path).
    """
    base_dir = os.path.abspath(os.path.join(output_dir, BASE_MODEL_DIR))
    base = model.get_base_model() if isinstance(model, PeftModel) else model
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # a "Writing model shards" bar for one small file, on every such run
    try:
        base.save_pretrained(base_dir)
    finally:
        if bars:
            hf_logging.enable_progress_bar()
    tokenizer.save_pretrained(base_dir)
    for config in getattr(model, "peft_config", {}).values():
        config.base_model_name_or_path = base_dir
    logger.info("Randomly initialised base model saved to %s (the adapter config points there).", base_dir)
    return base_dir


def save_task_settings(output_dir: str, labels: list[str], input_format: InputFormat) -> str:
    """Write `prefix_tuning.json` (label words, input format, task) next to a saved model or adapter.

    A later run that scores with the model reads it back, so it needs neither the training data nor the training
    flags. Returns the file's path.
    """
    settings = {"format": 1, "task": input_format.task, "label_words": list(labels), **input_format.settings()}
    path = os.path.join(output_dir, TASK_SETTINGS_FILE)
    with open(path, "w", encoding="utf-8") as handle:
        json.dump(settings, handle, indent=2, ensure_ascii=False)
        handle.write("\n")
    return path


def _model_file(args: ModelArguments, name: str) -> str | None:
    """Local path of the file `name` of --model_name_or_path (a folder or a Hub repo), or None where it has none."""
    return find_model_file(
        args.model_name_or_path, name, revision=args.model_revision, cache_dir=args.cache_dir, token=args.token
    )


@dataclasses.dataclass
class TrainedModel:
    """A model or adapter written by this script, to be used as it is: no new prefix, its own task settings."""

    path: str  # --model_name_or_path as given
    base_args: ModelArguments  # where the (base) model's config, weights and tokenizer come from
    adapter: bool  # a peft adapter (adapter_config.json) on top of base_args, or a complete model
    settings: dict  # prefix_tuning.json ({} for an adapter written before it existed)
    revision: str = "main"  # of the adapter on the Hub

    def apply_settings(self, data_args: DataTrainingArguments) -> None:
        """Fill in the label words and input format the model was trained with.

        A flag left at its default takes the saved value; a flag given with another value wins, with a warning.
        """
        saved_labels = self.settings.get("label_words")
        if saved_labels:
            if data_args.label_words is None:
                data_args.label_words = ",".join(saved_labels)
            elif data_args.label_list != list(saved_labels):
                logger.warning(
                    "--label_words %s differ from the label words %s was trained with (%s).",
                    data_args.label_words, self.path, ",".join(saved_labels),
                )  # fmt: skip
        defaults = {f.name: f.default for f in dataclasses.fields(DataTrainingArguments)}
        for name in TASK_SETTINGS_FIELDS:
            if name not in self.settings:
                continue
            value, saved = getattr(data_args, name), self.settings[name]
            if value == defaults[name]:
                setattr(data_args, name, saved)
            elif value != saved:
                logger.warning("--%s %r differs from the %r %s was trained with.", name, value, saved, self.path)

    def load(self, base_model):
        """The model to use: the adapter loaded onto `base_model` (frozen), or `base_model` itself."""
        if not self.adapter:
            return base_model
        args = self.base_args
        return PeftModel.from_pretrained(
            base_model, self.path, is_trainable=False, cache_dir=args.cache_dir, token=args.token,
            **({"revision": self.revision} if self.revision != "main" else {}),
        )  # fmt: skip


def find_trained_model(args: ModelArguments) -> TrainedModel | None:
    """What --model_name_or_path holds, when it was written by this script (or is any peft adapter).

    * a peft adapter (`adapter_config.json`): the base model is the one its config names
      (`base_model_name_or_path`, falling back to the adapter folder's own `base_model/` when that path is gone),
      the tokenizer the adapter's own when it has one;
    * a complete model with a `prefix_tuning.json` (e.g. `--tuning_method full`): used as it is.

    Returns None for anything else (a pretrained base model).
    """
    adapter_config = _model_file(args, ADAPTER_CONFIG_FILE)
    settings_file = _model_file(args, TASK_SETTINGS_FILE)
    settings = {}
    if settings_file is not None:
        with open(settings_file, encoding="utf-8") as handle:
            settings = json.load(handle)
    if adapter_config is None:
        return TrainedModel(args.model_name_or_path, args, False, settings) if settings else None
    with open(adapter_config, encoding="utf-8") as handle:
        config = json.load(handle)
    base = config.get("base_model_name_or_path")
    if not base:
        raise ArgumentError(
            f"--model_name_or_path {args.model_name_or_path} is an adapter whose adapter_config.json names no base "
            "model (base_model_name_or_path); set it there."
        )
    own_base = os.path.join(args.model_name_or_path, BASE_MODEL_DIR)
    if os.path.isabs(base) and not os.path.isdir(base) and os.path.isdir(own_base):
        logger.warning("The adapter's base model %s is gone; using %s.", base, own_base)
        base = own_base
    tokenizer = args.tokenizer_name
    if tokenizer is None and _model_file(args, TOKENIZER_CONFIG_FILE) is not None:
        tokenizer = args.model_name_or_path
    base_args = dataclasses.replace(
        args, model_name_or_path=base, model_revision=config.get("revision") or "main", tokenizer_name=tokenizer
    )
    if initialises_from_config(base_args):
        raise ArgumentError(
            f"The base model of the adapter {args.model_name_or_path}, {base}, holds no weights: the adapter would "
            "be applied to random weights. Point base_model_name_or_path in its adapter_config.json at the model it "
            "was trained on."
        )
    logger.info("%s is an adapter on %s.", args.model_name_or_path, base)
    return TrainedModel(args.model_name_or_path, base_args, True, settings, revision=args.model_revision)
