"""Dynamic batching: the rows of requests that arrive together, for any adapters, answered in one forward.

A request hands its rows (texts, and one adapter name per text) to :meth:`DynamicBatcher.submit` and awaits its
answers. One task on the event loop gathers rows into a batch: it waits at most `max_wait_ms` after the oldest
waiting row arrived, or until `max_batch_size` rows wait, then hands the batch to the answer function in a worker
thread of its own (torch releases the GIL, so the event loop keeps taking requests meanwhile) and gives each request
its answers, in its own order. The next batch is gathered while one runs and starts as soon as it is done.

* A request of more rows than a batch holds is split across batches. Batches take rows from the waiting requests in
  turn (one row of each, then a second of each, ...), so a large request cannot hold back the small ones behind it
  by more than one batch.
* A batch that fails (the answer function raises) fails only the requests with rows in it; the batcher goes on.
* A failure of the metrics observer is logged; the batch's requests are answered all the same.
* A request given up by its caller (the client hung up, the task was cancelled) loses its rows that are not in a
  batch yet; the other rows of a batch it was in are answered as usual.
* :meth:`close` refuses new requests, answers every waiting row, then stops the worker.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Protocol

from ..errors import BatchFailedError, ServeError


logger = logging.getLogger(__name__)

__all__ = ["AnswerFunction", "BatchFailedError", "DynamicBatcher"]

# (texts, one adapter name or None per text) -> one answer per text: the labels best first, as
# `PrefixClassifier.answer_batch` gives them.
AnswerFunction = Callable[[list[str], list[str | None]], list[list[dict]]]


class BatchObserver(Protocol):
    def batch(self, adapters: Sequence[str | None], waits: Sequence[float], seconds: float, ok: bool) -> None: ...


@dataclass(eq=False)
class _Job:
    """One request's rows: handed to batches `taken` at a time, answered `answered` at a time."""

    texts: list[str]
    adapters: list[str | None]
    future: asyncio.Future
    arrived: float
    results: list = field(default_factory=list)
    taken: int = 0
    answered: int = 0

    def __post_init__(self):
        self.results = [None] * len(self.texts)

    @property
    def waiting(self) -> int:
        return len(self.texts) - self.taken


class DynamicBatcher:
    """Gathers rows into batches for `answer` (module docstring). Create it anywhere; it starts on the event loop of
    the first :meth:`submit`."""

    def __init__(
        self,
        answer: AnswerFunction,
        max_batch_size: int = 64,
        max_wait_ms: float = 5.0,
        max_queued_rows: int = 1024,
        observer: BatchObserver | None = None,
    ):
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size must be at least 1, got {max_batch_size}.")
        self.answer = answer
        self.max_batch_size = max_batch_size
        self.max_wait = max_wait_ms / 1000
        self.max_queued_rows = max_queued_rows
        self.observer = observer
        self._jobs: deque[_Job] = deque()  # requests with rows not yet in a batch, oldest first
        self._queued = 0  # their rows
        self._arrived: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._closing = False

    @property
    def queued_rows(self) -> int:
        return self._queued

    @property
    def closing(self) -> bool:
        return self._closing

    # --- requests -------------------------------------------------------------------------------------------------

    def enqueue(self, texts: list[str], adapters: list[str | None]) -> asyncio.Future:
        """Queue one request's rows; the returned future gives their answers in order. Cancelling it gives the
        request up. Raises :class:`ServeError` when shutting down or when the queue is full."""
        if not texts or len(adapters) != len(texts):
            raise ValueError(f"A request needs one adapter per text, and texts: got {len(adapters)} for {len(texts)}.")
        if self._closing:
            raise ServeError("shutting_down", "The server is shutting down and takes no new requests.")
        self._start()
        if self._task.done():  # never expected: the loop catches everything; refuse rather than hang
            raise ServeError("backend", "The batching worker has stopped; restart the server.", status=503)
        if self._queued + len(texts) > self.max_queued_rows:
            raise ServeError(
                "overloaded",
                f"The server is overloaded: {self._queued} rows are waiting (at most {self.max_queued_rows}). "
                "Retry later, or send fewer inputs per request.",
            )
        loop = asyncio.get_running_loop()
        job = _Job(list(texts), list(adapters), loop.create_future(), time.monotonic())
        self._jobs.append(job)
        self._queued += len(texts)
        self._arrived.set()
        return job.future

    async def submit(self, texts: list[str], adapters: list[str | None]) -> list[list[dict]]:
        """Answer one request's rows; raises :class:`BatchFailedError` when a batch holding them failed."""
        return await self.enqueue(texts, adapters)

    # --- the worker -----------------------------------------------------------------------------------------------

    def _start(self) -> None:
        if self._task is None:
            self._arrived = asyncio.Event()
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="prefix-tuning-batch")
            self._task = asyncio.get_running_loop().create_task(self._run(), name="prefix-tuning-batcher")

    async def _run(self) -> None:
        while True:
            try:
                if not await self._step():
                    return
            except Exception as err:  # noqa: BLE001 - a fault here must neither strand requests nor stop the worker
                logger.exception("The batcher failed; the requests waiting are answered with an error.")
                for job in list(self._jobs):
                    if not job.future.done():
                        job.future.set_exception(BatchFailedError(f"the batcher failed: {type(err).__name__}: {err}"))
                self._drop_given_up()

    async def _step(self) -> bool:
        """Answer one batch (or wait for rows); False when closed and nothing is left."""
        self._drop_given_up()
        if not self._jobs:
            if self._closing:
                return False
            self._arrived.clear()
            await self._arrived.wait()
            return True
        await self._gather()
        batch = self._take()
        if batch:
            await self._answer_batch(batch)
        return True

    async def _gather(self) -> None:
        """Wait until a batch is full, or `max_wait` after the oldest waiting row arrived (or the batcher closes)."""
        deadline = self._jobs[0].arrived + self.max_wait
        while self._queued < self.max_batch_size and not self._closing:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            self._arrived.clear()
            try:
                await asyncio.wait_for(self._arrived.wait(), remaining)
            except TimeoutError:
                return

    def _drop_given_up(self) -> None:
        for job in [job for job in self._jobs if job.future.done()]:
            self._jobs.remove(job)
            self._queued -= job.waiting

    def _take(self) -> list[tuple[_Job, int]]:
        """Up to `max_batch_size` rows, one from each waiting request in turn, oldest request first."""
        self._drop_given_up()
        batch: list[tuple[_Job, int]] = []
        while self._jobs and len(batch) < self.max_batch_size:
            for job in list(self._jobs):
                batch.append((job, job.taken))
                job.taken += 1
                self._queued -= 1
                if not job.waiting:
                    self._jobs.remove(job)
                if len(batch) == self.max_batch_size:
                    break
        return batch

    async def _answer_batch(self, batch: list[tuple[_Job, int]]) -> None:
        texts = [job.texts[index] for job, index in batch]
        adapters = [job.adapters[index] for job, index in batch]
        started = time.monotonic()
        waits = [started - job.arrived for job, _ in batch]
        jobs = list(dict.fromkeys(job for job, _ in batch))
        try:
            loop = asyncio.get_running_loop()
            answers = await loop.run_in_executor(self._executor, self.answer, texts, adapters)
            if len(answers) != len(texts):
                raise RuntimeError(f"the answer function gave {len(answers)} answers for {len(texts)} rows")
        except Exception as err:  # noqa: BLE001 - a failed batch fails its requests, never the server
            logger.exception("A batch of %d rows (%d requests) failed.", len(texts), len(jobs))
            for job in jobs:
                if not job.future.done():
                    failure = BatchFailedError(f"the batch holding this request failed: {type(err).__name__}: {err}")
                    failure.__cause__ = err
                    job.future.set_exception(failure)
            self._observe(adapters, waits, started, ok=False)
            return
        self._observe(adapters, waits, started, ok=True)
        for (job, index), answer in zip(batch, answers):
            if job.future.done():  # given up meanwhile, or failed in another batch
                continue
            job.results[index] = answer
            job.answered += 1
            if job.answered == len(job.texts):
                job.future.set_result(job.results)

    def _observe(self, adapters, waits, started: float, ok: bool) -> None:
        if self.observer is None:
            return
        try:
            self.observer.batch(adapters, waits, time.monotonic() - started, ok)
        except Exception:  # noqa: BLE001 - metrics must never cost a request its answer
            logger.exception("Recording a batch's metrics failed; its requests are answered as usual.")

    # --- shutting down --------------------------------------------------------------------------------------------

    async def close(self) -> None:
        """Refuse new requests, answer every row already queued, then stop the worker."""
        self._closing = True
        if self._task is None:
            return
        self._arrived.set()
        await self._task
        self._executor.shutdown(wait=True)
