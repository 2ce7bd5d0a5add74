"""Methods of library classes that this package replaces, kept so that each replacement can be undone."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator


__all__ = ["MethodPatches"]


class MethodPatches:
    """The original methods a module replaced, by (class, name): `remove()` puts them back, `disabled()` for a block."""

    def __init__(self) -> None:
        self.originals: dict[tuple[type, str], object] = {}

    def remove(self) -> None:
        for (cls, name), original in self.originals.items():
            setattr(cls, name, original)
        self.originals.clear()

    @contextlib.contextmanager
    def disabled(self, apply: Callable[[], None]) -> Iterator[None]:
        """Within the block the library behaves as it does without this package (for tests); `apply` re-patches."""
        was_applied = bool(self.originals)
        self.remove()
        try:
            yield
        finally:
            if was_applied:
                apply()
