"""TLS and bearer-token authentication of the strategy server."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2

from chord.cli import main
from cloud_server import EmbeddedServer, ServerConfig
from protos.chord.v1 import strategy_pb2 as pb
from protos.chord.v1 import strategy_pb2_grpc as pb_grpc
from tests.server_fixtures import arun, call, spec_of, status_of, strategy_request
from tests.tls_certs import self_signed

TOKEN = "s3cret-token"


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[EmbeddedServer, Path]]:
    """An echo server with TLS and a token."""
    cert, key = self_signed(tmp_path_factory.mktemp("tls"))
    cfg = ServerConfig(echo=True, tls_cert=cert, tls_key=key, token=TOKEN)
    srv = EmbeddedServer(cfg, host="localhost").start()
    yield srv, cert
    srv.stop()


@pytest.fixture(scope="module")
def token_server() -> Iterator[EmbeddedServer]:
    """A plaintext echo server that requires a token."""
    srv = EmbeddedServer(ServerConfig(echo=True, token=TOKEN)).start()
    yield srv
    srv.stop()


AUTH = (("authorization", f"Bearer {TOKEN}"),)


def test_token_required_for_strategy_calls(token_server: EmbeddedServer) -> None:
    address = token_server.address
    spec = spec_of(address, metadata=AUTH)
    req = strategy_request(spec, "tok-1")
    for metadata in (None, (("authorization", "Bearer wrong"),), (("authorization", TOKEN),)):
        code, details = arun(status_of(call(address, "GetStrategy", req, metadata=metadata)))
        assert code == grpc.StatusCode.UNAUTHENTICATED
        assert "authorization: Bearer <token>" in details
    code, _ = arun(
        status_of(call(address, "GetModelSpec", pb.GetModelSpecRequest(), metadata=None))
    )
    assert code == grpc.StatusCode.UNAUTHENTICATED
    reply = arun(call(address, "GetStrategy", req, metadata=AUTH))
    assert reply.request_id == "tok-1"
    assert token_server.service.metrics.count("GetStrategy", "UNAUTHENTICATED") == 3


def test_token_required_for_artifact_downloads(token_server: EmbeddedServer) -> None:
    req = pb.FetchArtifactRequest(digest="sha256:" + "1" * 64)

    async def fetch(metadata: tuple[tuple[str, str], ...] | None) -> None:
        async with grpc.aio.insecure_channel(token_server.address) as ch:
            stream = pb_grpc.StrategyServiceStub(ch).FetchArtifact(
                req, timeout=5, metadata=metadata
            )
            async for _ in stream:
                pass

    code, details = arun(status_of(fetch(None)))
    assert code == grpc.StatusCode.UNAUTHENTICATED and "Bearer" in details
    # With the token the call reaches the store, which does not hold this digest.
    code, details = arun(status_of(fetch(AUTH)))
    assert code == grpc.StatusCode.NOT_FOUND and "ModelSpec.artifacts" in details


def test_health_needs_no_token(token_server: EmbeddedServer) -> None:
    async def check() -> int:
        async with grpc.aio.insecure_channel(token_server.address) as ch:
            reply = await health_pb2_grpc.HealthStub(ch).Check(
                health_pb2.HealthCheckRequest(), timeout=5
            )
            return int(reply.status)

    assert arun(check()) == health_pb2.HealthCheckResponse.SERVING


def test_tls_with_token(tls_server: tuple[EmbeddedServer, Path]) -> None:
    srv, cert = tls_server
    creds = grpc.ssl_channel_credentials(root_certificates=cert.read_bytes())
    with_token = grpc.composite_channel_credentials(
        creds, grpc.access_token_call_credentials(TOKEN)
    )
    spec = spec_of(srv.address, credentials=with_token)
    reply = arun(
        call(srv.address, "GetStrategy", strategy_request(spec, "tls-1"), credentials=with_token)
    )
    assert reply.request_id == "tls-1" and reply.n_channels == spec.n_channels
    # TLS alone is not enough: the token is still checked.
    code, _ = arun(
        status_of(call(srv.address, "GetModelSpec", pb.GetModelSpecRequest(), credentials=creds))
    )
    assert code == grpc.StatusCode.UNAUTHENTICATED


def test_plaintext_client_cannot_talk_to_tls_server(
    tls_server: tuple[EmbeddedServer, Path],
) -> None:
    srv, _ = tls_server
    code, _ = arun(
        status_of(
            call(srv.address, "GetModelSpec", pb.GetModelSpecRequest(), metadata=AUTH, timeout=3)
        )
    )
    assert code == grpc.StatusCode.UNAVAILABLE


def test_config_rejects_half_tls_and_empty_token(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="both --tls-cert and --tls-key"):
        ServerConfig(echo=True, tls_cert=tmp_path / "c.pem")
    with pytest.raises(ValueError, match="non-empty --token"):
        ServerConfig(echo=True, token="")


@pytest.mark.parametrize(
    ("argv", "prefix", "source"),
    [
        (["bench", "load", "--target", "127.0.0.1:1"], "chord bench load",
         "tls_ca (--tls-ca)"),
        (["simulate", "--devices", "2", "--out", "OUT"], "chord simulate",
         "transport.tls_root_ca (--tls-ca)"),
    ],
)
def test_clients_refuse_a_tls_ca_that_is_not_pem(
    argv: list[str], prefix: str, source: str, tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Refused at start in one line naming the file, not on the first TLS handshake."""
    junk = tmp_path / "ca.pem"
    junk.write_text("not a certificate\n")
    argv = [str(tmp_path / "out") if a == "OUT" else a for a in argv]
    assert main([*argv, "--tls-ca", str(junk)]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        f"{prefix}: error: {source} {str(junk)!r} is not a PEM certificate file; send the PEM "
        "root certificate(s) the server's certificate chains to"
    ]


@pytest.mark.parametrize("version", ["v1", "v1alpha"])
def test_reflection_without_token_is_always_unauthenticated(
    version: str, token_server: EmbeddedServer
) -> None:
    """30 streams, each with one request; some used to end INTERNAL instead."""
    method = f"/grpc.reflection.{version}.ServerReflection/ServerReflectionInfo"
    request = reflection_pb2.ServerReflectionRequest(list_services="").SerializeToString()

    async def one() -> tuple[grpc.StatusCode, str]:
        async with grpc.aio.insecure_channel(token_server.address) as ch:
            stream = ch.stream_stream(method)(iter([request]), timeout=10)

            async def drain() -> None:
                async for _ in stream:
                    pass

            return await status_of(drain())

    async def many() -> list[tuple[grpc.StatusCode, str]]:
        return list(await asyncio.gather(*(one() for _ in range(30))))

    results = arun(many())
    assert {code for code, _ in results} == {grpc.StatusCode.UNAUTHENTICATED}, results
    assert all("authorization: Bearer <token>" in details for _, details in results)
