"""Saving and loading ``--prefix_scope all`` adapters through peft's own ``save_pretrained`` / ``from_pretrained``.

The prefixes are saved flat (``num_virtual_tokens x (layers * 2 * heads * head_dim)``, peft's layout; an MLP used
during training with ``--prefix_projection`` is applied and dropped, as peft does) with their gates in
``all_layer_prefix.safetensors`` next to peft's adapter, and ``adapter_config.json`` gets ``"prefix_scope": "all"``.
Three patches in :mod:`prefix_tuning_utils.patching` make every save (``Trainer`` checkpoints included) and every
``PeftModel.from_pretrained`` / ``load_adapter`` handle them. They add a feature rather than fix a bug: plain peft,
without them, saves and loads the decoder prefix only (and warns ``Unexpected keyword arguments ['prefix_scope'] for
class PrefixTuningConfig, these are ignored``).
"""

from __future__ import annotations

import inspect
import json
import logging
import os
from pathlib import Path

from peft import PeftConfig, PeftModel, PeftType
from safetensors.torch import load_file, save_file

from .. import patching
from ..hub_files import get_model_file
from ..run_files import ADAPTER_CONFIG_FILE
from .attention import attach
from .config import ADAPTER_CONFIG_KEY, WEIGHTS_NAME
from .model import get_all_layer_prefix


logger = logging.getLogger(__name__)

__all__ = ["CONFIG_KEY", "LOAD", "SAVE", "disabled"]

_PLAIN_PEFT = (
    "peft 0.21.2 saves and restores only its own decoder prefix (peft PR #2989: the encoder of a seq2seq model gets "
    "no prefix)"
)
_NECESSITY_TEST = "tests/test_prefix_scope.py::test_plain_peft_loads_only_the_decoder_prefix_and_warns"


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
    config_path = os.path.join(save_directory, ADAPTER_CONFIG_FILE)
    with open(config_path, encoding="utf-8") as handle:
        adapter_config = json.load(handle)
    adapter_config[ADAPTER_CONFIG_KEY] = "all"
    with open(config_path, "w", encoding="utf-8") as handle:
        handle.write(json.dumps(adapter_config, indent=2, sort_keys=True))


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
    state = load_file(get_model_file(model_id, WEIGHTS_NAME, subfolder, **hub_kwargs))
    prefixes.load_flat_state(state)
    logger.info("Restored the encoder self-attention and cross-attention prefixes from %s.", model_id)


def _save_pretrained(original, self, *args, **kwargs):
    result = original(self, *args, **kwargs)
    if get_all_layer_prefix(self) is not None:
        bound = inspect.signature(original).bind(self, *args, **kwargs)
        bound.apply_defaults()
        if bound.arguments["is_main_process"]:
            _save_extra(self, str(bound.arguments["save_directory"]), bound.arguments["selected_adapters"])
    return result


def _load_adapter(original, self, *args, **kwargs):
    bound = inspect.signature(original).bind(self, *args, **kwargs)
    bound.apply_defaults()
    model_id, adapter_name = bound.arguments["model_id"], bound.arguments["adapter_name"]
    hub_kwargs = dict(bound.arguments["kwargs"])
    subfolder = hub_kwargs.pop("subfolder", None)
    try:
        config = json.loads(Path(get_model_file(model_id, ADAPTER_CONFIG_FILE, subfolder, **hub_kwargs)).read_text())
    except (OSError, ValueError):
        config = {}  # peft raises its own error about it
    scope = config.get(ADAPTER_CONFIG_KEY, "decoder") if config.get("peft_type") == PeftType.PREFIX_TUNING else None
    if scope is not None:
        _check_load(self, scope, model_id, adapter_name)
    result = original(self, *args, **kwargs)
    if scope == "all":
        _load_extra(self, model_id, subfolder, bound.arguments["is_trainable"], hub_kwargs)
    return result


def _check_kwargs(original, cls, **kwargs):
    """peft's hook on a loaded adapter_config.json: take out our key, which load_adapter reads and restores itself
    (peft would otherwise warn that it is ignored)."""
    kwargs = original(cls, **kwargs)
    if kwargs.get("peft_type") == PeftType.PREFIX_TUNING:
        kwargs.pop(ADAPTER_CONFIG_KEY, None)
    return kwargs


SAVE = patching.register(
    patching.Patch(
        name="all_layer_prefix.save",
        kind="feature",
        upstream=f"{_PLAIN_PEFT}: PeftModel.save_pretrained writes neither {WEIGHTS_NAME} nor the scope.",
        test="tests/test_prefix_scope.py::test_plain_peft_save_drops_the_added_prefixes",
        replacements=[(PeftModel, "save_pretrained", patching.calling(_save_pretrained))],
    )
)

LOAD = patching.register(
    patching.Patch(
        name="all_layer_prefix.load",
        kind="feature",
        upstream=f"{_PLAIN_PEFT}: PeftModel.load_adapter (so from_pretrained) ignores {WEIGHTS_NAME}.",
        test=_NECESSITY_TEST,
        replacements=[(PeftModel, "load_adapter", patching.calling(_load_adapter))],
    )
)


def _classmethod_calling(function):
    """:func:`patching.calling` for a classmethod."""
    return lambda original, patch: classmethod(patching.calling(function)(original.__func__, patch))


_CONFIG_CLASS = next(klass for klass in PeftConfig.__mro__ if "check_kwargs" in klass.__dict__)
CONFIG_KEY = patching.register(
    patching.Patch(
        name="all_layer_prefix.config_key",
        kind="feature",
        upstream=(
            f"{_PLAIN_PEFT}: {_CONFIG_CLASS.__name__}.check_kwargs warns that the `{ADAPTER_CONFIG_KEY}` key it does "
            "not know is ignored; LOAD reads that key itself."
        ),
        test=_NECESSITY_TEST,
        replacements=[(_CONFIG_CLASS, "check_kwargs", _classmethod_calling(_check_kwargs))],
    )
)


def disabled():
    """Context manager that removes the save/load patches: behaves as plain peft does (for tests)."""
    return patching.disabled(SAVE.name, LOAD.name, CONFIG_KEY.name)
