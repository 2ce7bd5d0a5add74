"""What every HTTP request passes before a route sees it: the API key, the body's size and pace, and its metrics.

:class:`RequestGuard` is plain ASGI middleware (no request object, no task per request):

* the API key: with one, every path but the open ones (``/health``) needs ``Authorization: Bearer <key>``,
  compared in constant time (``hmac.compare_digest``); otherwise 401, before the body is read;
* the body: refused with 413 when its ``Content-Length``, or the bytes that arrive, pass ``max_body_bytes``; with
  408 when it has not arrived after ``body_timeout_s`` (a client that sends half a body and hangs holds nothing
  for long); a client that hangs up while sending is dropped. The body read is handed on to the route as it came;
* the metrics: every request is counted by route template and status code, and timed.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import time

from starlette.routing import Match

from .errors import KINDS, error_body
from .metrics import ServeMetrics


logger = logging.getLogger(__name__)

__all__ = ["RequestGuard"]

BODY_METHODS = {"POST", "PUT", "PATCH"}


class RequestGuard:
    def __init__(
        self,
        app,
        *,
        metrics: ServeMetrics,
        routes,
        api_key: str | None,
        max_body_bytes: int,
        body_timeout_s: float,
        open_paths: tuple[str, ...] = ("/health",),
    ):
        self.app, self.metrics, self.routes = app, metrics, routes
        self.expected = None if api_key is None else api_key.encode()
        self.max_body_bytes, self.body_timeout_s, self.open_paths = max_body_bytes, body_timeout_s, open_paths

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.monotonic()
        status = None

        async def send_status(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self._guarded(scope, receive, send_status)
        finally:
            code = status if status is not None else KINDS["disconnected"]
            self.metrics.request(self._route(scope), code, time.monotonic() - started)

    def _route(self, scope) -> str:
        """The route template of the request ("/adapters/{name}"), never its raw path; "unmatched" for none."""
        route = scope.get("route")
        if route is None:  # refused before routing: find the route it was meant for
            route = next((r for r in self.routes if r.matches(scope)[0] != Match.NONE), None)
        return getattr(route, "path", None) or "unmatched"

    async def _guarded(self, scope, receive, send):
        if self.expected is not None and scope["path"] not in self.open_paths and not self._authorized(scope):
            await self._refuse(
                send,
                "unauthorized",
                "Missing or wrong API key: send the header `Authorization: Bearer <key>`.",
                [(b"www-authenticate", b"Bearer")],
            )
            return
        if scope["method"] not in BODY_METHODS:
            await self.app(scope, receive, send)
            return
        length = _content_length(scope)
        if length is not None and length > self.max_body_bytes:
            await self._refuse(send, "too_large", self._too_large(length))
            return
        chunks, size = [], 0
        try:
            async with asyncio.timeout(self.body_timeout_s):
                while True:
                    message = await receive()
                    if message["type"] == "http.disconnect":
                        self.metrics.error("disconnected")
                        return
                    chunk = message.get("body", b"")
                    size += len(chunk)
                    if size > self.max_body_bytes:
                        await self._refuse(send, "too_large", self._too_large(size, at_least=True))
                        return
                    chunks.append(chunk)
                    if not message.get("more_body", False):
                        break
        except TimeoutError:
            await self._refuse(
                send, "body_timeout", f"The request body did not arrive within {self.body_timeout_s:g} s."
            )
            return
        body = b"".join(chunks)
        handed = False

        async def replay():
            nonlocal handed
            if not handed:
                handed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()  # after the body: http.disconnect when the client hangs up

        await self.app(scope, replay, send)

    def _authorized(self, scope) -> bool:
        for name, value in scope["headers"]:
            if name == b"authorization":
                scheme, _, token = value.partition(b" ")
                return scheme.lower() == b"bearer" and hmac.compare_digest(token.strip(), self.expected)
        return False

    def _too_large(self, size: int, at_least: bool = False) -> str:
        return (
            f"The request body has {'more than ' if at_least else ''}{size} bytes; this server reads at most "
            f"{self.max_body_bytes} (--max_inputs_per_request x --max_chars_per_input): send fewer or shorter inputs."
        )

    async def _refuse(self, send, kind: str, message: str, headers: list | None = None) -> None:
        self.metrics.error(kind)
        body = error_body(kind, message)
        head = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        if kind in ("too_large", "body_timeout"):
            head.append((b"connection", b"close"))  # the rest of the body is not read
        await send({"type": "http.response.start", "status": KINDS[kind], "headers": head + (headers or [])})
        await send({"type": "http.response.body", "body": body})


def _content_length(scope) -> int | None:
    for name, value in scope["headers"]:
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None
