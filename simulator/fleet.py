"""The fleet plan: each device's user, tier, network, churn and faults, drawn from seeds."""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from chord.textfile import TextFileError, read_json
from device_client.device import DeviceJob
from simulator.config import FleetConfig, FleetConfigError, TierProfile


class TraceError(FleetConfigError):
    """A device trace file that is not FedScale-style JSON."""


@dataclass(frozen=True)
class DeviceTrace:
    """One FedScale client: computation in ms per sample, communication in kbps."""

    client: str
    computation_ms: float
    communication_kbps: float


def load_traces(path: str | Path) -> list[DeviceTrace]:
    """Read {client: {"computation": ms/sample, "communication": kbps}} (JSON only, no pickle)."""
    try:
        data = read_json(path)
    except TextFileError as exc:
        raise TraceError(f"{exc}; send FedScale's client map as JSON") from None
    if not isinstance(data, dict) or not data:
        raise TraceError(f"{path}: expected a non-empty JSON object of client id -> capacities")
    traces = []
    for client, cap in sorted(data.items(), key=lambda kv: str(kv[0])):
        try:
            comp, comm = float(cap["computation"]), float(cap["communication"])
        except (TypeError, KeyError, ValueError) as exc:
            raise TraceError(
                f"{path}: client {client!r} needs numeric 'computation' and 'communication'"
            ) from exc
        if not (math.isfinite(comp) and math.isfinite(comm)) or comp <= 0 or comm <= 0:
            raise TraceError(
                f"{path}: client {client!r} has capacities ({comp:g}, {comm:g}); send finite "
                "numbers > 0"
            )
        traces.append(DeviceTrace(str(client), comp, comm))
    return traces


def tier_assignment(tiers: tuple[TierProfile, ...], n: int, seed: int) -> list[TierProfile]:
    """Exactly round(share * n) devices per tier (largest remainder), in a seeded random order."""
    shares = np.array([t.share for t in tiers], dtype=float)
    exact = shares / shares.sum() * n
    counts = np.floor(exact).astype(int)
    for i in np.argsort(-(exact - counts), kind="stable")[: n - counts.sum()]:
        counts[i] += 1
    order = [t for t, c in zip(tiers, counts, strict=True) for _ in range(c)]
    perm = np.random.default_rng([seed, 11]).permutation(n)
    return [order[i] for i in perm]


def _rounds_hit(rng: np.random.Generator, rounds: int, p: float, first: int) -> tuple[int, ...]:
    """Rounds >= first picked independently with probability p."""
    if p <= 0:
        return ()
    return tuple(r for r in range(first, rounds) if rng.random() < p)


def plan_fleet(cfg: FleetConfig, sequences: list[np.ndarray], request_tag: str) -> list[DeviceJob]:
    """One DeviceJob per device; devices cycle over users when there are more devices than users."""
    if not sequences:
        raise FleetConfigError("the dataset has no test users to put on devices")
    traces = load_traces(cfg.traces_file) if cfg.traces_file else []
    ref_ms = cfg.trace_reference_ms or (
        float(np.median([t.computation_ms for t in traces])) if traces else 1.0
    )
    tiers = tier_assignment(cfg.tiers, cfg.devices, cfg.seed)
    jobs = []
    for i in range(cfg.devices):
        device_id = f"dev-{i:05d}"
        tier = tiers[i]
        user = i % len(sequences)
        bandwidth, factor = tier.bandwidth_kbps, tier.compute_factor
        if traces:
            tr = traces[i % len(traces)]
            bandwidth, factor = tr.communication_kbps, tr.computation_ms / ref_ms
        churn_rng = np.random.default_rng([cfg.seed, zlib.crc32(device_id.encode()), 1])
        fault_rng = np.random.default_rng([cfg.faults.seed, zlib.crc32(device_id.encode()), 2])
        jobs.append(
            DeviceJob(
                device_id=device_id,
                user_index=user,
                sequence=np.asarray(sequences[user], dtype=np.int64),
                tier=tier.name,
                budget_bits=tier.budget_bits,
                rounds=cfg.drift.rounds,
                interactions_per_round=cfg.drift.interactions_per_round,
                negatives=cfg.negatives,
                ranking=cfg.ranking,
                seed=cfg.seed,
                compute_factor=factor,
                bandwidth_kbps=bandwidth,
                rtt_ms=tier.rtt_ms,
                offline_rounds=_rounds_hit(churn_rng, cfg.drift.rounds, cfg.churn.offline_prob, 1),
                corrupt_rounds=_rounds_hit(
                    fault_rng, cfg.drift.rounds, cfg.faults.corrupt_code_prob, 0
                ),
                report_to_server=cfg.transport.report_to_server,
                request_tag=request_tag,
            )
        )
    return jobs
