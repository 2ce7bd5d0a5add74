"""Checkpoints that hold what training needs, and the whole prefix saved however the parameters are sharded.

Moved out of `trainer.py`, whose `PrefixTuningTrainer` calls these from its `save_model`, `_save_checkpoint` and
checkpoint-loading methods:

* **The prefix encoder of `--prefix_projection` runs.** peft's adapter file holds only the projected prefix, from
  which training cannot continue exactly; a checkpoint also gets the whole prefix encoder (embedding + MLP) in
  `PREFIX_ENCODER_FILE` (`save_prefix_encoder`), and resuming loads it back (`load_prefix_encoder`).
* **A completion mark.** `CHECKPOINT_COMPLETE_FILE` is written into a checkpoint folder after everything else
  (`mark_complete`); a run killed while saving leaves a folder without it, which `output_dir` never resumes from.
* **The prefix under FSDP and ZeRO-3.** The prefix parameters are sharded, but peft computes the saved prefix by
  running the prefix encoder on the local parameters (the save fails, or would write a shard); within
  `whole_prefix_for_saving` peft saves the prefix computed from whole parameters (`full_prompt_embeddings`).
"""

from __future__ import annotations

import contextlib
import os

import torch
from peft import PeftModel, PeftType
from safetensors.torch import load_file, save_file
from torch.distributed.fsdp import FullyShardedDataParallel as FSDP  # noqa: N817 - the usual name
from torch.distributed.tensor import DTensor

from .run_files import CHECKPOINT_COMPLETE_FILE, PREFIX_ENCODER_FILE


__all__ = [
    "full_prompt_embeddings",
    "load_prefix_encoder",
    "mark_complete",
    "projected_prefix_encoder",
    "save_prefix_encoder",
    "whole_prefix_for_saving",
]


def projected_prefix_encoder(model):
    """The trainable prefix encoder (with its MLP) of a `--prefix_projection` peft model, else None."""
    if not isinstance(model, PeftModel):
        return None
    config = model.active_peft_config
    if config.peft_type != PeftType.PREFIX_TUNING or not config.prefix_projection or config.inference_mode:
        return None
    return model.prompt_encoder[model.active_adapter]


def save_prefix_encoder(model, folder: str) -> bool:
    """Write the whole prefix encoder of a `--prefix_projection` model into the checkpoint `folder`; False for any
    other model (nothing to add to peft's adapter)."""
    encoder = projected_prefix_encoder(model)
    if encoder is None:
        return False
    state = {key: value.detach().cpu().contiguous() for key, value in encoder.state_dict().items()}
    save_file(state, os.path.join(folder, PREFIX_ENCODER_FILE))
    return True


def load_prefix_encoder(checkpoint: str, model) -> bool:
    """Load the whole prefix encoder of a `--prefix_projection` model back from `checkpoint`; False for any other
    model (the Trainer then loads the checkpoint as usual). A checkpoint without the file is refused."""
    encoder = projected_prefix_encoder(model)
    if encoder is None:
        return False
    path = os.path.join(checkpoint, PREFIX_ENCODER_FILE)
    if not os.path.isfile(path):
        raise ValueError(
            f"{checkpoint} has no {PREFIX_ENCODER_FILE}: it holds only the projected prefix of a "
            "--prefix_projection run, from which training cannot continue exactly. Resume from a checkpoint "
            "written by this package, or start without --resume_from_checkpoint."
        )
    encoder.load_state_dict(load_file(path, device=str(next(encoder.parameters()).device)))
    return True


def mark_complete(folder: str) -> None:
    """Mark the checkpoint `folder` as written completely (the last file a checkpoint gets)."""
    if os.path.isdir(folder):
        open(os.path.join(folder, CHECKPOINT_COMPLETE_FILE), "w").close()


def _prompt_tokens(peft_model, adapter_name: str) -> torch.Tensor:
    """The virtual token ids peft feeds the prefix encoder when it saves the prefix (one row)."""
    tokens = peft_model.prompt_tokens[adapter_name].unsqueeze(0)
    return tokens[:, : peft_model.peft_config[adapter_name].num_virtual_tokens]


def full_prompt_embeddings(peft_model, wrapped_model, adapter_name: str) -> torch.Tensor:
    """The prefix peft saves for `adapter_name`, computed from whole parameters however they are sharded.

    Collective under FSDP and ZeRO-3: every process must call it. Only the prefix encoder is gathered.
    """
    encoder = peft_model.prompt_encoder[adapter_name]
    params = dict(encoder.named_parameters())
    if any(hasattr(p, "ds_id") for p in params.values()):  # DeepSpeed ZeRO-3: partitioned parameters
        import deepspeed

        with deepspeed.zero.GatheredParameters(list(params.values())), torch.no_grad():
            return peft_model.get_prompt_embedding_to_save(adapter_name)
    if any(isinstance(p, DTensor) for p in params.values()):  # FSDP2 (fully_shard): DTensor shards
        full = {name: p.full_tensor() if isinstance(p, DTensor) else p for name, p in params.items()}
        tokens = _prompt_tokens(peft_model, adapter_name).to(next(iter(full.values())).device)
        with torch.no_grad():
            return torch.func.functional_call(encoder, full, (tokens,))[0].detach().cpu()
    owner = None
    if isinstance(wrapped_model, FSDP):  # FSDP1: the innermost unit that owns the prefix encoder
        weight = next(iter(params.values()))
        for module in wrapped_model.modules():
            if isinstance(module, FSDP) and any(p is weight for p in module.parameters()):
                owner = module
    context = FSDP.summon_full_params(owner, recurse=False, writeback=False) if owner else contextlib.nullcontext()
    with context, torch.no_grad():
        return peft_model.get_prompt_embedding_to_save(adapter_name)


@contextlib.contextmanager
def whole_prefix_for_saving(peft_model, wrapped_model):
    """Within the block, peft saves the prefix computed from whole parameters (FSDP1/2, ZeRO-3 or none).

    peft takes the saved prefix not from the (gathered) state dict but from running the prefix encoder on its own
    parameters, which FSDP and ZeRO-3 leave sharded outside forward: the save fails (``'weight' must be 2-D``) or
    would write a shard. Collective: every process must enter it.
    """
    adapters = [name for name, config in peft_model.peft_config.items() if config.is_prompt_learning]
    embeddings = {name: full_prompt_embeddings(peft_model, wrapped_model, name) for name in adapters}
    if not embeddings:
        yield
        return
    peft_model.get_prompt_embedding_to_save = embeddings.__getitem__
    try:
        yield
    finally:
        del peft_model.get_prompt_embedding_to_save
