"""The request cache behind idempotent GetStrategy: replays, eviction, and its weight on the GC."""

from __future__ import annotations

import asyncio
import functools
import gc

import numpy as np
import pytest

from chord.strategy import StrategyRequest, StrategyResult
from cloud_server.dedup import RequestCache
from cloud_server.engine import EchoEngine
from cloud_server.errors import DuplicateRequestError
from tests.server_fixtures import arun

ECHO = EchoEngine()


def _request(rid: str, budget: float = 3.0) -> StrategyRequest:
    profile = np.zeros(ECHO.spec.profile_dim, dtype=np.float32)
    return StrategyRequest("dev", rid, ECHO.spec.version, "mid", budget, profile=profile)


def _computed(req: StrategyRequest) -> StrategyResult:
    """A fresh result per computation, with timings as the batcher adds them."""
    result = ECHO.compute([req])[0]
    assert isinstance(result, StrategyResult)
    result.timings.update(queue_ms=1.5, total_ms=2.5)
    return result


async def _serve(cache: RequestCache, reqs: list[StrategyRequest]) -> list[StrategyResult]:
    """Each request through the cache in turn, computed when it is not remembered."""

    async def compute(req: StrategyRequest) -> StrategyResult:
        return _computed(req)

    return [await cache.run(r, functools.partial(compute, r)) for r in reqs]


def test_a_retry_gets_an_equal_reply_without_computing_again() -> None:
    cache = RequestCache()

    async def scenario() -> tuple[StrategyResult, StrategyResult]:
        (first,) = await _serve(cache, [_request("r1")])

        async def never() -> StrategyResult:
            raise AssertionError("a remembered request was computed again")

        return first, await cache.run(_request("r1"), never)

    first, again = arun(scenario())
    assert again == first and cache.hits == 1
    assert again.timings == {"model_ms": 0.0, "queue_ms": 1.5, "total_ms": 2.5}


def test_the_same_id_with_other_content_is_refused_after_the_reply_is_remembered() -> None:
    cache = RequestCache()
    arun(_serve(cache, [_request("r1")]))
    with pytest.raises(DuplicateRequestError, match="send a new request_id"):
        arun(_serve(cache, [_request("r1", budget=2.5)]))


def test_remembered_replies_leave_by_age_and_by_count() -> None:
    cache = RequestCache(window_s=3600.0, max_entries=3)
    arun(_serve(cache, [_request(f"r{i}") for i in range(5)]))
    assert len(cache) == 4  # evicted on arrival: the fifth call found four and dropped one
    cache.window_s = 0.0
    arun(_serve(cache, [_request("late")]))
    assert len(cache) == 1  # every remembered reply was older than the window


def test_remembered_replies_add_nothing_to_full_collections() -> None:
    """A full cache (100,000 replies) used to add 300,000 objects to every full GC pass."""
    cache = RequestCache(max_entries=10_000)
    arun(_serve(cache, [_request("warm")]))
    gc.collect()
    before = len(gc.get_objects())
    arun(_serve(cache, [_request(f"r{i}") for i in range(2000)]))
    gc.collect()
    gc.collect()  # a tuple holding a tuple is untracked one pass after its inner one
    assert len(cache) == 2001
    assert len(gc.get_objects()) - before < 100  # was 3 per reply: 6,000


def test_a_retry_while_the_first_call_computes_shares_its_reply() -> None:
    cache = RequestCache()

    async def scenario() -> list[StrategyResult]:
        gate = asyncio.Event()
        calls = []

        async def slow() -> StrategyResult:
            calls.append(1)
            await gate.wait()
            return _computed(_request("r1"))

        first = asyncio.ensure_future(cache.run(_request("r1"), slow))
        await asyncio.sleep(0)
        second = asyncio.ensure_future(cache.run(_request("r1"), slow))
        await asyncio.sleep(0)
        gate.set()
        out = [await first, await second]
        assert calls == [1]
        return out

    first, second = arun(scenario())
    assert first is second  # the pending entry's future, not a rebuilt copy
