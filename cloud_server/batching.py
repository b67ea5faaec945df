"""Micro-batching: concurrent strategy calls share one engine forward pass."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass

from chord.strategy import StrategyRequest, StrategyResult
from cloud_server.engine import BatchOutcome, Engine
from cloud_server.errors import (
    EngineError,
    ModelNotReadyError,
    RequestExpiredError,
    ServiceError,
)

__all__ = ["Dispatcher", "MicroBatcher", "make_dispatcher"]


@dataclass
class _Pending:
    """One queued request and the future its caller awaits."""

    request: StrategyRequest
    deadline: float | None  # absolute, on the event loop's clock
    enqueued: float  # time.perf_counter() at submit
    future: asyncio.Future[StrategyResult]


def _with_timings(
    result: StrategyResult, enqueued: float, started: float, batch: int, worker: int
) -> StrategyResult:
    """The engine's result plus queue/total time, the batch it shared and the worker index."""
    now = time.perf_counter()
    timings = dict(result.timings)
    timings.update(
        queue_ms=(started - enqueued) * 1e3,
        total_ms=(now - enqueued) * 1e3,
        batch_size=float(batch),
        worker=float(worker),
    )
    timings.setdefault("model_ms", 0.0)
    return dataclasses.replace(result, timings=timings)


def _engine_failure(exc: BaseException, n: int) -> EngineError:
    """The error every caller of a failed batch receives."""
    return EngineError(
        f"strategy engine failed on a batch of {n}: {type(exc).__name__}: {exc}; "
        "retry later, and report it if it persists"
    )


class Dispatcher:
    """Runs requests on an engine, one at a time (max_batch=1: unbatched)."""

    def __init__(
        self,
        engine: Engine,
        executor: concurrent.futures.Executor | None = None,
        on_batch: Callable[[int], None] | None = None,
        on_dropped: Callable[[str], None] | None = None,
        worker: int = 0,
    ) -> None:
        """Engine work runs in executor (one worker thread by default) unless engine.inline.

        worker: index of this server process under `chord serve --workers N` (0 alone).
        """
        self.engine = engine
        self.worker = worker
        self._own_executor = executor is None
        self.executor = executor or concurrent.futures.ThreadPoolExecutor(1, "chord-engine")
        self._on_batch = on_batch or (lambda n: None)
        self._on_dropped = on_dropped or (lambda reason: None)
        self._closed = False

    async def start(self) -> None:
        """Nothing to start for direct dispatch."""

    async def stop(self) -> None:
        """Refuse new work and release the executor."""
        self._closed = True
        if self._own_executor:
            self.executor.shutdown(wait=False, cancel_futures=True)

    async def _run(self, requests: list[StrategyRequest]) -> BatchOutcome:
        """engine.compute, in the executor unless the engine is inline."""
        self._on_batch(len(requests))
        if self.engine.inline:
            return self.engine.compute(requests)
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.executor, self.engine.compute, requests)

    def _expired(self, deadline: float | None, now: float) -> bool:
        """True (and counted) when the deadline has passed."""
        if deadline is not None and deadline <= now:
            self._on_dropped("expired")
            return True
        return False

    async def submit(
        self, request: StrategyRequest, deadline: float | None = None
    ) -> StrategyResult:
        """The request's result; raises a ServiceError subclass when it cannot be served."""
        if self._closed:
            raise ModelNotReadyError("the server is shutting down; retry against another replica")
        enqueued = time.perf_counter()
        if self._expired(deadline, asyncio.get_running_loop().time()):
            raise RequestExpiredError(
                "the deadline passed before the model ran; send a longer deadline"
            )
        try:
            outcome = (await self._run([request]))[0]
        except Exception as exc:
            raise _engine_failure(exc, 1) from exc
        if isinstance(outcome, ServiceError):
            raise outcome
        return _with_timings(outcome, enqueued, enqueued, 1, self.worker)


def _resolve(waiter: asyncio.Future[None]) -> None:
    """End a wait of MicroBatcher._collect (once; later calls do nothing)."""
    if not waiter.done():
        waiter.set_result(None)


class MicroBatcher(Dispatcher):
    """Collects up to max_batch requests, or waits at most max_wait_ms after the first."""

    def __init__(
        self,
        engine: Engine,
        max_batch: int,
        max_wait_ms: float,
        executor: concurrent.futures.Executor | None = None,
        on_batch: Callable[[int], None] | None = None,
        on_dropped: Callable[[str], None] | None = None,
        worker: int = 0,
    ) -> None:
        """max_batch >= 1 requests per forward pass; max_wait_ms >= 0 after the first arrives."""
        super().__init__(engine, executor, on_batch, on_dropped, worker)
        if max_batch < 1 or max_wait_ms < 0:
            raise ValueError(
                f"max_batch={max_batch}, max_wait_ms={max_wait_ms}; send max_batch >= 1 and "
                "max_wait_ms >= 0"
            )
        self.max_batch = max_batch
        self.max_wait_s = max_wait_ms / 1e3
        self._queue: asyncio.Queue[_Pending] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None
        self._current: list[_Pending] = []  # the batch being collected or computed
        self._filled: asyncio.Future[None] | None = None  # the collector's wait, while it waits
        self._needed = 0  # queued requests that fill the batch being collected

    async def start(self) -> None:
        """Start the batcher task on the running loop."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._loop(), name="chord-batcher")

    async def stop(self) -> None:
        """Stop the batcher; callers still queued, batched or computing get UNAVAILABLE."""
        self._closed = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        left = [*self._current, *(self._queue.get_nowait() for _ in range(self._queue.qsize()))]
        self._current = []
        for p in left:
            if not p.future.done():
                p.future.set_exception(ModelNotReadyError("the server stopped; retry later"))
        await super().stop()

    async def submit(
        self, request: StrategyRequest, deadline: float | None = None
    ) -> StrategyResult:
        """Queue the request for the next batch and await its result."""
        if self._closed or self._task is None:
            raise ModelNotReadyError(
                "the batcher is not running; retry once health reports SERVING"
            )
        fut: asyncio.Future[StrategyResult] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait(_Pending(request, deadline, time.perf_counter(), fut))
        filled = self._filled
        if filled is not None and self._queue.qsize() >= self._needed:
            _resolve(filled)  # the collector's batch is full: stop its wait now
        return await fut

    async def _collect(self) -> list[_Pending]:
        """The next batch: the first queued request plus whatever arrives within max_wait.

        The wait is one timer per batch, cut short by submit once enough requests are queued
        to fill the batch: not a wakeup (and an asyncio.wait_for task) per arriving request,
        which cost the event loop more CPU per request than the echo service's whole reply.
        """
        batch = self._current = [await self._queue.get()]
        loop = asyncio.get_running_loop()
        until = loop.time() + self.max_wait_s
        while True:
            while len(batch) < self.max_batch and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            left = until - loop.time()
            if len(batch) >= self.max_batch or left <= 0:
                return batch
            filled = self._filled = loop.create_future()
            self._needed = self.max_batch - len(batch)
            timer = loop.call_later(left, _resolve, filled)
            try:
                await filled
            finally:
                timer.cancel()
                self._filled = None

    async def _loop(self) -> None:
        """Batch, drop expired or abandoned calls, run the engine, resolve futures; forever."""
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._collect()
            now = loop.time()
            live = []
            for p in batch:
                if p.future.done():  # the caller went away (cancelled)
                    self._on_dropped("cancelled")
                    continue
                if self._expired(p.deadline, now):
                    p.future.set_exception(
                        RequestExpiredError(
                            "the deadline passed while the request waited for a batch; "
                            "send a longer deadline"
                        )
                    )
                    continue
                live.append(p)
            if not live:
                continue
            started = time.perf_counter()
            try:
                outcomes = await self._run([p.request for p in live])
                if len(outcomes) != len(live):
                    raise RuntimeError(f"engine returned {len(outcomes)} results for {len(live)}")
            except Exception as exc:
                failure = _engine_failure(exc, len(live))
                for p in live:
                    if not p.future.done():
                        p.future.set_exception(failure)
                continue
            for p, outcome in zip(live, outcomes, strict=True):
                if p.future.done():
                    continue
                if isinstance(outcome, ServiceError):
                    p.future.set_exception(outcome)
                else:
                    p.future.set_result(
                        _with_timings(outcome, p.enqueued, started, len(live), self.worker)
                    )


def make_dispatcher(
    engine: Engine,
    max_batch: int,
    max_wait_ms: float,
    on_batch: Callable[[int], None] | None = None,
    on_dropped: Callable[[str], None] | None = None,
    worker: int = 0,
) -> Dispatcher:
    """A MicroBatcher, or a direct Dispatcher when max_batch == 1 (unbatched)."""
    if max_batch == 1:
        return Dispatcher(engine, on_batch=on_batch, on_dropped=on_dropped, worker=worker)
    return MicroBatcher(
        engine, max_batch, max_wait_ms, on_batch=on_batch, on_dropped=on_dropped, worker=worker
    )
