"""Round trips of every serde pair (property-based), and what serde refuses."""

from __future__ import annotations

from typing import TypeVar

import numpy as np
import pytest
from google.protobuf.message import Message
from hypothesis import given, settings
from hypothesis import strategies as st

from chord.artifacts import (
    KINDS,
    MAX_ARTIFACT_BYTES,
    ArtifactChunk,
    ArtifactRef,
    ArtifactRequest,
    sha256_digest,
)
from chord.codes import EncodedStrategy
from chord.spec import (
    DeviceMetrics,
    DeviceReport,
    LayerSpec,
    ModelSpec,
    ReportOutcome,
    TierSpec,
)
from chord.strategy import StrategyRequest, StrategyResult
from protos import serde
from protos.chord.v1 import strategy_pb2 as pb

M = TypeVar("M", bound=Message)

text = st.text(max_size=40)
u32 = st.integers(0, 2**32 - 1)
u64 = st.integers(0, 2**64 - 1)
finite = st.floats(allow_nan=False, allow_infinity=False)
nonneg = st.floats(min_value=0, max_value=1e9, allow_nan=False)
f32 = st.floats(width=32, allow_nan=False)

tier_specs = st.builds(
    TierSpec,
    name=text,
    level_bits=st.tuples(*[st.integers(0, 32)] * 4),
    default_budget_bits=finite,
    min_budget_bits=finite,
    max_budget_bits=finite,
)
artifact_refs = st.builds(
    ArtifactRef,
    digest=st.binary(min_size=1, max_size=8).map(sha256_digest),
    kind=st.sampled_from(KINDS),
    size_bytes=st.integers(1, MAX_ARTIFACT_BYTES),
    format=text.filter(bool),
)
model_specs = st.builds(
    ModelSpec,
    kind=st.sampled_from(["sasrec", "caser"]),
    mode=st.sampled_from(["random", "pretrained"]),
    config_json=text,
    seed=u64,
    version=text,
    layers=st.lists(
        st.builds(LayerSpec, name=text, n_channels=u32, channel_size=u32), max_size=5
    ).map(tuple),
    n_channels=u32,
    tiers=st.lists(tier_specs, max_size=4).map(tuple),
    profile_dim=u32,
    max_recent_items=u32,
    n_items=u32,
    reference_id=text,
    artifacts=st.lists(artifact_refs, max_size=3).map(tuple),
    generator=text,
    weights_checksum=text,
)


@st.composite
def strategy_requests(draw: st.DrawFn) -> StrategyRequest:
    """Requests with a profile, recent items, both or neither."""
    profile = draw(st.none() | st.lists(f32 | st.just(float("nan")), min_size=1, max_size=70))
    items = draw(st.none() | st.lists(u32, min_size=1, max_size=60))
    return StrategyRequest(
        device_id=draw(text),
        request_id=draw(text),
        backbone_version=draw(text),
        tier=draw(text),
        budget_bits=draw(st.floats(allow_nan=False)),
        profile=None if profile is None else np.array(profile, dtype=np.float32),
        recent_items=None if items is None else np.array(items, dtype=np.int64),
        reference_id=draw(text),
    )


@st.composite
def strategy_results(draw: st.DrawFn) -> StrategyResult:
    """Results with any code bytes and optional server timings."""
    timings = draw(
        st.just({})
        | st.builds(
            # The wire carries whole microseconds, so draw times that are.
            lambda q, m, t, b, w: {
                "queue_ms": q / 1e3,
                "model_ms": m / 1e3,
                "total_ms": t / 1e3,
                "batch_size": float(b),
                "worker": float(w),
            },
            u32,
            u32,
            u32,
            st.integers(0, 1000),
            st.integers(0, 255),
        )
    )
    return StrategyResult(
        request_id=draw(text),
        code=EncodedStrategy(
            payload=draw(st.binary(max_size=64)),
            n_channels=draw(u32),
            crc32=draw(u32),
            version=draw(text),
            encoding=draw(st.sampled_from(["packed2", "packed2+deflate", "delta2+deflate"])),
        ),
        level_counts=draw(st.tuples(u32, u32, u32, u32)),
        avg_bits=draw(st.floats(allow_nan=False, allow_infinity=False, width=32)),
        timings=timings,
    )


device_reports = st.builds(
    DeviceReport,
    device_id=text,
    round=u32,
    tier=text,
    metrics=st.none()
    | st.builds(
        DeviceMetrics,
        hr5=finite,
        hr10=finite,
        ndcg5=finite,
        ndcg10=finite,
        adapt_ms=finite,
        infer_ms=finite,
        rpc_ms=finite,
        bytes_up=u64,
        bytes_down=u64,
        avg_bits=finite,
    ),
)


def _wire(msg: M) -> M:
    """A message after a real serialize / parse cycle."""
    return type(msg).FromString(msg.SerializeToString())


@settings(max_examples=60, deadline=None)
@given(model_specs)
def test_model_spec_round_trip(spec: ModelSpec) -> None:
    assert serde.model_spec_from_proto(_wire(serde.model_spec_to_proto(spec))) == spec


@settings(max_examples=80, deadline=None)
@given(strategy_requests())
def test_strategy_request_round_trip(req: StrategyRequest) -> None:
    back = serde.strategy_request_from_proto(_wire(serde.strategy_request_to_proto(req)))
    assert (back.device_id, back.request_id, back.backbone_version, back.tier) == (
        req.device_id,
        req.request_id,
        req.backbone_version,
        req.tier,
    )
    assert back.reference_id == req.reference_id
    assert back.budget_bits == req.budget_bits
    for got, sent in ((back.profile, req.profile), (back.recent_items, req.recent_items)):
        if sent is None:
            assert got is None
        else:
            assert got is not None and got.dtype == sent.dtype
            np.testing.assert_array_equal(got, sent)  # NaN == NaN here, bit-exact floats


@settings(max_examples=80, deadline=None)
@given(strategy_results())
def test_strategy_result_round_trip(result: StrategyResult) -> None:
    assert serde.strategy_result_from_proto(_wire(serde.strategy_result_to_proto(result))) == result


@settings(max_examples=60, deadline=None)
@given(device_reports)
def test_device_report_round_trip(report: DeviceReport) -> None:
    assert serde.device_report_from_proto(_wire(serde.device_report_to_proto(report))) == report


@pytest.mark.parametrize("accepted", [True, False])
@pytest.mark.parametrize("duplicate", [True, False])
def test_report_outcome_round_trip(accepted: bool, duplicate: bool) -> None:
    outcome = ReportOutcome(accepted, duplicate)
    assert serde.report_outcome_from_proto(_wire(serde.report_outcome_to_proto(outcome))) == outcome


@given(st.binary(max_size=8).map(sha256_digest) | text, u64, u32)
def test_artifact_request_round_trip(digest: str, offset: int, chunk: int) -> None:
    req = ArtifactRequest(digest, offset, chunk)
    assert serde.artifact_request_from_proto(_wire(serde.artifact_request_to_proto(req))) == req


@given(u64, st.binary(max_size=64), u64)
def test_artifact_chunk_round_trip(offset: int, data: bytes, total: int) -> None:
    chunk = ArtifactChunk(offset, data, total)
    assert serde.artifact_chunk_from_proto(_wire(serde.artifact_chunk_to_proto(chunk))) == chunk


def test_malformed_artifact_refs_are_refused() -> None:
    good = serde.artifact_ref_to_proto(ArtifactRef(sha256_digest(b"x"), "shared_mask", 1, "f"))
    for field, value, match in (
        ("kind", 0, "artifact kind 0"),
        ("digest", "md5:00", "64 lowercase hex"),
        ("size_bytes", 0, "outside 1.."),
        ("size_bytes", MAX_ARTIFACT_BYTES + 1, "outside 1.."),
        ("format", "", "needs a format"),
    ):
        bad = pb.ArtifactRef()
        bad.CopyFrom(good)
        setattr(bad, field, value)
        with pytest.raises(serde.SerdeError, match=match):
            serde.artifact_ref_from_proto(bad)


@given(text)
def test_model_spec_request_round_trip(device_id: str) -> None:
    msg = _wire(serde.model_spec_request_to_proto(device_id))
    assert serde.model_spec_request_from_proto(msg) == device_id


def test_unspecified_enums_are_refused() -> None:
    with pytest.raises(serde.SerdeError, match="kind 0"):
        serde.model_spec_from_proto(pb.ModelSpec(mode=pb.BACKBONE_MODE_RANDOM))
    reply = pb.GetStrategyReply(level_counts=[1, 2, 3, 4])
    with pytest.raises(serde.SerdeError, match="encoding 0"):
        serde.strategy_result_from_proto(reply)
    with pytest.raises(serde.SerdeError, match="level_counts"):
        serde.strategy_result_from_proto(pb.GetStrategyReply(level_counts=[1]))


def test_unknown_domain_encoding_is_refused() -> None:
    code = EncodedStrategy(b"", 0, 0, "v", "gzip")
    with pytest.raises(serde.SerdeError, match="gzip"):
        serde.strategy_result_to_proto(StrategyResult("r", code, (0, 0, 0, 0), 0.0))


def test_service_name_matches_proto() -> None:
    assert serde.SERVICE_NAME == "chord.v1.StrategyService"
