"""Corrupt request bytes to health and reflection answer INVALID_ARGUMENT, as chord.v1 does."""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool
from grpc_health.v1 import health, health_pb2
from grpc_reflection.v1alpha import reflection, reflection_pb2

__all__ = ["REFLECTION_V1", "TOLERANT_METHODS", "TolerantDecodeInterceptor", "malformed_details"]

# grpc.reflection.v1 is grpc.reflection.v1alpha under a new package name (same messages, same
# field numbers), so the v1alpha servicer answers v1 clients when registered under v1's name.
REFLECTION_V1 = "grpc.reflection.v1.ServerReflection"



def _register_reflection_v1() -> None:
    """Add grpc/reflection/v1/reflection.proto to the default descriptor pool.

    grpcio-reflection ships only the v1alpha file; v1 is the same file under package
    grpc.reflection.v1, so it is derived here, and reflection can describe REFLECTION_V1.
    """
    pool = descriptor_pool.Default()
    try:
        pool.FindFileByName("grpc/reflection/v1/reflection.proto")
        return
    except KeyError:
        pass
    old, new = ".grpc.reflection.v1alpha.", ".grpc.reflection.v1."
    proto = descriptor_pb2.FileDescriptorProto()
    reflection_pb2.DESCRIPTOR.CopyToProto(proto)
    proto.name, proto.package = "grpc/reflection/v1/reflection.proto", "grpc.reflection.v1"
    proto.ClearField("options")
    for message in proto.message_type:
        for field in message.field:
            if field.type_name:
                field.type_name = field.type_name.replace(old, new)
    for service in proto.service:
        for method in service.method:
            method.input_type = method.input_type.replace(old, new)
            method.output_type = method.output_type.replace(old, new)
    pool.Add(proto)


_register_reflection_v1()

# Full method name -> (request class, the fully qualified type name the client had to send).
TOLERANT_METHODS: dict[str, tuple[Any, str]] = {
    **{
        f"/{health.SERVICE_NAME}/{method}": (cls, cls.DESCRIPTOR.full_name)
        for method, cls in (
            ("Check", health_pb2.HealthCheckRequest),
            ("Watch", health_pb2.HealthCheckRequest),
            ("List", health_pb2.HealthListRequest),
        )
    },
    f"/{reflection.SERVICE_NAME}/ServerReflectionInfo": (
        reflection_pb2.ServerReflectionRequest,
        "grpc.reflection.v1alpha.ServerReflectionRequest",
    ),
    f"/{REFLECTION_V1}/ServerReflectionInfo": (
        reflection_pb2.ServerReflectionRequest,
        "grpc.reflection.v1.ServerReflectionRequest",
    ),
}


class _Malformed:
    """What the tolerant parser hands the behaviour instead of raising on corrupt bytes."""

    def __init__(self, reason: str) -> None:
        self.reason = reason


def malformed_details(type_name: str, reason: str) -> str:
    """The INVALID_ARGUMENT details for bytes that are not a type_name message."""
    return (
        f"the request bytes are not a valid {type_name} ({reason}); "
        f"send a serialized {type_name}"
    )


def _parser(cls: Any) -> Callable[[bytes], Any]:
    """cls.FromString that returns _Malformed instead of raising (no traceback in the log)."""

    def parse(data: bytes) -> Any:
        try:
            return cls.FromString(data)
        except Exception as exc:  # DecodeError, or anything else the parser raises
            return _Malformed(str(exc) or type(exc).__name__)

    return parse


def _tolerant(handler: grpc.RpcMethodHandler, cls: Any, type_name: str) -> grpc.RpcMethodHandler:
    """handler with a tolerant parser; a malformed request aborts with INVALID_ARGUMENT."""
    ser = handler.response_serializer

    async def check(request: Any, context: grpc.aio.ServicerContext) -> None:
        if isinstance(request, _Malformed):
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT, malformed_details(type_name, request.reason)
            )

    if handler.unary_unary is not None:
        inner_uu = handler.unary_unary

        async def unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
            await check(request, context)
            return await inner_uu(request, context)

        return grpc.unary_unary_rpc_method_handler(unary, _parser(cls), ser)
    if handler.unary_stream is not None:
        inner_us = handler.unary_stream
        if inspect.isasyncgenfunction(inner_us):

            async def stream_gen(request: Any, context: grpc.aio.ServicerContext) -> Any:
                await check(request, context)
                async for response in inner_us(request, context):
                    yield response

            return grpc.unary_stream_rpc_method_handler(stream_gen, _parser(cls), ser)

        async def stream_co(request: Any, context: grpc.aio.ServicerContext) -> Any:
            await check(request, context)
            return await inner_us(request, context)

        return grpc.unary_stream_rpc_method_handler(stream_co, _parser(cls), ser)
    if handler.stream_stream is not None:
        inner_ss = handler.stream_stream

        async def both(requests: AsyncIterator[Any], context: grpc.aio.ServicerContext) -> Any:
            async def checked() -> AsyncIterator[Any]:
                async for request in requests:
                    await check(request, context)
                    yield request

            async for response in inner_ss(checked(), context):
                yield response

        return grpc.stream_stream_rpc_method_handler(both, _parser(cls), ser)
    return handler


class TolerantDecodeInterceptor(grpc.aio.ServerInterceptor):
    """Gives health and reflection handlers tolerant request parsers (see TOLERANT_METHODS).

    Without it, corrupt bytes make gRPC answer UNKNOWN ("Unexpected DecodeError") and log a
    traceback; chord.v1's own methods get the same treatment from protos.serde.METHOD_CODECS.
    """

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        """Wrap the handler of a TOLERANT_METHODS method; pass any other on unchanged."""
        handler = await continuation(handler_call_details)
        known = TOLERANT_METHODS.get(handler_call_details.method)
        if handler is None or known is None:
            return handler
        return _tolerant(handler, *known)
