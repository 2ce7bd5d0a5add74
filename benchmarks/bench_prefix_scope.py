#!/usr/bin/env python
"""Cost of `--prefix_scope all` against `decoder`: training samples/s and peak memory, on a t5-small-shaped model.

    OMP_NUM_THREADS=1 python benchmarks/bench_prefix_scope.py                 # CPU, 1 thread, the README figures
    python benchmarks/bench_prefix_scope.py --device cuda --steps 20 --warmup 5

The model has t5-small's shape (d_model 512, 6 + 6 layers, 8 heads, d_kv 64, d_ff 2048, vocabulary 32128) with
weights from the config (random: speed and memory do not depend on the values). One training step is what the
Trainer does: forward with labels, backward, AdamW step on the trainable parameters (the prefixes). Batches of
--batch_size inputs of --source_length tokens (a quarter of the rows padded by a few tokens) and 4-token targets.

Speed is given per wall-clock second and per CPU-second of the process (time.process_time): on a shared machine
the second is the steadier figure (with one thread). Each scope runs in its own process. Peak memory is the peak resident set size during training (VmHWM, reset
after the model is built, so that building it does not count), and that peak minus the resident size before the
first step: what training adds. On CUDA it is torch's allocator peak. --repeats runs alternate the scopes; the
table keeps each scope's best speed and its largest memory figures.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import time
from pathlib import Path


REPO = Path(__file__).resolve().parent.parent


def _status_mb(field: str) -> float:
    """A memory figure of this process from /proc/self/status (VmRSS: now, VmHWM: peak since start or reset)."""
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"/proc/self/status has no {field}")


def _reset_peak_rss() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0), so the peak is the training's, not the model building's."""
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
        return True
    except OSError:
        return False


def child(args) -> dict:
    import torch
    from peft import PrefixTuningConfig, TaskType, get_peft_model
    from transformers import T5Config, T5ForConditionalGeneration

    import prefix_tuning_utils  # noqa: F401  (generation compat layer, save/load wrappers)
    from prefix_tuning_utils.all_layer_prefix import attach

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    device = torch.device(args.device)
    config = T5Config(
        vocab_size=32128, d_model=512, d_kv=64, num_heads=8, d_ff=2048, num_layers=6, num_decoder_layers=6,
        decoder_start_token_id=0, pad_token_id=0, eos_token_id=1,
    )  # fmt: skip
    base = T5ForConditionalGeneration(config).to(device)
    prefix_config = PrefixTuningConfig(
        task_type=TaskType.SEQ_2_SEQ_LM,
        num_virtual_tokens=args.num_virtual_tokens,
        prefix_projection=args.prefix_projection,
        encoder_hidden_size=config.d_model,
        token_dim=config.num_heads * config.d_kv,
        num_attention_heads=config.num_heads,
        num_layers=config.num_decoder_layers,
    )
    model = get_peft_model(base, prefix_config)
    if args.scope == "all":
        attach(model)
    model.train()
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-2)

    generator = torch.Generator().manual_seed(0)
    input_ids = torch.randint(2, config.vocab_size, (args.batch_size, args.source_length), generator=generator)
    input_ids[:, -1] = 1
    for row in range(0, args.batch_size, 4):  # some padding, as in real batches
        input_ids[row, -4:] = torch.tensor([1, 0, 0, 0])
    attention_mask = (input_ids != 0).long()
    labels = torch.randint(2, config.vocab_size, (args.batch_size, 4), generator=generator)
    labels[:, -1] = 1
    batch = {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}
    batch = {k: v.to(device) for k, v in batch.items()}

    def step():
        loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    gc.collect()
    rss_before = _status_mb("VmRSS")
    peak_reset = _reset_peak_rss()
    for _ in range(args.warmup):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start, start_cpu = time.perf_counter(), time.process_time()
    for _ in range(args.steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - start_cpu
    result = {
        "scope": args.scope,
        "samples_per_s": args.steps * args.batch_size / seconds,
        "samples_per_cpu_s": args.steps * args.batch_size / cpu_seconds,
        "trainable": sum(p.numel() for p in trainable),
        "peak_rss_mb": _status_mb("VmHWM"),  # since the reset: during training (else: whole process)
        "peak_rss_reset": peak_reset,
        "rss_before_training_mb": rss_before,
    }
    if device.type == "cuda":
        result["peak_cuda_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return result


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scopes", nargs="+", default=["decoder", "all"], choices=["decoder", "all"])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", "1")))
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--source_length", type=int, default=40)
    parser.add_argument("--num_virtual_tokens", type=int, default=20)
    parser.add_argument("--prefix_projection", action="store_true")
    parser.add_argument("--steps", type=int, default=5, help="timed training steps")
    parser.add_argument("--warmup", type=int, default=2, help="untimed training steps first")
    parser.add_argument("--repeats", type=int, default=2, help="processes per scope, alternating; best speed kept")
    parser.add_argument("--scope", help=argparse.SUPPRESS)  # set in the child processes
    args = parser.parse_args(argv)
    if args.scope:
        print(json.dumps(child(args)))
        return []

    passed = [a for a in (argv if argv is not None else sys.argv[1:])]
    results: dict[str, list[dict]] = {scope: [] for scope in args.scopes}
    for _ in range(args.repeats):
        for scope in args.scopes:
            out = subprocess.run(
                [sys.executable, __file__, *passed, "--scope", scope], capture_output=True, text=True, check=False
            )
            if out.returncode != 0:
                sys.exit(f"{scope}: benchmark process failed\n{out.stderr[-3000:]}")
            results[scope].append(json.loads(out.stdout.strip().splitlines()[-1]))

    rows = []
    for runs in results.values():
        best = max(runs, key=lambda r: r["samples_per_s"])
        best["samples_per_cpu_s"] = max(r["samples_per_cpu_s"] for r in runs)
        best["peak_rss_mb"] = max(r["peak_rss_mb"] for r in runs)
        best["training_rss_mb"] = max(r["peak_rss_mb"] - r["rss_before_training_mb"] for r in runs)
        if "peak_cuda_mb" in best:
            best["peak_cuda_mb"] = max(r["peak_cuda_mb"] for r in runs)
        best["all_speeds"] = [round(r["samples_per_s"], 2) for r in runs]
        rows.append(best)
    reference = rows[0]
    memory = "peak_cuda_mb" if "peak_cuda_mb" in reference else "peak_rss_mb"
    print(
        f"t5-small shape, {args.device}, {args.threads} thread(s), batch {args.batch_size} x {args.source_length} "
        f"tokens, {args.num_virtual_tokens} virtual tokens, projection {args.prefix_projection}, "
        f"{args.steps} timed steps after {args.warmup}, best of {args.repeats}"
    )
    if memory == "peak_rss_mb" and not all(r["peak_rss_reset"] for runs in results.values() for r in runs):
        print("(could not reset the peak RSS: the peak includes building the model)")
    extra = " | training adds (peak - before)" if memory == "peak_rss_mb" else ""
    print(
        f"| scope | trainable parameters | training samples/s | vs {reference['scope']} | samples per CPU-second | "
        f"vs {reference['scope']} | {memory.replace('_mb', '').replace('_', ' ')}{extra} | runs (samples/s) |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|" + ("---:|" if extra else "") + "---|")
    for row in rows:
        cells = [
            row["scope"],
            f"{row['trainable']:,}",
            f"{row['samples_per_s']:.2f}",
            f"{row['samples_per_s'] / reference['samples_per_s']:.2f}x",
            f"{row['samples_per_cpu_s']:.2f}",
            f"{row['samples_per_cpu_s'] / reference['samples_per_cpu_s']:.2f}x",
            f"{row[memory]:,.0f} MB",
            *([f"{row['training_rss_mb']:,.0f} MB"] if extra else []),
            ", ".join(map(str, row["all_speeds"])),
        ]
        print("| " + " | ".join(cells) + " |")
    return rows


if __name__ == "__main__":
    main()
