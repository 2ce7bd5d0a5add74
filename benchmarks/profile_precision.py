#!/usr/bin/env python
"""Where a prefix-tuning training step's time goes, in fp32, under bf16 autocast and with the frozen weights in bf16.

A t5-small-shaped T5 (random weights from the config) with peft's 20-token decoder prefix, a batch of 8 x 40 input
tokens and 3 target tokens; a step is forward, backward and an AdamW step on the prefix, as in the Trainer. Modes:

* `fp32`: everything in fp32 (what the script does without --bf16);
* `autocast`: fp32 weights under `torch.autocast("cpu", dtype=torch.bfloat16)` (--bf16 on CPU before 2026-12-06, and
  still on a GPU): every frozen weight is cast to bf16 again on every forward pass;
* `bf16`: the frozen weights stored in bf16 (`precision.store_frozen_weights`), the prefix and AdamW in fp32, under
  autocast (--bf16 on a CPU now);
* `bf16-no-autocast`: the same without autocast (to see what autocast adds over bf16 weights).

For each, torch.profiler over `--steps` steps after one warm-up step: time per step and its parts (forward, backward,
optimizer; inside the forward, inclusive: attention with its projections, feed-forward with its dropout, dropout
alone, layer norms, the output layer), the matrix products' own time, and the casts (`aten::_to_copy`) per step.
The counts of casts and products do not depend on the machine; the times do, and a CPU without bf16 instructions
(AVX2 only) runs bf16 products on a slow generic kernel, so only the fp32 times and the counts mean anything there.

    python benchmarks/profile_precision.py                       # all four modes, 3 steps each: a minute or two
    python benchmarks/profile_precision.py --modes fp32 bf16 --steps 5
"""

from __future__ import annotations

import argparse
import contextlib
import time

from common import T5_SMALL, machine_line


MODES = ("fp32", "autocast", "bf16", "bf16-no-autocast")
PARTS = ("forward", "backward", "optimizer", "attention (with its projections)", "feed-forward (with its dropout)",
         "dropout", "layer norm", "output layer")  # fmt: skip


def build(mode: str):
    import torch
    from peft import PrefixTuningConfig, TaskType, get_peft_model
    from transformers import T5Config, T5ForConditionalGeneration
    from transformers.models.t5.modeling_t5 import T5Attention, T5DenseActDense, T5LayerNorm

    from prefix_tuning_utils.precision import store_frozen_weights

    torch.manual_seed(0)
    config = T5Config(**T5_SMALL)
    model = get_peft_model(
        T5ForConditionalGeneration(config),
        PrefixTuningConfig(task_type=TaskType.SEQ_2_SEQ_LM, num_virtual_tokens=20, token_dim=config.d_model,
                           num_attention_heads=config.num_heads, num_layers=config.num_decoder_layers),
    )  # fmt: skip
    if mode.startswith("bf16"):
        store_frozen_weights(model, torch.bfloat16)
    named = {torch.nn.Dropout: "dropout", T5LayerNorm: "layer norm", T5Attention: PARTS[3], T5DenseActDense: PARTS[4]}
    modules = [(m, named[type(m)]) for m in model.modules() if type(m) in named]
    modules.append((model.get_base_model().lm_head, "output layer"))
    for module, name in modules:
        original = module.forward

        def forward(*args, _original=original, _name=name, **kwargs):
            with torch.autograd.profiler.record_function("## " + _name):
                return _original(*args, **kwargs)

        module.forward = forward
    return model


def profile(mode: str, steps: int) -> dict:
    import torch
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    model = build(mode)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(2, 32000, (8, 40), generator=generator)
    mask, labels = torch.ones_like(ids), torch.randint(2, 32000, (8, 3), generator=generator)
    autocast = "autocast" in mode or mode == "bf16"

    def step():
        record = torch.autograd.profiler.record_function
        with record("## forward"):
            with torch.autocast("cpu", dtype=torch.bfloat16) if autocast else contextlib.nullcontext():
                loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        with record("## backward"):
            loss.float().backward()
        with record("## optimizer"):
            optimizer.step()
            optimizer.zero_grad()

    step()  # warm-up
    with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
        start = time.perf_counter()
        for _ in range(steps):
            step()
        wall = (time.perf_counter() - start) / steps * 1000
    out = {"wall": wall, "casts": 0.0, "cast_ms": 0.0, "products": 0.0, "product_ms": 0.0}
    for event in prof.key_averages():
        if event.key.startswith("## "):
            out[event.key[3:]] = event.cpu_time_total / steps / 1000
        elif event.key == "aten::_to_copy":
            out["casts"] += event.count / steps
            out["cast_ms"] += event.cpu_time_total / steps / 1000
        elif event.key in ("aten::addmm", "aten::mm", "aten::bmm", "aten::baddbmm"):
            out["products"] += event.count / steps
            out["product_ms"] += event.self_cpu_time_total / steps / 1000
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    parser.add_argument("--steps", type=int, default=3, help="profiled steps per mode (after one warm-up step)")
    args = parser.parse_args()
    import torch

    print(f"# {machine_line()}; t5-small shape, batch 8 x 40 tokens, 3 target tokens, {args.steps} steps")
    rows = {mode: profile(mode, args.steps) for mode in args.modes}
    print("\n| ms a step (share) | " + " | ".join(args.modes) + " |\n|---|" + "---:|" * len(args.modes))
    print("| whole step | " + " | ".join(f"{r['wall']:.0f}" for r in rows.values()) + " |")
    for part in (*PARTS, "matrix products (own time)", "casts"):
        key = {"matrix products (own time)": "product_ms", "casts": "cast_ms"}.get(part, part)
        cells = [f"{r.get(key, 0.0):.0f} ({100 * r.get(key, 0.0) / r['wall']:.0f} %)" for r in rows.values()]
        print(f"| {part} | " + " | ".join(cells) + " |")
    print("| casts a step | " + " | ".join(f"{r['casts']:.0f}" for r in rows.values()) + " |")
    print("| matrix products a step | " + " | ".join(f"{r['products']:.0f}" for r in rows.values()) + " |")
    print(f"\ntorch {torch.__version__}, oneDNN bf16: {torch.ops.mkldnn._is_mkldnn_bf16_supported()}")


if __name__ == "__main__":
    main()
