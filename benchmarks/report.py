"""Shared output of every benchmark: a JSON file plus a section in benchmarks/RESULTS.md."""

from __future__ import annotations

import datetime as dt
import os
import platform
import re
import subprocess
from pathlib import Path
from typing import Any

from chord.jsonfile import write_json

BENCH_DIR = Path(__file__).resolve().parent
RESULTS_DIR = BENCH_DIR / "results"
RESULTS_MD = BENCH_DIR / "RESULTS.md"


def machine_info() -> dict[str, Any]:
    """Where a figure was measured: CPU, cores, memory, Python and torch versions, commit."""
    info: dict[str, Any] = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
        mem_kb = next(
            int(x.split()[1]) for x in Path("/proc/meminfo").read_text().splitlines()
            if x.startswith("MemTotal")
        )
        info["mem_gib"] = round(mem_kb / 2**20, 1)
    except (OSError, StopIteration):
        pass
    try:
        import torch

        info["torch"] = torch.__version__
        info["torch_threads"] = torch.get_num_threads()
    except ImportError:
        pass
    try:
        info["commit"] = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=BENCH_DIR, capture_output=True,
            text=True, check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        info["commit"] = "unknown"
    return info


def markdown_table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    """Rows of dicts as a Markdown table; floats get four significant digits."""

    def fmt(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:.4g}"
        return "" if v is None else str(v)

    head = "| " + " | ".join(columns) + " |"
    sep = "|" + "|".join("---" for _ in columns) + "|"
    body = ["| " + " | ".join(fmt(r.get(c)) for c in columns) + " |" for r in rows]
    return "\n".join([head, sep, *body])


def write_result(name: str, payload: dict[str, Any], table_md: str, notes: str = "") -> Path:
    """Write results/NAME.json (payload + machine) and replace NAME's section in RESULTS.md."""
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    machine = machine_info()
    out = RESULTS_DIR / f"{name}.json"
    write_json(out, {"benchmark": name, "machine": machine, **payload})
    section = (
        f"<!-- {name}:start -->\n## {name}\n\n"
        f"Measured {machine['date']} on {machine.get('cpu', 'unknown CPU')}, "
        f"{machine['cpu_count']} cores, {machine.get('mem_gib', '?')} GiB, torch "
        f"{machine.get('torch', '?')}, commit {machine['commit']}. JSON: `results/{name}.json`.\n\n"
        f"{table_md}\n" + (f"\n{notes.strip()}\n" if notes.strip() else "") + f"<!-- {name}:end -->"
    )
    text = RESULTS_MD.read_text() if RESULTS_MD.exists() else "# Benchmark results\n"
    tag = re.escape(name)
    pattern = re.compile(rf"<!-- {tag}:start -->.*?<!-- {tag}:end -->", re.S)
    text = pattern.sub(lambda _: section, text) if pattern.search(text) else (
        text.rstrip("\n") + "\n\n" + section
    )
    RESULTS_MD.write_text(text.rstrip("\n") + "\n")
    return out
