"""Initialise a prefix from real text: the frozen model's own keys and values for that text.

A random prefix starts far from anything the model has seen; the keys/values the model computes for a task
description are a prefix it already understands (Li & Liang 2021 initialise from real words too). With the
prefix set to the key/value cache of the text's first `num_virtual_tokens` tokens, the untrained prefix model
behaves exactly as if that text were written before every input; training moves on from there.

The packing of that cache into peft's prefix (`num_virtual_tokens x (layers * 2 * heads * head_dim)`, the layout
`get_prompt` reads) is peft's own `initialize_kv_prefix_from_past_key_values` (peft 0.21): it gives, bit for bit, the
prefix this module packed by hand before (tests/test_prefix_init.py keeps that packing as the reference), for seq2seq
caches (the decoder's self-attention) and decoder-only ones. The cache itself is still computed here: peft's
`initialize_kv_prefix_from_text` runs the model on the text alone, with a chat template when the tokenizer has one,
which a seq2seq model cannot run (it needs decoder input) and which would change the tokens used.
"""

from __future__ import annotations

import logging

import torch
from peft import PeftModel, initialize_kv_prefix_from_past_key_values

from .errors import ArgumentError


logger = logging.getLogger(__name__)

__all__ = ["init_prefix_from_text"]


@torch.no_grad()
def init_prefix_from_text(model: PeftModel, tokenizer, text: str, task: str) -> list[int]:
    """Copy the base model's keys/values for `text` into the prefix; returns the token ids used.

    peft stores the prefix as an embedding of shape (num_virtual_tokens, num_layers * 2 * heads * head_dim) that
    `get_prompt` views as (tokens, layer * 2 + {0: key, 1: value}, heads, head_dim); peft's
    `initialize_kv_prefix_from_past_key_values` fills it in that layout from the cache (for a seq2seq model, from
    its self-attention part). For a seq2seq model the decoder runs over the text (with the text as encoder input too).
    """
    config = model.active_peft_config
    if config.prefix_projection:
        raise ArgumentError("--prefix_init_text needs --prefix_projection off (it sets the prefix itself).")
    count = config.num_virtual_tokens
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if len(ids) < count:
        raise ArgumentError(
            f"--prefix_init_text has {len(ids)} tokens, fewer than --num_virtual_tokens {count}: lengthen the text "
            "or lower --num_virtual_tokens."
        )
    ids = ids[:count]
    base = model.get_base_model()
    device = next(base.parameters()).device
    input_ids = torch.tensor([ids], device=device)
    was_training = base.training
    base.eval()
    try:
        with model.disable_adapter():
            if task == "seq2seq":
                out = base(input_ids=input_ids, decoder_input_ids=input_ids, use_cache=True)
            else:
                out = base(input_ids=input_ids, use_cache=True)
    finally:
        base.train(was_training)
    cache = getattr(out, "cache", None) or getattr(out, "past_key_values", None)
    initialize_kv_prefix_from_past_key_values(model, past_key_values=cache, num_virtual_tokens=count)
    logger.info("Prefix initialised from the %d tokens of: %r", count, tokenizer.decode(ids))
    return ids
