"""Prometheus metrics of one server, in a registry of its own (tests and benchmarks build several apps in a process).

Served as text at ``GET /metrics``. Every label takes only values the server chose: route templates, adapter names
that are loaded, error kinds (:data:`.errors.KINDS`), status codes; a name sent by a client never becomes a label.
"""

from __future__ import annotations

from collections import Counter as Tally
from collections.abc import Callable, Sequence

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST


__all__ = ["BASE_MODEL_LABEL", "CONTENT_TYPE_LATEST", "ServeMetrics"]

PREFIX = "prefix_tuning_serve"
BASE_MODEL_LABEL = "(base)"  # the label of rows answered by the base model (adapter null)
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


def _powers_of_two(limit: int) -> tuple[float, ...]:
    """1, 2, 4, ... up to `limit` (and `limit` itself): the buckets of a size histogram."""
    buckets, size = [], 1
    while size < limit:
        buckets.append(float(size))
        size *= 2
    buckets.append(float(limit))
    return tuple(buckets)


class ServeMetrics:
    """The server's metrics (names start with ``prefix_tuning_serve_``):

    * ``requests_total{route, code}``, ``request_seconds{route}``: every HTTP request by route template and status;
    * ``adapter_requests_total{adapter}``, ``rows_total{adapter}``: answering requests naming each adapter (a request
      naming several counts for each) and rows answered by it;
    * ``batch_size`` (rows), ``batch_adapters`` (distinct adapters in a batch), ``batch_seconds`` (the forward),
      ``queue_wait_seconds`` (per row, from arrival to its batch's start), ``batches_total{outcome}``;
    * ``queued_rows``: rows waiting now; ``errors_total{kind}``: refusals and failures by kind.
    """

    def __init__(self, adapter_names: Sequence[str], max_batch_size: int):
        self.registry = CollectorRegistry()
        self.adapter_names = set(adapter_names)
        registry = self.registry
        self.requests = Counter(
            f"{PREFIX}_requests", "HTTP requests by route and status code.", ["route", "code"], registry=registry
        )
        self.request_seconds = Histogram(
            f"{PREFIX}_request_seconds",
            "Time from a request's arrival to its response, by route.",
            ["route"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.adapter_requests = Counter(
            f"{PREFIX}_adapter_requests", "Answering requests naming each adapter.", ["adapter"], registry=registry
        )
        self.rows = Counter(f"{PREFIX}_rows", "Rows answered, by adapter.", ["adapter"], registry=registry)
        self.batch_size = Histogram(
            f"{PREFIX}_batch_size",
            "Rows per batch answered in one forward.",
            buckets=_powers_of_two(max_batch_size),
            registry=registry,
        )
        self.batch_adapters = Histogram(
            f"{PREFIX}_batch_adapters",
            "Distinct adapters (the base model counting as one) in a batch.",
            buckets=_powers_of_two(max(1, min(max_batch_size, len(self.adapter_names) + 1))),
            registry=registry,
        )
        self.batch_seconds = Histogram(
            f"{PREFIX}_batch_seconds", "Time of one batch's forward.", buckets=LATENCY_BUCKETS, registry=registry
        )
        self.queue_wait = Histogram(
            f"{PREFIX}_queue_wait_seconds",
            "Time a row waited from its request's arrival to the start of its batch.",
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.batches = Counter(f"{PREFIX}_batches", "Batches answered, by outcome.", ["outcome"], registry=registry)
        self.errors = Counter(f"{PREFIX}_errors", "Refused or failed requests, by kind.", ["kind"], registry=registry)
        self.queued_rows = Gauge(f"{PREFIX}_queued_rows", "Rows waiting for a batch now.", registry=registry)
        Gauge(f"{PREFIX}_adapters", "Adapters loaded.", registry=registry).set(len(self.adapter_names))
        for name in adapter_names:  # every adapter listed from the start, at 0
            self.adapter_requests.labels(adapter=name)
            self.rows.labels(adapter=name)

    def watch_queue(self, rows: Callable[[], int]) -> None:
        self.queued_rows.set_function(rows)

    def _label(self, adapter: str | None) -> str:
        return BASE_MODEL_LABEL if adapter is None else adapter

    def request(self, route: str, code: int, seconds: float) -> None:
        self.requests.labels(route=route, code=str(code)).inc()
        self.request_seconds.labels(route=route).observe(seconds)

    def named(self, adapters: Sequence[str | None]) -> None:
        """An answering request accepted, naming `adapters` (one per row)."""
        for name in set(adapters):
            self.adapter_requests.labels(adapter=self._label(name)).inc()

    def error(self, kind: str) -> None:
        self.errors.labels(kind=kind).inc()

    def batch(self, adapters: Sequence[str | None], waits: Sequence[float], seconds: float, ok: bool) -> None:
        """One batch: its rows' adapters, each row's wait in the queue, the forward's time and its outcome."""
        self.batch_size.observe(len(adapters))
        self.batch_adapters.observe(len(set(adapters)))
        self.batch_seconds.observe(seconds)
        for wait in waits:
            self.queue_wait.observe(wait)
        self.batches.labels(outcome="ok" if ok else "failed").inc()
        if ok:
            for name, count in Tally(adapters).items():
                self.rows.labels(adapter=self._label(name)).inc(count)

    def render(self) -> bytes:
        return generate_latest(self.registry)
