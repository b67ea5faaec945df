"""Graceful drain: admit the calls already on the wire at SIGTERM, refuse later ones, then stop.

grpc.aio's `server.stop(grace)` cancels every call the server has received but not yet handed
to a handler, so calls a client sent just before the signal came back CANCELLED. The drain
here avoids that in three steps:

1. Admission stays open only for calls already on the wire: it closes once no call has
   arrived for `quiet_s` (25 ms), and at the latest `max_admit_s` (250 ms, at most half the
   grace period) after the signal. Calls admitted run to completion. (A client sending every
   50 ms kept a 100 ms window open for a whole second, so most calls sent during the drain
   were admitted.)
2. After admission closes, a new call of every method (FetchArtifact included) is answered
   UNAVAILABLE at once (clients retry it elsewhere or after the restart); health and
   reflection stay open.
3. When every admitted call has finished, or the grace period is spent, the gRPC server stops
   with whatever grace is left. A response stream is the exception: grpc hands each message to
   its transport before the client has read it, so a download's handler (and its RPC, as grpc
   counts it) ends while its last chunks may still wait on the client's flow-control window,
   and stopping the server then drops them (the client saw DEADLINE_EXCEEDED, "Stream
   removed"). gRPC gives no signal when the client has read them, so when a stream ran during
   the drain, the server keeps its connections open, refusing new calls, until the grace
   period ends (`streamed`).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from grpc_health.v1 import health

__all__ = ["DrainGate"]

# Calls that are never refused while draining: probes and service discovery.
_ALWAYS_OPEN = (f"/{health.SERVICE_NAME}/", "/grpc.reflection.")

_REFUSED = (
    "the server is shutting down and admits no new calls; retry (another replica, or this one "
    "after it restarts)"
)


class DrainGate(grpc.aio.ServerInterceptor):
    """Counts running calls and refuses new ones with UNAVAILABLE once admission has closed.

    Install it as the first interceptor so that it also sees calls other interceptors reject.
    """

    def __init__(self) -> None:
        """An open gate with no call running."""
        self.active = 0
        self.active_streams = 0
        self.refused = 0
        # True once a response stream ran during the drain (admitted, or running at its start).
        self.streamed = False
        self._draining = False
        self._admitting = True
        self._last_arrival = time.monotonic()
        self._idle = asyncio.Event()
        self._idle.set()

    @property
    def admitting(self) -> bool:
        """False once admission has closed."""
        return self._admitting

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        """Wrap admitted calls to count them; after admission, answer new ones UNAVAILABLE."""
        handler = await continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None or method.startswith(_ALWAYS_OPEN):
            return handler
        des, ser = handler.request_deserializer, handler.response_serializer
        if handler.unary_unary is not None:
            if not self._admitting:
                self.refused += 1
                return grpc.unary_unary_rpc_method_handler(_refuse, des, ser)
            self._last_arrival = time.monotonic()
            return grpc.unary_unary_rpc_method_handler(
                self._counted(handler.unary_unary), des, ser
            )
        if handler.unary_stream is not None:  # FetchArtifact
            if not self._admitting:
                self.refused += 1
                return grpc.unary_stream_rpc_method_handler(_refuse_stream, des, ser)
            self._last_arrival = time.monotonic()
            if self._draining:
                self.streamed = True
            return grpc.unary_stream_rpc_method_handler(
                self._counted_stream(handler.unary_stream), des, ser
            )
        return handler

    def _enter(self) -> None:
        """One more admitted call running."""
        self.active += 1
        self._idle.clear()

    def _leave(self) -> None:
        """One admitted call done."""
        self.active -= 1
        if self.active == 0:
            self._idle.set()

    def _counted(self, behavior: Callable[[Any, Any], Awaitable[Any]]) -> Callable[..., Any]:
        """A unary behavior, counted in `active` until its RPC has terminated."""

        async def run(request: Any, context: grpc.aio.ServicerContext) -> Any:
            self._enter_until_done(context)
            return await behavior(request, context)

        return run

    def _counted_stream(self, behavior: Callable[[Any, Any], Any]) -> Callable[..., Any]:
        """A response-streaming behavior (an async generator), counted until its RPC has
        terminated: grpc hands a yielded message to its transport before the client reads it,
        so the generator ends while the last chunks are still buffered; stopping the server
        then would drop them (the client saw DEADLINE_EXCEEDED, "Stream removed")."""

        async def run(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            self._enter_until_done(context)
            self.active_streams += 1
            try:
                async for item in behavior(request, context):
                    yield item
            finally:
                self.active_streams -= 1

        return run

    def _enter_until_done(self, context: grpc.aio.ServicerContext) -> None:
        """Count one more admitted call until grpc reports its RPC terminated (status sent
        after every message, or cancelled)."""
        self._enter()
        context.add_done_callback(lambda _: self._leave())

    async def close_admission(self, quiet_s: float = 0.025, max_admit_s: float = 0.25) -> None:
        """Keep admitting until no call arrived for quiet_s (at most max_admit_s), then close."""
        self._draining = True
        self.streamed = self.streamed or self.active_streams > 0
        start = time.monotonic()
        self._last_arrival = max(self._last_arrival, start)
        while True:
            now = time.monotonic()
            if now - start >= max_admit_s:
                break
            wait = self._last_arrival + quiet_s - now
            if wait <= 0:
                break
            await asyncio.sleep(min(wait, start + max_admit_s - now))
        self._admitting = False

    async def wait_idle(self, timeout_s: float) -> bool:
        """Wait up to timeout_s for every admitted call to finish; True when none is left."""
        if timeout_s <= 0:
            return self.active == 0
        try:
            await asyncio.wait_for(self._idle.wait(), timeout_s)
        except TimeoutError:
            return False
        return True


async def _refuse(request: Any, context: grpc.aio.ServicerContext) -> Any:
    """Abort with UNAVAILABLE: the server is draining."""
    await context.abort(grpc.StatusCode.UNAVAILABLE, _REFUSED)


async def _refuse_stream(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
    """Abort a response stream with UNAVAILABLE before its first message."""
    await context.abort(grpc.StatusCode.UNAVAILABLE, _REFUSED)
    yield  # pragma: no cover - makes this an async generator
