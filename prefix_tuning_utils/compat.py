"""Compatibility layer: make peft prefix tuning *really* use the prefix on current transformers.

Why this exists
---------------
transformers 5.24 renamed the model keyword that carries the key/value cache from ``past_key_values`` to
``cache`` (the old name is a deprecated alias until 5.40). peft 0.21.2 still hands the prefix to the model as
``past_key_values``:

* in ``generate()``, transformers' ``prepare_inputs_for_generation`` already puts the (empty) generation cache
  under ``cache``; peft adds the prefix under ``past_key_values``; the alias sees both and drops the prefix. The
  output is the base model's, silently (seq2seq and causal LM alike). ``Seq2SeqTrainer`` evaluation with
  ``predict_with_generate`` is therefore silently wrong too.
* with ``use_cache=False`` peft injects the prefix only on the first generation step (already wrong on 5.23).
* in training, the prefix reaches the model only through the deprecated alias, so it would silently vanish
  the day the alias is removed.

What it does
------------
``apply()`` (called once when ``prefix_tuning_utils`` is imported) wraps three methods of peft's
``PeftModelForSeq2SeqLM`` and ``PeftModelForCausalLM``, and only acts for ``PREFIX_TUNING`` adapters:

* ``prepare_inputs_for_generation``: hands the prefix to the model under the keyword its ``forward`` accepts,
  on every step that has no cache yet (the first step, or every step with ``use_cache=False``), and keeps the
  attention mask of causal models in step with it. For causal models it also shifts the position ids that
  ``generate()`` derives from the attention mask by ``num_virtual_tokens``: in training (peft's ``forward``) the
  real tokens come after the prefix, so generation must number them the same way.
* ``forward`` / ``generate``: install a forward pre-hook on the base model that renames ``past_key_values`` to
  ``cache`` when the model's ``forward`` takes ``cache`` and no longer takes ``past_key_values``.

On versions where transformers still calls the keyword ``past_key_values`` the renaming is a no-op. The test
``tests/test_generation_uses_prefix.py::test_upstream_generate_still_broken`` fails the day upstream fixes the
bug, telling us this layer can be retired for those versions.
"""

from __future__ import annotations

import functools
import inspect
import logging

import torch
from peft import PeftModelForCausalLM, PeftModelForSeq2SeqLM, PeftType
from transformers import Cache

from .patching import MethodPatches


logger = logging.getLogger(__name__)

__all__ = ["apply", "is_applied", "disabled"]

_PATCHED_CLASSES = (PeftModelForSeq2SeqLM, PeftModelForCausalLM)
_PATCHES = MethodPatches()
_ORIGINALS = _PATCHES.originals  # (class, name) -> the method replaced
_HOOK_FLAG = "_prefix_tuning_utils_cache_hook"


def _forward_parameters(model: torch.nn.Module) -> set[str]:
    return set(inspect.signature(model.forward).parameters)


def _cache_keyword(model: torch.nn.Module) -> str:
    """The keyword under which ``model.forward`` takes its key/value cache."""
    params = _forward_parameters(model)
    if "past_key_values" in params:
        return "past_key_values"
    if "cache" in params:
        return "cache"
    raise RuntimeError(
        f"{type(model).__name__}.forward takes neither `cache` nor `past_key_values`: this transformers version "
        "is not supported by prefix_tuning_utils.compat. Pin the transformers version given in setup.cfg."
    )


def _rename_cache_kwarg(module, args, kwargs):
    """Forward pre-hook: move a prefix given as ``past_key_values`` to ``cache`` for models that take ``cache``."""
    prefix = kwargs.pop("past_key_values", None)
    if prefix is not None:
        kwargs["cache"] = prefix
    return args, kwargs


def _install_cache_hook(peft_model) -> None:
    base = peft_model.get_base_model()
    if getattr(base, _HOOK_FLAG, False):
        return
    if _cache_keyword(base) == "cache":
        base.register_forward_pre_hook(_rename_cache_kwarg, with_kwargs=True)
    setattr(base, _HOOK_FLAG, True)


def _is_prefix(peft_model) -> bool:
    return peft_model.active_peft_config.peft_type == PeftType.PREFIX_TUNING


def _prepare_inputs_for_generation(self, *args, task_ids=None, **kwargs):
    original = _ORIGINALS[(type(self).__mro__[_mro_index(type(self))], "prepare_inputs_for_generation")]
    if not _is_prefix(self):
        return original(self, *args, task_ids=task_ids, **kwargs)
    base = self.get_base_model()
    key = _cache_keyword(base)
    model_inputs = self.base_model_prepare_inputs_for_generation(*args, **kwargs)
    cache = model_inputs.pop("cache", None)
    cache = model_inputs.pop("past_key_values", None) if cache is None else cache
    is_encoder_decoder = base.config.is_encoder_decoder
    ids = model_inputs["decoder_input_ids" if is_encoder_decoder else "input_ids"]
    if ids is None:  # decoder-only prompt given as embeddings
        ids = model_inputs["inputs_embeds"]
    use_cache = model_inputs.get("use_cache", kwargs.get("use_cache"))
    if use_cache is False or cache is None or (isinstance(cache, Cache) and cache.get_seq_length() == 0):
        # No key/values yet (first step), or none kept (use_cache=False: the model still hands back the cache we
        # gave it, and generate() would feed it in again next to the full sequence): the prefix *is* the cache.
        cache = self.get_prompt(ids.shape[0])
    model_inputs[key] = cache
    if not is_encoder_decoder:
        num_virtual = self.active_peft_config.num_virtual_tokens
        mask = model_inputs.get("attention_mask")
        if mask is not None and mask.dim() == 2:
            model_inputs["attention_mask"] = torch.cat([mask.new_ones(mask.shape[0], num_virtual), mask], dim=1)
        # In training (peft's forward) the real tokens sit after the prefix: positions start at num_virtual_tokens.
        # generate() counts positions from the attention mask, from 0; shift them to match training.
        if model_inputs.get("position_ids") is not None:
            model_inputs["position_ids"] = model_inputs["position_ids"] + num_virtual
    return model_inputs


def _mro_index(cls: type) -> int:
    for i, klass in enumerate(cls.__mro__):
        if klass in _PATCHED_CLASSES:
            return i
    raise TypeError(f"{cls.__name__} is not a patched peft class")


def _with_cache_hook(name: str):
    def wrapper(self, *args, **kwargs):
        original = _ORIGINALS[(type(self).__mro__[_mro_index(type(self))], name)]
        if _is_prefix(self):
            _install_cache_hook(self)
        return original(self, *args, **kwargs)

    wrapper.__name__ = name
    return wrapper


def is_applied() -> bool:
    return bool(_ORIGINALS)


def apply() -> None:
    """Patch peft's seq2seq and causal-LM model classes (idempotent)."""
    if _ORIGINALS:
        return
    for cls in _PATCHED_CLASSES:
        for name, replacement in (
            ("prepare_inputs_for_generation", _prepare_inputs_for_generation),
            ("forward", _with_cache_hook("forward")),
            ("generate", _with_cache_hook("generate")),
        ):
            original = cls.__dict__[name]
            _ORIGINALS[(cls, name)] = original
            setattr(cls, name, functools.wraps(original)(replacement))


def _remove() -> None:
    _PATCHES.remove()


def disabled():
    """Context manager that removes the patch, to compare against upstream behaviour in tests."""
    return _PATCHES.disabled(apply)
