"""Idempotent GetStrategy: a repeated (device_id, request_id) gets the first call's reply."""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import numpy as np

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


@dataclass
class _Entry:
    """A remembered request: its digest and its (possibly pending) result."""

    digest: bytes
    created: float
    future: asyncio.Future[StrategyResult]


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
        self._entries: OrderedDict[tuple[str, str], _Entry] = OrderedDict()
        self.hits = 0

    def __len__(self) -> int:
        """Number of remembered request ids."""
        return len(self._entries)

    def _evict(self, now: float) -> None:
        """Drop entries older than the window and the oldest beyond max_entries."""
        while self._entries:
            key, entry = next(iter(self._entries.items()))
            if now - entry.created > self.window_s or len(self._entries) > self.max_entries:
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
            if entry.digest != digest:
                raise DuplicateRequestError(
                    f"request_id {req.request_id!r} was already used by device {req.device_id!r} "
                    "for a different request; send a new request_id for a new request "
                    "(reuse an id only to retry the identical request)"
                )
            self.hits += 1
            return await asyncio.shield(entry.future)
        fut: asyncio.Future[StrategyResult] = asyncio.get_running_loop().create_future()
        self._entries[key] = _Entry(digest, now, fut)
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
        fut.set_result(result)
        return result
