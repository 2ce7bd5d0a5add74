"""Worker for tests/test_distributed.py: save a prefix that torch FSDP shards over CPU processes (gloo).

    python -m torch.distributed.run --standalone --nproc_per_node 2 tests/fsdp_prefix_worker.py MODEL_DIR OUT_DIR

accelerate runs FSDP only on GPUs, so this drives torch FSDP directly: wrap a prefix-tuned tiny T5 (one unit per
T5Block, like accelerate_configs/fsdp.yaml), take one optimizer step, then save the adapter exactly as
`PrefixTuningTrainer.save_model` does (every process gathers, process 0 writes). Twice: FSDP1 (`use_orig_params`,
the shipped config) with --prefix_projection, and FSDP2 (`fully_shard`) without, into OUT_DIR/fsdp1 and
OUT_DIR/fsdp2. Process 0 also writes `reference.pt` there: the prefix computed from the whole parameters on one
process, and `upstream_error.txt`: what plain peft does with the sharded parameters.
"""

from __future__ import annotations

import functools
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
from torch.distributed.fsdp import FullStateDictConfig, StateDictType, fully_shard
from torch.distributed.fsdp import FullyShardedDataParallel as FSDP  # noqa: N817 - the usual name
from torch.distributed.fsdp.wrap import transformer_auto_wrap_policy
from transformers import T5ForConditionalGeneration
from transformers.models.t5.modeling_t5 import T5Block

from prefix_tuning_utils.arguments import PrefixArguments
from prefix_tuning_utils.checkpointing import whole_prefix_for_saving
from prefix_tuning_utils.modeling import build_model, build_peft_config


def full_encoder_state(peft_model, wrapped, kind: str) -> dict[str, torch.Tensor]:
    encoder = peft_model.prompt_encoder["default"]
    if kind == "fsdp1":
        with FSDP.summon_full_params(wrapped, writeback=False):
            return {name: p.detach().clone() for name, p in encoder.named_parameters()}
    return {name: p.full_tensor().detach().clone() for name, p in encoder.named_parameters()}


def full_model_state_dict(wrapped, kind: str) -> dict[str, torch.Tensor]:
    """The whole model's state dict, gathered by every process, as accelerate's `get_state_dict` does on GPUs.

    Not offloaded to CPU: on CPU, FSDP1's `offload_to_cpu=True` crashes the process (SIGSEGV, torch 2.13).
    """
    if kind == "fsdp1":
        config = FullStateDictConfig(offload_to_cpu=False, rank0_only=False)
        with FSDP.state_dict_type(wrapped, StateDictType.FULL_STATE_DICT, config):
            return wrapped.state_dict()
    return get_model_state_dict(wrapped, options=StateDictOptions(full_state_dict=True))


def run(model_dir: str, out: Path, kind: str, projection: bool) -> None:
    rank = dist.get_rank()
    torch.manual_seed(0)  # the same model and prefix on every process, as the Trainer's set_seed gives
    model = T5ForConditionalGeneration.from_pretrained(model_dir)
    prefix_args = PrefixArguments(num_virtual_tokens=6, prefix_projection=projection, encoder_hidden_size=16)
    peft_model = build_model(model, build_peft_config(model.config, prefix_args))
    if kind == "fsdp1":
        policy = functools.partial(transformer_auto_wrap_policy, transformer_layer_cls={T5Block})
        wrapped = FSDP(peft_model, auto_wrap_policy=policy, use_orig_params=True, device_id=torch.device("cpu"))
    else:
        for module in peft_model.modules():
            if isinstance(module, T5Block):
                fully_shard(module)
        wrapped = fully_shard(peft_model)
    optimizer = torch.optim.Adam([p for p in wrapped.parameters() if p.requires_grad], lr=0.1)
    generator = torch.Generator().manual_seed(rank)
    ids = torch.randint(2, 100, (2, 7), generator=generator)
    loss = wrapped(input_ids=ids, attention_mask=torch.ones_like(ids), labels=ids[:, :3].clone()).loss
    loss.backward()
    optimizer.step()

    # The reference: an unsharded prefix encoder with the whole (gathered) parameters, on one process.
    state = full_encoder_state(peft_model, wrapped, kind)
    reference_model = build_model(
        T5ForConditionalGeneration(model.config), build_peft_config(model.config, prefix_args)
    )
    reference_model.prompt_encoder["default"].load_state_dict(state)
    reference = reference_model.get_prompt_embedding_to_save("default")

    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        try:  # plain peft on the sharded parameters
            peft_model.get_prompt_embedding_to_save("default")
            upstream = "no error"
        except Exception as err:  # noqa: BLE001 - recorded for the test to show
            upstream = f"{type(err).__name__}: {err}"
        (out / "upstream_error.txt").write_text(upstream)
        torch.save(reference, out / "reference.pt")
    # As `Trainer.save_model` under FSDP: a full state dict, gathered by every process (accelerate's get_state_dict),
    # then `save_pretrained(state_dict=...)` on process 0, inside `whole_prefix_for_saving` (collective).
    state_dict = full_model_state_dict(wrapped, kind)
    with whole_prefix_for_saving(peft_model, wrapped):
        if rank == 0:
            peft_model.save_pretrained(out / "adapter", state_dict=state_dict)
    dist.barrier()


def main(model_dir: str, out_dir: str) -> None:
    dist.init_process_group("gloo")
    for kind, projection in (("fsdp1", True), ("fsdp2", False)):
        run(model_dir, Path(out_dir) / kind, kind, projection)
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
