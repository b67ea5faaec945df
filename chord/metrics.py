"""Ranking metrics (HR@k, NDCG@k) and seeded negative sampling for the 100-negatives protocol.

Ties never favour the target: a target's rank counts every other candidate whose score is
greater than OR EQUAL to the target's (pessimistic ranking), so a model that scores everything
the same ranks every target last. A non-finite score (NaN, +inf or -inf) anywhere in a row
counts against the target too: a non-finite target score ranks the target last, and every
non-finite score of another candidate counts as above the target. So every metric stays in
[0, 1] whatever a model outputs, and a diverged model scores 0, never a perfect hit.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

KS = (5, 10)


def sample_negatives(
    n_items: int,
    seen: Sequence[np.ndarray],
    n_negatives: int = 100,
    seed: int = 0,
) -> np.ndarray:
    """For each user, `n_negatives` distinct items in 1..n_items that the user never touched.

    `seen[u]` holds every item user u interacted with (target included). Seeded and
    independent of anything else: the same (n_items, seen, n_negatives, seed) gives the same
    array [len(seen), n_negatives] int64.
    """
    rng = np.random.default_rng(seed)
    out = np.empty((len(seen), n_negatives), dtype=np.int64)
    for row, items in enumerate(seen):
        touched = np.unique(np.asarray(items, dtype=np.int64))
        if n_items - len(touched) < n_negatives:
            raise ValueError(
                f"user row {row} touched {len(touched)} of {n_items} items; cannot draw "
                f"{n_negatives} unseen negatives (use fewer negatives)"
            )
        chosen = np.zeros(0, dtype=np.int64)
        while len(chosen) < n_negatives:
            draw = rng.integers(1, n_items + 1, size=3 * n_negatives)
            pool = np.concatenate([chosen, draw[~np.isin(draw, touched)]])
            _, first = np.unique(pool, return_index=True)  # drop repeats, keep draw order
            chosen = pool[np.sort(first)]
        out[row] = chosen[:n_negatives]
    return out


def _scores(scores: torch.Tensor | np.ndarray) -> np.ndarray:
    """Scores as a float32 numpy array on the host (a tensor is detached and copied off its
    device): ranking a few hundred columns per row is cheaper in numpy than in torch ops."""
    if isinstance(scores, torch.Tensor):
        return scores.detach().float().cpu().numpy()
    return np.asarray(scores, dtype=np.float32)


def _pessimistic_ranks(s: np.ndarray, target: np.ndarray, live: np.ndarray) -> np.ndarray:
    """0-based rank of `target` [U, 1] among the `live` [U, C] columns of scores `s` [U, C].

    The target's own column must be live. Another live column counts above the target when its
    score is >= the target's or is not finite; a non-finite target is ranked last.
    """
    above = live & ((s >= target) | ~np.isfinite(s))
    ge = above.sum(axis=1) - 1  # the target's own column is live and >= itself
    last = live.sum(axis=1) - 1
    return np.where(np.isfinite(target[:, 0]), np.maximum(ge, 0), last).astype(np.int64)


def target_ranks(scores: torch.Tensor | np.ndarray, target_col: int = 0) -> np.ndarray:
    """0-based pessimistic rank of column `target_col` in each row of scores [U, C].

    Ranks lie in [0, C - 1]; see the module notes for ties and non-finite scores.
    """
    s = _scores(scores)
    target = s[:, target_col : target_col + 1]
    return _pessimistic_ranks(s, target, np.ones(s.shape, dtype=bool))


def full_ranks(
    scores: torch.Tensor | np.ndarray,
    targets: torch.Tensor | np.ndarray,
    exclude: Sequence[np.ndarray] | None = None,
) -> np.ndarray:
    """0-based pessimistic rank of each target among all items 1..n (column 0 = padding ignored).

    scores [U, n_items + 1]; targets [U]. `exclude[u]` lists items to drop from row u's ranking
    (the history, in `evaluate`); the target itself is never dropped. Ranks lie in
    [0, n_items - 1]; a non-finite score of any ranked item counts against the target.
    """
    s = _scores(scores)
    live = np.ones(s.shape, dtype=bool)
    live[:, 0] = False
    if exclude is not None:
        rows = np.concatenate(
            [np.full(len(items), r, dtype=np.int64) for r, items in enumerate(exclude)]
            or [np.zeros(0, np.int64)]
        )
        cols = np.concatenate(list(exclude) or [np.zeros(0, np.int64)]).astype(np.int64)
        live[rows, cols] = False
    if isinstance(targets, torch.Tensor):
        targets = targets.detach().cpu().numpy()
    idx = np.asarray(targets, dtype=np.int64).reshape(-1)
    users = np.arange(s.shape[0])
    live[users, idx] = True  # the target is ranked even if it was in the history
    return _pessimistic_ranks(s, s[users, idx][:, None], live)


def user_ndcg(ranks: np.ndarray, k: int = 10) -> np.ndarray:
    """Per-user NDCG@k [n] of 0-based target ranks [n]: 1 / log2(rank + 2) if rank < k, else 0.

    One relevant item per user (Järvelin & Kekäläinen 2002); the per-user values whose mean
    `rank_metrics` reports, kept apart for paired comparisons between methods.
    """
    r = np.asarray(ranks, dtype=np.float64)
    return np.where(r < k, 1.0 / np.log2(r + 2.0), 0.0)


def rank_metrics(ranks: np.ndarray, ks: Sequence[int] = KS) -> dict[str, float]:
    """HR@k and NDCG@k averaged over users from 0-based target ranks (one relevant item).

    NDCG@k = 1 / log2(rank + 2) when rank < k, else 0 (Järvelin & Kekäläinen 2002, one relevant
    item). Every value lies in [0, 1]. Raises ValueError on no ranks, or on a rank that is not a
    whole number >= 0 (a rank below 0 would make HR and NDCG exceed their range).
    """
    r = np.asarray(ranks, dtype=np.float64)
    if r.size == 0:
        raise ValueError("rank_metrics needs at least one rank")
    if not np.all(np.isfinite(r)) or (r < 0).any() or (r != np.floor(r)).any():
        raise ValueError("ranks must be whole numbers >= 0 (0 = the target ranked first)")
    out: dict[str, float] = {}
    for k in ks:
        out[f"HR@{k}"] = float(np.mean(r < k))
    for k in ks:
        out[f"NDCG@{k}"] = float(np.mean(user_ndcg(r, k)))
    return out


__all__ = [
    "KS", "full_ranks", "rank_metrics", "sample_negatives", "target_ranks", "user_ndcg",
]
