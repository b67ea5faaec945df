"""Simulation outputs: summary.json, per-round CSV, PNG plots and report.md."""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any

import numpy as np

from chord.jsonfile import dumps, write_json
from simulator.plotting import legend_if_labelled, log_scale_if_positive
from simulator.store import ReportStore


def write_rounds_csv(path: Path, store: ReportStore) -> None:
    """One row per device and round, with the device's status and reason joined in (streamed)."""
    cur = store.query(
        "SELECT d.status AS device_status, d.reason AS device_reason, r.* FROM rounds r "
        "LEFT JOIN devices d ON d.device_id = r.device_id ORDER BY r.device_id, r.round"
    )
    columns = [c[0] for c in cur.description]
    first = cur.fetchone()
    if first is None:
        path.write_text("")
        return
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(columns)
        w.writerow([_cell(v) for v in first])
        for row in cur:
            w.writerow([_cell(v) for v in row])


def _cell(value: object) -> object:
    """A CSV cell: None and non-finite floats (SQLite keeps inf) as an empty cell."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return ""
    return value


def _column(store: ReportStore, sql: str, params: tuple[Any, ...] = ()) -> np.ndarray:
    """The first column of a query as float64 [n]."""
    return np.fromiter((r[0] for r in store.query(sql, params)), dtype=np.float64)


def _plots(out: Path, summary: dict[str, Any], store: ReportStore) -> list[str]:
    """Latency CDFs per tier, accuracy per tier, bytes per adaptation; returns PNG names."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = []
    tiers = [str(r[0]) for r in store.query("SELECT DISTINCT tier FROM rounds ORDER BY tier")]
    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    for ax, key, label in zip(
        axes,
        ("infer_ms", "adapt_ms", "rpc_ms"),
        (
            "inference (measured, thread CPU ms)",
            "adaptation: decode + quantize (measured, thread CPU ms)",
            "GetStrategy RPC (measured, wall ms)",
        ),
        strict=True,
    ):
        plotted: list[np.ndarray] = []
        for t in tiers:
            v = np.sort(
                _column(
                    store,
                    f"SELECT {key} FROM rounds WHERE status = 'ok' AND tier = ? AND {key} > 0",
                    (t,),
                )
            )
            if len(v):
                ax.plot(v, np.arange(1, len(v) + 1) / len(v), label=t)
                plotted.append(v)
        ax.set_xlabel(label)
        ax.set_ylabel("fraction of rounds")
        log_scale_if_positive(ax, "x", np.concatenate(plotted) if plotted else [])
        legend_if_labelled(ax)
    fig.tight_layout()
    fig.savefig(out / "latency_cdf.png", dpi=100)
    plt.close(fig)
    names.append("latency_cdf.png")

    per = summary["per_tier"]
    fig, ax = plt.subplots(figsize=(7, 4))
    x = np.arange(len(per))
    labels = [f"{t}\n{per[t]['avg_bits'] or 0:.2f} bits" for t in per]
    ax.bar(x - 0.2, [per[t]["hr10"] or 0 for t in per], 0.4, label="HR@10")
    ax.bar(x + 0.2, [per[t]["ndcg10"] or 0 for t in per], 0.4, label="NDCG@10")
    ax.set_xticks(x, labels)
    ax.set_ylabel("measured on device")
    ax.set_title("accuracy per tier and average bits")
    legend_if_labelled(ax)
    fig.tight_layout()
    fig.savefig(out / "accuracy_per_tier.png", dpi=100)
    plt.close(fig)
    names.append("accuracy_per_tier.png")

    ref = _byte_references(summary, store)
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.bar(
        list(ref), list(ref.values()), color=["tab:green", "tab:red", "tab:orange", "tab:purple"]
    )
    log_scale_if_positive(ax, "y", list(ref.values()))
    ax.set_ylabel("bytes per adaptation (log)")
    ax.set_title("what one personalization sends down")
    for i, n_bytes in enumerate(ref.values()):
        ax.text(i, n_bytes, f"{n_bytes:,.0f}", ha="center", va="bottom", fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "bytes_per_adaptation.png", dpi=100)
    plt.close(fig)
    names.append("bytes_per_adaptation.png")
    return names


def _byte_references(summary: dict[str, Any], store: ReportStore) -> dict[str, float]:
    """Bytes per adaptation: CHORD codes (measured reply) vs fp32, int8 and DUET-style weights."""
    int8, duet = store.query(
        "SELECT MAX(int8_model_bytes), MAX(duet_bytes) FROM devices"
    ).fetchone()
    return {
        "CHORD codes (reply)": float(summary.get("reply_bytes_mean") or 0),
        "fp32 weights": float(summary.get("fp32_model_bytes") or 0),
        "int8 weights": float(int8 or 0),
        "DUET-style generated": float(duet or 0),
    }


def _fmt(v: Any) -> str:
    """A table cell."""
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def summary_table(summary: dict[str, Any]) -> str:
    """The fleet and per-tier figures as a Markdown table."""
    cols = [
        "devices",
        "completed",
        "failed",
        "hr10",
        "ndcg10",
        "avg_bits",
        "artifact_bytes_per_device",
        "bytes_down_per_device",
        "reply_bytes_mean",
        "comm_reduction",
        "adapt_ms_p50",
        "infer_ms_p50",
        "infer_ms_p95",
        "rpc_ms_p50",
        "rpc_ms_p99",
    ]
    rows = [("fleet", summary), *summary["per_tier"].items()]
    lines = ["| group | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for name, s in rows:
        lines.append(f"| {name} | " + " | ".join(_fmt(s.get(c)) for c in cols) + " |")
    return "\n".join(lines)


def write_outputs(
    out: Path, summary: dict[str, Any], store: ReportStore, extra_md: list[str] | None = None
) -> None:
    """summary.json, rounds.csv, the plots and report.md (extra_md: more report sections)."""
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "summary.json", summary, sort_keys=True)
    write_rounds_csv(out / "rounds.csv", store)
    has_rounds = store.query("SELECT 1 FROM rounds LIMIT 1").fetchone() is not None
    plots = _plots(out, summary, store) if has_rounds else []
    ref = _byte_references(summary, store)
    text = [
        "# Fleet simulation report",
        "",
        f"{summary['devices']} devices, {summary['completed']} completed, {summary['failed']} "
        f"failed, {summary.get('missing', 0)} missing; {summary['requests']} strategy requests.",
        "",
        "Measured: accuracy, bytes (serialized protobuf sizes), latencies on this host. "
        "Modeled (labeled `modeled`): transfer time = bytes / tier bandwidth + RTT; device "
        "compute time = measured time x tier compute factor.",
        "",
        summary_table(summary),
        "",
        f"comm_reduction: {summary.get('comm_reduction_definition', '')}.",
        "",
        "| bytes per adaptation | bytes |",
        "|---|---|",
        *[f"| {k} | {v:,.0f} |" for k, v in ref.items()],
        "",
        f"Modeled (fleet): {dumps(summary['modeled'])}",
        "",
        f"Failures by reason: {dumps(summary['failures'])}; recovered faults: "
        f"{dumps(summary['faults'])}.",
        "",
        *[f"![{p}]({p})" for p in plots],
        "",
        *(extra_md or []),
    ]
    (out / "report.md").write_text("\n".join(text))
