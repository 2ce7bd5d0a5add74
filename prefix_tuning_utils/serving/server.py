"""Run a server: bind the socket, load the adapters, serve with uvicorn until SIGTERM (or Ctrl-C), then exit 0.

The socket is bound before anything is loaded, so that a port in use is refused at once, in one line; ``--port 0``
takes any free port, and the log says which (``Serving ... on http://HOST:PORT``).

SIGTERM (or SIGINT) stops the server gracefully, through uvicorn: it stops accepting connections, closes the idle
ones, waits for every request in flight to be answered (at most `graceful_timeout_s`), then runs the app's shutdown,
where the batcher answers whatever is still queued and stops. uvicorn then raises the signal again so that the
default action ends the process; a handler that ignores it, installed just for that moment, lets ``serve`` return
and the process exit 0.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import socket

import uvicorn

from ..arguments import ArgumentError
from .app import create_app
from .batching import AnswerFunction
from .settings import ServeSettings


logger = logging.getLogger(__name__)

__all__ = ["bind", "load_classifier", "serve"]


def bind(settings: ServeSettings) -> socket.socket:
    """A listening TCP socket on `settings.host`:`settings.port`; one line naming the problem when it cannot be."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(settings.host, settings.port, type=socket.SOCK_STREAM)[0]
        sock = socket.socket(family, kind, proto)
    except OSError as err:
        raise ArgumentError(f"--host {settings.host} is no address to listen on: {err.strerror or err}.") from None
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(2048)
    except OSError as err:
        sock.close()
        raise ArgumentError(
            f"Cannot listen on {settings.host}:{settings.port}: {err.strerror or err}. Choose another --port (0: any "
            "free one) or --host."
        ) from None
    sock.set_inheritable(True)
    return sock


def load_classifier(settings: ServeSettings):
    """The adapters of `settings`, loaded on one base model (``PrefixClassifier.from_pretrained``)."""
    import torch

    from ..classifier import PrefixClassifier

    try:
        return PrefixClassifier.from_pretrained(
            dict(settings.adapters),
            mode=settings.mode,
            device=settings.device,
            dtype=getattr(torch, settings.dtype) if settings.dtype else None,
            batch_size=settings.max_batch_size,
            token=settings.token,
            cache_dir=settings.cache_dir,
        )
    except ArgumentError:
        raise
    except ValueError as err:  # the API's own refusals: the same one line
        raise ArgumentError(str(err)) from None


def serve(settings: ServeSettings, classifier=None, answer: AnswerFunction | None = None) -> None:
    """Serve `settings.adapters` (or `classifier`, already loaded) until SIGTERM or SIGINT; returns when stopped.
    `answer`: what answers a batch, as in :func:`.app.create_app` (default: the classifier)."""
    sock = bind(settings)
    try:
        host, port = sock.getsockname()[:2]
        if not settings.loopback and settings.api_key is None:
            logger.warning(
                "Listening on %s without an API key: anyone who can reach this port can use the server. Set "
                "PREFIX_TUNING_API_KEY (or --api_key), or listen on 127.0.0.1 behind a proxy.",
                host,
            )
        if classifier is None:
            logger.info("Loading %d adapter(s): %s", len(settings.adapters), ", ".join(settings.adapters))
            classifier = load_classifier(settings)
        app = create_app(classifier, settings, answer=answer)
        config = uvicorn.Config(
            app,
            log_config=None,  # uvicorn's loggers propagate to ours (stdout)
            log_level=settings.log_level,
            access_log=settings.access_log,
            timeout_graceful_shutdown=settings.graceful_timeout_s,
            lifespan="on",
        )
        server = _Server(config, f"http://{_url_host(host)}:{port}", classifier)
        with _signals_end_quietly():
            server.run(sockets=[sock])
        logger.info("Stopped.")
    finally:
        sock.close()


class _Server(uvicorn.Server):
    """uvicorn's Server, logging one line once it accepts requests."""

    def __init__(self, config: uvicorn.Config, url: str, classifier):
        super().__init__(config)
        self.url, self.classifier = url, classifier

    async def startup(self, sockets=None):
        await super().startup(sockets=sockets)
        if not self.should_exit:
            classifier = self.classifier
            logger.info(
                "Serving %s (%s, %s mode) on %s (docs: %s/docs)",
                ", ".join(classifier.adapter_names), classifier.task, classifier.mode, self.url, self.url,
            )  # fmt: skip


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


@contextlib.contextmanager
def _signals_end_quietly():
    """While uvicorn runs it owns SIGTERM and SIGINT; once it has stopped gracefully it raises the signal again,
    which must then not kill the process (module docstring)."""
    handled = (signal.SIGTERM, signal.SIGINT)
    previous = {sig: signal.signal(sig, lambda *_: None) for sig in handled}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
