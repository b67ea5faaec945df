"""Idempotent GetStrategy: a repeated (device_id, request_id) gets the first call's reply."""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable

import numpy as np

from chord.codes import EncodedStrategy
from chord.strategy import StrategyRequest, StrategyResult
from cloud_server.errors import DuplicateRequestError, ModelNotReadyError

__all__ = ["RequestCache", "fingerprint"]


def fingerprint(req: StrategyRequest) -> bytes:
    """A digest of everything that determines a reply (ids excluded)."""
    h = hashlib.sha256()
    h.update(f"{req.backbone_version}\0{req.tier}\0{req.budget_bits!r}\0".encode())
    for arr, dtype in ((req.profile, np.float32), (req.recent_items, np.int64)):
        if arr is None:
            h.update(b"-")
        else:
            h.update(b"+" + np.ascontiguousarray(arr, dtype=dtype).tobytes())
    return h.digest()


# What the cache holds per (device_id, request_id), both starting (digest, created):
# while the first call computes, its future, which every retry awaits; once it is done, the reply
# flattened to atoms (_remembered).
_Pending = tuple[bytes, float, "asyncio.Future[StrategyResult]"]
_Done = tuple[bytes, float, str, bytes, int, int, str, str, tuple[int, int, int, int], float,
              tuple[tuple[str, float], ...]]


def _remembered(digest: bytes, created: float, result: StrategyResult) -> _Done:
    """A computed reply as one plain tuple of atoms, which CPython's collector stops tracking.

    The cache holds up to max_entries replies for window_s (100,000 for 300 s by default). Kept
    as the entry, the StrategyResult and its code (three tracked objects each; a NamedTuple or
    a dataclass stays tracked too, only exact tuples are untracked, and a tuple nested in a
    tuple only one pass after it), a full cache put 300,000 objects into every full collection:
    a stall of the server that grew past 100 ms within a minute at 1,000 calls/s (chord.heap
    says why that matters).
    """
    code = result.code
    return (digest, created, result.request_id, code.payload, code.n_channels, code.crc32,
            code.version, code.encoding, result.level_counts, result.avg_bits,
            tuple(result.timings.items()))


def _replay(done: _Done) -> StrategyResult:
    """The StrategyResult _remembered took apart (equal to it)."""
    _, _, request_id, payload, n_channels, crc32, version, encoding, counts, avg, timings = done
    code = EncodedStrategy(payload, n_channels, crc32, version, encoding)
    return StrategyResult(request_id, code, counts, avg, dict(timings))


class RequestCache:
    """Remembers replies per (device_id, request_id) for window_s seconds.

    A retry with the same request id and the same content gets the first reply (or waits for
    the first call still in flight); the same id with different content is ALREADY_EXISTS.
    Failed calls are forgotten so a retry computes again.
    """

    def __init__(self, window_s: float = 300.0, max_entries: int = 100_000) -> None:
        """window_s: how long a reply is kept; max_entries: the oldest are evicted beyond it."""
        self.window_s = window_s
        self.max_entries = max_entries
        self._entries: OrderedDict[tuple[str, str], _Pending | _Done] = OrderedDict()
        self.hits = 0

    def __len__(self) -> int:
        """Number of remembered request ids."""
        return len(self._entries)

    def _evict(self, now: float) -> None:
        """Drop entries older than the window and the oldest beyond max_entries."""
        while self._entries:
            key, entry = next(iter(self._entries.items()))
            if now - entry[1] > self.window_s or len(self._entries) > self.max_entries:
                del self._entries[key]
            else:
                break

    async def run(
        self, req: StrategyRequest, compute: Callable[[], Awaitable[StrategyResult]]
    ) -> StrategyResult:
        """The remembered result for req's id, or compute() once and remember it."""
        now = time.monotonic()
        self._evict(now)
        key = (req.device_id, req.request_id)
        digest = fingerprint(req)
        entry = self._entries.get(key)
        if entry is not None:
            if entry[0] != digest:
                raise DuplicateRequestError(
                    f"request_id {req.request_id!r} was already used by device {req.device_id!r} "
                    "for a different request; send a new request_id for a new request "
                    "(reuse an id only to retry the identical request)"
                )
            self.hits += 1
            if len(entry) == 3:  # the first call is still computing
                return await asyncio.shield(entry[2])
            return _replay(entry)
        fut: asyncio.Future[StrategyResult] = asyncio.get_running_loop().create_future()
        self._entries[key] = (digest, now, fut)
        try:
            result = await compute()
        except BaseException as exc:
            self._entries.pop(key, None)
            if not fut.done():
                if isinstance(exc, Exception):
                    fut.set_exception(exc)
                else:
                    fut.set_exception(
                        ModelNotReadyError(
                            "the first call with this request_id was cancelled; retry"
                        )
                    )
                fut.exception()  # mark retrieved: waiters are optional
            raise
        fut.set_result(result)  # calls that joined while it computed get it from the future
        entry = self._entries.get(key)
        if entry is not None and entry[2] is fut:  # not evicted meanwhile
            self._entries[key] = _remembered(digest, now, result)
        return result
