"""Initialise a prefix from real text: the frozen model's own keys and values for that text.

A random prefix starts far from anything the model has seen; the keys/values the model computes for a task
description are a prefix it already understands (Li & Liang 2021 initialise from real words too). With the
prefix set to the key/value cache of the text's first `num_virtual_tokens` tokens, the untrained prefix model
behaves exactly as if that text were written before every input; training moves on from there.
"""

from __future__ import annotations

import logging

import torch
from peft import PeftModel

from .errors import ArgumentError


logger = logging.getLogger(__name__)

__all__ = ["init_prefix_from_text"]


def _layer_key_values(cache) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(keys, values) of every layer, each (batch, heads, tokens, head_dim), from a transformers Cache."""
    self_attention = getattr(cache, "self_attention_cache", cache)  # seq2seq: the decoder's self-attention
    return [(layer.keys, layer.values) for layer in self_attention.layers]


@torch.no_grad()
def init_prefix_from_text(model: PeftModel, tokenizer, text: str, task: str) -> list[int]:
    """Copy the base model's keys/values for `text` into the prefix; returns the token ids used.

    peft stores the prefix as an embedding of shape (num_virtual_tokens, num_layers * 2 * heads * head_dim) that
    `get_prompt` views as (tokens, layer * 2 + {0: key, 1: value}, heads, head_dim): we fill it in that layout.
    For a seq2seq model the decoder runs over the text (with the text as encoder input too).
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
    rows = []
    for keys, values in _layer_key_values(cache):
        rows += [keys[0], values[0]]  # (heads, tokens, head_dim)
    stacked = torch.stack(rows)  # (layers * 2, heads, tokens, head_dim)
    prefix = stacked.permute(2, 0, 1, 3).reshape(count, -1)
    embedding = model.prompt_encoder[model.active_adapter].embedding
    if prefix.shape != embedding.weight.shape:
        raise RuntimeError(
            f"prefix from text has shape {tuple(prefix.shape)}, the adapter {tuple(embedding.weight.shape)}"
        )
    embedding.weight.copy_(prefix.to(embedding.weight.dtype))
    logger.info("Prefix initialised from the %d tokens of: %r", count, tokenizer.decode(ids))
    return ids
