"""``--prefix_scope all``: prefixes in the encoder self-attention and the cross-attention of every T5 layer.

peft's prefix tuning on T5 reaches only the decoder's self-attention: the encoder never sees a prefix and peft
empties the cross-attention cache (peft PR #2989 calls it a known limitation). Li & Liang (2021) put a prefix on
all three attention types. This module adds the two that peft lacks, on top of an unchanged peft prefix model.

How a prefix enters an attention layer
--------------------------------------
In transformers 5.x, ``T5Attention.forward`` computes the query, key and value states and the relative position
bias, then calls the attention function that ``config._attn_implementation`` names in transformers'
``AttentionInterface``. :func:`attach` switches the base model to ``prefix_scope_sdpa`` (or
``prefix_scope_eager``), a function registered here that

1. calls the original function (``sdpa`` or T5's ``eager``) with the original arguments, unchanged;
2. for an encoder self-attention or a decoder cross-attention module of layer ``l``, adds, per head ``h``::

       out_h += tanh(gate[l, h]) * softmax(scaling * q_h @ K[l, h].T) @ V[l, h]

   where ``K[l], V[l]`` are ``num_virtual_tokens`` learnt keys and values per head. The prefix has no position
   (no position bias) and every query sees it (no mask); it broadcasts over batch x beams, so it is never copied.

This is the gated form of LLaMA-Adapter (Zhang et al., 2023): the prefix has its own softmax, scaled by a per-head
gate that starts at zero, so an untrained model computes exactly what the peft model computes, bit for bit, and
training starts from there. (A prefix inside the same softmax as the real keys, as in Li & Liang, cannot be switched
off exactly by a gate at zero; this form can.) The decoder's self-attention keeps peft's own prefix.

The same name is registered in transformers' ``AttentionMaskInterface`` with the original mask function: masking
code builds masks only for names it knows, and would otherwise drop the padding mask without a word.

Safety: :func:`attach` checks the model's structure, then runs one tiny forward pass that must call the function
for every encoder and cross-attention layer, hand it the padding mask and give exactly the output of the original
implementation; any difference (a transformers version that calls attention differently) raises. The encoder and
decoder refuse to run if something later switches the attention implementation away from ours.

Layout (as peft splits a tuner): ``config`` (the scope setting), ``model`` (the prefixes as modules), ``attention``
(the attention function, :func:`attach`, its probe and dispatch guard), ``serialization`` (saving and loading through
peft's ``save_pretrained`` / ``from_pretrained``, by patches registered in :mod:`prefix_tuning_utils.patching`).
"""

from __future__ import annotations

from .attention import IMPLEMENTATIONS, attach, attach_routed, register_attention_functions
from .config import (
    ADAPTER_CONFIG_KEY,
    ATTRIBUTE,
    SCOPES,
    SUPPORTED_MODEL_TYPES,
    WEIGHTS_NAME,
    check_scope_supported,
    read_prefix_scope,
)
from .model import AddedPrefix, AllLayerPrefix, RoutedAllLayerPrefix, get_all_layer_prefix
from .serialization import disabled


__all__ = [
    "ADAPTER_CONFIG_KEY",
    "ATTRIBUTE",
    "IMPLEMENTATIONS",
    "SCOPES",
    "SUPPORTED_MODEL_TYPES",
    "WEIGHTS_NAME",
    "AddedPrefix",
    "AllLayerPrefix",
    "RoutedAllLayerPrefix",
    "attach",
    "attach_routed",
    "check_scope_supported",
    "disabled",
    "get_all_layer_prefix",
    "read_prefix_scope",
    "register_attention_functions",
]
