"""Virtual-clock outputs: arrivals.csv, per-minute and per-hour time series, and their plots.

Everything is read from the report store with SQL aggregates (and the planner's online counts),
so memory stays flat in the number of devices.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any

import numpy as np

from chord.jsonfile import write_json
from simulator.clock import TRIGGERS, OnlineCounter
from simulator.plotting import legend_if_labelled, log_scale_if_positive
from simulator.store import ReportStore

ARRIVALS_FILE = "arrivals.csv"
ARRIVALS_HEADER = ("t_s", "device_id", "reason")
TIMELINE_FILE = "timeline.json"
TIMELINE_PLOT = "timeline.png"
# A request the fleet made: it was sent (ok) or sent and failed for good; not offline rounds.
_SENT = "trigger != '' AND status IN ('ok', 'failed')"


def write_arrivals(store: ReportStore, path: Path) -> int:
    """Every strategy request as `t_s,device_id,reason`, sorted by t_s; returns the row count.

    t_s: virtual seconds since the simulation start (float); reason: the trigger (arrival,
    drift, interval, model_version). `chord bench load --arrivals FILE` replays this file.
    Staleness probes are measurement, not fleet load, and are not listed.
    """
    n = 0
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(ARRIVALS_HEADER)
        for t_s, device_id, trigger in store.query(
            f"SELECT t_s, device_id, trigger FROM rounds WHERE {_SENT} ORDER BY t_s, device_id"
        ):
            w.writerow((f"{t_s:.3f}", device_id, trigger))
            n += 1
    return n


def _per_bin(store: ReportStore, sql: str, n_bins: int) -> np.ndarray:
    """A dense [n_bins] float array from `SELECT bin, value ... GROUP BY bin` rows."""
    out = np.zeros(n_bins, dtype=np.float64)
    for b, v in store.query(sql):
        if b is not None and 0 <= int(b) < n_bins:
            out[int(b)] += float(v or 0)
    return out


def timeline_series(store: ReportStore, online: OnlineCounter, duration_s: float) -> dict[str, Any]:
    """The virtual-clock time series and their headline figures (JSON-ready).

    requests_per_minute: strategy requests started in each virtual minute; `rpm_*` over every
    minute of the span (idle minutes count as 0). bytes_per_hour: serialized protobuf bytes by
    kind: one-time (GetModelSpec + the FetchArtifact downloads, placed at the device's first
    request),
    strategies (GetStrategy request + reply) and reports (ReportMetrics request + reply).
    staleness_per_hour: on the staleness sample, NDCG@10 and HR@10 of the strategy a device
    holds vs a fresh one fetched for the same target (means over probed targets).
    """
    n_min = len(online.minutes)
    n_hour = math.ceil(duration_s / 3600.0)
    rpm = _per_bin(
        store, f"SELECT CAST(t_s / 60 AS INTEGER), COUNT(*) FROM rounds WHERE {_SENT} GROUP BY 1",
        n_min,
    )  # fmt: skip
    one_time = _per_bin(
        store,
        "SELECT CAST(first / 3600 AS INTEGER), SUM(spec_bytes + artifact_bytes) FROM "
        "(SELECT d.spec_bytes, d.artifact_bytes, MIN(r.t_s) AS first FROM devices d "
        "JOIN rounds r ON r.device_id = d.device_id "
        "WHERE r.trigger != '' AND r.status IN ('ok', 'failed') "
        "GROUP BY d.device_id) GROUP BY 1",
        n_hour,
    )
    strategies = _per_bin(
        store,
        f"SELECT CAST(t_s / 3600 AS INTEGER), SUM(strategy_bytes) FROM rounds WHERE {_SENT} "
        "GROUP BY 1",
        n_hour,
    )
    reports = _per_bin(
        store,
        f"SELECT CAST(t_s / 3600 AS INTEGER), SUM(report_bytes) FROM rounds WHERE {_SENT} "
        "GROUP BY 1",
        n_hour,
    )
    probe_n = _per_bin(
        store,
        "SELECT CAST(t_s / 3600 AS INTEGER), SUM(probe_targets) FROM rounds GROUP BY 1",
        n_hour,
    )
    stale: dict[str, list[float | None]] = {}
    for key in ("stale_ndcg10", "fresh_ndcg10", "stale_hr10", "fresh_hr10"):
        total = _per_bin(
            store,
            f"SELECT CAST(t_s / 3600 AS INTEGER), SUM({key} * probe_targets) FROM rounds "
            "GROUP BY 1",
            n_hour,
        )
        stale[key] = [float(t / n) if n else None for t, n in zip(total, probe_n, strict=True)]
    by_trigger = dict.fromkeys(TRIGGERS, 0)
    for trigger, n in store.query(f"SELECT trigger, COUNT(*) FROM rounds WHERE {_SENT} GROUP BY 1"):
        by_trigger[str(trigger)] = int(n)
    probes = int(probe_n.sum())
    agg = store.query(
        "SELECT SUM(stale_ndcg10 * probe_targets), SUM(fresh_ndcg10 * probe_targets), "
        "SUM(stale_hr10 * probe_targets), SUM(fresh_hr10 * probe_targets) FROM rounds"
    ).fetchone()
    return {
        "duration_s": duration_s,
        "devices_planned": online.devices,
        "devices_never_online": online.never_online,
        "online_per_minute": online.minutes.tolist(),
        "online_peak": int(online.minutes.max(initial=0)),
        "online_mean": float(online.minutes.mean()) if n_min else 0.0,
        "requests": int(rpm.sum()),
        "requests_by_trigger": by_trigger,
        "requests_per_minute": rpm.astype(int).tolist(),
        "rpm_mean": float(rpm.mean()) if n_min else 0.0,
        "rpm_peak": int(rpm.max(initial=0)),
        "rpm_p99": float(np.percentile(rpm, 99)) if n_min else 0.0,
        "peak_minute": int(rpm.argmax()) if n_min else 0,
        "bytes_per_hour": {
            "one_time": one_time.astype(int).tolist(),
            "strategies": strategies.astype(int).tolist(),
            "reports": reports.astype(int).tolist(),
        },
        "staleness_per_hour": stale,
        "staleness_probes": probes,
        "staleness": {
            k: (float(v) / probes if probes and v is not None else None)
            for k, v in zip(
                ("stale_ndcg10", "fresh_ndcg10", "stale_hr10", "fresh_hr10"), agg, strict=True
            )
        },
    }


def plot_timeline(out: Path, t: dict[str, Any]) -> str:
    """Four panels (online devices, requests/min, bytes/hour by kind, staleness); the PNG name."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    hours_min = np.arange(len(t["online_per_minute"])) / 60.0
    fig, axes = plt.subplots(2, 2, figsize=(13, 8))
    ax = axes[0, 0]
    ax.plot(hours_min, t["online_per_minute"], color="tab:blue")
    ax.set_title(f"devices online (planned; {t['devices_planned']:,} devices)")
    ax.set_xlabel("virtual hour")
    ax.set_ylabel("devices online in the minute")

    ax = axes[0, 1]
    ax.plot(hours_min, t["requests_per_minute"], color="tab:red", lw=0.8)
    ax.axhline(t["rpm_p99"], color="k", ls=":", lw=1, label=f"p99 {t['rpm_p99']:.1f}/min")
    ax.axhline(t["rpm_mean"], color="grey", ls="--", lw=1, label=f"mean {t['rpm_mean']:.2f}/min")
    ax.set_title(f"strategy requests per virtual minute (peak {t['rpm_peak']})")
    ax.set_xlabel("virtual hour")
    ax.set_ylabel("requests / minute")
    legend_if_labelled(ax)

    ax = axes[1, 0]
    hours = np.arange(len(t["bytes_per_hour"]["strategies"]))
    kinds = (("one_time", "tab:purple"), ("strategies", "tab:green"), ("reports", "tab:orange"))
    mib = [np.asarray(t["bytes_per_hour"][kind], dtype=float) / 2**20 for kind, _ in kinds]
    for k, ((kind, color), v) in enumerate(zip(kinds, mib, strict=True)):
        ax.bar(hours + (k - 1) * 0.27, v, 0.27, color=color, label=kind.replace("_", "-"))
    # one-time downloads are orders of magnitude above strategies; no bytes at all: stay linear
    log_scale_if_positive(ax, "y", np.concatenate(mib))
    ax.set_title("bytes per virtual hour by kind (measured message sizes)")
    ax.set_xlabel("virtual hour")
    ax.set_ylabel("MiB (log)")
    legend_if_labelled(ax)

    ax = axes[1, 1]
    st = t["staleness_per_hour"]
    x = np.arange(len(st["stale_ndcg10"]))
    for key, label, color in (
        ("fresh_ndcg10", "fresh strategy", "tab:green"),
        ("stale_ndcg10", "held strategy", "tab:red"),
    ):
        y = [np.nan if v is None else v for v in st[key]]
        ax.plot(x, y, marker="o", ms=3, color=color, label=label)
    ax.set_title(f"strategy staleness (NDCG@10, {t['staleness_probes']} probed targets)")
    ax.set_xlabel("virtual hour")
    ax.set_ylabel("NDCG@10 on the staleness sample")
    legend_if_labelled(ax)
    fig.tight_layout()
    fig.savefig(out / TIMELINE_PLOT, dpi=100)
    plt.close(fig)
    return TIMELINE_PLOT


def write_timeline(
    out: Path, store: ReportStore, online: OnlineCounter, duration_s: float
) -> dict[str, Any]:
    """arrivals.csv, timeline.json and timeline.png; returns the headline figures (no series)."""
    n = write_arrivals(store, out / ARRIVALS_FILE)
    series = timeline_series(store, online, duration_s)
    write_json(out / TIMELINE_FILE, series, indent=None)  # strict: NaN or inf written as null
    plot_timeline(out, series)
    keep = ("requests_by_trigger", "staleness")
    head = {k: v for k, v in series.items() if not isinstance(v, list | dict) or k in keep}
    head["arrivals_rows"] = n
    return head


def timeline_markdown(head: dict[str, Any]) -> list[str]:
    """The report.md section of a virtual-clock run."""
    st = head.get("staleness", {})

    def f(v: Any) -> str:
        return "-" if v is None else f"{v:.4f}"

    return [
        "## Virtual clock",
        "",
        f"{head['duration_s'] / 3600:g} virtual hours; {head['devices_planned']:,} devices "
        f"({head['devices_never_online']:,} never online); devices online: peak "
        f"{head['online_peak']:,}, mean {head['online_mean']:.1f}.",
        "",
        f"Strategy requests: {head['requests']:,} "
        f"({', '.join(f'{k} {v:,}' for k, v in head['requests_by_trigger'].items())}); per "
        f"virtual minute mean {head['rpm_mean']:.2f}, p99 {head['rpm_p99']:.1f}, peak "
        f"{head['rpm_peak']} (minute {head['peak_minute']}). Request times: `{ARRIVALS_FILE}` "
        "(replay with `chord bench load --arrivals`).",
        "",
        f"Staleness ({head['staleness_probes']} probed targets): NDCG@10 held "
        f"{f(st.get('stale_ndcg10'))} vs fresh {f(st.get('fresh_ndcg10'))}; "
        f"HR@10 held {f(st.get('stale_hr10'))} vs fresh "
        f"{f(st.get('fresh_hr10'))}.",
        "",
        f"![{TIMELINE_PLOT}]({TIMELINE_PLOT})",
        "",
    ]
