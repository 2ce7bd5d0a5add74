"""Loading the frozen base model and wrapping it in a peft model (prefix tuning, or a baseline method).

Reading and writing the run folder (`TrainedModel`, `find_trained_model`, `save_task_settings`,
`TASK_SETTINGS_FIELDS`, the base-model lookup, `save_initialised_base`) moved to :mod:`prefix_tuning_utils.run_folder`.
"""

from __future__ import annotations

import logging
import os

import torch
from peft import (
    LoraConfig,
    PeftConfig,
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

from . import all_layer_prefix
from .arguments import ModelArguments, PrefixArguments
from .errors import ArgumentError
from .input_format import Task
from .run_files import WEIGHT_FILES


logger = logging.getLogger(__name__)

__all__ = [
    "FP16_UNSAFE_MODEL_TYPES",
    "Task",
    "build_peft_config",
    "build_model",
    "check_model_config",
    "get_model_config",
    "get_task",
    "get_tokenizer",
    "initialises_from_config",
    "load_base_model",
    "trainable_parameters",
]

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
