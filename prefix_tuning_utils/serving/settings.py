"""What a server is told: :class:`ServeSettings`, the library's own typed settings, checked when built.

The command line (:mod:`.cli`) converts its flags into it; Python callers build it directly
(``create_app(classifier, ServeSettings(max_batch_size=32))``). A refusal is a :class:`SettingsError` naming the
setting, which the command line words as its flag (``--max_batch_size must be at least 1, got 0.``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

from ..errors import SettingsError


__all__ = ["ADAPTER_NAME", "LOG_LEVELS", "ServeSettings", "SettingsError"]

# An adapter's name is a path segment (`POST /adapters/{name}`) and a metrics label: letters, digits, `.`, `_`, `-`.
ADAPTER_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
LOG_LEVELS = ("debug", "info", "warning", "error")
DTYPES = ("float32", "bfloat16", "float16")


@dataclass(frozen=True)
class ServeSettings:
    """How one server loads its adapters, listens, batches and refuses.

    Loading (used by :func:`.server.serve`; :func:`.app.create_app` takes a classifier already loaded):
    `adapters` ``{name: folder or Hub id[@revision]}``, `mode` (score or generate), `dtype`, `device`, `token` and
    `cache_dir` (of the Hub). Listening: `host` (loopback by default), `port` (0: any free port), `api_key` (every
    route but ``/health`` then needs ``Authorization: Bearer <api_key>``). Batching: up to `max_batch_size` rows,
    waiting at most `max_wait_ms` after the first. Limits: `max_inputs_per_request`, `max_chars_per_input`,
    `max_queued_rows` (more waiting rows are refused with 429), `body_timeout_s` (a client that sends its body slower
    is refused with 408) and `graceful_timeout_s` (how long SIGTERM waits for requests in flight).
    """

    adapters: Mapping[str, str] = field(default_factory=dict)
    mode: Literal["score", "generate"] = "score"
    dtype: str | None = None
    device: str | None = None
    token: str | None = field(default=None, repr=False)
    cache_dir: str | None = None
    host: str = "127.0.0.1"
    port: int = 8000
    api_key: str | None = field(default=None, repr=False)
    max_batch_size: int = 64
    max_wait_ms: float = 5.0
    max_inputs_per_request: int = 128
    max_chars_per_input: int = 4096
    max_queued_rows: int = 1024
    body_timeout_s: float = 30.0
    graceful_timeout_s: float = 30.0
    log_level: str = "info"
    access_log: bool = True

    def __post_init__(self):
        for name, source in self.adapters.items():
            if not isinstance(name, str) or not ADAPTER_NAME.match(name):
                raise SettingsError(
                    "adapter",
                    f"name {name!r} is not usable: a name is 1 to 64 letters, digits, `.`, `_` or `-`, starting with a "
                    "letter or digit (it becomes the route /adapters/NAME).",
                )
            if not isinstance(source, str) or not source.strip():
                raise SettingsError("adapter", f"{name!r} has no source: give NAME=FOLDER or NAME=HUB_ID[@REVISION].")
        if self.mode not in ("score", "generate"):
            raise SettingsError("predict_mode", f"must be score or generate, got {self.mode!r}.")
        if self.dtype is not None and self.dtype not in DTYPES:
            raise SettingsError("dtype", f"must be one of {', '.join(DTYPES)}, got {self.dtype!r}.")
        if self.device is not None:
            _check_device(self.device)
        if not isinstance(self.port, int) or not 0 <= self.port <= 65535:
            raise SettingsError("port", f"must be between 0 and 65535 (0: any free port), got {self.port!r}.")
        if not self.host:
            raise SettingsError("host", "is empty: give an address to listen on, e.g. 127.0.0.1 or 0.0.0.0.")
        if self.api_key is not None and not self.api_key.strip():
            raise SettingsError("api_key", "is empty: give a key, or none at all (no authentication).")
        for name in ("max_batch_size", "max_inputs_per_request", "max_chars_per_input", "max_queued_rows"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise SettingsError(name, f"must be a positive integer, got {value!r}.")
        if self.max_queued_rows < self.max_inputs_per_request:
            raise SettingsError(
                "max_queued_rows",
                f"({self.max_queued_rows}) must be at least --max_inputs_per_request ({self.max_inputs_per_request}), "
                "or a request of the largest size allowed could never be queued.",
            )
        for name in ("max_wait_ms", "body_timeout_s", "graceful_timeout_s"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
                raise SettingsError(name, f"must be a number of at least 0, got {value!r}.")
        if self.body_timeout_s == 0:
            raise SettingsError("body_timeout_s", "must be more than 0 seconds.")
        if self.log_level not in LOG_LEVELS:
            raise SettingsError("log_level", f"must be one of {', '.join(LOG_LEVELS)}, got {self.log_level!r}.")

    @property
    def max_request_bytes(self) -> int:
        """The largest request body read: every input at its largest, each character escaped in JSON (``\\uXXXX``:
        6 bytes), with 1 KiB per input and 64 KiB for the rest of the body (adapter names, parameters)."""
        return self.max_inputs_per_request * (6 * self.max_chars_per_input + 1024) + 65536

    @property
    def loopback(self) -> bool:
        return self.host in ("127.0.0.1", "::1", "localhost") or self.host.startswith("127.")


def _check_device(device: str) -> None:
    import torch

    try:
        parsed = torch.device(device)
    except (RuntimeError, ValueError):
        raise SettingsError("device", f"{device!r} is not a device: use cpu, cuda, cuda:1, mps.") from None
    if parsed.type == "cuda" and not torch.cuda.is_available():
        raise SettingsError("device", f"is {device} but no CUDA GPU is visible: use cpu, or leave --device out.")
