"""The device's only contact with protobuf: message <-> device-side types, in to/from pairs."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from chord.artifacts import ArtifactChunk, ArtifactRef, ArtifactRequest
from chord.budget import Tier
from chord.codes import EncodedStrategy
from chord.level_cost import LevelCost, LevelCostError
from protos.chord.v1 import strategy_pb2 as pb

# The figures a device reports, straight from the wire schema so the two never drift apart.
METRIC_FIELDS = tuple(f.name for f in pb.DeviceMetrics.DESCRIPTOR.fields)
_COUNT_METRICS = frozenset(
    f.name for f in pb.DeviceMetrics.DESCRIPTOR.fields if f.type == f.TYPE_UINT64
)
_KIND_NAMES = {pb.BACKBONE_KIND_SASREC: "sasrec", pb.BACKBONE_KIND_CASER: "caser"}
_MODE_NAMES = {pb.BACKBONE_MODE_RANDOM: "random", pb.BACKBONE_MODE_PRETRAINED: "pretrained"}
_ARTIFACT_KIND_NAMES = {
    pb.ARTIFACT_KIND_BACKBONE_WEIGHTS: "backbone_weights",
    pb.ARTIFACT_KIND_SHARED_MASK: "shared_mask",
    pb.ARTIFACT_KIND_REFERENCE_DATA: "reference_data",
}
_ENCODING_NAMES = {
    pb.CODE_ENCODING_PACKED2: "packed2",
    pb.CODE_ENCODING_PACKED2_DEFLATE: "packed2+deflate",
    pb.CODE_ENCODING_DELTA2_DEFLATE: "delta2+deflate",
}


class WireError(ValueError):
    """A server message the device cannot use (unknown enum, missing field)."""


@dataclass(frozen=True)
class LayerInfo:
    """One quantizable weight as the server describes it."""

    name: str
    n_channels: int
    channel_size: int


@dataclass(frozen=True)
class DeviceSpec:
    """What a device learns from GetModelSpec (and the artifacts it lists): how to get the
    backbone and how to read codes."""

    kind: str
    mode: str
    config_json: str
    seed: int
    version: str
    layers: tuple[LayerInfo, ...]
    n_channels: int
    tiers: dict[str, Tier]
    profile_dim: int
    max_recent_items: int
    n_items: int
    reference_id: str = ""  # the spec's reference id; "" until the reference artifact is held
    artifacts: tuple[ArtifactRef, ...] = ()  # what to fetch with FetchArtifact
    # Filled from the REFERENCE_DATA artifact once fetched (device_client.artifacts):
    reference: np.ndarray | None = None  # float16 [n_channels] reference importance
    level_cost: LevelCost | None = None  # the server's rate-distortion table, if it uses one

    def artifact(self, kind: str) -> ArtifactRef | None:
        """The listed artifact of this kind, or None."""
        return next((a for a in self.artifacts if a.kind == kind), None)

    def channel_sizes(self) -> np.ndarray:
        """Weights per channel, in channel order (int64 [n_channels])."""
        if not self.layers:
            return np.ones(self.n_channels, dtype=np.int64)
        return np.concatenate(
            [np.full(layer.n_channels, layer.channel_size, dtype=np.int64) for layer in self.layers]
        )


@dataclass(frozen=True)
class StrategyReply:
    """A decoded-from-wire (not yet verified) strategy reply."""

    request_id: str
    code: EncodedStrategy
    level_counts: tuple[int, ...]
    avg_bits: float
    server_total_ms: float
    batch_size: int


def spec_from_proto(msg: pb.ModelSpec) -> DeviceSpec:
    """ModelSpec -> DeviceSpec; unknown kinds, modes or artifact kinds raise WireError.

    The reference importance is not in the spec: it arrives as the REFERENCE_DATA artifact,
    and `with_reference` adds it.
    """
    if msg.kind not in _KIND_NAMES:
        raise WireError(f"ModelSpec.kind {msg.kind} is not a backbone this device can build")
    if msg.mode not in _MODE_NAMES:
        raise WireError(f"ModelSpec.mode {msg.mode} is neither RANDOM nor PRETRAINED")
    tiers = {}
    for t in msg.tiers:
        if len(t.level_bits) != 4:
            raise WireError(f"tier {t.name!r} has {len(t.level_bits)} level bits, expected 4")
        lb = tuple(int(b) for b in t.level_bits)
        tiers[t.name] = Tier(t.name, (lb[0], lb[1], lb[2], lb[3]), float(t.default_budget_bits))
    return DeviceSpec(
        kind=_KIND_NAMES[msg.kind],
        mode=_MODE_NAMES[msg.mode],
        config_json=msg.config_json,
        seed=int(msg.seed),
        version=msg.version,
        layers=tuple(LayerInfo(x.name, int(x.n_channels), int(x.channel_size)) for x in msg.layers),
        n_channels=int(msg.n_channels),
        tiers=tiers,
        profile_dim=int(msg.profile_dim),
        max_recent_items=int(msg.max_recent_items),
        n_items=int(msg.n_items),
        reference_id=msg.reference_id,
        artifacts=tuple(artifact_ref_from_proto(a) for a in msg.artifacts),
    )


def artifact_ref_from_proto(msg: pb.ArtifactRef) -> ArtifactRef:
    """ArtifactRef message -> ArtifactRef; WireError for an unknown kind or an invalid field."""
    kind = _ARTIFACT_KIND_NAMES.get(msg.kind)
    if kind is None:
        raise WireError(f"ModelSpec.artifacts holds kind {msg.kind}, unknown to this device")
    try:
        return ArtifactRef(msg.digest, kind, int(msg.size_bytes), msg.format)
    except ValueError as exc:
        raise WireError(f"ModelSpec.artifacts: {exc}") from exc


def level_cost_for(spec: DeviceSpec, raw: bytes) -> LevelCost | None:
    """The rate-distortion table (float32 LE [layers x 8]) bound to the spec's layers."""
    if not raw:
        return None
    channels = [x.n_channels for x in spec.layers]
    weights = [x.n_channels * x.channel_size for x in spec.layers]
    if sum(channels) != spec.n_channels:
        raise WireError(
            f"a level cost needs layers covering all {spec.n_channels} channels; "
            f"the spec's layers cover {sum(channels)}"
        )
    try:
        return LevelCost.from_bytes(raw, channels, weights)
    except LevelCostError as exc:
        raise WireError(f"reference level_cost: {exc}") from exc


def artifact_request_to_proto(req: ArtifactRequest) -> pb.FetchArtifactRequest:
    """ArtifactRequest -> FetchArtifactRequest."""
    return pb.FetchArtifactRequest(
        digest=req.digest, offset=req.offset, max_chunk_bytes=req.max_chunk_bytes
    )


def artifact_chunk_from_proto(msg: pb.ArtifactChunk) -> ArtifactChunk:
    """ArtifactChunk message -> ArtifactChunk (the downloader checks offsets and sizes)."""
    return ArtifactChunk(int(msg.offset), bytes(msg.data), int(msg.total_size))


def spec_request_to_proto(device_id: str) -> pb.GetModelSpecRequest:
    """The GetModelSpec request of one device."""
    return pb.GetModelSpecRequest(device_id=device_id)


def strategy_request_to_proto(
    device_id: str,
    request_id: str,
    version: str,
    tier: str,
    budget_bits: float,
    profile: np.ndarray,
    reference_id: str = "",
) -> pb.GetStrategyRequest:
    """A GetStrategy request carrying the user's profile embedding (and the reference held)."""
    return pb.GetStrategyRequest(
        device_id=device_id,
        request_id=request_id,
        backbone_version=version,
        tier=tier,
        budget_bits=float(budget_bits),
        profile=np.asarray(profile, dtype=np.float32).ravel().tolist(),
        reference_id=reference_id,
    )


def strategy_reply_from_proto(msg: pb.GetStrategyReply) -> StrategyReply:
    """GetStrategyReply -> StrategyReply (the code is verified later by decode_levels)."""
    encoding = _ENCODING_NAMES.get(msg.encoding, f"unknown({msg.encoding})")
    code = EncodedStrategy(
        payload=bytes(msg.codes),
        n_channels=int(msg.n_channels),
        crc32=int(msg.crc32),
        version=msg.version,
        encoding=encoding,
    )
    return StrategyReply(
        request_id=msg.request_id,
        code=code,
        level_counts=tuple(int(c) for c in msg.level_counts),
        avg_bits=float(msg.avg_bits),
        server_total_ms=msg.timings.total_us / 1e3,
        batch_size=int(msg.timings.batch_size),
    )


def metrics_report_to_proto(
    device_id: str, round_index: int, tier: str, metrics: dict[str, float]
) -> pb.ReportMetricsRequest:
    """A ReportMetrics request from a round's measured figures."""
    msg = pb.ReportMetricsRequest(device_id=device_id, round=round_index, tier=tier)
    for k in METRIC_FIELDS:
        value = metrics.get(k, 0.0)
        setattr(msg.metrics, k, int(value) if k in _COUNT_METRICS else float(value))
    return msg
