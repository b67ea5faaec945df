"""Bearer-token check on every call except health, as a gRPC server interceptor."""

from __future__ import annotations

import asyncio
import contextlib
import hmac
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
from grpc_health.v1 import health

__all__ = ["TokenInterceptor"]

# Methods reachable without a token: load balancers and orchestrators probe health openly.
OPEN_PREFIXES = (f"/{health.SERVICE_NAME}/",)


class TokenInterceptor(grpc.aio.ServerInterceptor):
    """Rejects calls without `authorization: Bearer <token>` with UNAUTHENTICATED."""

    def __init__(self, token: str, on_reject: Callable[[str], None] | None = None) -> None:
        """token: the shared secret; on_reject(method) is called for each rejected call."""
        self._expected = f"Bearer {token}".encode()
        self._on_reject = on_reject or (lambda method: None)

    def _authorized(self, metadata: Any) -> bool:
        """True when the call's metadata carries the expected bearer token."""
        for key, value in metadata or ():
            if key == "authorization":
                got = value.encode() if isinstance(value, str) else bytes(value)
                return hmac.compare_digest(got, self._expected)
        return False

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        """Pass authorized (or open) calls on; answer the rest with UNAUTHENTICATED."""
        method = handler_call_details.method
        handler = await continuation(handler_call_details)
        if handler is None or method.startswith(OPEN_PREFIXES):
            return handler
        if self._authorized(handler_call_details.invocation_metadata):
            return handler
        self._on_reject(method)
        return _rejecting(handler)


# How long a rejected client stream gets to deliver its first message (see _first_message).
FIRST_MESSAGE_WAIT_S = 1.0

_REJECT_MESSAGE = (
    "missing or wrong bearer token; send metadata 'authorization: Bearer <token>' "
    "with the token the server was started with"
)


async def _deny(request: Any, context: grpc.aio.ServicerContext) -> Any:
    """Abort with UNAUTHENTICATED."""
    await context.abort(grpc.StatusCode.UNAUTHENTICATED, _REJECT_MESSAGE)


async def _deny_stream(request: Any, context: grpc.aio.ServicerContext) -> Any:
    """Abort a streaming-response call with UNAUTHENTICATED."""
    await context.abort(grpc.StatusCode.UNAUTHENTICATED, _REJECT_MESSAGE)
    yield  # pragma: no cover - makes this an async generator


async def _first_message(requests: Any) -> None:
    """Wait up to FIRST_MESSAGE_WAIT_S for a client stream's first message (or its end).

    Aborting a client-streaming call before its first message has been read raced with that
    message's arrival, and about one stream in ten ended INTERNAL ("Internal error from Core")
    instead of UNAUTHENTICATED. The wait is bounded so an idle stream cannot hold the server.
    """
    with contextlib.suppress(StopAsyncIteration, TimeoutError):
        await asyncio.wait_for(anext(aiter(requests)), FIRST_MESSAGE_WAIT_S)


async def _deny_client_stream(requests: Any, context: grpc.aio.ServicerContext) -> Any:
    """Abort a client-streaming call with UNAUTHENTICATED once its first message is read."""
    await _first_message(requests)
    await context.abort(grpc.StatusCode.UNAUTHENTICATED, _REJECT_MESSAGE)


async def _deny_both(requests: Any, context: grpc.aio.ServicerContext) -> Any:
    """Abort a bidirectional-streaming call with UNAUTHENTICATED once its first message is read."""
    await _first_message(requests)
    await context.abort(grpc.StatusCode.UNAUTHENTICATED, _REJECT_MESSAGE)
    yield  # pragma: no cover - makes this an async generator


def _rejecting(handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
    """A handler of the same shape as handler that only rejects."""
    des, ser = handler.request_deserializer, handler.response_serializer
    if handler.unary_unary is not None:
        return grpc.unary_unary_rpc_method_handler(_deny, des, ser)
    if handler.unary_stream is not None:
        return grpc.unary_stream_rpc_method_handler(_deny_stream, des, ser)
    if handler.stream_unary is not None:
        return grpc.stream_unary_rpc_method_handler(_deny_client_stream, des, ser)
    return grpc.stream_stream_rpc_method_handler(_deny_both, des, ser)
