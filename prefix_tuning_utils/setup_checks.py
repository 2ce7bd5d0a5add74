"""Set-ups the trainer refuses before it trains: they would silently do something else than asked.

Moved out of `trainer.py`; `PrefixTuningTrainer.__init__` calls both. Each refusal is an `ArgumentError` (one line,
exit code 2) that says what to change.
"""

from __future__ import annotations

import os

from peft import PeftModel, PeftType
from transformers import Seq2SeqTrainer

from .all_layer_prefix import get_all_layer_prefix
from .errors import ArgumentError


__all__ = ["check_distributed_setup", "check_encoder_cacheable"]


def check_encoder_cacheable(model, encoder_decoder: bool) -> None:
    """--cache_encoder_outputs only where the encoder's output cannot change in training (encoder_cache.py)."""
    if not encoder_decoder:
        raise ArgumentError(
            "--cache_encoder_outputs needs a seq2seq model (a frozen encoder); this is a decoder-only model, whose "
            "every layer sees the prefix: drop --cache_encoder_outputs."
        )
    config = model.active_peft_config if isinstance(model, PeftModel) else None
    if (
        config is None
        or config.peft_type != PeftType.PREFIX_TUNING
        or get_all_layer_prefix(model) is not None  # --prefix_scope all: the encoder sees a prefix
        or any(p.requires_grad for p in model.get_base_model().get_encoder().parameters())
    ):
        raise ArgumentError(
            "--cache_encoder_outputs needs peft's prefix tuning with --prefix_scope decoder (a frozen encoder that "
            "sees no prefix): drop --cache_encoder_outputs."
        )


def check_distributed_setup(trainer: Seq2SeqTrainer) -> None:
    """Refuse set-ups where the processes would not do what the accelerate config asks: processes started by
    `accelerate launch` that are in no process group (each would train alone), an FSDP or DeepSpeed config that
    accelerate ignores (on CPU it runs plain DDP), several GPUs in one process (torch DataParallel)."""
    args = trainer.args
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    if launched > 1 and args.world_size == 1:
        raise ArgumentError(
            f"Started as one of {launched} processes, but this process is in no process group: each would train "
            "alone on all the data. Without a GPU pass --use_cpu true (the default there); with GPUs, launch with "
            "accelerate_configs/multi_gpu.yaml."
        )
    for engine, variable, enabled in (
        ("FSDP", "ACCELERATE_USE_FSDP", trainer.is_fsdp_enabled),
        ("DeepSpeed", "ACCELERATE_USE_DEEPSPEED", trainer.is_deepspeed_enabled),
    ):
        if os.environ.get(variable, "false").lower() == "true" and not enabled:
            raise ArgumentError(
                f"The accelerate config asks for {engine}, which accelerate only runs on GPUs; here it would fall back "
                "to plain data parallelism. On CPU use accelerate_configs/multi_cpu.yaml."
            )
    if args.n_gpu > 1:
        raise ArgumentError(
            f"{args.n_gpu} GPUs in one process (torch DataParallel) is not supported: launch one process per GPU "
            "with `accelerate launch --config_file accelerate_configs/multi_gpu.yaml ...`, or make one GPU visible "
            "(CUDA_VISIBLE_DEVICES=0)."
        )
