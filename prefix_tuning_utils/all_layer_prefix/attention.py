"""The attention function that adds the prefixes, registered in transformers' ``AttentionInterface``, and
:func:`attach`, which puts them on a peft model, checks the result with one probing forward pass, and guards the
attention implementation afterwards."""

from __future__ import annotations

import logging
import sys
import weakref
from dataclasses import dataclass

import torch
import transformers
from peft import PeftModel, PeftType
from torch import nn

from .config import ATTRIBUTE, SUPPORTED_MODEL_TYPES
from .model import AllLayerPrefix, RoutedAllLayerPrefix, get_all_layer_prefix


logger = logging.getLogger(__name__)

__all__ = ["IMPLEMENTATIONS", "attach", "attach_routed", "register_attention_functions"]

IMPLEMENTATION_PREFIX = "prefix_scope_"
WRAPPED_IMPLEMENTATIONS = ("sdpa", "eager")
IMPLEMENTATIONS = tuple(f"{IMPLEMENTATION_PREFIX}{inner}" for inner in WRAPPED_IMPLEMENTATIONS)  # ours
_SLOT = "_prefix_scope_slot"  # attribute set on each T5Attention that gets a prefix
_GUARD = "_prefix_scope_guard"  # attribute set on the encoder/decoder stacks once the dispatch guard is installed


@dataclass
class _Slot:
    owner: weakref.ref
    kind: str
    layer: int


def _inner_function(name: str, module: nn.Module):
    if name == "sdpa":
        from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

        return ALL_ATTENTION_FUNCTIONS["sdpa"]
    # "eager" is not in the registry: each model file defines its own.
    function = getattr(sys.modules[type(module).__module__], "eager_attention_forward", None)
    if function is None:
        raise RuntimeError(
            f"{type(module).__module__} defines no eager_attention_forward; --prefix_scope all does not support "
            f"transformers {transformers.__version__} with attn_implementation='eager'."
        )
    return function


def _prefix_term(module, query, key, value, gate, scaling, dropout, key_mask=None):
    """tanh(gate) * softmax(scaling * q K^T) V per head, as ``batch x query x heads x head_dim``.

    One adapter: `key` / `value` are ``heads x tokens x head_dim`` and `gate` ``heads``, broadcast over batch x beams.
    One adapter per row (:class:`RoutedAllLayerPrefix`): ``batch x heads x tokens x head_dim`` and ``batch x heads``,
    with `key_mask` (``batch x tokens``, bool) marking each row's real tokens among the padded ones."""
    key, value = key.to(query.dtype), value.to(query.dtype)
    scores = torch.matmul(query, key.transpose(-1, -2)) * scaling  # broadcasts over batch x beams
    if key_mask is not None:  # a finite minimum, so that a row without tokens gives 0 (times its zero gate), no NaN
        scores = scores.masked_fill(~key_mask[:, None, None, :], torch.finfo(scores.dtype).min)
    probs = torch.softmax(scores.float(), dim=-1).to(query.dtype)
    probs = nn.functional.dropout(probs, p=dropout, training=module.training)
    gate = torch.tanh(gate).to(query.dtype)
    term = torch.matmul(probs, value) * gate.view(-1 if gate.dim() == 2 else 1, gate.shape[-1], 1, 1)
    return term.transpose(1, 2)


def _make_attention_function(inner_name: str):
    def prefix_scope_attention(module, query, key, value, attention_mask, **kwargs):
        output, weights = _inner_function(inner_name, module)(module, query, key, value, attention_mask, **kwargs)
        slot = module.__dict__.get(_SLOT)
        prefixes = slot.owner() if slot is not None else None
        if prefixes is None or not prefixes.active:
            return output, weights
        batch, heads, length, head_dim = query.shape
        if output.shape != (batch, length, heads, head_dim):
            raise RuntimeError(
                f"The {inner_name} attention function returned shape {tuple(output.shape)}, expected batch x query x "
                f"heads x head_dim {(batch, length, heads, head_dim)}: transformers {transformers.__version__} is not "
                "supported by --prefix_scope all."
            )
        if prefixes._calls is not None:
            prefixes._calls.append((slot.kind, slot.layer, attention_mask is not None))
        prefix_key, prefix_value, gate, key_mask = prefixes.layer_prefix(slot.kind, slot.layer, batch)
        scaling = kwargs.get("scaling")
        scaling = head_dim**-0.5 if scaling is None else scaling
        term = _prefix_term(
            module, query, prefix_key, prefix_value, gate, scaling, kwargs.get("dropout", 0.0), key_mask
        )
        return output + term.to(output.dtype), weights

    prefix_scope_attention.__name__ = f"{IMPLEMENTATION_PREFIX}{inner_name}"
    return prefix_scope_attention


def _interfaces():
    """transformers' attention-function and attention-mask registries; raises where they are not as expected."""
    try:
        from transformers import AttentionInterface
        from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface
        from transformers.modeling_utils import PreTrainedModel
    except ImportError as err:
        raise RuntimeError(
            f"--prefix_scope all needs transformers' AttentionInterface and AttentionMaskInterface (transformers 5.x); "
            f"transformers {transformers.__version__} lacks them ({err}). Use --prefix_scope decoder, or the versions "
            "pinned in setup.cfg."
        ) from None
    if not hasattr(PreTrainedModel, "set_attn_implementation") or not all(
        name in ALL_MASK_ATTENTION_FUNCTIONS for name in WRAPPED_IMPLEMENTATIONS
    ):
        raise RuntimeError(
            f"transformers {transformers.__version__}: unrecognised attention interface (no set_attn_implementation, "
            "or no sdpa/eager mask functions); --prefix_scope all is not supported. Pin the versions in setup.cfg."
        )
    return AttentionInterface, AttentionMaskInterface, ALL_MASK_ATTENTION_FUNCTIONS


def _register() -> None:
    attention_interface, mask_interface, masks = _interfaces()
    for inner in WRAPPED_IMPLEMENTATIONS:
        name = f"{IMPLEMENTATION_PREFIX}{inner}"
        attention_interface.register(name, _make_attention_function(inner))
        mask_interface.register(name, masks[inner])


def register_attention_functions() -> None:
    """Register ``prefix_scope_sdpa`` / ``prefix_scope_eager`` with transformers (idempotent). Where this
    transformers version lacks the interfaces, only log it: ``--prefix_scope decoder`` must keep working, and
    :func:`attach` raises the same error."""
    try:
        _register()
    except RuntimeError as err:
        logger.debug("--prefix_scope all unavailable: %s", err)


def _attention_slots(base) -> list[tuple[str, int, nn.Module]]:
    """(kind, layer, T5Attention) for every encoder self-attention and decoder cross-attention."""
    if getattr(base.config, "model_type", None) not in SUPPORTED_MODEL_TYPES:
        raise ValueError(
            f"--prefix_scope all supports {', '.join(SUPPORTED_MODEL_TYPES)} models, not "
            f"{getattr(base.config, 'model_type', type(base).__name__)!r}."
        )
    slots = []
    try:
        for layer, block in enumerate(base.encoder.block):
            slots.append(("encoder_self_attention", layer, block.layer[0].SelfAttention))
        for layer, block in enumerate(base.decoder.block):
            slots.append(("cross_attention", layer, block.layer[1].EncDecAttention))
    except (AttributeError, IndexError) as err:
        raise RuntimeError(
            f"Unrecognised {type(base).__name__} structure ({err}) in transformers {transformers.__version__}; "
            "--prefix_scope all is not supported there."
        ) from None
    for kind, layer, module in slots:
        expected_decoder = kind == "cross_attention"
        if (
            getattr(module, "layer_idx", None) != layer
            or getattr(module, "is_decoder", None) != expected_decoder
            or getattr(module, "is_causal", None) is not False
            or not hasattr(module, "n_heads")
            or not hasattr(module, "key_value_proj_dim")
        ):
            raise RuntimeError(
                f"Unrecognised attention module for {kind} layer {layer} ({type(module).__name__}) in transformers "
                f"{transformers.__version__}; --prefix_scope all is not supported there."
            )
    return slots


def _implementations(base) -> tuple[str, str]:
    """(implementation before attach, our wrapping implementation) of the encoder and decoder stacks."""
    names = {base.config._attn_implementation, base.encoder.config._attn_implementation}
    names |= {base.decoder.config._attn_implementation}
    inner = {name.removeprefix(IMPLEMENTATION_PREFIX) for name in names}
    if len(inner) != 1 or next(iter(inner)) not in WRAPPED_IMPLEMENTATIONS:
        raise ValueError(
            f"--prefix_scope all works with attn_implementation 'sdpa' or 'eager'; this model uses {sorted(names)}."
        )
    inner_name = next(iter(inner))
    return inner_name, f"{IMPLEMENTATION_PREFIX}{inner_name}"


def _dispatch_guard(stack, args, kwargs):
    allowed = stack.__dict__[_GUARD]
    if allowed is not None and stack.config._attn_implementation not in allowed:
        raise RuntimeError(
            f"The attention implementation was switched to {stack.config._attn_implementation!r} after "
            "--prefix_scope all was attached; the encoder and cross-attention prefixes would be skipped. Use "
            f"model.set_attn_implementation() with one of {', '.join(map(repr, IMPLEMENTATIONS))}."
        )
    return None


def _install_guard(base) -> None:
    for stack in (base.encoder, base.decoder):
        if _GUARD not in stack.__dict__:
            stack.register_forward_pre_hook(_dispatch_guard, with_kwargs=True)
        stack.__dict__[_GUARD] = IMPLEMENTATIONS


def _set_guard(base, allowed: tuple[str, ...] | None) -> None:
    """The implementations the encoder and decoder may run with (None: any)."""
    for stack in (base.encoder, base.decoder):
        if _GUARD in stack.__dict__:
            stack.__dict__[_GUARD] = allowed


def _probe(base, prefixes: AllLayerPrefix | RoutedAllLayerPrefix, inner_name: str, name: str, slots) -> None:
    """One tiny forward pass: every slot must be called with the padding mask, and (gates at zero, as attached) the
    output must be exactly that of the original implementation."""
    device = next(base.parameters()).device
    vocab = base.config.vocab_size
    pad = base.config.pad_token_id if base.config.pad_token_id is not None else 0
    ids = torch.tensor([[2, 3, 4], [4, 2, pad]], device=device) % vocab
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]], device=device)
    start = base.config.decoder_start_token_id if base.config.decoder_start_token_id is not None else pad
    decoder_ids = torch.tensor([[start, 2], [start, 3]], device=device) % vocab
    was_training = base.training
    base.eval()
    try:
        with torch.no_grad():
            _set_guard(base, (inner_name, *IMPLEMENTATIONS))
            base.set_attn_implementation(inner_name)
            reference = base(input_ids=ids, attention_mask=mask, decoder_input_ids=decoder_ids, use_cache=False)
            base.set_attn_implementation(name)
            _set_guard(base, IMPLEMENTATIONS)
            prefixes._calls = []
            try:
                output = base(input_ids=ids, attention_mask=mask, decoder_input_ids=decoder_ids, use_cache=False)
            finally:
                calls, prefixes._calls = prefixes._calls, None
    finally:
        base.train(was_training)
    expected = sorted((kind, layer, True) for kind, layer, _ in slots)
    problem = None
    if sorted(calls) != expected:
        problem = f"the attention function saw {sorted(calls)}, expected {expected} (one call per layer with a mask)"
    elif not torch.equal(output.logits, reference.logits):
        problem = "with gates at zero the output differs from the original attention implementation"
    if problem:
        raise RuntimeError(
            f"--prefix_scope all does not recognise how transformers {transformers.__version__} calls T5 attention: "
            f"{problem}. Use --prefix_scope decoder, or the versions pinned in setup.cfg."
        )


def _detach(peft_model, inner_name: str, slots) -> None:
    """Undo attach(): the model computes what it computed before."""
    base = peft_model.get_base_model()
    for _, _, module in slots:
        module.__dict__.pop(_SLOT, None)
    base.set_attn_implementation(inner_name)
    _set_guard(base, None)
    del peft_model._modules[ATTRIBUTE]


def attach(peft_model, trainable: bool | None = None) -> AllLayerPrefix:
    """Add encoder self-attention and cross-attention prefixes to a peft prefix-tuning T5 model, in place.

    The new prefixes follow the peft config: ``num_virtual_tokens``, and an MLP of width ``encoder_hidden_size``
    when ``prefix_projection`` is set and the model is not in inference mode. Their gates start at zero, so the
    model's outputs do not change until it is trained. ``trainable`` defaults to ``not inference_mode``.
    """
    _interfaces()
    if not isinstance(peft_model, PeftModel) or peft_model.active_peft_config.peft_type != PeftType.PREFIX_TUNING:
        raise ValueError("--prefix_scope all needs a peft prefix-tuning model (PrefixTuningConfig).")
    if len(peft_model.peft_config) != 1:
        raise ValueError(
            f"--prefix_scope all supports a model with one adapter; this one has {list(peft_model.peft_config)}."
        )
    if get_all_layer_prefix(peft_model) is not None:
        raise ValueError("This model already has --prefix_scope all prefixes.")
    config = peft_model.active_peft_config
    base = peft_model.get_base_model()
    slots = _attention_slots(base)
    inner_name, name = _implementations(base)
    attention = slots[0][2]
    projection = config.prefix_projection and not config.inference_mode
    prefixes = AllLayerPrefix(
        num_encoder_layers=len(base.encoder.block),
        num_decoder_layers=len(base.decoder.block),
        num_heads=attention.n_heads,
        head_dim=attention.key_value_proj_dim,
        num_virtual_tokens=config.num_virtual_tokens,
        projection_hidden_size=(config.encoder_hidden_size or base.config.d_model) if projection else None,
    )
    device = peft_model.prompt_encoder[peft_model.active_adapter].embedding.weight.device
    prefixes.to(device=device, dtype=torch.float32)
    prefixes.requires_grad_(not config.inference_mode if trainable is None else trainable)
    prefixes._peft_model = weakref.ref(peft_model)
    peft_model.add_module(ATTRIBUTE, prefixes)
    owner = weakref.ref(prefixes)
    for kind, layer, module in slots:
        module.__dict__[_SLOT] = _Slot(owner, kind, layer)
    base.set_attn_implementation(name)
    _install_guard(base)
    try:
        _probe(base, prefixes, inner_name, name, slots)
    except Exception:
        _detach(peft_model, inner_name, slots)
        raise
    logger.info(
        "--prefix_scope all: encoder self-attention and cross-attention prefixes in %d + %d layers (%s parameters), "
        "attention implementation %s.",
        len(base.encoder.block),
        len(base.decoder.block),
        f"{sum(p.numel() for p in prefixes.parameters()):,}",
        name,
    )
    return prefixes


class _ZeroGateRows:
    """Rows for the probe of :func:`attach_routed`: one virtual token per row with gate 0 (no change)."""

    def __init__(self, heads: int, head_dim: int, device):
        self.heads, self.head_dim, self.device = heads, head_dim, device

    def all_scope(self, kind: str, layer: int, batch: int):
        key = torch.zeros(batch, self.heads, 1, self.head_dim, device=self.device)
        gate = torch.zeros(batch, self.heads, device=self.device)
        return key, key, gate, torch.ones(batch, 1, dtype=torch.bool, device=self.device)


def attach_routed(base) -> RoutedAllLayerPrefix:
    """Make a T5 model take encoder self-attention and cross-attention prefixes per row, from the
    :class:`RoutedAllLayerPrefix` returned (``answering.AdapterBank`` sets its rows for each batch). Checked by the
    same probing forward pass as :func:`attach`; the attention implementation is guarded the same way."""
    _interfaces()
    slots = _attention_slots(base)
    inner_name, name = _implementations(base)
    routed = RoutedAllLayerPrefix()
    owner = weakref.ref(routed)
    base.__dict__["_prefix_scope_routed"] = routed  # the slots hold weak references: the model keeps it alive
    for kind, layer, module in slots:
        module.__dict__[_SLOT] = _Slot(owner, kind, layer)
    base.set_attn_implementation(name)
    _install_guard(base)
    attention = slots[0][2]
    routed.rows = _ZeroGateRows(attention.n_heads, attention.key_value_proj_dim, next(base.parameters()).device)
    try:
        _probe(base, routed, inner_name, name, slots)
    except Exception:
        for _, _, module in slots:
            module.__dict__.pop(_SLOT, None)
        base.set_attn_implementation(inner_name)
        _set_guard(base, None)
        raise
    finally:
        routed.rows = None
    return routed
