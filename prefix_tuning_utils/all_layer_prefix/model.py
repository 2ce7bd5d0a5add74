"""The prefixes that peft lacks, as modules: :class:`AddedPrefix` (one attention type, every layer) and
:class:`AllLayerPrefix` (encoder self-attention and cross-attention), kept on the PeftModel as ``all_layer_prefix``."""

from __future__ import annotations

import torch
from torch import nn

from .config import ATTRIBUTE, WEIGHTS_NAME


__all__ = ["AddedPrefix", "AllLayerPrefix", "RoutedAllLayerPrefix", "get_all_layer_prefix"]


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

    def layer_prefix(self, kind: str, layer: int, batch: int):
        """(keys, values, gate, key mask) of one layer, shared by the whole batch (no mask)."""
        prefix = self.prefix(kind)
        key, value = prefix.layer_key_value(layer)
        return key, value, prefix.gate[layer], None

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


class RoutedAllLayerPrefix:
    """The prefixes of a batch whose rows read different adapters (an ``answering.AdapterBank``): while
    :attr:`rows` is set, each attention call takes every row's own keys, values and gate from it (rows without an
    ``all`` adapter have gate 0); with :attr:`rows` None the model runs as the base model."""

    def __init__(self):
        self.rows = None  # an object with all_scope(kind, layer, batch) -> (keys, values, gate, key mask)
        self._calls = None  # a list while attach_routed() probes the model

    @property
    def active(self) -> bool:
        return self.rows is not None

    def layer_prefix(self, kind: str, layer: int, batch: int):
        return self.rows.all_scope(kind, layer, batch)


def get_all_layer_prefix(peft_model) -> AllLayerPrefix | None:
    """The added prefixes of a peft model, or None for ``--prefix_scope decoder``."""
    return peft_model._modules.get(ATTRIBUTE)
