"""The published model spec and device reports: the domain side of GetModelSpec and ReportMetrics.

The wire mapping (chord.v1 messages <-> these types) lives in `protos/serde.py`; nothing here
knows protobuf. Server and device share these types.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np

from chord.artifacts import ArtifactRef
from chord.levels import LevelCost, LevelCostError, Tier

MODES = ("random", "pretrained")
KINDS = ("sasrec", "caser")


class SpecError(ValueError):
    """A model spec a device cannot use: a reference or level-cost table that does not fit."""


@dataclass(frozen=True)
class LayerSpec:
    """One quantizable weight: its channels are its output rows."""

    name: str
    n_channels: int
    channel_size: int


@dataclass(frozen=True)
class TierSpec:
    """A device tier as published: level -> bits and the budgets it can reach."""

    name: str
    level_bits: tuple[int, int, int, int]
    default_budget_bits: float
    min_budget_bits: float
    max_budget_bits: float


@dataclass(frozen=True)
class ModelSpec:
    """Everything a device needs to rebuild the frozen backbone and ask for strategies."""

    kind: str  # "sasrec" or "caser"
    mode: str  # "random" or "pretrained"
    config_json: str
    seed: int
    version: str
    layers: tuple[LayerSpec, ...]
    n_channels: int
    tiers: tuple[TierSpec, ...]
    profile_dim: int
    max_recent_items: int
    n_items: int
    reference_id: str = ""  # CRC32 of reference_importance + level_cost, 8 hex; "" = none offered
    artifacts: tuple[ArtifactRef, ...] = ()  # what a device downloads with FetchArtifact
    # The reference held, not sent in the spec: the server fills these from its run, a device
    # from the REFERENCE_DATA artifact once fetched (chord.artifacts.reference_from_artifact).
    reference_importance: bytes = b""  # float16 LE per channel; b"" = none held
    level_cost: bytes = b""  # float32 LE [layers x 8] of the rate-distortion rule; b"" = quotas

    def tier(self, name: str) -> TierSpec | None:
        """The published tier with this name, or None."""
        return next((t for t in self.tiers if t.name == name), None)

    def artifact(self, kind: str) -> ArtifactRef | None:
        """The listed artifact of this kind (chord.artifacts.KINDS), or None."""
        return next((a for a in self.artifacts if a.kind == kind), None)

    @cached_property
    def tier_map(self) -> dict[str, Tier]:
        """The published tiers as level rules use them, by name (BudgetError if one is invalid)."""
        return {
            t.name: Tier(t.name, t.level_bits, float(t.default_budget_bits)) for t in self.tiers
        }

    def channel_sizes(self) -> np.ndarray:
        """Weights per channel in channel order (int64 [n_channels]; ones without layers)."""
        if not self.layers:
            return np.ones(self.n_channels, dtype=np.int64)
        return np.concatenate(
            [np.full(x.n_channels, x.channel_size, dtype=np.int64) for x in self.layers]
        )

    @property
    def offered_reference_id(self) -> str:
        """The reference a device names in GetStrategy: reference_id when it holds that
        reference (its artifact fetched), else ""."""
        return self.reference_id if self.reference_importance else ""

    @cached_property
    def reference(self) -> np.ndarray | None:
        """The reference importance (float16 [n_channels]) checked against its length and id.

        Raises SpecError when the bytes do not hold one float16 per channel, or when the CRC32
        of reference_importance + level_cost is not reference_id. None when none is offered.
        """
        raw = self.reference_importance
        if not raw:
            return None
        if len(raw) != 2 * self.n_channels:
            raise SpecError(
                f"ModelSpec.reference_importance has {len(raw)} bytes; {self.n_channels} "
                f"channels need {2 * self.n_channels} (one float16 each)"
            )
        if f"{zlib.crc32(raw + self.level_cost):08x}" != self.reference_id:
            raise SpecError(
                "ModelSpec.reference_importance and level_cost do not match the reference_id "
                f"{self.reference_id!r}"
            )
        return np.frombuffer(raw, dtype="<f2").copy()

    @cached_property
    def cost(self) -> LevelCost | None:
        """The rate-distortion table bound to the spec's layers; None when it sends none.

        Raises SpecError when the layers do not cover every channel or the table does not fit.
        """
        if not self.level_cost:
            return None
        channels = [x.n_channels for x in self.layers]
        if sum(channels) != self.n_channels:
            raise SpecError(
                f"ModelSpec.level_cost needs layers covering all {self.n_channels} channels; "
                f"the spec's layers cover {sum(channels)}"
            )
        weights = [x.n_channels * x.channel_size for x in self.layers]
        try:
            return LevelCost.from_bytes(self.level_cost, channels, weights)
        except LevelCostError as exc:
            raise SpecError(f"ModelSpec.level_cost: {exc}") from exc

    def check(self) -> None:
        """Raise SpecError (or BudgetError for a tier) unless a device can use this spec."""
        _ = self.tier_map, self.reference, self.cost


@dataclass(frozen=True)
class DeviceMetrics:
    """What one device measured in one round (accuracy, latencies, bytes, bits)."""

    hr5: float = 0.0
    hr10: float = 0.0
    ndcg5: float = 0.0
    ndcg10: float = 0.0
    adapt_ms: float = 0.0
    infer_ms: float = 0.0
    rpc_ms: float = 0.0
    bytes_up: int = 0
    bytes_down: int = 0
    avg_bits: float = 0.0


@dataclass(frozen=True)
class DeviceReport:
    """A device's report for one round; (device_id, round) identifies it."""

    device_id: str
    round: int
    tier: str
    metrics: DeviceMetrics | None = field(default_factory=DeviceMetrics)


@dataclass(frozen=True)
class ReportOutcome:
    """The server's answer to a report: stored, and whether it had been stored before."""

    accepted: bool
    duplicate: bool
