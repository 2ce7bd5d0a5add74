"""Loading the frozen base model and wrapping it in a peft prefix-tuning model."""

from __future__ import annotations

import logging
import os

import torch
from peft import PeftConfig, PeftModel, PrefixTuningConfig, TaskType, get_peft_model
from transformers import AutoConfig, AutoModelForSeq2SeqLM, AutoTokenizer, PretrainedConfig

from . import all_layer_prefix
from .arguments import ArgumentError, ModelArguments, PrefixArguments


logger = logging.getLogger(__name__)

__all__ = [
    "WEIGHT_FILES",
    "build_prefix_config",
    "check_model_config",
    "get_model_config",
    "get_tokenizer",
    "initialises_from_config",
    "load_base_model",
    "save_initialised_base",
    "build_prefix_model",
    "trainable_parameters",
]

WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)
# Model families whose activations overflow in float16 (T5's feed-forward outputs exceed 65504).
FP16_UNSAFE_MODEL_TYPES = ("t5", "mt5", "umt5", "longt5", "switch_transformers")


def _hub_kwargs(args: ModelArguments) -> dict:
    return {
        "cache_dir": args.cache_dir,
        "revision": args.model_revision,
        "token": args.token,
        "trust_remote_code": args.trust_remote_code,
    }


def get_model_config(args: ModelArguments) -> PretrainedConfig:
    """Load only the model's config (cheap), so problems are found before any weights are loaded."""
    path = args.model_name_or_path
    # A Hub id is `name` or `owner/name`; anything else that does not exist is a missing local folder.
    looks_local = path.startswith((".", "/", "~")) or path.count("/") > 1 or "\\" in path
    if looks_local and not os.path.isdir(os.path.expanduser(path)):
        raise ArgumentError(f"--model_name_or_path {path}: no such folder.")
    try:
        return AutoConfig.from_pretrained(path, **_hub_kwargs(args))
    except OSError as err:
        raise ArgumentError(
            f"--model_name_or_path {path}: cannot load a model config ({str(err).splitlines()[0]})"
        ) from None


def check_model_config(config: PretrainedConfig, fp16: bool) -> None:
    """Refuse, with a message that says what to change, models and settings that cannot work."""
    if not getattr(config, "is_encoder_decoder", False):
        raise ArgumentError(
            f"--model_name_or_path is a {config.model_type!r} model without an encoder-decoder (seq2seq) language "
            "modelling head; use a model such as t5-small, t5-large or google/flan-t5-base."
        )
    if fp16 and config.model_type in FP16_UNSAFE_MODEL_TYPES:
        raise ArgumentError(
            f"--fp16 makes {config.model_type} models overflow (inf/NaN losses); use --bf16 (or full precision)."
        )


def get_tokenizer(args: ModelArguments):
    name = args.tokenizer_name or args.model_name_or_path
    try:
        return AutoTokenizer.from_pretrained(name, **_hub_kwargs(args))
    except (OSError, ValueError) as err:
        raise ArgumentError(f"Cannot load a tokenizer from {name} ({str(err).splitlines()[0]}).") from None


def _has_weights(path: str) -> bool:
    return any(os.path.isfile(os.path.join(path, name)) for name in WEIGHT_FILES)


def initialises_from_config(args: ModelArguments) -> bool:
    """True for a local model folder that holds a config but no weights (the quickstart's tiny T5)."""
    path = args.model_name_or_path
    return os.path.isdir(path) and not _has_weights(path)


def load_base_model(args: ModelArguments, config: PretrainedConfig, dtype: torch.dtype | None = None):
    """The frozen base model. A local folder with a config but no weights gives a randomly initialised model."""
    path = args.model_name_or_path
    if initialises_from_config(args):
        logger.warning("%s holds no weights: initialising the model from its config (random weights).", path)
        model = AutoModelForSeq2SeqLM.from_config(config, trust_remote_code=args.trust_remote_code)
        return model.to(dtype) if dtype is not None else model
    return AutoModelForSeq2SeqLM.from_pretrained(path, config=config, dtype=dtype, **_hub_kwargs(args))


def save_initialised_base(peft_model: PeftModel, tokenizer, output_dir: str) -> str:
    """Save a base model that was initialised from its config next to the adapter, and point the adapter at it.

    Without this, `PeftModel.from_pretrained(AutoModelForSeq2SeqLM.from_pretrained(base_model_name_or_path))`
    would load the adapter onto *other* random weights. Returns the folder (absolute path).
    """
    base_dir = os.path.abspath(os.path.join(output_dir, "base_model"))
    peft_model.get_base_model().save_pretrained(base_dir)
    tokenizer.save_pretrained(base_dir)
    for config in peft_model.peft_config.values():
        config.base_model_name_or_path = base_dir
    logger.info("Randomly initialised base model saved to %s (the adapter config points there).", base_dir)
    return base_dir


def build_prefix_config(config: PretrainedConfig, args: PrefixArguments) -> PrefixTuningConfig:
    """A `PrefixTuningConfig` with the shapes spelled out.

    peft guesses the key/value width from `d_model`, which is wrong for T5 v1.1 / flan-t5 shapes where
    `num_heads * d_kv != d_model`, and the layer count from the encoder; T5's prefix lives in the decoder.
    """
    num_heads = config.num_heads
    kv_width = num_heads * config.d_kv
    return PrefixTuningConfig(
        task_type=TaskType.SEQ_2_SEQ_LM,
        num_virtual_tokens=args.num_virtual_tokens,
        prefix_projection=args.prefix_projection,
        encoder_hidden_size=args.encoder_hidden_size or config.d_model,
        init_weights="zero" if args.init_weights == "zero" else None,
        token_dim=kv_width,
        num_attention_heads=num_heads,
        num_layers=getattr(config, "num_decoder_layers", None) or config.num_layers,
    )


def build_prefix_model(model, prefix_config: PrefixTuningConfig, prefix_scope: str = "decoder") -> PeftModel:
    peft_model = get_peft_model(model, prefix_config)
    if prefix_scope == "all":  # encoder self-attention and cross-attention prefixes too
        all_layer_prefix.attach(peft_model)
    return peft_model


def load_adapter(adapter_path: str, base_model) -> PeftModel:
    """Load a saved adapter onto `base_model` exactly as users do: `PeftModel.from_pretrained`."""
    PeftConfig.from_pretrained(adapter_path)
    return PeftModel.from_pretrained(base_model, adapter_path)


def trainable_parameters(model: torch.nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return trainable, total
