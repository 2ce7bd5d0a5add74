#!/usr/bin/env python
"""Build the offline quickstart assets: a small labelled data file, a word-level tokenizer and a tiny T5 config.

    python examples/make_quickstart_assets.py      # rewrites examples/quickstart.txt and examples/tiny-t5/

The sentences are generated from templates written for this project (no third-party text). The model folder
holds only a config, so `run_prefix_tuning.py` initialises the tiny T5 with random weights.
"""

import itertools
import json
import random
from pathlib import Path

from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast, T5Config


HERE = Path(__file__).resolve().parent
LABELS = ["negative", "neutral", "positive"]
COMPANIES = ["Acme Corp", "Borealis Bank", "Cobalt Mining", "Delta Freight", "Evergreen Foods", "Fjord Telecom"]
METRICS = ["net sales", "operating profit", "quarterly revenue", "order intake", "net income", "market share"]
TEMPLATES = {
    "positive": [
        "{company} said its {metric} rose {n} percent from a year earlier .",
        "{company} raised its outlook after {metric} grew by {n} percent .",
        "{metric} at {company} climbed to a record , up {n} percent .",
    ],
    "negative": [
        "{company} said its {metric} fell {n} percent from a year earlier .",
        "{company} cut its outlook after {metric} dropped by {n} percent .",
        "{metric} at {company} slumped , down {n} percent , and jobs will go .",
    ],
    "neutral": [
        "{company} will publish its {metric} figures on {day} .",
        "{company} has {n} offices and reports {metric} in euros .",
        "The annual meeting of {company} discussed {metric} reporting on {day} .",
    ],
}
DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday"]


def make_sentences(seed: int = 0) -> list[tuple[str, str]]:
    rng = random.Random(seed)
    rows = []
    for label, templates in TEMPLATES.items():
        for template, company, metric in itertools.product(templates, COMPANIES, METRICS[:3]):
            text = template.format(company=company, metric=metric, n=rng.randint(2, 40), day=rng.choice(DAYS))
            rows.append((text[0].upper() + text[1:], label))
    rng.shuffle(rows)
    return rows


def build_tokenizer(texts: list[str]) -> PreTrainedTokenizerFast:
    words = sorted({w for text in texts + LABELS for w in text.lower().split()} | {str(i) for i in range(100)})
    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2}
    for word in words:
        vocab.setdefault(word, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>")


def main() -> None:
    rows = make_sentences()
    (HERE / "quickstart.txt").write_text("".join(f"{text}@{label}\n" for text, label in rows), encoding="utf-8")
    tokenizer = build_tokenizer([text for text, _ in rows])
    model_dir = HERE / "tiny-t5"
    tokenizer.save_pretrained(model_dir)
    config = T5Config(
        vocab_size=len(tokenizer),
        d_model=64,
        d_kv=16,
        num_heads=4,
        d_ff=128,
        num_layers=2,
        num_decoder_layers=2,
        decoder_start_token_id=0,
        pad_token_id=0,
        eos_token_id=1,
    )
    config.save_pretrained(model_dir)
    print(json.dumps({"examples": len(rows), "vocab": len(tokenizer), "model_dir": str(model_dir)}))


if __name__ == "__main__":
    main()
