"""Delta codes end to end: the spec's reference, the server's choice and the device's decode."""

from __future__ import annotations

import dataclasses
import zlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from chord.artifacts import (
    REFERENCE_FORMAT,
    ArtifactFormatError,
    reference_from_artifact,
    reference_to_artifact,
)
from chord.codes import ENCODING_DELTA, decode_levels, packed_length, reference_levels
from chord.hyper.runs import RunConfig, prepare_run
from chord.spec import ModelSpec, SpecError
from chord.strategy import StrategyResult
from cloud_server.config import ServerConfig
from cloud_server.embedded import EmbeddedServer
from device_client.artifacts import ArtifactCache, default_cache_dir, fetch_spec_artifacts
from device_client.device import DeviceJob, VirtualDevice
from device_client.transport import RetryPolicy, Transport
from simulator.runner import load_users
from tests.server_fixtures import domain_request

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
) -> tuple[ModelSpec, StrategyResult]:
    """The spec holding its reference (fetched as an artifact), and one mid-tier strategy for
    a fixed profile naming `reference_id`."""
    t = Transport(server.address, QUICK)
    spec, _ = t.get_model_spec("delta-test")
    spec = fetch_spec_artifacts(t, spec, ArtifactCache(default_cache_dir())).spec
    profile = np.random.default_rng(3).normal(size=spec.profile_dim).astype(np.float32)
    req = domain_request(spec, rid, profile=profile, reference_id=reference_id)
    reply, _ = t.get_strategy(req)
    return spec, reply


def test_spec_publishes_a_checked_reference(server: EmbeddedServer) -> None:
    wire, _ = Transport(server.address, QUICK).get_model_spec("delta-wire")
    # The spec names the reference; its bytes travel once, as an artifact.
    ref = wire.artifact("reference_data")
    assert ref is not None and ref.format == REFERENCE_FORMAT
    assert wire.reference_importance == b"" and wire.offered_reference_id == ""
    spec, _ = _ask(server, "", "plain-0")
    assert spec.offered_reference_id == spec.reference_id == wire.reference_id
    assert len(spec.reference_importance) == 2 * spec.n_channels
    assert len(spec.level_cost) == 4 * 8 * len(spec.layers)
    assert spec.reference_id == f"{zlib.crc32(spec.reference_importance + spec.level_cost):08x}"
    spec.check()
    assert spec.reference is not None and spec.reference.shape == (spec.n_channels,)
    assert spec.cost is not None
    assert spec.cost.layer_channels == tuple(x.n_channels for x in spec.layers)


def test_delta_reply_decodes_to_the_same_levels(server: EmbeddedServer) -> None:
    spec, plain = _ask(server, "", "plain-1")
    _, delta = _ask(server, spec.reference_id, "delta-1")
    _, stale = _ask(server, "0badc0de", "stale-1")
    assert spec.reference is not None
    tier = spec.tier_map["mid"]
    ref = reference_levels(
        spec.reference, spec.channel_sizes(), tier, tier.default_budget_bits, spec.cost
    )
    want = decode_levels(plain.code, spec.version, spec.n_channels)
    code = delta.code
    assert code.encoding == ENCODING_DELTA  # a prior-led smoke run stays close to its reference
    assert len(code.payload) < min(len(plain.code.payload), packed_length(spec.n_channels))
    np.testing.assert_array_equal(decode_levels(code, spec.version, spec.n_channels, ref), want)
    # A reference the server does not know gets the plain code.
    assert stale.code.encoding != ENCODING_DELTA
    assert stale.code.payload == plain.code.payload


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


def _refused(spec: ModelSpec, match: str, **fields: object) -> None:
    """A copy of `spec` with `fields` replaced must be refused with a SpecError like `match`."""
    tampered = dataclasses.replace(spec, **fields)  # type: ignore[arg-type]
    with pytest.raises(SpecError, match=match):
        tampered.check()


def test_tampered_reference_is_refused(server: EmbeddedServer) -> None:
    spec, _ = _ask(server, "", "plain-3")
    raw = bytearray(spec.reference_importance)
    raw[5] ^= 0x10
    _refused(spec, "do not match the reference_id", reference_importance=bytes(raw))
    _refused(spec, "need", reference_importance=bytes(raw[:-2]))
    # The level cost is covered too: a device with another table would derive other levels.
    cost = bytearray(spec.level_cost)
    cost[7] ^= 0x01
    _refused(spec, "do not match the reference_id", level_cost=bytes(cost))
    short = bytes(cost[:-4])
    _refused(spec, r"level_cost: .*float32", level_cost=short,
             reference_id=f"{zlib.crc32(spec.reference_importance + short):08x}")
    _refused(spec, "layers covering all", n_channels=spec.n_channels + 1,
             reference_importance=b"")
    # The artifact's own checks: its CRC must be the spec's id, its tensors the spec's shapes.
    n, layers = spec.n_channels, len(spec.layers)
    importance = np.frombuffer(spec.reference_importance, dtype="<f2")
    good = reference_to_artifact(importance, spec.level_cost, layers).data
    assert reference_from_artifact(good, spec.reference_id, n, layers).reference_id == (
        spec.reference_id
    )
    for imp, table, match in (
        (importance[::-1], spec.level_cost, "the spec names"),
        (importance[:-1], spec.level_cost, r"'importance' F16"),
        (importance, bytes(cost), "the spec names"),
    ):
        with pytest.raises(ArtifactFormatError, match=match):
            reference_from_artifact(reference_to_artifact(imp, table, layers).data,
                                    spec.reference_id, n, layers)
    with pytest.raises(ValueError, match="layers need"):
        reference_to_artifact(importance, spec.level_cost[:-32], layers)
