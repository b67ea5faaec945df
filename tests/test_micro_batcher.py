"""The micro-batcher's collection rule: a batch leaves when full or max_wait after its first."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from chord.strategy import StrategyRequest
from cloud_server.batching import MicroBatcher
from cloud_server.engine import BatchOutcome, EchoEngine
from tests.server_fixtures import arun


class RecordingEngine:
    """EchoEngine's replies, recording the request ids of every batch it computes."""

    inline = True

    def __init__(self) -> None:
        self.echo = EchoEngine()
        self.spec, self.artifacts = self.echo.spec, self.echo.artifacts
        self.batches: list[list[str]] = []

    def compute(self, requests: Sequence[StrategyRequest]) -> BatchOutcome:
        self.batches.append([r.request_id for r in requests])
        return self.echo.compute(requests)


def _request(engine: RecordingEngine, rid: str) -> StrategyRequest:
    return StrategyRequest("d", rid, engine.spec.version, "mid", 3.0)


async def _submit_all(batcher: MicroBatcher, engine: RecordingEngine, ids: list[str]) -> None:
    await asyncio.gather(*(batcher.submit(_request(engine, i)) for i in ids))


def test_a_full_batch_leaves_without_waiting_out_max_wait() -> None:
    async def scenario() -> list[list[str]]:
        engine = RecordingEngine()
        # max_wait is far beyond the test's timeout: only a full batch can end the wait.
        batcher = MicroBatcher(engine, max_batch=4, max_wait_ms=600_000)
        await batcher.start()
        try:
            await asyncio.wait_for(_submit_all(batcher, engine, list("abcdefgh")), 30)
        finally:
            await batcher.stop()
        return engine.batches

    assert arun(scenario()) == [list("abcd"), list("efgh")]


def test_requests_arriving_within_max_wait_join_the_first() -> None:
    async def scenario() -> list[list[str]]:
        engine = RecordingEngine()
        batcher = MicroBatcher(engine, max_batch=8, max_wait_ms=2_000)
        await batcher.start()
        try:
            first = asyncio.ensure_future(batcher.submit(_request(engine, "a")))
            await asyncio.sleep(0.05)  # the collector is waiting on its timer now
            assert not first.done()
            await _submit_all(batcher, engine, ["b", "c"])  # a partial batch: max_wait ends it
            await first
        finally:
            await batcher.stop()
        return engine.batches

    assert arun(scenario()) == [["a", "b", "c"]]


def test_a_partial_batch_leaves_after_max_wait() -> None:
    async def scenario() -> list[list[str]]:
        engine = RecordingEngine()
        batcher = MicroBatcher(engine, max_batch=8, max_wait_ms=20)
        await batcher.start()
        try:
            await asyncio.wait_for(_submit_all(batcher, engine, ["a", "b"]), 30)
            await asyncio.wait_for(_submit_all(batcher, engine, ["c"]), 30)
        finally:
            await batcher.stop()
        return engine.batches

    assert arun(scenario()) == [["a", "b"], ["c"]]
