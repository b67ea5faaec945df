"""Shared pieces of the server tests: a tiny run directory, embedded servers, aio client calls."""

from __future__ import annotations

import asyncio
import tempfile
from collections.abc import Awaitable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import grpc
import numpy as np
import pytest

from chord.spec import ModelSpec
from chord.strategy import StrategyRequest
from cloud_server import EmbeddedServer, ServerConfig
from protos.chord.v1 import strategy_pb2 as pb
from protos.chord.v1 import strategy_pb2_grpc as pb_grpc

T = TypeVar("T")

_RUN_DIRS: dict[str, Path] = {}
_TMP = tempfile.TemporaryDirectory(prefix="chord-server-tests-")


def tiny_run_dir() -> Path:
    """A random-mode SASRec run on 100 ML-100K users with a few hypernet steps (built once)."""
    if "tiny" not in _RUN_DIRS:
        from chord.hyper.runs import RunConfig, prepare_run

        cfg = RunConfig.preset(
            "smoke", mode="random", max_users=100, hyper_steps=5, hyper_valid_users=50,
            prior="none",  # five steps move the hypernetwork, not a zero-started gate
        )
        _RUN_DIRS["tiny"] = prepare_run(cfg, Path(_TMP.name) / "tiny-run")
    return _RUN_DIRS["tiny"]


@pytest.fixture(scope="session")
def run_dir() -> Path:
    """The tiny run directory."""
    return tiny_run_dir()


def arun(coro: Awaitable[T]) -> T:
    """Run a coroutine on a fresh event loop (the tests' client side)."""
    return asyncio.run(coro)  # type: ignore[arg-type]


def started(cfg: ServerConfig) -> EmbeddedServer:
    """An embedded server on 127.0.0.1, port 0, already SERVING."""
    return EmbeddedServer(cfg).start()


def serving(cfg: ServerConfig) -> Iterator[EmbeddedServer]:
    """Generator body of a server fixture: start, yield, stop."""
    server = started(cfg)
    try:
        yield server
    finally:
        server.stop()


async def call(
    address: str,
    method: str,
    request: Any,
    *,
    timeout: float = 10.0,
    metadata: tuple[tuple[str, str], ...] | None = None,
    credentials: grpc.ChannelCredentials | None = None,
) -> Any:
    """One StrategyService call through the generated stub on a fresh grpc.aio channel."""
    if credentials is None:
        channel = grpc.aio.insecure_channel(address)
    else:
        channel = grpc.aio.secure_channel(address, credentials)
    async with channel:
        stub = pb_grpc.StrategyServiceStub(channel)
        return await getattr(stub, method)(request, timeout=timeout, metadata=metadata)


async def status_of(awaitable: Awaitable[Any]) -> tuple[grpc.StatusCode, str]:
    """The status code and details a call ends with (OK and "" on success)."""
    try:
        await awaitable
    except grpc.aio.AioRpcError as exc:
        return exc.code(), exc.details() or ""
    return grpc.StatusCode.OK, ""


def spec_of(address: str, **kw: Any) -> Any:
    """The server's ModelSpec message."""
    return arun(call(address, "GetModelSpec", pb.GetModelSpecRequest(device_id="dev-spec"), **kw))


def strategy_request(spec: Any, request_id: str = "req-1", **overrides: Any) -> Any:
    """A valid GetStrategyRequest for spec (profile of ones, tier mid at its default budget)."""
    mid = next(t for t in spec.tiers if t.name == "mid")
    fields: dict[str, Any] = {
        "device_id": "dev-1",
        "request_id": request_id,
        "backbone_version": spec.version,
        "tier": "mid",
        "budget_bits": mid.default_budget_bits,
        "profile": [0.5] * spec.profile_dim,
    }
    fields.update(overrides)
    return pb.GetStrategyRequest(**fields)


def domain_request(spec: ModelSpec, request_id: str = "req-1", **overrides: Any) -> StrategyRequest:
    """strategy_request's twin in domain terms, for the Transport (mid tier, profile of ones)."""
    mid = spec.tier_map["mid"]
    fields: dict[str, Any] = {
        "device_id": "dev-1",
        "request_id": request_id,
        "backbone_version": spec.version,
        "tier": "mid",
        "budget_bits": mid.default_budget_bits,
        "profile": np.full(spec.profile_dim, 0.5, dtype=np.float32),
    }
    fields.update(overrides)
    return StrategyRequest(**fields)


async def wait_serving(address: str, timeout_s: float = 60.0) -> None:
    """Poll the standard health service until the strategy service reports SERVING."""
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    loop = asyncio.get_running_loop()
    until = loop.time() + timeout_s
    async with grpc.aio.insecure_channel(address) as ch:
        stub = health_pb2_grpc.HealthStub(ch)
        request = health_pb2.HealthCheckRequest(service="chord.v1.StrategyService")
        while True:
            try:
                reply = await stub.Check(request, timeout=2)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.aio.AioRpcError:
                pass
            if loop.time() > until:
                raise TimeoutError(f"{address} did not report SERVING within {timeout_s} s")
            await asyncio.sleep(0.05)
