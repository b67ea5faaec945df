"""Delta codes end to end: the spec's reference, the server's choice and the device's decode."""

from __future__ import annotations

import dataclasses
import zlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from chord.artifacts import REFERENCE_FORMAT, reference_from_artifact, reference_to_artifact
from chord.artifacts.container import ArtifactFormatError
from chord.codes import ENCODING_DELTA, decode_levels, packed_length, reference_levels
from chord.hyper.runs import RunConfig, prepare_run
from cloud_server.config import ServerConfig
from cloud_server.embedded import EmbeddedServer
from device_client.artifacts import ArtifactCache, fetch_spec_artifacts
from device_client.device import DeviceJob, VirtualDevice
from device_client.transport import RetryPolicy, Transport
from device_client.wire import (
    DeviceSpec,
    WireError,
    level_cost_for,
    spec_from_proto,
    strategy_reply_from_proto,
)
from protos.chord.v1 import strategy_pb2 as pb
from simulator.runner import load_users
from tests.server_fixtures import strategy_request

QUICK = RetryPolicy(call_timeout_s=5.0, overall_timeout_s=5.0, max_attempts=3)


@pytest.fixture(scope="module")
def server(
    smoke_run_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[EmbeddedServer]:
    """A rate-distortion run on the smoke backbone (its measured prior keeps levels near the
    reference), on a free port."""
    cfg = RunConfig.preset(
        "smoke", dataset="ml-100k", backbone="sasrec", mode="pretrained", seed=0,
        hyper_steps=5, backbone_path=str(smoke_run_dir / "backbone.pt"),
    )
    run_dir = prepare_run(cfg, tmp_path_factory.mktemp("prior-run"))
    srv = EmbeddedServer(ServerConfig(run_dir=run_dir, grace_s=0.2)).start()
    yield srv
    srv.stop()


def _ask(
    server: EmbeddedServer, reference_id: str, rid: str
) -> tuple[pb.ModelSpec, pb.GetStrategyReply]:
    """The spec, and one mid-tier strategy for a fixed profile naming `reference_id`."""
    t = Transport(server.address, QUICK)
    spec, _ = t.get_model_spec(pb.GetModelSpecRequest())
    profile = np.random.default_rng(3).normal(size=spec.profile_dim).tolist()
    req = strategy_request(spec, rid, profile=profile, reference_id=reference_id)
    reply, _ = t.get_strategy(req)
    return spec, reply


def _device_spec(server: EmbeddedServer, spec: pb.ModelSpec, cache: Path) -> DeviceSpec:
    """The device's view of `spec` once its artifacts (the reference data) are fetched."""
    transport = Transport(server.address, QUICK)
    return fetch_spec_artifacts(transport, spec_from_proto(spec), ArtifactCache(cache)).spec


def test_spec_publishes_a_checked_reference(server: EmbeddedServer, tmp_path: Path) -> None:
    spec, _ = _ask(server, "", "plain-0")
    refs = [a for a in spec.artifacts if a.kind == pb.ARTIFACT_KIND_REFERENCE_DATA]
    assert len(refs) == 1 and refs[0].format == REFERENCE_FORMAT
    device_spec = _device_spec(server, spec, tmp_path)
    assert device_spec.reference is not None and device_spec.reference.shape == (spec.n_channels,)
    assert device_spec.level_cost is not None
    assert device_spec.level_cost.layer_channels == tuple(x.n_channels for x in spec.layers)
    raw = device_spec.reference.astype("<f2").tobytes() + device_spec.level_cost.to_bytes()
    assert spec.reference_id == f"{zlib.crc32(raw):08x}"


def test_delta_reply_decodes_to_the_same_levels(server: EmbeddedServer, tmp_path: Path) -> None:
    spec, plain = _ask(server, "", "plain-1")
    _, delta = _ask(server, spec.reference_id, "delta-1")
    _, stale = _ask(server, "0badc0de", "stale-1")
    dspec = _device_spec(server, spec, tmp_path)
    assert dspec.reference is not None
    tier = dspec.tiers["mid"]
    budget = next(t.default_budget_bits for t in spec.tiers if t.name == "mid")
    ref = reference_levels(dspec.reference, dspec.channel_sizes(), tier, budget, dspec.level_cost)
    want = decode_levels(strategy_reply_from_proto(plain).code, spec.version, spec.n_channels)
    code = strategy_reply_from_proto(delta).code
    assert code.encoding == ENCODING_DELTA  # a prior-led smoke run stays close to its reference
    assert len(code.payload) < min(len(plain.codes), packed_length(spec.n_channels))
    np.testing.assert_array_equal(decode_levels(code, spec.version, spec.n_channels, ref), want)
    # A reference the server does not know gets the plain code.
    assert strategy_reply_from_proto(stale).code.encoding != ENCODING_DELTA
    assert stale.codes == plain.codes


def test_device_uses_delta_codes(server: EmbeddedServer) -> None:
    users = load_users("ml-100k")[0]
    job = DeviceJob(
        device_id="delta-dev", user_index=7, sequence=users[7], tier="low", budget_bits=2.5,
        rounds=2, interactions_per_round=2, request_tag="delta",
    )
    spec, _ = _ask(server, "", "plain-2")
    report = VirtualDevice(job, Transport(server.address, QUICK)).run()
    assert (report.status, report.reason) == ("completed", ""), report.detail
    # Every round decoded (a wrong reference would fail the checksum and fall back).
    assert [r.strategy_source for r in report.rounds] == ["cloud", "cloud"]
    assert all(r.code_bytes < packed_length(spec.n_channels) // 2 for r in report.rounds)


def test_tampered_reference_is_refused(server: EmbeddedServer, tmp_path: Path) -> None:
    spec, _ = _ask(server, "", "plain-3")
    dspec = _device_spec(server, spec, tmp_path)
    assert dspec.reference is not None and dspec.level_cost is not None
    n, layers = spec.n_channels, len(spec.layers)
    importance, cost = dspec.reference.copy(), dspec.level_cost.to_bytes()

    def refused(match: str, imp: np.ndarray, table: bytes, rid: str = spec.reference_id) -> None:
        data = reference_to_artifact(imp, table, layers).data
        with pytest.raises(ArtifactFormatError, match=match):
            reference_from_artifact(data, rid, n, layers)

    flipped = importance.copy()
    flipped[5] = -flipped[5] + 1
    refused("the spec names", flipped, cost)
    refused(r"'importance' F16", importance[:-1], cost)
    # The level cost is covered too: a device with another table would derive other levels.
    bumped = bytearray(cost)
    bumped[7] ^= 0x01
    refused("the spec names", importance, bytes(bumped))
    short = cost[: 4 * 8 * (layers - 1)]
    with pytest.raises(ValueError, match="layers need"):
        reference_to_artifact(importance, short, layers)
    with pytest.raises(WireError, match="layers covering all"):
        level_cost_for(dataclasses.replace(dspec, n_channels=n + 1), cost)
