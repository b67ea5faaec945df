"""Simulation outputs: summary.json, per-round CSV, PNG plots and report.md."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import numpy as np

from chord.jsonfile import write_json


def write_rounds_csv(
    path: Path, devices: list[dict[str, Any]], rounds: list[dict[str, Any]]
) -> None:
    """One row per device and round, with the device's status and reason joined in."""
    status = {d["device_id"]: (d["status"], d["reason"]) for d in devices}
    if not rounds:
        path.write_text("")
        return
    columns = ["device_status", "device_reason", *rounds[0].keys()]
    with path.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=columns)
        w.writeheader()
        for r in rounds:
            st, why = status.get(r["device_id"], ("", ""))
            w.writerow({"device_status": st, "device_reason": why, **r})


def _plots(
    out: Path, summary: dict[str, Any], devices: list[dict[str, Any]], rounds: list[dict[str, Any]]
) -> list[str]:
    """Latency CDFs per tier, accuracy per tier, bytes per adaptation; returns PNG names."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = []
    ok = [r for r in rounds if r["status"] == "ok"]
    tiers = sorted({r["tier"] for r in ok})
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
        for t in tiers:
            v = np.sort([r[key] for r in ok if r["tier"] == t and r[key] > 0])
            if len(v):
                ax.plot(v, np.arange(1, len(v) + 1) / len(v), label=t)
        ax.set_xlabel(label)
        ax.set_ylabel("fraction of rounds")
        ax.set_xscale("log")
        ax.legend()
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
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "accuracy_per_tier.png", dpi=100)
    plt.close(fig)
    names.append("accuracy_per_tier.png")

    ref = _byte_references(summary, devices)
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.bar(
        list(ref), list(ref.values()), color=["tab:green", "tab:red", "tab:orange", "tab:purple"]
    )
    ax.set_yscale("log")
    ax.set_ylabel("bytes per adaptation (log)")
    ax.set_title("what one personalization sends down")
    for i, n_bytes in enumerate(ref.values()):
        ax.text(i, n_bytes, f"{n_bytes:,.0f}", ha="center", va="bottom", fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "bytes_per_adaptation.png", dpi=100)
    plt.close(fig)
    names.append("bytes_per_adaptation.png")
    return names


def _byte_references(summary: dict[str, Any], devices: list[dict[str, Any]]) -> dict[str, float]:
    """Bytes per adaptation: CHORD codes (measured reply) vs fp32, int8 and DUET-style weights."""
    return {
        "CHORD codes (reply)": float(summary.get("reply_bytes_mean") or 0),
        "fp32 weights": float(summary.get("fp32_model_bytes") or 0),
        "int8 weights": float(max((d["int8_model_bytes"] for d in devices), default=0)),
        "DUET-style generated": float(max((d["duet_bytes"] for d in devices), default=0)),
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
    out: Path, summary: dict[str, Any], devices: list[dict[str, Any]], rounds: list[dict[str, Any]]
) -> None:
    """summary.json, rounds.csv, the plots and report.md."""
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "summary.json", summary, sort_keys=True)
    write_rounds_csv(out / "rounds.csv", devices, rounds)
    plots = _plots(out, summary, devices, rounds) if rounds else []
    ref = _byte_references(summary, devices)
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
        f"Modeled (fleet): {json.dumps(summary['modeled'])}",
        "",
        f"Failures by reason: {json.dumps(summary['failures'])}; recovered faults: "
        f"{json.dumps(summary['faults'])}.",
        "",
        *[f"![{p}]({p})" for p in plots],
        "",
    ]
    (out / "report.md").write_text("\n".join(text))
