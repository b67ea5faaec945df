"""Ranking metrics (HR@k, NDCG@k) and seeded negative sampling for the 100-negatives protocol.

Ties never favour the target: a target's rank counts every other candidate whose score is
greater than OR EQUAL to the target's (pessimistic ranking), so a model that scores everything
the same ranks every target last.
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


def target_ranks(scores: torch.Tensor | np.ndarray, target_col: int = 0) -> np.ndarray:
    """0-based pessimistic rank of column `target_col` in each row of scores [U, C]."""
    s = torch.as_tensor(scores).detach().float()
    target = s[:, target_col : target_col + 1]
    ge = (s >= target).sum(dim=1) - 1  # every other column at least as high; minus itself
    return ge.cpu().numpy().astype(np.int64)


def full_ranks(
    scores: torch.Tensor,
    targets: torch.Tensor,
    exclude: Sequence[np.ndarray] | None = None,
) -> np.ndarray:
    """0-based pessimistic rank of each target among all items 1..n (column 0 = padding ignored).

    scores [U, n_items + 1]; targets [U]. `exclude[u]` lists items to drop from row u's ranking
    (the history, in `evaluate`); the target itself is never dropped.
    """
    s = scores.detach().float().clone()
    s[:, 0] = float("-inf")
    if exclude is not None:
        rows = np.concatenate(
            [np.full(len(items), r, dtype=np.int64) for r, items in enumerate(exclude)]
            or [np.zeros(0, np.int64)]
        )
        cols = np.concatenate(list(exclude) or [np.zeros(0, np.int64)]).astype(np.int64)
        if len(rows):
            s[torch.from_numpy(rows), torch.from_numpy(cols)] = float("-inf")
    idx = targets.long().view(-1, 1)
    target = scores.detach().float().gather(1, idx)
    s.scatter_(1, idx, target)  # restore the target even if it was in the history
    ge = (s >= target).sum(dim=1) - 1
    return ge.cpu().numpy().astype(np.int64)


def rank_metrics(ranks: np.ndarray, ks: Sequence[int] = KS) -> dict[str, float]:
    """HR@k and NDCG@k averaged over users from 0-based target ranks (one relevant item)."""
    r = np.asarray(ranks, dtype=np.float64)
    if r.size == 0:
        raise ValueError("rank_metrics needs at least one rank")
    out: dict[str, float] = {}
    for k in ks:
        out[f"HR@{k}"] = float(np.mean(r < k))
    for k in ks:
        out[f"NDCG@{k}"] = float(np.mean(np.where(r < k, 1.0 / np.log2(r + 2.0), 0.0)))
    return out


__all__ = ["KS", "full_ranks", "rank_metrics", "sample_negatives", "target_ranks"]
