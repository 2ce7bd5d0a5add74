"""The ``--prefix_scope`` setting: its values, what an adapter records, and which models take ``all``."""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import ArgumentError
from ..hub_files import get_model_file
from ..run_files import ADAPTER_CONFIG_FILE
from ..run_files import ALL_LAYER_PREFIX_FILE as WEIGHTS_NAME
from ..run_files import PREFIX_SCOPE_KEY as ADAPTER_CONFIG_KEY  # in adapter_config.json


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
ATTRIBUTE = "all_layer_prefix"  # the module's name on the PeftModel
SUPPORTED_MODEL_TYPES = ("t5", "mt5")


def check_scope_supported(config, prefix_scope: str) -> None:
    """Refuse, before any weights are loaded, a scope the model cannot take."""
    if prefix_scope not in SCOPES:
        raise ArgumentError(f"--prefix_scope must be one of {', '.join(SCOPES)}, got {prefix_scope!r}.")
    if prefix_scope == "all" and config.model_type not in SUPPORTED_MODEL_TYPES:
        raise ArgumentError(
            f"--prefix_scope all supports {', '.join(SUPPORTED_MODEL_TYPES)} models, not {config.model_type!r}; "
            "use --prefix_scope decoder."
        )


def read_prefix_scope(model_id, subfolder: str | None = None, **hub_kwargs) -> str:
    """The scope recorded in an adapter's ``adapter_config.json`` (``decoder`` when it records none)."""
    path = get_model_file(model_id, ADAPTER_CONFIG_FILE, subfolder, **hub_kwargs)
    scope = json.loads(Path(path).read_text(encoding="utf-8")).get(ADAPTER_CONFIG_KEY, "decoder")
    if scope not in SCOPES:
        raise ValueError(f"{path}: unknown {ADAPTER_CONFIG_KEY} {scope!r}; expected one of {', '.join(SCOPES)}.")
    return scope
