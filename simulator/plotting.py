"""Matplotlib helpers that never warn: a legend only over labelled artists, log scale only over
positive data (matplotlib warns, and draws nothing useful, otherwise)."""

from __future__ import annotations

from typing import Any

import numpy as np


def legend_if_labelled(ax: Any) -> None:
    """ax.legend() when some artist on ax carries a label; else nothing (an empty legend warns
    "No artists with labels found to put in legend")."""
    handles, _ = ax.get_legend_handles_labels()
    if handles:
        ax.legend()


def log_scale_if_positive(ax: Any, axis: str, values: Any) -> None:
    """Set a log scale on `axis` ("x" or "y") when `values` (any array-like of numbers) hold a
    finite value > 0; else keep the linear scale (log-scaling no positive data warns)."""
    v = np.asarray(values, dtype=np.float64).ravel()
    if np.any(np.isfinite(v) & (v > 0)):
        (ax.set_xscale if axis == "x" else ax.set_yscale)("log")
