"""Loading the frozen base model and wrapping it in a peft model (prefix tuning, or a baseline method)."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from typing import Literal

import torch
from peft import (
    LoraConfig,
    PeftConfig,
    PeftModel,
    PrefixTuningConfig,
    PromptTuningConfig,
    TaskType,
    get_peft_model,
)
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForSeq2SeqLM,
    AutoTokenizer,
    PretrainedConfig,
)
from transformers.models.auto.modeling_auto import (
    MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
    MODEL_FOR_MASKED_LM_MAPPING_NAMES,
)
from transformers.utils import logging as hf_logging

from . import all_layer_prefix
from .arguments import ArgumentError, DataTrainingArguments, ModelArguments, PrefixArguments
from .hub_files import find_model_file


logger = logging.getLogger(__name__)

__all__ = [
    "ADAPTER_CONFIG_FILE",
    "BASE_MODEL_DIR",
    "TASK_SETTINGS_FILE",
    "Task",
    "TrainedModel",
    "WEIGHT_FILES",
    "build_peft_config",
    "build_model",
    "check_model_config",
    "find_trained_model",
    "get_model_config",
    "get_task",
    "get_tokenizer",
    "initialises_from_config",
    "load_base_model",
    "save_initialised_base",
    "save_task_settings",
    "trainable_parameters",
]

Task = Literal["seq2seq", "causal"]
WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)
# Model families whose activations overflow in float16 (T5's feed-forward outputs exceed 65504).
FP16_UNSAFE_MODEL_TYPES = ("t5", "mt5", "umt5", "longt5", "switch_transformers")


def _hub_kwargs(args: ModelArguments) -> dict:
    kwargs = {
        "cache_dir": args.cache_dir,
        "revision": args.model_revision,
        "token": args.token,
        "trust_remote_code": args.trust_remote_code,
    }
    if args.gguf_file is not None:
        kwargs["gguf_file"] = args.gguf_file
    return kwargs


def get_model_config(args: ModelArguments) -> PretrainedConfig:
    """Load only the model's config (cheap), so problems are found before any weights are loaded."""
    path = args.model_name_or_path
    # A Hub id is `name` or `owner/name`; anything else that does not exist is a missing local folder.
    looks_local = path.startswith((".", "/", "~")) or path.count("/") > 1 or "\\" in path
    if looks_local and not os.path.isdir(os.path.expanduser(path)):
        raise ArgumentError(f"--model_name_or_path {path}: no such folder.")
    if args.gguf_file is not None and os.path.isdir(path) and not os.path.isfile(os.path.join(path, args.gguf_file)):
        raise ArgumentError(f"--gguf_file {args.gguf_file}: no such file in {path}.")
    try:
        return AutoConfig.from_pretrained(path, **_hub_kwargs(args))
    except (OSError, ValueError) as err:
        raise ArgumentError(
            f"--model_name_or_path {path}: cannot load a model config ({str(err).splitlines()[0]})"
        ) from None


def get_task(config: PretrainedConfig) -> Task:
    """seq2seq for encoder-decoder models, causal for decoder-only language models; anything else is refused."""
    if getattr(config, "is_encoder_decoder", False):
        return "seq2seq"
    # BERT-like encoders also have a (decoder-mode) causal LM class; they count only when configured as decoders.
    encoder_only = config.model_type in MODEL_FOR_MASKED_LM_MAPPING_NAMES and not getattr(config, "is_decoder", False)
    if config.model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES and not encoder_only:
        return "causal"
    raise ArgumentError(
        f"--model_name_or_path is a {config.model_type!r} model, which has neither a seq2seq nor a causal language "
        "modelling head (an encoder-only model cannot write the label); use e.g. t5-large, google/flan-t5-base or a "
        "decoder-only LM such as SmolLM2."
    )


def check_model_config(config: PretrainedConfig, fp16: bool) -> Task:
    """Refuse, with a message that says what to change, models and settings that cannot work."""
    task = get_task(config)
    if fp16 and config.model_type in FP16_UNSAFE_MODEL_TYPES:
        raise ArgumentError(
            f"--fp16 makes {config.model_type} models overflow (inf/NaN losses); use --bf16 (or full precision)."
        )
    return task


def get_tokenizer(args: ModelArguments, task: Task = "seq2seq"):
    name = args.tokenizer_name or args.model_name_or_path
    kwargs = _hub_kwargs(args)
    if args.tokenizer_name is not None:
        kwargs.pop("gguf_file", None)
    try:
        tokenizer = AutoTokenizer.from_pretrained(name, **kwargs)
    except (OSError, ValueError) as err:
        raise ArgumentError(f"Cannot load a tokenizer from {name} ({str(err).splitlines()[0]}).") from None
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if task == "causal":
        if tokenizer.eos_token is None:
            raise ArgumentError(
                f"The tokenizer of {name} has no end-of-sequence token; a decoder-only model needs one."
            )
        tokenizer.padding_side = "right"  # training batches; generation pads on the left by itself
    return tokenizer


def _has_weights(path: str) -> bool:
    return any(os.path.isfile(os.path.join(path, name)) for name in WEIGHT_FILES)


def initialises_from_config(args: ModelArguments) -> bool:
    """True for a local model folder that holds a config but no weights (the quickstart's tiny T5)."""
    path = args.model_name_or_path
    return os.path.isdir(path) and args.gguf_file is None and not _has_weights(path)


def _auto_class(task: Task):
    return AutoModelForSeq2SeqLM if task == "seq2seq" else AutoModelForCausalLM


def load_base_model(args: ModelArguments, config: PretrainedConfig, task: Task = "seq2seq", dtype=None):
    """The base model. A local folder with a config but no weights gives a randomly initialised model."""
    path = args.model_name_or_path
    auto = _auto_class(task)
    if initialises_from_config(args):
        logger.warning("%s holds no weights: initialising the model from its config (random weights).", path)
        model = auto.from_config(config, trust_remote_code=args.trust_remote_code)
        return model.to(dtype) if dtype is not None else model
    model = auto.from_pretrained(path, config=config, dtype=dtype, **_hub_kwargs(args))
    if args.gguf_file is not None:
        # transformers dequantises GGUF weights to plain tensors on load but still marks the model as quantized,
        # which makes the Trainer refuse full fine-tuning. Nothing quantized is left, so drop the marks.
        model.is_quantized = False
        model.hf_quantizer = None
        model.config.quantization_config = None
    return model


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


def _prefix_shapes(config: PretrainedConfig, task: Task) -> dict:
    """Prefix shapes for T5-like models, spelled out.

    peft guesses the key/value width from `d_model`, which is wrong for T5 v1.1 / flan-t5 shapes where
    `num_heads * d_kv != d_model`, and the layer count from the encoder; T5's prefix lives in the decoder.
    Decoder-only models (including grouped-query attention) are handled by peft itself.
    """
    if task != "seq2seq" or not hasattr(config, "d_kv"):
        return {}
    return {
        "token_dim": config.num_heads * config.d_kv,
        "num_attention_heads": config.num_heads,
        "num_layers": getattr(config, "num_decoder_layers", None) or config.num_layers,
    }


def build_peft_config(config: PretrainedConfig, args: PrefixArguments, task: Task = "seq2seq") -> PeftConfig | None:
    """The peft config of --tuning_method (None for full fine-tuning)."""
    task_type = TaskType.SEQ_2_SEQ_LM if task == "seq2seq" else TaskType.CAUSAL_LM
    hidden = getattr(config, "d_model", None) or getattr(config, "hidden_size", None)
    if args.tuning_method == "prefix":
        return PrefixTuningConfig(
            task_type=task_type,
            num_virtual_tokens=args.num_virtual_tokens,
            prefix_projection=args.prefix_projection,
            encoder_hidden_size=args.encoder_hidden_size or hidden,
            init_weights="zero" if args.init_weights == "zero" else None,
            **_prefix_shapes(config, task),
        )
    if args.tuning_method == "prompt":
        return PromptTuningConfig(task_type=task_type, num_virtual_tokens=args.num_virtual_tokens)
    if args.tuning_method == "lora":
        return LoraConfig(
            task_type=task_type, r=args.lora_r, lora_alpha=args.lora_alpha, lora_dropout=args.lora_dropout
        )
    return None


def build_model(model, peft_config: PeftConfig | None, prefix_scope: str = "decoder"):
    """Wrap the frozen base model in peft; with no peft config (full fine-tuning) every weight trains.

    `prefix_scope="all"` adds encoder self-attention and cross-attention prefixes (:mod:`all_layer_prefix`).
    """
    if peft_config is None:
        for param in model.parameters():
            param.requires_grad_(True)
        return model
    peft_model = get_peft_model(model, peft_config)
    if prefix_scope == "all":
        all_layer_prefix.attach(peft_model)
    return peft_model


def trainable_parameters(model: torch.nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return trainable, total


# --- Using a trained model as it is (--do_eval / --do_predict without --do_train) ---

ADAPTER_CONFIG_FILE = "adapter_config.json"
TASK_SETTINGS_FILE = "prefix_tuning.json"
# Where a training run saves a base model initialised from its config (random weights), next to the adapter.
BASE_MODEL_DIR = "base_model"
# What turns a sentence into model input and names the answers; saved next to every model this script writes.
TASK_SETTINGS_FIELDS = ("source_prefix", "prompt_template", "max_source_length", "max_target_length")


def save_task_settings(output_dir: str, labels: list[str], data_args: DataTrainingArguments, task: Task) -> str:
    """Write `prefix_tuning.json` (label words, input format, task) next to a saved model or adapter.

    A later run that scores with the model reads it back, so it needs neither the training data nor the training
    flags. Returns the file's path.
    """
    settings = {"format": 1, "task": task, "label_words": list(labels)}
    settings.update({name: getattr(data_args, name) for name in TASK_SETTINGS_FIELDS})
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
    if tokenizer is None and _model_file(args, "tokenizer_config.json") is not None:
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
