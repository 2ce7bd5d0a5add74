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
Two patches in the registry of :mod:`prefix_tuning_utils.patching` (applied when ``prefix_tuning_utils`` is
imported), on peft's ``PeftModelForSeq2SeqLM`` and ``PeftModelForCausalLM``, acting only for ``PREFIX_TUNING``
adapters:

* ``compat.generation_prefix`` wraps ``prepare_inputs_for_generation``: hands the prefix to the model under the
  keyword its ``forward`` accepts, on every step that has no cache yet (the first step, or every step with
  ``use_cache=False``), and keeps the attention mask of causal models in step with it. For causal models it also
  shifts the position ids that ``generate()`` derives from the attention mask by ``num_virtual_tokens``: in training
  (peft's ``forward``) the real tokens come after the prefix, so generation must number them the same way.
  Canary: ``tests/test_generation_uses_prefix.py::test_upstream_generate_still_broken``. The same wrapper makes
  prompt tuning on decoder-only models generate right: peft looks for the cache under ``past_key_values``, finds
  none on any step and feeds the virtual tokens in again with each written token; the wrapper puts them in on the
  first step only, with the mask and position ids of training. Canary:
  ``tests/test_generation_uses_prefix.py::test_upstream_prompt_tuning_generate_still_broken``.
* ``compat.cache_keyword`` wraps ``forward`` / ``generate`` to install a forward pre-hook on the base model that
  renames ``past_key_values`` to ``cache`` when the model's ``forward`` takes ``cache`` and no longer takes
  ``past_key_values`` (the hook does nothing while the patch is removed). Canary:
  ``tests/test_generation_uses_prefix.py::test_upstream_forward_still_uses_deprecated_keyword``.

On versions where transformers still calls the keyword ``past_key_values`` both are no-ops. A canary that fails
(XPASS) means upstream fixed that bug: retire the patch for those versions.
"""

from __future__ import annotations

import inspect
import logging

import torch
from peft import PeftModelForCausalLM, PeftModelForSeq2SeqLM, PeftType
from transformers import Cache

from . import patching


logger = logging.getLogger(__name__)

__all__ = ["CACHE_KEYWORD", "GENERATION_PREFIX", "disabled"]

_PATCHED_CLASSES = (PeftModelForSeq2SeqLM, PeftModelForCausalLM)
_HOOK_FLAG = "_prefix_tuning_utils_cache_hook"
_VERSIONS = "transformers >= 5.24 with peft 0.21.2"


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
    if not CACHE_KEYWORD.applied:  # the patch is removed (tests): upstream behaviour
        return None
    prefix = kwargs.pop("past_key_values", None)
    if prefix is not None:
        kwargs["cache"] = prefix
    return args, kwargs


def _install_cache_hook(peft_model) -> None:
    base = peft_model.get_base_model()
    if getattr(base, _HOOK_FLAG, False):
        return
    if _cache_keyword(base) == "cache":
        base.register_forward_pre_hook(_rename_cache_kwarg, with_kwargs=True, prepend=True)  # before any user hook
    setattr(base, _HOOK_FLAG, True)


def _is_prefix(peft_model) -> bool:
    return peft_model.active_peft_config.peft_type == PeftType.PREFIX_TUNING


def _is_causal_prompt_tuning(peft_model) -> bool:
    return (
        peft_model.active_peft_config.peft_type == PeftType.PROMPT_TUNING
        and not peft_model.get_base_model().config.is_encoder_decoder
    )


def _prompt_tuning_inputs(self, *args, **kwargs):
    """Prompt tuning on a decoder-only model: the virtual embeddings go in on the first step only, and every step
    gets the mask and position ids of virtual tokens + prompt + written tokens (as in training, where the real
    tokens follow the virtual ones)."""
    base = self.get_base_model()
    key = _cache_keyword(base)
    model_inputs = self.base_model_prepare_inputs_for_generation(*args, **kwargs)
    sequence = args[0] if args else kwargs["input_ids"]  # the prompt and the tokens written so far
    cache = model_inputs.pop("cache", None)
    cache = model_inputs.pop("past_key_values", None) if cache is None else cache
    virtual = self.active_peft_config.num_virtual_tokens
    mask = kwargs.get("attention_mask")
    if mask is None:  # generate() drops a mask of all ones
        mask = sequence.new_ones(sequence.shape)
    full = torch.cat([mask.new_ones(mask.shape[0], virtual), mask], dim=1)
    if cache is None or (isinstance(cache, Cache) and cache.get_seq_length() == 0):
        embeddings = self.word_embeddings(model_inputs["input_ids"])
        prompts = self.get_prompt(batch_size=embeddings.shape[0]).to(embeddings.dtype)
        model_inputs["inputs_embeds"] = torch.cat([prompts[:, :virtual], embeddings], dim=1)
        model_inputs["input_ids"] = None
        current = model_inputs["inputs_embeds"].shape[1]
    else:
        current = model_inputs["input_ids"].shape[1]
    if cache is not None:
        model_inputs[key] = cache
    model_inputs["attention_mask"] = full
    model_inputs["position_ids"] = (full.cumsum(dim=1) - 1).clamp(min=0)[:, -current:]
    return model_inputs


def _prepare_inputs_for_generation(original, self, *args, task_ids=None, **kwargs):
    if _is_causal_prompt_tuning(self):
        return _prompt_tuning_inputs(self, *args, **kwargs)
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


def _with_cache_hook(original, self, *args, **kwargs):
    if _is_prefix(self):
        _install_cache_hook(self)
    return original(self, *args, **kwargs)


GENERATION_PREFIX = patching.register(
    patching.Patch(
        name="compat.generation_prefix",
        kind="bug fix",
        upstream=(
            f"{_VERSIONS}: generate() returns the base model's output. transformers' prepare_inputs_for_generation "
            "puts the generation cache under `cache`, peft adds the prefix under `past_key_values`, and the "
            "deprecated alias keeps `cache` and drops the prefix; with use_cache=False peft injects the prefix on "
            "the first step only (already on transformers 5.23). Prompt tuning on decoder-only models: peft looks for "
            "the cache under `past_key_values`, finds none on every step, and feeds the virtual tokens in again with "
            "every written token, so everything after the first token is wrong (canary: "
            "tests/test_generation_uses_prefix.py::test_upstream_prompt_tuning_generate_still_broken)."
        ),
        test="tests/test_generation_uses_prefix.py::test_upstream_generate_still_broken",
        replacements=[
            (cls, "prepare_inputs_for_generation", patching.calling(_prepare_inputs_for_generation))
            for cls in _PATCHED_CLASSES
        ],
    )
)

CACHE_KEYWORD = patching.register(
    patching.Patch(
        name="compat.cache_keyword",
        kind="bug fix",
        upstream=(
            f"{_VERSIONS}: PeftModel.forward hands the prefix to the base model as `past_key_values`, a keyword "
            "transformers 5.24 renamed to `cache` (a deprecated alias until 5.40): training reaches the prefix "
            "only through the alias."
        ),
        test="tests/test_generation_uses_prefix.py::test_upstream_forward_still_uses_deprecated_keyword",
        replacements=[
            (cls, name, patching.calling(_with_cache_hook))
            for cls in _PATCHED_CLASSES
            for name in ("forward", "generate")
        ],
    )
)


def disabled():
    """Context manager that removes both patches, to compare against upstream behaviour in tests."""
    return patching.disabled(GENERATION_PREFIX.name, CACHE_KEYWORD.name)
