"""Fleet figures from stored device and round rows: accuracy, bytes, latencies, failures."""

from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np

# comm_reduction = fp32_model_bytes / mean GetStrategyReply bytes per adaptation: what one
# personalization costs on the wire against shipping the whole fp32 backbone instead.
COMM_REDUCTION_DOC = (
    "fp32_model_bytes (every backbone parameter at 4 bytes) divided by the mean serialized "
    "GetStrategyReply size (protobuf ByteSize, gRPC/HTTP2 framing excluded) per adaptation"
)


def _pct(values: list[float], q: float) -> float | None:
    """The q-th percentile, or None without values."""
    return float(np.percentile(values, q)) if values else None


def _mean(values: list[float]) -> float | None:
    """The mean, or None without values."""
    return float(np.mean(values)) if values else None


def _weighted(rounds: list[dict[str, Any]], key: str) -> float | None:
    """Mean of a per-round metric weighted by scored targets."""
    scored = [r for r in rounds if r["n_targets"]]
    total = sum(r["n_targets"] for r in scored)
    return sum(r[key] * r["n_targets"] for r in scored) / total if total else None


def group_summary(devices: list[dict[str, Any]], rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """Figures of one group of devices (the fleet, or one tier)."""
    adapted = [r for r in rounds if r["status"] == "ok"]
    replies = [r["reply_bytes"] for r in adapted if r["reply_bytes"]]
    fp32 = max((d["fp32_model_bytes"] for d in devices), default=0)
    down_strategy = {d["device_id"]: d["spec_bytes"] for d in devices}
    for r in rounds:
        down_strategy[r["device_id"]] = down_strategy.get(r["device_id"], 0) + r["bytes_down"]
    artifacts = {d["device_id"]: d["artifact_bytes"] for d in devices}
    up: dict[str, int] = dict.fromkeys((d["device_id"] for d in devices), 0)
    for r in rounds:
        up[r["device_id"]] = up.get(r["device_id"], 0) + r["bytes_up"]
    reply_mean = _mean([float(x) for x in replies])
    code_mean = _mean([float(r["code_bytes"]) for r in adapted if r["code_bytes"]])
    infer = [r["infer_ms"] for r in adapted if r["n_targets"]]
    out: dict[str, Any] = {
        "devices": len(devices),
        "completed": sum(d["status"] == "completed" for d in devices),
        "failed": sum(d["status"] == "failed" for d in devices),
        "requests": sum(1 for r in rounds if r["rpc_attempts"]),
        "rpc_attempts": sum(r["rpc_attempts"] for r in rounds),
        "offline_rounds": sum(r["status"] == "offline" for r in rounds),
        "scored_targets": sum(r["n_targets"] for r in rounds),
        "hr5": _weighted(adapted, "hr5"),
        "hr10": _weighted(adapted, "hr10"),
        "ndcg5": _weighted(adapted, "ndcg5"),
        "ndcg10": _weighted(adapted, "ndcg10"),
        "avg_bits": _mean([r["avg_bits"] for r in adapted]),
        "bytes_up_per_device": _mean([float(v) for v in up.values()]),
        "bytes_down_per_device": _mean(
            [float(down_strategy[k] + artifacts.get(k, 0)) for k in down_strategy]
        ),
        "bytes_down_strategy_per_device": _mean([float(v) for v in down_strategy.values()]),
        # FetchArtifact chunks each device received (weights, reference, mask): bytes that came
        # over the wire, not artifact sizes, so cache hits count 0 and resumed bytes count once.
        "artifact_bytes_per_device": _mean([float(v) for v in artifacts.values()]),
        "artifact_bytes_max": max(artifacts.values(), default=0),
        "artifact_resumes": sum(d["artifact_resumes"] for d in devices),
        "artifact_cache_hits": sum(d["artifact_cache_hits"] for d in devices),
        "reply_bytes_mean": reply_mean,
        "code_bytes_mean": code_mean,
        "fp32_model_bytes": fp32,
        "comm_reduction": (fp32 / reply_mean) if reply_mean else None,
        "comm_reduction_code_only": (fp32 / code_mean) if code_mean else None,
        "adapt_ms_p50": _pct([r["adapt_ms"] for r in adapted], 50),
        "adapt_ms_p95": _pct([r["adapt_ms"] for r in adapted], 95),
        "infer_ms_p50": _pct(infer, 50),
        "infer_ms_p95": _pct(infer, 95),
        "rpc_ms_p50": _pct([r["rpc_ms"] for r in adapted], 50),
        "rpc_ms_p99": _pct([r["rpc_ms"] for r in adapted], 99),
        "failures": dict(Counter(d["reason"] for d in devices if d["status"] == "failed")),
        "faults": dict(
            Counter(part for r in rounds if r["fault"] for part in r["fault"].split(";"))
        ),
        "strategy_sources": dict(Counter(r["strategy_source"] for r in adapted)),
        "injected_losses": sum(r["injected_losses"] for r in rounds),
        "codes_corrupted": sum(r["fault"].startswith("code_corrupted") for r in rounds),
        "codes_rejected": sum(
            ":rejected" in r["fault"] or r["fault"].startswith("code_rejected") for r in rounds
        ),
        "modeled": {
            "transfer_ms_p50": _pct([r["modeled_transfer_ms"] for r in adapted], 50),
            "compute_ms_p50": _pct([r["modeled_compute_ms"] for r in adapted], 50),
            "download_ms_p50": _pct([d["modeled_download_ms"] for d in devices], 50),
        },
    }
    return out


def fleet_summary(
    n_devices: int, devices: list[dict[str, Any]], rounds: list[dict[str, Any]]
) -> dict[str, Any]:
    """The whole fleet plus `per_tier`; `missing` counts planned devices with no stored report."""
    out = group_summary(devices, rounds)
    out["devices"] = n_devices
    out["stored_devices"] = len(devices)
    out["missing"] = n_devices - len(devices)
    out["comm_reduction_definition"] = COMM_REDUCTION_DOC
    tiers = sorted({d["tier"] for d in devices})
    out["per_tier"] = {
        t: group_summary(
            [d for d in devices if d["tier"] == t], [r for r in rounds if r["tier"] == t]
        )
        for t in tiers
    }
    return out
