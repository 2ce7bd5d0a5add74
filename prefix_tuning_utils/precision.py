"""What `--bf16` does: which dtype each part of the model gets, and whether this machine computes in bf16 at all.

A CPU multiplies bf16 matrices fast only with bf16 instructions (AVX512-BF16 or AMX on x86, the BF16 extension on
ARM), and what makes `--bf16` pay there is the frozen weights *stored* in bf16, not autocast: torch's CPU autocast
re-casts every frozen fp32 weight to bf16 on every forward pass (it caches casts only of weights that train), while
weights stored in bf16 are cast never. So, per run (:func:`plan_precision`):

* **training on a CPU with a parameter-efficient method** (prefix, prompt tuning, LoRA): the frozen weights are
  stored in bf16 (:func:`store_frozen_weights`, after the model is built); the trainable prefix / prompt / LoRA
  weights, their gradients and AdamW's state stay fp32. They meet the model through a cast: peft casts the prefix
  to the base model's dtype and the prompt to the input embeddings' (LoRA runs its own small products in its
  weights' fp32 and casts the sum back); the Trainer keeps accelerate's bf16 autocast around the forward pass, which
  adds no cast of its own over bf16 weights (the same casts a step with and without it, profiled) and covers any
  fp32 tensor that meets a bf16 product. Activations are then bf16 as under autocast; T5's layer norms and
  softmax compute in fp32 inside, and the loss is taken in fp32 (``token_mean_loss`` upcasts the logits);
* **full fine-tuning** keeps fp32 master weights under autocast (it trains them), and **on a GPU** nothing changes:
  fp32 weights under bf16 autocast, the standard there;
* **answering without training** (`--do_eval` / `--do_predict` of a trained model): the model is loaded in bf16,
  the path of ``PrefixClassifier.from_pretrained(..., dtype="bfloat16")``; label scores are summed in fp32 (the
  scorer takes ``log_softmax`` of upcast logits). Evaluation after training and ``--do_predict`` run under the
  Trainer's autocast, which is a no-op over weights already in bf16.

Where bf16 is not supported, :func:`check_bf16_supported` refuses it in one line: a GPU without bf16 (compute
capability below 8.0) and a CPU for which torch has no bf16 matrix kernel (no oneDNN bf16 support: AVX2-only x86),
where torch falls back to a generic kernel that multiplied bf16 matrices at 16 GFLOP/s against fp32's 131 on an
idle 2-core AMD EPYC (AVX2) at a t5-small shape, and a prefix-tuning step of a t5-small shape took 5.5x as long as in fp32. A CPU that oneDNN
runs bf16 on by emulation (AVX512 without BF16) gets a warning: it computes at about fp32's speed, with half the
weights' memory.
"""

from __future__ import annotations

import logging
import platform
from dataclasses import dataclass

import torch
from torch import nn

from .errors import ArgumentError


logger = logging.getLogger(__name__)

__all__ = [
    "CPU_BF16_SUPPORT",
    "Precision",
    "check_bf16_supported",
    "cpu_bf16_support",
    "plan_precision",
    "store_frozen_weights",
]

# What a CPU offers for bf16 (cpu_bf16_support): bf16 instructions, oneDNN's emulation, or nothing fast.
CPU_BF16_SUPPORT = ("native", "emulated", "none")


def cpu_bf16_support() -> str:
    """`native` (AVX512-BF16 or AMX on x86, BF16 instructions on ARM), `emulated` (oneDNN runs bf16 without bf16
    instructions: AVX512 without BF16; about fp32's speed) or `none` (no oneDNN bf16 kernels: torch's generic
    fallback, several times slower than fp32 for matrix products)."""
    try:
        onednn = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # a torch built without oneDNN
        onednn = False
    if not onednn:
        return "none"
    if platform.machine().lower() in ("arm64", "aarch64"):
        return "native"  # on ARM, oneDNN's bf16 check is the BF16 extension itself
    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    native = any(bool(getattr(torch.cpu, probe, lambda: False)()) for probe in probes)
    return "native" if native else "emulated"


def check_bf16_supported(device_type: str, what: str = "--bf16", fix: str = "drop --bf16") -> None:
    """Refuse bf16 on a device that cannot compute in it (one line, an `ArgumentError`); warn where it can, but
    without bf16 instructions. `what` names the setting, `fix` says what to do instead."""
    if device_type == "cuda":
        if torch.cuda.is_bf16_supported(including_emulation=False):
            return
        major, minor = torch.cuda.get_device_capability()
        raise ArgumentError(
            f"{what}: the GPU {torch.cuda.get_device_name()} (compute capability {major}.{minor}) has no bf16 "
            f"arithmetic (it needs 8.0, Ampere, or newer): {fix} to compute in fp32."
        )
    if device_type != "cpu":
        return  # other accelerators: transformers checks them
    support = cpu_bf16_support()
    if support == "none":
        raise ArgumentError(
            f"{what}: this CPU ({platform.machine()}) has neither AVX512-BF16 nor AMX and torch has no bf16 kernels "
            f"for it: bf16 matrix products would run about 8x slower than fp32 (a training step about 5x "
            f"slower); {fix} to compute in fp32."
        )
    if support == "emulated":
        logger.warning(
            "%s: this CPU has no bf16 instructions (AVX512-BF16 or AMX); oneDNN emulates bf16 at about fp32's speed, "
            "so bf16 only halves the frozen weights' memory here.",
            what,
        )


@dataclass(frozen=True)
class Precision:
    """The dtypes of one run (module docstring). `bf16`: the run computes in bf16 (--bf16, or an accelerate config
    with mixed_precision bf16); `load_dtype`: the dtype the model is loaded in (None: as saved, fp32);
    `frozen_dtype`: the dtype the frozen weights are stored in once the trainable model is built (None: unchanged)."""

    bf16: bool = False
    device_type: str = "cpu"
    load_dtype: torch.dtype | None = None
    frozen_dtype: torch.dtype | None = None

    @property
    def pad_to_multiple_of(self) -> int | None:
        """Batches padded to a multiple of 8 tokens for a GPU's bf16 tensor cores; a CPU gains nothing from it
        (oneDNN takes any shape), so there each batch keeps its own longest sentence."""
        return 8 if self.bf16 and self.device_type == "cuda" else None

    def describe(self) -> str:
        if not self.bf16:
            return "fp32"
        if self.load_dtype is not None:
            return f"bf16 on {self.device_type}: the model loaded in bf16; label scores summed in fp32"
        if self.frozen_dtype is not None:
            return (
                f"bf16 on {self.device_type}: the frozen weights stored in bf16; the trainable weights, their "
                "gradients and optimizer state in fp32; the loss in fp32"
            )
        return f"bf16 autocast on {self.device_type} over fp32 weights (fp32 master weights and optimizer state)"


def plan_precision(bf16: bool, device_type: str, trains: bool, tuning_method: str = "prefix") -> Precision:
    """The dtypes of a run: `trains` (a model is trained in this run) with `tuning_method` on `device_type`."""
    if not bf16:
        return Precision(False, device_type)
    if not trains:
        return Precision(True, device_type, load_dtype=torch.bfloat16)
    if device_type == "cpu" and tuning_method != "full":
        return Precision(True, device_type, frozen_dtype=torch.bfloat16)
    return Precision(True, device_type)


def store_frozen_weights(model: nn.Module, dtype: torch.dtype | None) -> int:
    """Store every frozen floating-point parameter of `model` in `dtype` (trainable ones stay as they are); returns
    how many parameters (numbers) were cast. Tied weights are one parameter and are cast once; buffers are left as
    they are (rotary frequencies and the like are computed in fp32 by the models themselves)."""
    if dtype is None:
        return 0
    cast = 0
    for param in model.parameters():
        if not param.requires_grad and param.is_floating_point() and param.dtype != dtype:
            param.data = param.data.to(dtype)
            cast += param.numel()
    return cast
