"""The one home of the wire format: domain types <-> chord.v1 protobuf messages, in pairs.

Server, device, simulator and benchmarks all map messages here, and no other module imports
the generated `protos.chord.v1` code (an import-linter contract checks it). Protobuf classes
carry a `Proto` prefix so they are never mistaken for the domain types of `chord.spec` and
`chord.strategy`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from google.protobuf.message import DecodeError

from chord.artifacts import ArtifactChunk, ArtifactRef, ArtifactRequest
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
from protos.chord.v1.strategy_pb2 import DESCRIPTOR as ProtoFileDescriptor
from protos.chord.v1.strategy_pb2 import ArtifactChunk as ProtoArtifactChunk
from protos.chord.v1.strategy_pb2 import ArtifactKind as ProtoArtifactKind
from protos.chord.v1.strategy_pb2 import ArtifactRef as ProtoArtifactRef
from protos.chord.v1.strategy_pb2 import BackboneKind as ProtoBackboneKind
from protos.chord.v1.strategy_pb2 import BackboneMode as ProtoBackboneMode
from protos.chord.v1.strategy_pb2 import CodeEncoding as ProtoCodeEncoding
from protos.chord.v1.strategy_pb2 import DeviceMetrics as ProtoDeviceMetrics
from protos.chord.v1.strategy_pb2 import FetchArtifactRequest as ProtoFetchArtifactRequest
from protos.chord.v1.strategy_pb2 import GetModelSpecRequest as ProtoGetModelSpecRequest
from protos.chord.v1.strategy_pb2 import GetStrategyReply as ProtoGetStrategyReply
from protos.chord.v1.strategy_pb2 import GetStrategyRequest as ProtoGetStrategyRequest
from protos.chord.v1.strategy_pb2 import LayerSpec as ProtoLayerSpec
from protos.chord.v1.strategy_pb2 import ModelSpec as ProtoModelSpec
from protos.chord.v1.strategy_pb2 import ReportMetricsReply as ProtoReportMetricsReply
from protos.chord.v1.strategy_pb2 import ReportMetricsRequest as ProtoReportMetricsRequest
from protos.chord.v1.strategy_pb2 import ServerTimings as ProtoServerTimings
from protos.chord.v1.strategy_pb2 import TierSpec as ProtoTierSpec
from protos.chord.v1.strategy_pb2_grpc import (
    StrategyServiceServicer as ProtoStrategyServiceServicer,
)
from protos.chord.v1.strategy_pb2_grpc import StrategyServiceStub as ProtoStrategyServiceStub

__all__ = [
    "METHOD_CODECS",
    "SERVICE_NAME",
    "STREAM_METHOD_CODECS",
    "MalformedMessage",
    "ProtoStrategyServiceServicer",
    "ProtoStrategyServiceStub",
    "SerdeError",
    "artifact_chunk_from_proto",
    "artifact_chunk_to_proto",
    "artifact_ref_from_proto",
    "artifact_ref_to_proto",
    "artifact_request_from_proto",
    "artifact_request_to_proto",
    "device_report_from_proto",
    "device_report_to_proto",
    "model_spec_from_proto",
    "model_spec_request_from_proto",
    "model_spec_request_to_proto",
    "model_spec_to_proto",
    "report_outcome_from_proto",
    "report_outcome_to_proto",
    "strategy_request_from_proto",
    "strategy_request_to_proto",
    "strategy_result_from_proto",
    "strategy_result_to_proto",
]

# Fully qualified gRPC service name ("chord.v1.StrategyService"), for health and reflection.
SERVICE_NAME: str = ProtoFileDescriptor.services_by_name["StrategyService"].full_name

# Domain names -> wire enums; UNSPECIFIED (0) never leaves the server.
_KIND_TO_PROTO = {
    "sasrec": ProtoBackboneKind.BACKBONE_KIND_SASREC,
    "caser": ProtoBackboneKind.BACKBONE_KIND_CASER,
}
_MODE_TO_PROTO = {
    "random": ProtoBackboneMode.BACKBONE_MODE_RANDOM,
    "pretrained": ProtoBackboneMode.BACKBONE_MODE_PRETRAINED,
}
_ENCODING_TO_PROTO = {
    "packed2": ProtoCodeEncoding.CODE_ENCODING_PACKED2,
    "packed2+deflate": ProtoCodeEncoding.CODE_ENCODING_PACKED2_DEFLATE,
    "delta2+deflate": ProtoCodeEncoding.CODE_ENCODING_DELTA2_DEFLATE,
}
_ARTIFACT_KIND_TO_PROTO = {
    "backbone_weights": ProtoArtifactKind.ARTIFACT_KIND_BACKBONE_WEIGHTS,
    "shared_mask": ProtoArtifactKind.ARTIFACT_KIND_SHARED_MASK,
    "reference_data": ProtoArtifactKind.ARTIFACT_KIND_REFERENCE_DATA,
}
_TIMING_KEYS = ("queue_ms", "model_ms", "total_ms")


_MAX_UINT32 = 0xFFFFFFFF


def _micros(ms: float) -> int:
    """Milliseconds -> whole microseconds for the wire, clamped to uint32 (71 minutes)."""
    return min(max(round(ms * 1e3), 0), _MAX_UINT32)


class SerdeError(ValueError):
    """A wire message that has no domain equivalent (e.g. an unspecified enum)."""


@dataclass(frozen=True)
class MalformedMessage:
    """What a tolerant parser returns for bytes that are not a valid message."""

    type_name: str  # fully qualified protobuf type the bytes should have been
    reason: str  # the parser's complaint


def _tolerant(cls: Any) -> Callable[[bytes], Any]:
    """A request parser that returns MalformedMessage instead of raising on corrupt bytes."""
    type_name = cls.DESCRIPTOR.full_name

    def parse(data: bytes) -> Any:
        try:
            return cls.FromString(data)
        except DecodeError as exc:
            return MalformedMessage(type_name, str(exc))

    return parse


def _inverse(table: Mapping[str, int], value: int, what: str) -> str:
    """Look a wire enum number up in a name -> number table."""
    for name, number in table.items():
        if number == value:
            return name
    raise SerdeError(f"{what} {value} is not one of {sorted(table.values())}; send {what} set")


def model_spec_request_to_proto(device_id: str) -> ProtoGetModelSpecRequest:
    """The GetModelSpec request of a device."""
    return ProtoGetModelSpecRequest(device_id=device_id)


def model_spec_request_from_proto(msg: ProtoGetModelSpecRequest) -> str:
    """The device id a GetModelSpec request carries."""
    return str(msg.device_id)


def artifact_ref_to_proto(ref: ArtifactRef) -> ProtoArtifactRef:
    """Domain ArtifactRef -> wire ArtifactRef."""
    return ProtoArtifactRef(
        digest=ref.digest,
        kind=_ARTIFACT_KIND_TO_PROTO[ref.kind],
        size_bytes=ref.size_bytes,
        format=ref.format,
    )


def artifact_ref_from_proto(msg: ProtoArtifactRef) -> ArtifactRef:
    """Wire ArtifactRef -> domain ArtifactRef; SerdeError for an unknown kind or a bad field."""
    kind = _inverse(_ARTIFACT_KIND_TO_PROTO, msg.kind, "artifact kind")
    try:
        return ArtifactRef(msg.digest, kind, int(msg.size_bytes), msg.format)
    except ValueError as exc:
        raise SerdeError(f"ModelSpec.artifacts: {exc}") from exc


def artifact_request_to_proto(req: ArtifactRequest) -> ProtoFetchArtifactRequest:
    """Domain ArtifactRequest -> wire FetchArtifactRequest."""
    return ProtoFetchArtifactRequest(
        digest=req.digest, offset=req.offset, max_chunk_bytes=req.max_chunk_bytes
    )


def artifact_request_from_proto(msg: ProtoFetchArtifactRequest) -> ArtifactRequest:
    """Wire FetchArtifactRequest -> domain ArtifactRequest (checked later by validation)."""
    return ArtifactRequest(
        digest=msg.digest, offset=int(msg.offset), max_chunk_bytes=int(msg.max_chunk_bytes)
    )


def artifact_chunk_to_proto(chunk: ArtifactChunk) -> ProtoArtifactChunk:
    """Domain ArtifactChunk -> wire ArtifactChunk."""
    return ProtoArtifactChunk(offset=chunk.offset, data=chunk.data, total_size=chunk.total_size)


def artifact_chunk_from_proto(msg: ProtoArtifactChunk) -> ArtifactChunk:
    """Wire ArtifactChunk -> domain ArtifactChunk (the downloader checks offsets and sizes)."""
    return ArtifactChunk(
        offset=int(msg.offset), data=bytes(msg.data), total_size=int(msg.total_size)
    )


def model_spec_to_proto(spec: ModelSpec) -> ProtoModelSpec:
    """Domain ModelSpec -> wire ModelSpec."""
    return ProtoModelSpec(
        kind=_KIND_TO_PROTO[spec.kind],
        mode=_MODE_TO_PROTO[spec.mode],
        config_json=spec.config_json,
        seed=spec.seed,
        version=spec.version,
        layers=[
            ProtoLayerSpec(name=x.name, n_channels=x.n_channels, channel_size=x.channel_size)
            for x in spec.layers
        ],
        n_channels=spec.n_channels,
        tiers=[
            ProtoTierSpec(
                name=t.name,
                level_bits=list(t.level_bits),
                default_budget_bits=t.default_budget_bits,
                min_budget_bits=t.min_budget_bits,
                max_budget_bits=t.max_budget_bits,
            )
            for t in spec.tiers
        ],
        profile_dim=spec.profile_dim,
        max_recent_items=spec.max_recent_items,
        n_items=spec.n_items,
        reference_id=spec.reference_id,
        artifacts=[artifact_ref_to_proto(a) for a in spec.artifacts],
        generator=spec.generator,
        weights_checksum=spec.weights_checksum,
    )


def model_spec_from_proto(msg: ProtoModelSpec) -> ModelSpec:
    """Wire ModelSpec -> domain ModelSpec."""
    tiers = []
    for t in msg.tiers:
        bits = tuple(int(b) for b in t.level_bits)
        if len(bits) != 4:
            raise SerdeError(f"tier {t.name!r} has {len(bits)} level_bits; send exactly 4")
        tiers.append(
            TierSpec(
                name=t.name,
                level_bits=(bits[0], bits[1], bits[2], bits[3]),
                default_budget_bits=t.default_budget_bits,
                min_budget_bits=t.min_budget_bits,
                max_budget_bits=t.max_budget_bits,
            )
        )
    return ModelSpec(
        kind=_inverse(_KIND_TO_PROTO, msg.kind, "kind"),
        mode=_inverse(_MODE_TO_PROTO, msg.mode, "mode"),
        config_json=msg.config_json,
        seed=int(msg.seed),
        version=msg.version,
        layers=tuple(
            LayerSpec(name=x.name, n_channels=int(x.n_channels), channel_size=int(x.channel_size))
            for x in msg.layers
        ),
        n_channels=int(msg.n_channels),
        tiers=tuple(tiers),
        profile_dim=int(msg.profile_dim),
        max_recent_items=int(msg.max_recent_items),
        n_items=int(msg.n_items),
        reference_id=msg.reference_id,
        artifacts=tuple(artifact_ref_from_proto(a) for a in msg.artifacts),
        generator=msg.generator,
        weights_checksum=msg.weights_checksum,
    )


def strategy_request_to_proto(req: StrategyRequest) -> ProtoGetStrategyRequest:
    """Domain StrategyRequest -> wire GetStrategyRequest (None profile/items -> empty lists)."""
    msg = ProtoGetStrategyRequest(
        device_id=req.device_id,
        request_id=req.request_id,
        backbone_version=req.backbone_version,
        tier=req.tier,
        budget_bits=req.budget_bits,
        reference_id=req.reference_id,
    )
    if req.profile is not None:
        msg.profile.extend(np.asarray(req.profile, dtype=np.float32).tolist())
    if req.recent_items is not None:
        msg.recent_items.extend(np.asarray(req.recent_items, dtype=np.int64).tolist())
    return msg


def strategy_request_from_proto(msg: ProtoGetStrategyRequest) -> StrategyRequest:
    """Wire GetStrategyRequest -> domain StrategyRequest (empty lists -> None)."""
    profile = np.array(msg.profile, dtype=np.float32) if len(msg.profile) else None
    items = np.array(msg.recent_items, dtype=np.int64) if len(msg.recent_items) else None
    return StrategyRequest(
        device_id=msg.device_id,
        request_id=msg.request_id,
        backbone_version=msg.backbone_version,
        tier=msg.tier,
        budget_bits=msg.budget_bits,
        profile=profile,
        recent_items=items,
        reference_id=msg.reference_id,
    )


def strategy_result_to_proto(result: StrategyResult) -> ProtoGetStrategyReply:
    """Domain StrategyResult -> wire GetStrategyReply (timings: *_ms, batch_size, worker)."""
    code = result.code
    if code.encoding not in _ENCODING_TO_PROTO:
        raise SerdeError(
            f"code encoding {code.encoding!r} has no wire form; "
            f"use one of {sorted(_ENCODING_TO_PROTO)}"
        )
    msg = ProtoGetStrategyReply(
        request_id=result.request_id,
        codes=code.payload,
        n_channels=code.n_channels,
        crc32=code.crc32,
        version=code.version,
        encoding=_ENCODING_TO_PROTO[code.encoding],
        level_counts=list(result.level_counts),
        avg_bits=result.avg_bits,
    )
    if result.timings:
        t = result.timings
        msg.timings.CopyFrom(
            ProtoServerTimings(
                queue_us=_micros(t.get("queue_ms", 0.0)),
                model_us=_micros(t.get("model_ms", 0.0)),
                total_us=_micros(t.get("total_ms", 0.0)),
                batch_size=int(t.get("batch_size", 0)),
                worker=int(t.get("worker", 0)),
            )
        )
    return msg


def server_timings_from_reply(msg: ProtoGetStrategyReply) -> dict[str, float]:
    """A reply's server timings ({} when absent): *_ms, batch_size and worker, as floats.

    Cheap enough for a load generator to call on every reply (the code is not touched).
    """
    if not msg.HasField("timings"):
        return {}
    t = msg.timings
    timings = {k: getattr(t, f"{k[:-3]}_us") / 1e3 for k in _TIMING_KEYS}
    timings["batch_size"] = float(t.batch_size)
    timings["worker"] = float(t.worker)
    return timings


def strategy_result_from_proto(msg: ProtoGetStrategyReply) -> StrategyResult:
    """Wire GetStrategyReply -> domain StrategyResult (the code is not decoded here)."""
    counts = tuple(int(c) for c in msg.level_counts)
    if len(counts) != 4:
        raise SerdeError(f"reply has {len(counts)} level_counts; expected exactly 4")
    timings = server_timings_from_reply(msg)
    return StrategyResult(
        request_id=msg.request_id,
        code=EncodedStrategy(
            payload=bytes(msg.codes),
            n_channels=int(msg.n_channels),
            crc32=int(msg.crc32),
            version=msg.version,
            encoding=_inverse(_ENCODING_TO_PROTO, msg.encoding, "encoding"),
        ),
        level_counts=(counts[0], counts[1], counts[2], counts[3]),
        avg_bits=float(msg.avg_bits),
        timings=timings,
    )


_METRIC_FIELDS = tuple(f.name for f in ProtoDeviceMetrics.DESCRIPTOR.fields)


def device_report_to_proto(report: DeviceReport) -> ProtoReportMetricsRequest:
    """Domain DeviceReport -> wire ReportMetricsRequest."""
    msg = ProtoReportMetricsRequest(
        device_id=report.device_id, round=report.round, tier=report.tier
    )
    if report.metrics is not None:
        m = report.metrics
        msg.metrics.CopyFrom(ProtoDeviceMetrics(**{k: getattr(m, k) for k in _METRIC_FIELDS}))
    return msg


def device_report_from_proto(msg: ProtoReportMetricsRequest) -> DeviceReport:
    """Wire ReportMetricsRequest -> domain DeviceReport (no metrics message -> None)."""
    metrics = None
    if msg.HasField("metrics"):
        m = msg.metrics
        metrics = DeviceMetrics(
            hr5=m.hr5,
            hr10=m.hr10,
            ndcg5=m.ndcg5,
            ndcg10=m.ndcg10,
            adapt_ms=m.adapt_ms,
            infer_ms=m.infer_ms,
            rpc_ms=m.rpc_ms,
            bytes_up=int(m.bytes_up),
            bytes_down=int(m.bytes_down),
            avg_bits=m.avg_bits,
        )
    return DeviceReport(
        device_id=msg.device_id, round=int(msg.round), tier=msg.tier, metrics=metrics
    )


def report_outcome_to_proto(outcome: ReportOutcome) -> ProtoReportMetricsReply:
    """Domain ReportOutcome -> wire ReportMetricsReply."""
    return ProtoReportMetricsReply(accepted=outcome.accepted, duplicate=outcome.duplicate)


def report_outcome_from_proto(msg: ProtoReportMetricsReply) -> ReportOutcome:
    """Wire ReportMetricsReply -> domain ReportOutcome."""
    return ReportOutcome(accepted=msg.accepted, duplicate=msg.duplicate)


# Method name -> (tolerant request parser, reply serializer), for the server's method handlers.
METHOD_CODECS: dict[str, tuple[Callable[[bytes], Any], Callable[[Any], bytes]]] = {
    "GetModelSpec": (_tolerant(ProtoGetModelSpecRequest), ProtoModelSpec.SerializeToString),
    "GetStrategy": (_tolerant(ProtoGetStrategyRequest), ProtoGetStrategyReply.SerializeToString),
    "ReportMetrics": (
        _tolerant(ProtoReportMetricsRequest),
        ProtoReportMetricsReply.SerializeToString,
    ),
}

# Server-streaming methods: name -> (tolerant request parser, serializer of each streamed message).
STREAM_METHOD_CODECS: dict[str, tuple[Callable[[bytes], Any], Callable[[Any], bytes]]] = {
    "FetchArtifact": (
        _tolerant(ProtoFetchArtifactRequest),
        ProtoArtifactChunk.SerializeToString,
    ),
}
