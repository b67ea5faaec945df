"""Domain types besides strategies: the published model spec and device reports."""

from __future__ import annotations

from dataclasses import dataclass, field

MODES = ("random", "pretrained")
KINDS = ("sasrec", "caser")


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
    weights_uri: str  # pretrained mode: absolute path of the frozen weights ("" in random mode)
    weights_bytes: int  # pretrained mode: size of that file (0 in random mode)
    version: str
    layers: tuple[LayerSpec, ...]
    n_channels: int
    tiers: tuple[TierSpec, ...]
    profile_dim: int
    max_recent_items: int
    n_items: int
    reference_importance: bytes = b""  # float16 LE per channel; b"" = no delta codes offered
    reference_id: str = ""  # CRC32 of reference_importance + level_cost, 8 hex digits
    level_cost: bytes = b""  # float32 LE [layers x 8] of the rate-distortion rule; b"" = quotas
    # Random mode with a learned mask (chord.masks); all empty without one.
    generator: str = ""  # named weight generator the device rebuilds the backbone with
    weights_checksum: str = ""  # version hash of the rebuilt, unmasked weights
    mask_id: str = ""  # hex SHA-256 of the mask artifact
    mask_bytes: int = 0  # its size
    mask_uri: str = ""  # where it lives until the artifact download serves it

    def tier(self, name: str) -> TierSpec | None:
        """The published tier with this name, or None."""
        return next((t for t in self.tiers if t.name == name), None)


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
