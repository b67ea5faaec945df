"""The fleet plan: each device's user, tier, network, churn and faults, drawn from seeds."""

from __future__ import annotations

import zlib
from collections.abc import Iterator

import numpy as np

from device_client.device import DeviceJob
from simulator.clock import OnlineCounter, plan_device, staleness_probe, staleness_share
from simulator.config import FleetConfig, FleetConfigError, TierProfile
from simulator.traces import BehaviourTrace, DeviceTrace, load_behaviour, load_capacities


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
    """Every DeviceJob of the fleet, as a list (see iter_jobs)."""
    return list(iter_jobs(cfg, sequences, request_tag))


def iter_jobs(
    cfg: FleetConfig,
    sequences: list[np.ndarray],
    request_tag: str,
    online: OnlineCounter | None = None,
) -> Iterator[DeviceJob]:
    """One DeviceJob per device, planned lazily; devices cycle over users (and trace clients).

    With clock.mode "virtual" each job carries its day's schedule (simulator/clock.py) and, when
    `online` is given, its online windows are counted there. The trace files are read here, at
    once: FleetConfigError without users, TraceError for a malformed trace, before any job.
    """
    if not sequences:
        raise FleetConfigError("the dataset has no test users to put on devices")
    traces = load_capacities(cfg.traces_file) if cfg.traces_file else []
    virtual = cfg.clock.mode == "virtual"
    behaviour = (
        load_behaviour(cfg.clock.behaviour_trace, cfg.clock.duration_s)
        if virtual and cfg.clock.behaviour_trace
        else []
    )
    return _jobs(cfg, sequences, request_tag, online, traces, behaviour)


def _jobs(
    cfg: FleetConfig,
    sequences: list[np.ndarray],
    request_tag: str,
    online: OnlineCounter | None,
    traces: list[DeviceTrace],
    behaviour: list[BehaviourTrace],
) -> Iterator[DeviceJob]:
    """The jobs of iter_jobs, one at a time, from the traces it read."""
    clock = cfg.clock
    virtual = clock.mode == "virtual"
    ref_ms = cfg.trace_reference_ms or (
        float(np.median([t.computation_ms for t in traces])) if traces else 1.0
    )
    tiers = tier_assignment(cfg.tiers, cfg.devices, cfg.seed)
    probe_share = staleness_share(clock.staleness_sample, clock.staleness_max_devices, cfg.devices)
    for i in range(cfg.devices):
        device_id = f"dev-{i:05d}"
        tier = tiers[i]
        user = i % len(sequences)
        seq = np.asarray(sequences[user], dtype=np.int64)
        bandwidth, factor = tier.bandwidth_kbps, tier.compute_factor
        if traces:
            tr = traces[i % len(traces)]
            bandwidth, factor = tr.communication_kbps, tr.computation_ms / ref_ms
        schedule: tuple[tuple[float, str, int, int], ...] = ()
        if virtual:
            day = plan_device(
                clock, cfg.seed, device_id, len(seq),
                behaviour[i % len(behaviour)] if behaviour else None,
            )  # fmt: skip
            schedule = day.requests
            if online is not None:
                online.add(day.windows)
        churn_rng = np.random.default_rng([cfg.seed, zlib.crc32(device_id.encode()), 1])
        fault_rng = np.random.default_rng([cfg.faults.seed, zlib.crc32(device_id.encode()), 2])
        rounds = len(schedule) if virtual else cfg.drift.rounds
        yield DeviceJob(
            device_id=device_id,
            user_index=user,
            sequence=seq,
            tier=tier.name,
            budget_bits=tier.budget_bits,
            rounds=rounds,
            interactions_per_round=cfg.drift.interactions_per_round,
            negatives=cfg.negatives,
            ranking=cfg.ranking,
            runtime=cfg.runtime,
            seed=cfg.seed,
            compute_factor=factor,
            bandwidth_kbps=bandwidth,
            rtt_ms=tier.rtt_ms,
            # On the virtual clock, availability replaces churn: offline devices ask nothing.
            offline_rounds=()
            if virtual
            else _rounds_hit(churn_rng, cfg.drift.rounds, cfg.churn.offline_prob, 1),
            corrupt_rounds=_rounds_hit(fault_rng, rounds, cfg.faults.corrupt_code_prob, 0),
            report_to_server=cfg.transport.report_to_server,
            request_tag=request_tag,
            schedule=schedule,
            virtual=virtual,
            staleness_probe=virtual and staleness_probe(cfg.seed, device_id, probe_share),
        )
