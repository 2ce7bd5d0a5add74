"""`Seq2SeqTrainer` made exact for prefix tuning under data parallelism (DDP, FSDP, DeepSpeed).

Three things go wrong with the plain `Seq2SeqTrainer` (transformers 5.24) on more than one process:

* **The loss is multiplied by the number of processes, and so is the gradient.** T5's ``forward`` takes
  ``**kwargs`` (attention options), so the Trainer concludes that the model honours ``num_items_in_batch`` and
  normalises the loss itself (``model_accepts_loss_kwargs``). It then multiplies the loss by the number of
  processes, expecting a per-process *sum over the whole batch's tokens*; T5 returns a per-process *mean* instead.
  The logged ``train_loss`` comes out ``world_size`` times too large, and so does the averaged gradient (Adam
  hides most of it, gradient clipping does not). With gradient accumulation the same happens by the number of
  accumulation steps. We compute the loss ourselves (``compute_loss_func``): a sum of token losses divided by
  the number of target tokens in the whole (all processes, all accumulation steps) batch, which is what the
  Trainer's scaling expects: the loss and the gradient equal those of one process on the whole batch.
* **Evaluation counts padding duplicates.** The distributed sampler pads the last batch with copies of the first
  examples so that every process gets a batch; ``Seq2SeqTrainer.evaluate/predict`` gathers with
  ``accelerator.gather`` (to support ``num_return_sequences > 1``) and hands the copies to ``compute_metrics``.
  We gather with ``accelerator.gather_for_metrics``, which drops them, whenever one answer is generated per input.
* **The final ``train_loss`` can be process 0's alone:** the Trainer averages the loss over processes each time
  it logs, and adds what was accumulated since the last log without averaging. We log the last step.

Under FSDP and ZeRO-3 the prefix parameters are sharded, but peft computes the saved prefix by running the prefix
encoder on the local parameters (the save fails, or would write a shard); ``save_model`` gathers the prefix encoder
first (``whole_prefix_for_saving``).

The trainer also refuses set-ups that would silently do something else than asked: processes started by
``accelerate launch`` that are not in a process group (each would train alone), an FSDP or DeepSpeed config that
accelerate ignores (on CPU it runs plain DDP), and several GPUs in one process (torch DataParallel).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os

import torch
import torch.nn.functional as F  # noqa: N812 - the usual name
from torch.distributed.fsdp import FullyShardedDataParallel as FSDP  # noqa: N817 - the usual name
from torch.distributed.tensor import DTensor
from transformers import Seq2SeqTrainer, TrainerCallback

from .arguments import ArgumentError


logger = logging.getLogger(__name__)

__all__ = [
    "check_distributed_setup",
    "PrefixTuningTrainer",
    "LogLastStepCallback",
    "set_sample_count",
    "token_mean_loss",
    "whole_prefix_for_saving",
]


def token_mean_loss(outputs, labels: torch.Tensor, num_items_in_batch: torch.Tensor | int | None = None):
    """Cross-entropy summed over the target tokens, divided by the number of target tokens in the whole batch.

    ``num_items_in_batch`` is counted by the Trainer over every process and every gradient accumulation step; the
    Trainer then multiplies the result by the number of processes, and DDP averages the gradients over them.
    Without it (evaluation), this is the mean over the target tokens of this batch.
    """
    logits = outputs["logits"] if isinstance(outputs, dict) else outputs[0]
    labels = labels.to(logits.device)
    total = F.cross_entropy(logits.float().flatten(0, -2), labels.flatten(), ignore_index=-100, reduction="sum")
    if num_items_in_batch is None:
        num_items_in_batch = labels.ne(-100).sum().clamp(min=1)
    if torch.is_tensor(num_items_in_batch):
        num_items_in_batch = num_items_in_batch.to(total.device)
    return total / num_items_in_batch


class LogLastStepCallback(TrainerCallback):
    """Log on the last training step, so that the Trainer's final ``train_loss`` is averaged over all processes."""

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step >= state.max_steps:
            control.should_log = True
        return control


class PrefixTuningTrainer(Seq2SeqTrainer):
    """`Seq2SeqTrainer` whose loss, metrics and saved adapter are the same on one process or many (module doc)."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("compute_loss_func", token_mean_loss)
        super().__init__(*args, **kwargs)
        # T5's forward takes **kwargs for attention options and ignores `num_items_in_batch`: do not pass it.
        self.model_accepts_loss_kwargs = False
        self.add_callback(LogLastStepCallback())
        check_distributed_setup(self)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if self.compute_loss_func is not None and "labels" in inputs and "decoder_input_ids" not in inputs:
            # The Trainer takes the labels out before calling the model when it computes the loss itself; the
            # decoder still needs its inputs (the labels shifted right), which the model would have made from them.
            base = self.accelerator.unwrap_model(model).get_base_model()
            inputs = {**inputs, "decoder_input_ids": base.prepare_decoder_input_ids_from_labels(inputs["labels"])}
        return super().compute_loss(
            model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch
        )

    def _one_answer_per_input(self) -> bool:
        gen_kwargs = getattr(self, "_gen_kwargs", None) or {}
        count = gen_kwargs.get("num_return_sequences")
        if count is None:
            count = getattr(self.model.generation_config, "num_return_sequences", None) or 1
        return count == 1

    def evaluation_loop(self, *args, **kwargs):
        if self._one_answer_per_input():
            # Drop the copies the distributed sampler added to fill the last batch (see the module docstring).
            self.gather_function = functools.partial(
                self.accelerator.gather_for_metrics, use_gather_object=self.args.eval_use_gather_object
            )
        return super().evaluation_loop(*args, **kwargs)

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        if not (self.is_fsdp_enabled or self.is_deepspeed_enabled):
            return super().save_model(output_dir, _internal_call=_internal_call)
        # Collective: every process takes part in gathering the prefix, then the main process writes it.
        with whole_prefix_for_saving(self.accelerator.unwrap_model(self.model), self.model_wrapped):
            super().save_model(output_dir, _internal_call=_internal_call)


def set_sample_count(metrics: dict, prefix: str, expected: int) -> None:
    """Set ``<prefix>_samples`` to the size of the evaluated set, after checking that the metrics saw exactly it.

    `compute_metrics` reports how many answers it scored as ``<prefix>_samples``; under a distributed sampler that
    must still be every example exactly once (no padding duplicates, nothing dropped).
    """
    key = f"{prefix}_samples"
    scored = metrics.get(key)
    if scored is not None and scored != expected:
        raise RuntimeError(f"The {prefix} metrics were computed on {scored} answers for {expected} examples.")
    metrics[key] = expected


def check_distributed_setup(trainer: Seq2SeqTrainer) -> None:
    """Refuse set-ups where the processes would not do what the accelerate config asks (module docstring)."""
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
