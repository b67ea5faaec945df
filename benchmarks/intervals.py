"""Paired bootstrap intervals over test users: each table row against the best other method.

Shared by the accuracy table (benchmarks.accuracy) and the random-mode table
(benchmarks.random_masks): a row's per-user NDCG@10 minus that of the best other method of its
comparison group (same dataset, backbone and bits), with a percentile interval from resampling
users (Efron & Tibshirani 1993, ch. 13). A row "wins" only where the interval excludes zero.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Hashable, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

BOOTSTRAP = 2000  # resamples of the test users
COLUMNS = ("vs", "diff", "ci95", "win")  # what add_intervals writes into a row


class PairedDiff(NamedTuple):
    """A paired difference a - b: its mean over users, 95% interval bounds, users paired."""

    mean: float
    lo: float
    hi: float
    users: int


def paired_interval(a: np.ndarray, b: np.ndarray, seed: int, n: int = BOOTSTRAP) -> PairedDiff:
    """Mean of a - b over paired users, its 95% bootstrap percentile interval, and the user count.

    a, b: per-user values [users], the same users in the same order; NaN marks a user a method
    did not evaluate (e.g. fine-tuning on a sample), and such users are left out of the pair.
    Users are resampled with replacement `n` times; the interval is the 2.5th and 97.5th
    percentile of the resampled means. Raises ValueError on vectors of different lengths or
    with no user measured by both.
    """
    x = np.asarray(a, dtype=np.float64)
    y = np.asarray(b, dtype=np.float64)
    if x.shape != y.shape or x.ndim != 1:
        raise ValueError(
            f"paired_interval needs two per-user vectors of one length, got shapes {x.shape} and "
            f"{y.shape}; pass each method's values over the same test users"
        )
    both = ~(np.isnan(x) | np.isnan(y))
    d = x[both] - y[both]
    if d.size == 0:
        raise ValueError("paired_interval: no user was measured by both methods")
    rng = np.random.default_rng(seed)
    means = np.empty(n)
    for i in range(n):  # one row of indices at a time: [n, users] would not fit for ML-1M
        means[i] = d[rng.integers(0, d.size, d.size)].mean()
    lo, hi = np.percentile(means, [2.5, 97.5])
    return PairedDiff(float(d.mean()), float(lo), float(hi), int(d.size))


def verdict(lo: float, hi: float) -> str:
    """"yes" where the interval lies above zero, "loss" where below, else "no (tie)"."""
    return "yes" if lo > 0 else ("loss" if hi < 0 else "no (tie)")


def add_intervals(
    rows: Sequence[dict[str, Any]],
    group: Callable[[dict[str, Any]], Hashable | None],
    vector: Callable[[dict[str, Any]], np.ndarray | None],
    seed: int,
    metric: str = "NDCG@10",
) -> None:
    """Write vs / diff / ci95 / win (and ci_users) into each row that has a comparison.

    group(row): the row's comparison group (e.g. dataset, backbone, bits), None for rows that
    are compared with nothing (fp32). vector(row): its per-user values, None when not kept. Each
    row with a vector is compared with the other row of its group that has the highest mean
    `metric` and a vector; diff is the paired mean difference over the users both measured,
    ci95 its interval (`paired_interval`), win the `verdict`. Rows without a comparison lose
    any columns an earlier call wrote.
    """
    keyed = [(r, group(r), vector(r)) for r in rows]
    for r, g, v in keyed:
        for col in (*COLUMNS, "ci_users"):
            r.pop(col, None)
        if g is None or v is None:
            continue
        others = [(x, xv) for x, xg, xv in keyed if xg == g and x is not r and xv is not None]
        if not others:
            continue
        best, best_v = max(others, key=lambda o: float(o[0][metric]))
        mean, lo, hi, users = paired_interval(v, best_v, seed)
        r["vs"] = best["method"]
        r["diff"] = round(mean, 4) + 0.0  # + 0.0: no "-0" for a tie rounded to zero
        r["ci95"] = f"[{lo:+.4f}, {hi:+.4f}]"
        r["win"] = verdict(lo, hi)
        r["ci_users"] = users


__all__ = ["BOOTSTRAP", "COLUMNS", "PairedDiff", "add_intervals", "paired_interval", "verdict"]


def vectors_path(json_path: Path) -> Path:
    """The per-user file beside a result JSON: NAME.json -> NAME_per_user.npz."""
    return json_path.with_name(f"{json_path.stem}_per_user.npz")


def save_keyed_vectors(path: Path, vectors: Mapping[tuple[Any, ...], np.ndarray]) -> None:
    """Per-user vectors [n_test users] as one compressed .npz, written atomically.

    Layout: `keys` holds each key tuple as a JSON list (sorted), array `v{i}` the float64
    vector of keys[i]. Key items must be JSON scalars (str, int, float).
    """
    keys = sorted(vectors)
    arrays: dict[str, Any] = {
        f"v{i}": np.asarray(vectors[k], dtype=np.float64) for i, k in enumerate(keys)
    }
    arrays["keys"] = np.array([json.dumps(list(k)) for k in keys], dtype=str)
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("wb") as f:
        np.savez_compressed(f, **arrays)
    tmp.replace(path)


def load_keyed_vectors(path: Path) -> list[tuple[list[Any], np.ndarray]]:
    """(key as a JSON list, vector) for every vector save_keyed_vectors wrote; [] where there
    is no such file. Callers turn the lists back into their typed keys."""
    if not path.is_file():
        return []
    with np.load(path) as data:
        return [(json.loads(str(text)), data[f"v{i}"]) for i, text in enumerate(data["keys"])]
