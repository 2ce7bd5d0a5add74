"""Every patch this package makes to upstream code (peft, transformers), in one registry.

A patch replaces attributes (methods) of library classes, and can be undone. Each record says what it replaces and
why, and names the test that tells us whether it is still needed:

* ``kind="bug fix"``: ``upstream`` names the upstream bug it works around (the issue, or the exact behaviour and the
  versions); ``test`` is its *canary*, a strict-xfail test that runs upstream without the patch and expects the
  right behaviour, so it fails (XPASS) the day upstream fixes the bug: then retire the patch for those versions.
* ``kind="feature"``: ``upstream`` says what plain peft lacks; ``test`` shows that plain peft, without the patch,
  falls short (e.g. loses the ``--prefix_scope all`` prefixes).

``tests/test_patching.py`` walks the registry: every record has an upstream reference and a test that exists.

Not patches, and so not here: registrations through transformers' public extension points
(``AttentionInterface.register`` / ``AttentionMaskInterface.register`` in ``all_layer_prefix.attention``), and the
forward hooks and attributes that ``all_layer_prefix.attach`` puts on the one model it is given.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Literal


__all__ = ["PATCHES", "Patch", "apply", "calling", "disabled", "register", "remove"]


@dataclass(eq=False)
class Patch:
    """Attributes of library classes replaced together: ``replacements`` holds (class, name, factory), where
    ``factory(original, patch)`` builds the new attribute from the one it replaces (see :func:`calling`)."""

    name: str
    kind: Literal["bug fix", "feature"]
    upstream: str
    test: str  # "tests/test_x.py::test_name": the canary (bug fix) or the test of plain peft without it (feature)
    replacements: list[tuple[type, str, Callable[[object, Patch], object]]]
    originals: dict[tuple[type, str], object] = field(default_factory=dict, repr=False)

    @property
    def targets(self) -> list[str]:
        return [f"{cls.__module__}.{cls.__qualname__}.{name}" for cls, name, _ in self.replacements]

    @property
    def applied(self) -> bool:
        return bool(self.originals)

    def apply(self) -> None:
        if self.applied:
            return
        for cls, name, factory in self.replacements:
            original = cls.__dict__[name]
            self.originals[(cls, name)] = original
            setattr(cls, name, factory(original, self))

    def remove(self) -> None:
        for (cls, name), original in self.originals.items():
            setattr(cls, name, original)
        self.originals.clear()


PATCHES: dict[str, Patch] = {}


def register(patch: Patch) -> Patch:
    if patch.name in PATCHES:
        raise ValueError(f"A patch named {patch.name!r} is already registered.")
    PATCHES[patch.name] = patch
    return patch


def _selected(names: tuple[str, ...]) -> list[Patch]:
    return [PATCHES[name] for name in names] if names else list(PATCHES.values())


def apply(*names: str) -> None:
    """Apply the named patches (all registered ones when none is named); idempotent."""
    for patch in _selected(names):
        patch.apply()


def remove(*names: str) -> None:
    for patch in _selected(names):
        patch.remove()


@contextlib.contextmanager
def disabled(*names: str) -> Iterator[None]:
    """Within the block the named patches (all when none is named) are undone: upstream as it is (for tests)."""
    undone = [patch for patch in _selected(names) if patch.applied]
    for patch in undone:
        patch.remove()
    try:
        yield
    finally:
        for patch in undone:
            patch.apply()


def calling(function: Callable) -> Callable[[object, Patch], Callable]:
    """A factory for :class:`Patch`: the new method calls ``function(original, *args, **kwargs)`` while the patch is
    applied, and ``original`` once it is removed: a bound method kept from before ``remove()`` then behaves as
    upstream too (peft's ``disable_adapter()`` keeps ``forward`` and ``prepare_inputs_for_generation`` on the
    instance)."""

    def factory(original, patch: Patch):
        @functools.wraps(original)
        def method(*args, **kwargs):
            if not patch.applied:
                return original(*args, **kwargs)
            return function(original, *args, **kwargs)

        return method

    return factory
