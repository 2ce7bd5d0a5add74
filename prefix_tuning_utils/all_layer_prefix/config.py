"""The ``--prefix_scope`` setting: its values, what an adapter records, and which models take ``all``."""

from __future__ import annotations

import json
from pathlib import Path

from ..hub_files import get_model_file


__all__ = [
    "ADAPTER_CONFIG_KEY",
    "ATTRIBUTE",
    "SCOPES",
    "SUPPORTED_MODEL_TYPES",
    "WEIGHTS_NAME",
    "check_scope_supported",
    "read_prefix_scope",
]

SCOPES = ("decoder", "all")
WEIGHTS_NAME = "all_layer_prefix.safetensors"
ADAPTER_CONFIG_KEY = "prefix_scope"  # in adapter_config.json
ATTRIBUTE = "all_layer_prefix"  # the module's name on the PeftModel
SUPPORTED_MODEL_TYPES = ("t5", "mt5")


def check_scope_supported(config, prefix_scope: str) -> None:
    """Refuse, before any weights are loaded, a scope the model cannot take."""
    from ..arguments import ArgumentError

    if prefix_scope not in SCOPES:
        raise ArgumentError(f"--prefix_scope must be one of {', '.join(SCOPES)}, got {prefix_scope!r}.")
    if prefix_scope == "all" and config.model_type not in SUPPORTED_MODEL_TYPES:
        raise ArgumentError(
            f"--prefix_scope all supports {', '.join(SUPPORTED_MODEL_TYPES)} models, not {config.model_type!r}; "
            "use --prefix_scope decoder."
        )


def read_prefix_scope(model_id, subfolder: str | None = None, **hub_kwargs) -> str:
    """The scope recorded in an adapter's ``adapter_config.json`` (``decoder`` when it records none)."""
    path = get_model_file(model_id, "adapter_config.json", subfolder, **hub_kwargs)
    scope = json.loads(Path(path).read_text(encoding="utf-8")).get(ADAPTER_CONFIG_KEY, "decoder")
    if scope not in SCOPES:
        raise ValueError(f"{path}: unknown {ADAPTER_CONFIG_KEY} {scope!r}; expected one of {', '.join(SCOPES)}.")
    return scope
