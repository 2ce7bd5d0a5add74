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

Saving and loading
------------------
The prefixes are saved flat (``num_virtual_tokens x (layers * 2 * heads * head_dim)``, peft's layout; an MLP used
during training with ``--prefix_projection`` is applied and dropped, as peft does) with their gates in
``all_layer_prefix.safetensors`` next to peft's adapter, and ``adapter_config.json`` gets ``"prefix_scope": "all"``.
:func:`apply` (run when ``prefix_tuning_utils`` is imported) wraps ``PeftModel.save_pretrained`` and
``PeftModel.load_adapter`` so that this happens on every save (``Trainer`` checkpoints included) and
``PeftModel.from_pretrained`` restores everything, and peft's config hook ``check_kwargs`` so that peft does not
warn about the key it does not know. Plain peft, without this package, loads the decoder prefix only
and warns ``Unexpected keyword arguments ['prefix_scope'] for class PrefixTuningConfig, these are ignored``.
"""

from __future__ import annotations

import functools
import inspect
import json
import logging
import os
import sys
import weakref
from dataclasses import dataclass
from pathlib import Path

import torch
import transformers
from peft import PeftConfig, PeftModel, PeftType
from safetensors.torch import load_file, save_file
from torch import nn

from .patching import MethodPatches


logger = logging.getLogger(__name__)

__all__ = [
    "ADAPTER_CONFIG_KEY",
    "ATTRIBUTE",
    "SCOPES",
    "WEIGHTS_NAME",
    "AddedPrefix",
    "AllLayerPrefix",
    "apply",
    "attach",
    "check_scope_supported",
    "disabled",
    "get_all_layer_prefix",
    "is_applied",
    "read_prefix_scope",
]

SCOPES = ("decoder", "all")
WEIGHTS_NAME = "all_layer_prefix.safetensors"
ADAPTER_CONFIG_KEY = "prefix_scope"
ATTRIBUTE = "all_layer_prefix"  # the module's name on the PeftModel
SUPPORTED_MODEL_TYPES = ("t5", "mt5")
IMPLEMENTATION_PREFIX = "prefix_scope_"
WRAPPED_IMPLEMENTATIONS = ("sdpa", "eager")
_SLOT = "_prefix_scope_slot"  # attribute set on each T5Attention that gets a prefix
_GUARD = "_prefix_scope_guard"  # attribute set on the encoder/decoder stacks once the dispatch guard is installed


# --------------------------------------------------------------------------------------------------------------------
# The prefixes


class AddedPrefix(nn.Module):
    """Prefix keys and values for one attention type in every layer, and a per-head gate that starts at zero.

    Flat (``projection_hidden_size=None``): ``prefix[l]`` holds layer ``l``'s keys and values, ``num_virtual_tokens x
    (2 * num_heads * head_dim)``. With a projection, peft's MLP: embedding -> Linear -> Tanh -> Linear, with the last
    Linear (``hidden -> num_layers * 2 * num_heads * head_dim`` in peft) kept as one ``hidden -> 2 * num_heads *
    head_dim`` Linear per layer (``projections[l]``): the same function, but each attention call computes and
    back-propagates only its own layer's rows. (Slicing one big weight would make every call's backward write a
    zero-filled gradient of the whole weight: 200 MB per call on t5-large.)

    Saved flat, ``num_virtual_tokens x (num_layers * 2 * num_heads * head_dim)``, ordered layer, key/value, head,
    dim: peft's layout for its own prefix.
    """

    def __init__(
        self,
        num_layers: int,
        num_heads: int,
        head_dim: int,
        num_virtual_tokens: int,
        projection_hidden_size: int | None = None,
    ):
        super().__init__()
        self.num_layers = num_layers
        self.num_heads = num_heads
        self.head_dim = head_dim
        self.num_virtual_tokens = num_virtual_tokens
        self.token_dim = num_heads * head_dim
        width = 2 * self.token_dim
        self.projection = projection_hidden_size is not None
        if self.projection:
            self.embedding = nn.Embedding(num_virtual_tokens, self.token_dim)
            self.transform = nn.Sequential(nn.Linear(self.token_dim, projection_hidden_size), nn.Tanh())
            self.projections = nn.ModuleList(nn.Linear(projection_hidden_size, width) for _ in range(num_layers))
        else:
            # normal(0, 1), as peft initialises its prefix; the zero gate, not the prefix, makes the start exact.
            self.prefix = nn.ParameterList(
                nn.Parameter(torch.randn(num_virtual_tokens, width)) for _ in range(num_layers)
            )
        self.gate = nn.Parameter(torch.zeros(num_layers, num_heads))

    def layer_table(self, layer: int) -> torch.Tensor:
        """Layer ``layer``'s keys and values, flat: ``num_virtual_tokens x (2 * num_heads * head_dim)``."""
        if self.projection:
            return self.projections[layer](self.transform(self.embedding.weight))
        return self.prefix[layer]

    def layer_key_value(self, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values of one layer, each ``num_heads x num_virtual_tokens x head_dim``."""
        table = self.layer_table(layer)
        key_value = table.view(self.num_virtual_tokens, 2, self.num_heads, self.head_dim).permute(1, 2, 0, 3)
        return key_value[0], key_value[1]

    def flat(self) -> torch.Tensor:
        """The prefix table as saved (the projection applied), detached."""
        with torch.no_grad():
            return torch.cat([self.layer_table(layer) for layer in range(self.num_layers)], dim=-1).detach()

    def load_flat(self, table: torch.Tensor, gate: torch.Tensor) -> None:
        if self.projection:
            raise ValueError(
                "Cannot load a saved (flat) prefix into a prefix reparametrised by an MLP (--prefix_projection): "
                "the MLP cannot be recovered from its output. Load the adapter for inference instead (peft refuses "
                "this for its own prefix too)."
            )
        width = 2 * self.token_dim
        expected = ((self.num_virtual_tokens, self.num_layers * width), tuple(self.gate.shape))
        if (tuple(table.shape), tuple(gate.shape)) != expected:
            raise ValueError(
                f"Saved prefix has shapes {tuple(table.shape)}, {tuple(gate.shape)}; expected {expected}."
            )
        with torch.no_grad():
            for layer, values in enumerate(table.split(width, dim=-1)):
                self.prefix[layer].copy_(values)
            self.gate.copy_(gate)


class AllLayerPrefix(nn.Module):
    """The prefixes that peft lacks: encoder self-attention and decoder cross-attention, every layer."""

    KINDS = ("encoder_self_attention", "cross_attention")

    def __init__(
        self,
        num_encoder_layers: int,
        num_decoder_layers: int,
        num_heads: int,
        head_dim: int,
        num_virtual_tokens: int,
        projection_hidden_size: int | None = None,
    ):
        super().__init__()
        shape = dict(num_heads=num_heads, head_dim=head_dim, num_virtual_tokens=num_virtual_tokens)
        self.encoder_self_attention = AddedPrefix(
            num_encoder_layers, **shape, projection_hidden_size=projection_hidden_size
        )
        self.cross_attention = AddedPrefix(num_decoder_layers, **shape, projection_hidden_size=projection_hidden_size)
        self.enabled = True
        self._peft_model = None  # weak reference to the owner, to follow peft's disable_adapter()
        self._calls = None  # a list while attach() probes the model

    @property
    def active(self) -> bool:
        owner = self._peft_model() if self._peft_model is not None else None
        return self.enabled and not (owner is not None and getattr(owner, "_adapters_disabled", False))

    def prefix(self, kind: str) -> AddedPrefix:
        return getattr(self, kind)

    def flat_state(self) -> dict[str, torch.Tensor]:
        """What is saved: the flat prefix table and the raw gate (the model uses tanh(gate)) of each kind."""
        state = {}
        for kind in self.KINDS:
            prefix = self.prefix(kind)
            state[f"{kind}.prefix"] = prefix.flat().float().cpu().contiguous()
            state[f"{kind}.gate"] = prefix.gate.detach().float().cpu().contiguous()
        return state

    def load_flat_state(self, state: dict[str, torch.Tensor]) -> None:
        expected = {f"{kind}.{name}" for kind in self.KINDS for name in ("prefix", "gate")}
        if set(state) != expected:
            raise ValueError(f"{WEIGHTS_NAME} holds {sorted(state)}; expected {sorted(expected)}.")
        for kind in self.KINDS:
            self.prefix(kind).load_flat(state[f"{kind}.prefix"], state[f"{kind}.gate"])


def get_all_layer_prefix(peft_model) -> AllLayerPrefix | None:
    """The added prefixes of a peft model, or None for ``--prefix_scope decoder``."""
    return peft_model._modules.get(ATTRIBUTE)


# --------------------------------------------------------------------------------------------------------------------
# The attention function


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


def _prefix_term(module, query, key, value, gate, scaling, dropout):
    """tanh(gate) * softmax(scaling * q K^T) V per head, as ``batch x query x heads x head_dim``."""
    key, value = key.to(query.dtype), value.to(query.dtype)
    scores = torch.matmul(query, key.transpose(-1, -2)) * scaling  # broadcasts over batch x beams
    probs = torch.softmax(scores.float(), dim=-1).to(query.dtype)
    probs = nn.functional.dropout(probs, p=dropout, training=module.training)
    term = torch.matmul(probs, value) * torch.tanh(gate).to(query.dtype).view(1, -1, 1, 1)
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
        prefix = prefixes.prefix(slot.kind)
        prefix_key, prefix_value = prefix.layer_key_value(slot.layer)
        scaling = kwargs.get("scaling")
        scaling = head_dim**-0.5 if scaling is None else scaling
        term = _prefix_term(
            module, query, prefix_key, prefix_value, prefix.gate[slot.layer], scaling, kwargs.get("dropout", 0.0)
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


# --------------------------------------------------------------------------------------------------------------------
# Attaching to a model


def check_scope_supported(config, prefix_scope: str) -> None:
    """Refuse, before any weights are loaded, a scope the model cannot take."""
    from .arguments import ArgumentError

    if prefix_scope not in SCOPES:
        raise ArgumentError(f"--prefix_scope must be one of {', '.join(SCOPES)}, got {prefix_scope!r}.")
    if prefix_scope == "all" and config.model_type not in SUPPORTED_MODEL_TYPES:
        raise ArgumentError(
            f"--prefix_scope all supports {', '.join(SUPPORTED_MODEL_TYPES)} models, not {config.model_type!r}; "
            "use --prefix_scope decoder."
        )


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


OUR_IMPLEMENTATIONS = tuple(f"{IMPLEMENTATION_PREFIX}{inner}" for inner in WRAPPED_IMPLEMENTATIONS)


def _dispatch_guard(stack, args, kwargs):
    allowed = stack.__dict__[_GUARD]
    if allowed is not None and stack.config._attn_implementation not in allowed:
        raise RuntimeError(
            f"The attention implementation was switched to {stack.config._attn_implementation!r} after "
            "--prefix_scope all was attached; the encoder and cross-attention prefixes would be skipped. Use "
            f"model.set_attn_implementation() with one of {', '.join(map(repr, OUR_IMPLEMENTATIONS))}."
        )
    return None


def _install_guard(base) -> None:
    for stack in (base.encoder, base.decoder):
        if _GUARD not in stack.__dict__:
            stack.register_forward_pre_hook(_dispatch_guard, with_kwargs=True)
        stack.__dict__[_GUARD] = OUR_IMPLEMENTATIONS


def _set_guard(base, allowed: tuple[str, ...] | None) -> None:
    """The implementations the encoder and decoder may run with (None: any)."""
    for stack in (base.encoder, base.decoder):
        if _GUARD in stack.__dict__:
            stack.__dict__[_GUARD] = allowed


def _probe(base, prefixes: AllLayerPrefix, inner_name: str, name: str, slots) -> None:
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
            _set_guard(base, (inner_name, *OUR_IMPLEMENTATIONS))
            base.set_attn_implementation(inner_name)
            reference = base(input_ids=ids, attention_mask=mask, decoder_input_ids=decoder_ids, use_cache=False)
            base.set_attn_implementation(name)
            _set_guard(base, OUR_IMPLEMENTATIONS)
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


# --------------------------------------------------------------------------------------------------------------------
# Saving and loading, through peft's own save_pretrained / load_adapter


def read_prefix_scope(model_id, subfolder: str | None = None, **hub_kwargs) -> str:
    """The scope recorded in an adapter's ``adapter_config.json`` (``decoder`` when it records none)."""
    path = _adapter_file(model_id, "adapter_config.json", subfolder, **hub_kwargs)
    scope = json.loads(Path(path).read_text(encoding="utf-8")).get(ADAPTER_CONFIG_KEY, "decoder")
    if scope not in SCOPES:
        raise ValueError(f"{path}: unknown {ADAPTER_CONFIG_KEY} {scope!r}; expected one of {', '.join(SCOPES)}.")
    return scope


def _adapter_file(model_id, filename: str, subfolder: str | None = None, **hub_kwargs) -> str:
    folder = os.path.join(model_id, subfolder) if subfolder else str(model_id)
    if os.path.isdir(folder):
        path = os.path.join(folder, filename)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{path} is missing.")
        return path
    from huggingface_hub import hf_hub_download

    keys = ("revision", "token", "cache_dir", "local_files_only", "force_download")
    return hf_hub_download(
        str(model_id), filename, subfolder=subfolder, **{k: hub_kwargs[k] for k in keys if k in hub_kwargs}
    )


MODEL_CARD_NOTE = """
## Prefix scope: all

This adapter adds encoder self-attention and cross-attention prefixes (`{weights}`, `"prefix_scope": "all"` in
`adapter_config.json`) to peft's decoder prefix. Load it with the `prefix-tuning` package imported:

```python
import prefix_tuning_utils  # restores every prefix in PeftModel.from_pretrained
from peft import PeftModel

model = PeftModel.from_pretrained(base_model, adapter_dir)
```

Plain peft, without that import, loads the decoder prefix only (it warns that `prefix_scope` is ignored).
"""


def _save_extra(peft_model, save_directory: str, selected_adapters) -> None:
    prefixes = get_all_layer_prefix(peft_model)
    adapters = list(peft_model.peft_config) if selected_adapters is None else list(selected_adapters)
    if adapters != ["default"]:
        raise ValueError(f"--prefix_scope all saves one adapter named 'default', got {adapters}.")
    save_file(
        prefixes.flat_state(),
        os.path.join(save_directory, WEIGHTS_NAME),
        metadata={"format": "pt", ADAPTER_CONFIG_KEY: "all", "gate": "tanh"},
    )
    config_path = os.path.join(save_directory, "adapter_config.json")
    with open(config_path, encoding="utf-8") as handle:
        adapter_config = json.load(handle)
    adapter_config[ADAPTER_CONFIG_KEY] = "all"
    with open(config_path, "w", encoding="utf-8") as handle:
        handle.write(json.dumps(adapter_config, indent=2, sort_keys=True))
    card = Path(save_directory, "README.md")
    text = card.read_text(encoding="utf-8") if card.is_file() else ""
    if "## Prefix scope: all" not in text:
        card.write_text(text + MODEL_CARD_NOTE.format(weights=WEIGHTS_NAME), encoding="utf-8")


def _check_load(peft_model, scope: str, model_id, adapter_name: str) -> None:
    """Refuse, before peft loads anything, an adapter that could only be half applied."""
    has_prefixes = get_all_layer_prefix(peft_model) is not None
    if scope == "decoder" and has_prefixes:
        raise ValueError(
            f"{model_id} is a --prefix_scope decoder adapter, but this model has --prefix_scope all prefixes; "
            "load it onto a model without them."
        )
    others = [name for name in peft_model.peft_config if name != adapter_name]
    if scope == "all" and (adapter_name != "default" or others):
        raise ValueError(
            f"--prefix_scope all adapters load as the only adapter, named 'default' (got {adapter_name!r}"
            + (f", next to {others}" if others else "")
            + ")."
        )


def _load_extra(peft_model, model_id, subfolder: str | None, is_trainable: bool, hub_kwargs: dict) -> None:
    prefixes = get_all_layer_prefix(peft_model)
    if prefixes is None:
        prefixes = attach(peft_model, trainable=is_trainable)
    state = load_file(_adapter_file(model_id, WEIGHTS_NAME, subfolder, **hub_kwargs))
    prefixes.load_flat_state(state)
    logger.info("Restored the encoder self-attention and cross-attention prefixes from %s.", model_id)


_PATCHES = MethodPatches()
_ORIGINALS = _PATCHES.originals  # (class, name) -> the method replaced


def _save_pretrained(self, *args, **kwargs):
    original = _ORIGINALS[(PeftModel, "save_pretrained")]
    result = original(self, *args, **kwargs)
    if get_all_layer_prefix(self) is not None:
        bound = inspect.signature(original).bind(self, *args, **kwargs)
        bound.apply_defaults()
        if bound.arguments["is_main_process"]:
            _save_extra(self, str(bound.arguments["save_directory"]), bound.arguments["selected_adapters"])
    return result


def _load_adapter(self, *args, **kwargs):
    original = _ORIGINALS[(PeftModel, "load_adapter")]
    bound = inspect.signature(original).bind(self, *args, **kwargs)
    bound.apply_defaults()
    model_id, adapter_name = bound.arguments["model_id"], bound.arguments["adapter_name"]
    hub_kwargs = dict(bound.arguments["kwargs"])
    subfolder = hub_kwargs.pop("subfolder", None)
    try:
        config = json.loads(Path(_adapter_file(model_id, "adapter_config.json", subfolder, **hub_kwargs)).read_text())
    except (OSError, ValueError):
        config = {}  # peft raises its own error about it
    scope = config.get(ADAPTER_CONFIG_KEY, "decoder") if config.get("peft_type") == PeftType.PREFIX_TUNING else None
    if scope is not None:
        _check_load(self, scope, model_id, adapter_name)
    result = original(self, *args, **kwargs)
    if scope == "all":
        _load_extra(self, model_id, subfolder, bound.arguments["is_trainable"], hub_kwargs)
    return result


def _check_kwargs(cls, **kwargs):
    """peft's hook on a loaded adapter_config.json: take out our key, which load_adapter reads and restores itself
    (peft would otherwise warn that it is ignored)."""
    owner = next(klass for klass in _ORIGINALS if klass[1] == "check_kwargs")
    kwargs = _ORIGINALS[owner].__func__(cls, **kwargs)
    if kwargs.get("peft_type") == PeftType.PREFIX_TUNING:
        kwargs.pop(ADAPTER_CONFIG_KEY, None)
    return kwargs


def is_applied() -> bool:
    return bool(_ORIGINALS)


def apply() -> None:
    """Register the attention functions; wrap ``PeftModel.save_pretrained`` / ``load_adapter`` and peft's config
    ``check_kwargs`` (idempotent)."""
    if _ORIGINALS:
        return
    try:
        _register()
    except RuntimeError as err:  # --prefix_scope decoder must keep working; attach() raises the same error.
        logger.debug("--prefix_scope all unavailable: %s", err)
    for name, replacement in (("save_pretrained", _save_pretrained), ("load_adapter", _load_adapter)):
        original = PeftModel.__dict__[name]
        _ORIGINALS[(PeftModel, name)] = original
        setattr(PeftModel, name, functools.wraps(original)(replacement))
    config_class = next(klass for klass in PeftConfig.__mro__ if "check_kwargs" in klass.__dict__)
    original = config_class.__dict__["check_kwargs"]
    _ORIGINALS[(config_class, "check_kwargs")] = original
    config_class.check_kwargs = classmethod(functools.wraps(original.__func__)(_check_kwargs))


def _remove() -> None:
    _PATCHES.remove()


def disabled():
    """Context manager that removes the save/load wrappers: behaves as plain peft does (for tests)."""
    return _PATCHES.disabled(apply)
