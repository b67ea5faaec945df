"""The gRPC servicer: wire -> domain (serde), call the service, named errors -> status codes."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import grpc

from cloud_server.errors import (
    DuplicateRequestError,
    EngineError,
    InvalidRequestError,
    ModelNotReadyError,
    NotFoundError,
    OutOfRangeError,
    OverloadedError,
    RequestExpiredError,
    ServiceError,
    StaleVersionError,
)
from cloud_server.service import StrategyService
from cloud_server.validation import validate_spec_request
from protos import serde

__all__ = ["StrategyServicer", "status_for"]

log = logging.getLogger(__name__)

_STATUS: dict[type[ServiceError], grpc.StatusCode] = {
    InvalidRequestError: grpc.StatusCode.INVALID_ARGUMENT,
    NotFoundError: grpc.StatusCode.NOT_FOUND,
    OutOfRangeError: grpc.StatusCode.OUT_OF_RANGE,
    StaleVersionError: grpc.StatusCode.FAILED_PRECONDITION,
    DuplicateRequestError: grpc.StatusCode.ALREADY_EXISTS,
    OverloadedError: grpc.StatusCode.RESOURCE_EXHAUSTED,
    RequestExpiredError: grpc.StatusCode.DEADLINE_EXCEEDED,
    ModelNotReadyError: grpc.StatusCode.UNAVAILABLE,
    EngineError: grpc.StatusCode.INTERNAL,
}


def status_for(exc: ServiceError) -> grpc.StatusCode:
    """The status code a named service error leaves through."""
    for cls in type(exc).__mro__:
        if cls in _STATUS:
            return _STATUS[cls]
    return grpc.StatusCode.INTERNAL


class _Call:
    """Times one RPC and records its method, status code and reply size."""

    def __init__(self, servicer: StrategyServicer, method: str) -> None:
        self.servicer, self.method = servicer, method
        self.code = grpc.StatusCode.OK
        self.bytes_out = 0
        self.start = time.perf_counter()
        self.recorded = False

    def done(self) -> None:
        """Record the call in the server's metrics (once; later calls do nothing)."""
        if self.recorded:
            return
        self.recorded = True
        self.servicer.service.metrics.observe(
            self.method, self.code.name, time.perf_counter() - self.start, self.bytes_out
        )


def _parsed(request: Any) -> Any:
    """The request, or InvalidRequestError when its bytes did not parse."""
    if isinstance(request, serde.MalformedMessage):
        raise InvalidRequestError(
            f"the request bytes are not a valid {request.type_name} ({request.reason}); "
            f"send a serialized {request.type_name}"
        )
    return request


class StrategyServicer(serde.ProtoStrategyServiceServicer):
    """chord.v1.StrategyService on top of a StrategyService."""

    def __init__(self, service: StrategyService) -> None:
        """Serve the given service."""
        self.service = service

    async def _fail(
        self, call: _Call, context: grpc.aio.ServicerContext, exc: BaseException
    ) -> None:
        """Abort the call with the status code its error maps to and the error's message."""
        if isinstance(exc, ServiceError):
            call.code, message = status_for(exc), str(exc)
        else:
            log.exception("unexpected error in %s", call.method)
            call.code = grpc.StatusCode.INTERNAL
            message = (
                f"internal error ({type(exc).__name__}: {exc}); retry, and report it if it persists"
            )
        # grpc.aio's abort sends the status before it raises: record first, so a client that
        # scrapes the metrics right after its error already finds the call counted.
        call.done()
        await context.abort(call.code, message)

    async def GetModelSpec(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        """The served backbone's spec."""
        call = _Call(self, "GetModelSpec")
        try:
            validate_spec_request(serde.model_spec_request_from_proto(_parsed(request)))
            reply = serde.model_spec_to_proto(self.service.model_spec())
            call.bytes_out = reply.ByteSize()
            return reply
        except Exception as exc:
            await self._fail(call, context, exc)
        finally:
            call.done()

    async def GetStrategy(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        """One device's strategy, micro-batched with concurrent calls."""
        call = _Call(self, "GetStrategy")
        try:
            req = serde.strategy_request_from_proto(_parsed(request))
            remaining = context.time_remaining()
            deadline = None
            if remaining is not None:
                deadline = asyncio.get_running_loop().time() + remaining
            result = await self.service.get_strategy(req, deadline)
            reply = serde.strategy_result_to_proto(result)
            call.bytes_out = reply.ByteSize()
            return reply
        except asyncio.CancelledError:
            call.code = grpc.StatusCode.CANCELLED
            raise
        except Exception as exc:
            await self._fail(call, context, exc)
        finally:
            call.done()

    async def ReportMetrics(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        """Store one device's round report (idempotent on device_id and round)."""
        call = _Call(self, "ReportMetrics")
        try:
            outcome = self.service.report(serde.device_report_from_proto(_parsed(request)))
            reply = serde.report_outcome_to_proto(outcome)
            call.bytes_out = reply.ByteSize()
            return reply
        except Exception as exc:
            await self._fail(call, context, exc)
        finally:
            call.done()

    async def FetchArtifact(
        self, request: Any, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[Any]:
        """Stream one artifact from the requested offset; every check runs before the first
        chunk, and the stream ends with DEADLINE_EXCEEDED past cfg.artifact_stream_s."""
        call = _Call(self, "FetchArtifact")
        try:
            req = serde.artifact_request_from_proto(_parsed(request))
            with self.service.artifact_stream():
                limit_s = self.service.cfg.artifact_stream_s
                limit = time.perf_counter() + limit_s
                for chunk in self.service.artifact_chunks(req):
                    if time.perf_counter() > limit:
                        raise RequestExpiredError(
                            f"the download ran past the server's {limit_s:g} s limit at offset "
                            f"{chunk.offset}; resume with offset={chunk.offset}"
                        )
                    reply = serde.artifact_chunk_to_proto(chunk)
                    call.bytes_out += reply.ByteSize()
                    yield reply  # flow control: waits while the client's window is full
        except asyncio.CancelledError:
            call.code = grpc.StatusCode.CANCELLED
            raise
        except Exception as exc:
            await self._fail(call, context, exc)
        finally:
            call.done()
