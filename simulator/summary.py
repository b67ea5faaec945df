"""Fleet figures from the report store: accuracy, bytes, latencies, failures (SQL aggregates).

Sums, counts and weighted means are computed by SQLite; only the columns a percentile needs are
fetched, one at a time, as float64 arrays, so a summary's memory does not grow with rows x
columns (a day of 100,000 devices is about a million rounds).
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np

from simulator.store import ReportStore

# comm_reduction = fp32_model_bytes / mean GetStrategyReply bytes per adaptation: what one
# personalization costs on the wire against shipping the whole fp32 backbone instead.
COMM_REDUCTION_DOC = (
    "fp32_model_bytes (every backbone parameter at 4 bytes) divided by the mean serialized "
    "GetStrategyReply size (protobuf ByteSize, gRPC/HTTP2 framing excluded) per adaptation"
)


def _pct(values: np.ndarray, q: float) -> float | None:
    """The q-th percentile, or None without values."""
    return float(np.percentile(values, q)) if len(values) else None


class _Group:
    """SQL over the devices and rounds of one group: the fleet (tier None) or one tier."""

    def __init__(self, store: ReportStore, tier: str | None) -> None:
        self.store = store
        self.params: tuple[Any, ...] = () if tier is None else (tier,)
        self.cond = "1" if tier is None else "tier = ?"

    def one(self, sql: str) -> Any:
        """The single value of `sql` (its WHERE gets {g}, the group condition)."""
        return self.store.query(sql.format(g=self.cond), self.params).fetchone()[0]

    def column(self, table: str, col: str, where: str = "1") -> np.ndarray:
        """One column of the group's rows matching `where`, as float64 [n]."""
        cur = self.store.query(
            f"SELECT {col} FROM {table} WHERE {self.cond} AND ({where})", self.params
        )
        return np.fromiter((r[0] for r in cur), dtype=np.float64)

    def counts(self, sql: str) -> dict[str, int]:
        """{key: count} of `SELECT key, COUNT(*) ... GROUP BY key`."""
        return {str(k): int(n) for k, n in self.store.query(sql.format(g=self.cond), self.params)}


def group_summary(store: ReportStore, tier: str | None = None) -> dict[str, Any]:
    """Figures of one group of stored devices (the fleet, or one tier)."""
    g = _Group(store, tier)
    ok = "status = 'ok'"
    scored = f"{ok} AND n_targets > 0"
    targets = g.one(f"SELECT SUM(n_targets) FROM rounds WHERE {{g}} AND {scored}") or 0

    def weighted(key: str) -> float | None:
        """Mean of a per-round metric over adapted rounds, weighted by scored targets."""
        if not targets:
            return None
        total = g.one(f"SELECT SUM({key} * n_targets) FROM rounds WHERE {{g}} AND {scored}")
        return float(total) / targets

    n_devices = g.one("SELECT COUNT(*) FROM devices WHERE {g}")
    per_device_up = g.one("SELECT SUM(bytes_up) FROM rounds WHERE {g}") or 0
    rounds_down = g.one("SELECT SUM(bytes_down) FROM rounds WHERE {g}") or 0
    spec = g.one("SELECT SUM(spec_bytes) FROM devices WHERE {g}") or 0
    artifacts = g.one("SELECT SUM(artifact_bytes) FROM devices WHERE {g}") or 0
    reply_mean = g.one(f"SELECT AVG(reply_bytes) FROM rounds WHERE {{g}} AND {ok} AND reply_bytes")
    code_mean = g.one(f"SELECT AVG(code_bytes) FROM rounds WHERE {{g}} AND {ok} AND code_bytes")
    fp32 = g.one("SELECT MAX(fp32_model_bytes) FROM devices WHERE {g}") or 0
    adapt = g.column("rounds", "adapt_ms", ok)
    infer = g.column("rounds", "infer_ms", scored)
    rpc = g.column("rounds", "rpc_ms", ok)
    faults: Counter[str] = Counter()
    for fault, n in g.counts("SELECT fault, COUNT(*) FROM rounds WHERE {g} AND fault != '' "
                             "GROUP BY fault").items():  # fmt: skip
        for part in fault.split(";"):
            faults[part] += n

    def per_device(total: float) -> float | None:
        return float(total) / n_devices if n_devices else None

    return {
        "devices": n_devices,
        "completed": g.one("SELECT COUNT(*) FROM devices WHERE {g} AND status = 'completed'"),
        "failed": g.one("SELECT COUNT(*) FROM devices WHERE {g} AND status = 'failed'"),
        "requests": g.one("SELECT COUNT(*) FROM rounds WHERE {g} AND rpc_attempts > 0"),
        "rpc_attempts": g.one("SELECT SUM(rpc_attempts) FROM rounds WHERE {g}") or 0,
        "offline_rounds": g.one("SELECT COUNT(*) FROM rounds WHERE {g} AND status = 'offline'"),
        "scored_targets": g.one("SELECT SUM(n_targets) FROM rounds WHERE {g}") or 0,
        "hr5": weighted("hr5"),
        "hr10": weighted("hr10"),
        "ndcg5": weighted("ndcg5"),
        "ndcg10": weighted("ndcg10"),
        "avg_bits": g.one(f"SELECT AVG(avg_bits) FROM rounds WHERE {{g}} AND {ok}"),
        "bytes_up_per_device": per_device(per_device_up),
        "bytes_down_per_device": per_device(spec + rounds_down + artifacts),
        "bytes_down_strategy_per_device": per_device(spec + rounds_down),
        # FetchArtifact chunks each device received (weights, reference, mask): bytes that came
        # over the wire, not artifact sizes, so cache hits count 0 and resumed bytes count once.
        "artifact_bytes_per_device": per_device(artifacts),
        "artifact_bytes_max": g.one("SELECT MAX(artifact_bytes) FROM devices WHERE {g}") or 0,
        "artifact_resumes": g.one("SELECT SUM(artifact_resumes) FROM devices WHERE {g}") or 0,
        "artifact_cache_hits": g.one("SELECT SUM(artifact_cache_hits) FROM devices WHERE {g}")
        or 0,
        "reply_bytes_mean": reply_mean,
        "code_bytes_mean": code_mean,
        "fp32_model_bytes": fp32,
        "comm_reduction": (fp32 / reply_mean) if reply_mean else None,
        "comm_reduction_code_only": (fp32 / code_mean) if code_mean else None,
        "adapt_ms_p50": _pct(adapt, 50),
        "adapt_ms_p95": _pct(adapt, 95),
        "infer_ms_p50": _pct(infer, 50),
        "infer_ms_p95": _pct(infer, 95),
        "rpc_ms_p50": _pct(rpc, 50),
        "rpc_ms_p99": _pct(rpc, 99),
        "failures": g.counts(
            "SELECT reason, COUNT(*) FROM devices WHERE {g} AND status = 'failed' GROUP BY reason"
        ),
        "faults": dict(faults),
        "strategy_sources": g.counts(
            f"SELECT strategy_source, COUNT(*) FROM rounds WHERE {{g}} AND {ok} "
            "GROUP BY strategy_source"
        ),
        "injected_losses": g.one("SELECT SUM(injected_losses) FROM rounds WHERE {g}") or 0,
        "codes_corrupted": g.one(
            "SELECT COUNT(*) FROM rounds WHERE {g} AND fault LIKE 'code_corrupted%'"
        ),
        "codes_rejected": g.one(
            "SELECT COUNT(*) FROM rounds WHERE {g} AND (fault LIKE '%:rejected%' OR "
            "fault LIKE 'code_rejected%')"
        ),
        "modeled": {
            "transfer_ms_p50": _pct(g.column("rounds", "modeled_transfer_ms", ok), 50),
            "compute_ms_p50": _pct(g.column("rounds", "modeled_compute_ms", ok), 50),
            "download_ms_p50": _pct(g.column("devices", "modeled_download_ms"), 50),
        },
    }


def fleet_summary(n_devices: int, store: ReportStore) -> dict[str, Any]:
    """The whole fleet plus `per_tier`; `missing` counts planned devices with no stored report."""
    out = group_summary(store)
    out["stored_devices"] = out["devices"]
    out["devices"] = n_devices
    out["missing"] = n_devices - out["stored_devices"]
    out["comm_reduction_definition"] = COMM_REDUCTION_DOC
    tiers = [str(r[0]) for r in store.query("SELECT DISTINCT tier FROM devices ORDER BY tier")]
    out["per_tier"] = {t: group_summary(store, t) for t in tiers}
    return out
