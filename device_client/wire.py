"""The device's only contact with protobuf: message <-> device-side types, in to/from pairs."""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import numpy as np

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
    """What a device learns from GetModelSpec: how to get the backbone and how to read codes."""

    kind: str
    mode: str
    config_json: str
    seed: int
    weights_uri: str
    weights_bytes: int
    version: str
    layers: tuple[LayerInfo, ...]
    n_channels: int
    tiers: dict[str, Tier]
    profile_dim: int
    max_recent_items: int
    n_items: int
    reference: np.ndarray | None = None  # float16 [n_channels] reference importance, if offered
    reference_id: str = ""
    level_cost: LevelCost | None = None  # the server's rate-distortion table, if it uses one
    generator: str = ""  # random mode with a mask: the named weight generator
    weights_checksum: str = ""  # version hash of the rebuilt, unmasked weights
    mask_id: str = ""  # hex SHA-256 of the mask artifact ("" = no mask)
    mask_bytes: int = 0
    mask_uri: str = ""  # where the artifact lives until the artifact download serves it

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
    """ModelSpec -> DeviceSpec; unknown kinds or modes raise WireError."""
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
        weights_uri=msg.weights_uri,
        weights_bytes=int(msg.weights_bytes),
        version=msg.version,
        layers=tuple(LayerInfo(x.name, int(x.n_channels), int(x.channel_size)) for x in msg.layers),
        n_channels=int(msg.n_channels),
        tiers=tiers,
        profile_dim=int(msg.profile_dim),
        max_recent_items=int(msg.max_recent_items),
        n_items=int(msg.n_items),
        reference=_reference_from_proto(msg),
        reference_id=msg.reference_id if msg.reference_importance else "",
        level_cost=_level_cost_from_proto(msg),
        generator=msg.generator,
        weights_checksum=msg.weights_checksum,
        mask_id=msg.mask_id,
        mask_bytes=int(msg.mask_bytes),
        mask_uri=msg.mask_uri,
    )


def _reference_from_proto(msg: pb.ModelSpec) -> np.ndarray | None:
    """The spec's float16 reference importance, checked against its length and id."""
    raw = bytes(msg.reference_importance)
    if not raw:
        return None
    if len(raw) != 2 * msg.n_channels:
        raise WireError(
            f"ModelSpec.reference_importance has {len(raw)} bytes; {msg.n_channels} channels "
            f"need {2 * msg.n_channels} (one float16 each)"
        )
    if f"{zlib.crc32(raw + bytes(msg.level_cost)):08x}" != msg.reference_id:
        raise WireError(
            f"ModelSpec.reference_importance and level_cost do not match the reference_id "
            f"{msg.reference_id!r}"
        )
    return np.frombuffer(raw, dtype="<f2").copy()


def _level_cost_from_proto(msg: pb.ModelSpec) -> LevelCost | None:
    """The spec's rate-distortion table bound to its layers, or None when it sends none."""
    raw = bytes(msg.level_cost)
    if not raw:
        return None
    channels = [int(x.n_channels) for x in msg.layers]
    weights = [int(x.n_channels) * int(x.channel_size) for x in msg.layers]
    if sum(channels) != msg.n_channels:
        raise WireError(
            f"ModelSpec.level_cost needs layers covering all {msg.n_channels} channels; "
            f"the spec's layers cover {sum(channels)}"
        )
    try:
        return LevelCost.from_bytes(raw, channels, weights)
    except LevelCostError as exc:
        raise WireError(f"ModelSpec.level_cost: {exc}") from exc


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
