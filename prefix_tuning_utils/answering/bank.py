"""Many adapters of one frozen base model, stacked, so that every row of a batch can read its own.

A prefix-tuning adapter is only a table of virtual keys and values per layer (a prompt-tuning adapter a table of
virtual input embeddings), so :class:`AdapterBank` keeps each kind of table of every adapter in one tensor,
``adapters x virtual tokens x width``, and one copy of the base model. For a batch in which row *i* is answered by
adapter *a_i* (or by the base model), :meth:`AdapterBank.virtual_tokens` gathers the rows' tables into
:class:`VirtualTokens`: the prefix cache, the prompt embeddings and the ``--prefix_scope all`` prefixes of that batch.

Adapters with different ``num_virtual_tokens`` share one batch: each table is padded on the left to the longest
one and the padding is masked out. Left, because the models see the prefix at positions just before the input:

* T5's decoder numbers keys and queries from the start of its cache, and its attention bias depends only on their
  distance; with a prefix of ``v`` tokens right-aligned in ``V`` slots, every distance is the one of the adapter alone;
* decoder-only models get explicit position ids, counted over the unmasked slots only (``cumsum(mask) - 1``), so the
  first real token sits at position ``v``, as in peft's own forward.

The prefix reaches each layer in peft's own layout (:func:`peft_cache_layout`): for a seq2seq model peft builds the
self-attention key/values of decoder layer ``i`` from table layer ``2 i mod L``; the bank does the same, so that a row
gets exactly what ``PeftModel`` gives the adapter alone.

Kinds that live in the base model's weights cannot be mixed this way: LoRA changes the layers themselves, a fully
fine-tuned model is another model. Such an adapter is served alone (``PrefixClassifier.from_pretrained``), and a bank
refuses it in one line.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from peft import PeftType
from safetensors.torch import load_file

from ..hub_files import get_model_file
from ..input_format import InputFormat
from ..run_files import (
    ADAPTER_CONFIG_FILE,
    ADAPTER_WEIGHTS_FILE,
    ALL_LAYER_PREFIX_FILE,
    PREFIX_SCOPE_KEY,
    TASK_SETTINGS_FILE,
)


logger = logging.getLogger(__name__)

__all__ = [
    "AdapterBank",
    "AdapterTables",
    "BankedAdapter",
    "VirtualTokens",
    "bankable",
    "peft_cache_layout",
    "read_adapter",
    "read_adapter_config",
]

PREFIX, PROMPT = "prefix", "prompt"
ALL_SCOPE_KINDS = ("encoder_self_attention", "cross_attention")


@dataclass(frozen=True)
class BankedAdapter:
    """One adapter of a bank: its name, where it came from, and what it answers with."""

    name: str
    source: str  # the folder or Hub id as given
    revision: str
    kind: str  # "prefix" (peft prefix tuning) or "prompt" (prompt tuning)
    prefix_scope: str | None  # "decoder" or "all" for a prefix
    num_virtual_tokens: int
    labels: tuple[str, ...]
    input_format: InputFormat

    def describe(self) -> dict:
        """What `GET /adapters` shows of it."""
        return {
            "name": self.name,
            "source": self.source,
            "revision": self.revision,
            "kind": self.kind,
            "prefix_scope": self.prefix_scope,
            "num_virtual_tokens": self.num_virtual_tokens,
            "label_words": list(self.labels),
            "task": self.input_format.task,
        }


@dataclass
class AdapterTables:
    """The tensors of one adapter, as saved: `prefix` (tokens x layers * 2 * heads * head_dim) or `prompt`
    (tokens x hidden size), and for ``--prefix_scope all`` the flat prefixes and gates of both attention kinds."""

    prefix: torch.Tensor | None = None
    prompt: torch.Tensor | None = None
    all_scope: dict[str, torch.Tensor] | None = None  # "<kind>.prefix", "<kind>.gate"


def peft_cache_layout(table: torch.Tensor, num_layers: int, heads: int, head_dim: int, seq2seq: bool):
    """Per layer (key, value), each ``batch x heads x tokens x head_dim``, from ``batch x tokens x width`` prefix
    tables, exactly as peft's ``PeftModel.get_prompt`` lays them out (seq2seq: the table twice over, cut in fours:
    layer ``i`` reads table layers ``2 i mod L`` (self-attention) and ``2 i + 1 mod L`` (cross-attention, which peft then
    empties))."""
    batch, tokens = table.shape[:2]
    values = table.view(batch, tokens, num_layers * 2, heads, head_dim)
    if seq2seq:
        values = torch.cat([values, values], dim=2)
    groups = values.permute([2, 0, 3, 1, 4]).split(4 if seq2seq else 2)
    return [(group[0], group[1]) for group in groups]


def _left_padded(tables: list[torch.Tensor | None], width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """`tables` (None: no table; at least one is a table) right-aligned in ``len(tables) x longest x width`` float32
    zeros, and the mask of the real rows (``len(tables) x longest``, long)."""
    longest = max(t.shape[0] for t in tables if t is not None)
    stacked = torch.zeros(len(tables), longest, width)
    mask = torch.zeros(len(tables), longest, dtype=torch.long)
    for index, table in enumerate(tables):
        if table is not None:
            stacked[index, longest - table.shape[0] :] = table
            mask[index, longest - table.shape[0] :] = 1
    return stacked, mask


class AdapterBank:
    """The stacked tables of `adapters` (module docstring). The last index of every table is the base model: no
    virtual tokens, zero gates. Build it with :meth:`from_tables`; ask it for a batch with :meth:`virtual_tokens`."""

    def __init__(self, adapters: list[BankedAdapter], config, tensors: dict[str, torch.Tensor], shapes: dict):
        self.adapters = adapters
        self.config = config
        self.tensors = tensors  # "prefix", "prefix_mask", "prompt", "prompt_mask", "<kind>.prefix/.mask/.gate"
        self.shapes = shapes  # num_layers, heads, head_dim of the prefix; encoder/decoder layers of all-scope
        self._index = {adapter.name: index for index, adapter in enumerate(adapters)}
        self.base_index = len(adapters)

    @property
    def names(self) -> list[str]:
        return [adapter.name for adapter in self.adapters]

    @property
    def seq2seq(self) -> bool:
        return bool(getattr(self.config, "is_encoder_decoder", False))

    @property
    def has_all_scope(self) -> bool:
        return "encoder_self_attention.prefix" in self.tensors

    def adapter(self, name: str) -> BankedAdapter:
        return self.adapters[self._index[name]]

    def __contains__(self, name) -> bool:
        return name in self._index

    def __len__(self) -> int:
        return len(self.adapters)

    @classmethod
    def from_tables(cls, adapters: list[BankedAdapter], tables: list[AdapterTables], config, peft_configs: list[dict]):
        """Stack the tables of `adapters` (one :class:`AdapterTables` and one adapter_config.json dict each) for a
        base model of `config`. Every table stays float32 here; :meth:`to` moves the bank to the model's device
        and dtype."""
        if not adapters:
            raise ValueError("An adapter bank needs at least one adapter.")
        names = [adapter.name for adapter in adapters]
        if len(set(names)) != len(names):
            raise ValueError(f"Adapter names must be distinct, got {names}.")
        tensors: dict[str, torch.Tensor] = {}
        shapes: dict[str, int] = {}
        prefix_configs = [c for c, a in zip(peft_configs, adapters) if a.kind == PREFIX]
        if prefix_configs:
            shape = {key: prefix_configs[0][key] for key in ("num_layers", "num_attention_heads", "token_dim")}
            for adapter, peft_config in zip(adapters, peft_configs):
                if adapter.kind == PREFIX and any(peft_config[key] != value for key, value in shape.items()):
                    raise ValueError(
                        f"Adapter {adapter.name!r} has a prefix of another shape ({', '.join(f'{k} {peft_config[k]}' for k in shape)}) "
                        f"than the others ({', '.join(f'{k} {v}' for k, v in shape.items())}): not the same base model."
                    )
            heads = shape["num_attention_heads"]
            shapes.update(num_layers=shape["num_layers"], heads=heads, head_dim=shape["token_dim"] // heads)
            width = shape["num_layers"] * 2 * shape["token_dim"]
            tensors["prefix"], tensors["prefix_mask"] = _left_padded([t.prefix for t in tables] + [None], width)
        if any(adapter.kind == PROMPT for adapter in adapters):
            width = next(t.prompt.shape[1] for a, t in zip(adapters, tables) if a.kind == PROMPT)
            tensors["prompt"], tensors["prompt_mask"] = _left_padded([t.prompt for t in tables] + [None], width)
        scoped = [t.all_scope for t in tables]
        if any(s is not None for s in scoped):
            for kind in ALL_SCOPE_KINDS:
                first = next(s for s in scoped if s is not None)
                gate_shape = tuple(first[f"{kind}.gate"].shape)
                width = first[f"{kind}.prefix"].shape[1]
                rows = [s[f"{kind}.prefix"] if s is not None else None for s in scoped] + [None]
                tensors[f"{kind}.prefix"], tensors[f"{kind}.mask"] = _left_padded(rows, width)
                gates = torch.zeros(len(adapters) + 1, *gate_shape)
                for index, s in enumerate(scoped):
                    if s is not None:
                        gates[index] = s[f"{kind}.gate"]
                tensors[f"{kind}.gate"] = gates
                heads = gate_shape[1]
                shapes.update(all_scope_heads=heads, all_scope_head_dim=width // (gate_shape[0] * 2 * heads))
        return cls(adapters, config, tensors, shapes)

    def to(self, device=None, dtype=None) -> AdapterBank:
        """Tables on `device` in `dtype` (the base model's: peft casts its prefix to it); masks stay integer."""
        for key, value in self.tensors.items():
            floating = value.is_floating_point() and not key.endswith(".gate")
            self.tensors[key] = value.to(device=device, dtype=dtype if floating else None)
        return self

    @property
    def nbytes(self) -> int:
        return sum(value.numel() * value.element_size() for value in self.tensors.values())

    def rows(self, adapters: Sequence[str | None], device=None) -> torch.Tensor:
        """The bank index of each row's adapter (None: the base model)."""
        unknown = [name for name in adapters if name is not None and name not in self._index]
        if unknown:
            raise KeyError(f"Unknown adapter {unknown[0]!r}; this bank has {', '.join(self.names)}.")
        indices = [self.base_index if name is None else self._index[name] for name in adapters]
        return torch.tensor(indices, dtype=torch.long, device=device)

    def virtual_tokens(self, rows: torch.Tensor) -> VirtualTokens:
        """The virtual tokens of a batch whose row *i* reads adapter ``rows[i]``."""
        take = {key: value[rows] for key, value in self.tensors.items()}
        return VirtualTokens(self, rows, take)


@dataclass
class VirtualTokens:
    """The virtual tokens of one batch, every row its own adapter's, padded on the left and masked."""

    bank: AdapterBank
    rows: torch.Tensor
    tensors: dict[str, torch.Tensor]

    @property
    def prefix_mask(self) -> torch.Tensor | None:
        return self.tensors.get("prefix_mask")

    @property
    def prompt(self) -> torch.Tensor | None:
        return self.tensors.get("prompt")

    @property
    def prompt_mask(self) -> torch.Tensor | None:
        return self.tensors.get("prompt_mask")

    def repeated(self, times: int) -> VirtualTokens:
        """Each row `times` times in a row (labels continued from one input, beams of one input)."""
        if times == 1:
            return self
        return dataclasses.replace(
            self,
            rows=self.rows.repeat_interleave(times),
            tensors={key: value.repeat_interleave(times, dim=0) for key, value in self.tensors.items()},
        )

    def cache(self):
        """A new cache holding the rows' prefixes (None without prefix adapters): what peft's ``get_prompt`` hands
        the model for one adapter, here one adapter per row."""
        if "prefix" not in self.tensors:
            return None
        from transformers import DynamicCache, EncoderDecoderCache

        shapes = self.bank.shapes
        layers = peft_cache_layout(
            self.tensors["prefix"], shapes["num_layers"], shapes["heads"], shapes["head_dim"], self.bank.seq2seq
        )
        if not self.bank.seq2seq:
            return DynamicCache(layers)
        return EncoderDecoderCache(DynamicCache(layers), DynamicCache())

    def width(self, name: str) -> int:
        """Slots of one kind (``prefix`` or ``prompt``) in this batch; 0 when no row has that kind."""
        mask = self.tensors.get(f"{name}_mask")
        return 0 if mask is None else mask.shape[1]

    def all_scope(self, kind: str, layer: int, batch: int):
        """``--prefix_scope all`` keys, values, gates and key mask of `layer` for a batch of `batch` rows (this
        batch's rows, each repeated `batch / rows` times: beams, or labels continued from one input)."""
        times = batch // len(self.rows)
        shapes = self.bank.shapes
        heads, head_dim = shapes["all_scope_heads"], shapes["all_scope_head_dim"]
        width = 2 * heads * head_dim
        table = self.tensors[f"{kind}.prefix"][:, :, layer * width : (layer + 1) * width]
        rows, tokens = table.shape[:2]
        key_value = table.reshape(rows, tokens, 2, heads, head_dim).permute(2, 0, 3, 1, 4)
        key, value = key_value[0], key_value[1]
        gate = self.tensors[f"{kind}.gate"][:, layer]
        mask = self.tensors[f"{kind}.mask"].bool()
        if times > 1:
            key, value, gate, mask = (t.repeat_interleave(times, dim=0) for t in (key, value, gate, mask))
        return key, value, gate, mask


PEFT_KINDS = {PeftType.PREFIX_TUNING.value: PREFIX, PeftType.PROMPT_TUNING.value: PROMPT}
# peft's key for the virtual tokens' table in adapter_model.safetensors (prefix and prompt tuning alike)
PROMPT_EMBEDDINGS_KEY = "prompt_embeddings"


def _hub(trained) -> dict:
    args = trained.base_args
    return {"revision": trained.revision, "token": args.token, "cache_dir": args.cache_dir}


def read_adapter_config(trained) -> dict:
    """The adapter_config.json of an adapter (a ``run_folder.TrainedModel``), from its folder or Hub repo."""
    with open(get_model_file(trained.path, ADAPTER_CONFIG_FILE, **_hub(trained)), encoding="utf-8") as handle:
        return json.load(handle)


def bankable(peft_config: dict) -> bool:
    """Whether an adapter of this config can share a batch with others (its tokens are virtual, the weights not
    changed)."""
    return peft_config.get("peft_type") in PEFT_KINDS


def read_adapter(name: str, trained, labels: list[str] | None, task: str) -> tuple[BankedAdapter, AdapterTables, dict]:
    """One adapter written by this package (a ``run_folder.TrainedModel`` that is an adapter), read for a bank:
    its description, its tables and its adapter_config.json. Raises ``ValueError`` naming the adapter for a kind
    a bank cannot mix (LoRA and other adapters that change the model's weights)."""
    peft_config = read_adapter_config(trained)
    kind = PEFT_KINDS.get(peft_config.get("peft_type"))
    if kind is None:
        raise ValueError(
            f"Adapter {name!r} ({trained.path}) is a {peft_config.get('peft_type')} adapter, which changes the base "
            "model's weights: it cannot share a batch with other adapters. Serve it alone (one adapter per process)."
        )
    hub = _hub(trained)
    table = load_file(get_model_file(trained.path, ADAPTER_WEIGHTS_FILE, **hub))[PROMPT_EMBEDDINGS_KEY].float()
    virtual = int(peft_config["num_virtual_tokens"])
    scope = peft_config.get(PREFIX_SCOPE_KEY, "decoder") if kind == PREFIX else None
    tables = AdapterTables(prefix=table) if kind == PREFIX else AdapterTables(prompt=table[:virtual])
    if scope == "all":
        extra = load_file(get_model_file(trained.path, ALL_LAYER_PREFIX_FILE, **hub))
        tables.all_scope = {key: value.float() for key, value in extra.items()}
    saved_labels = trained.settings.get("label_words") or labels
    if not saved_labels:
        raise ValueError(
            f"Adapter {name!r} ({trained.path}) has no {TASK_SETTINGS_FILE} with its label words: it was not written "
            "by run_prefix_tuning.py."
        )
    adapter = BankedAdapter(
        name=name,
        source=trained.path,
        revision=trained.revision,
        kind=kind,
        prefix_scope=scope,
        num_virtual_tokens=virtual,
        labels=tuple(saved_labels),
        input_format=InputFormat.from_settings(trained.settings, task),
    )
    return adapter, tables, peft_config
