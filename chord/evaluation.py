"""Evaluate any scoring function on a leave-one-out split (sampled or full-catalogue ranking).

Full-catalogue ranking (`full=True`) MASKS each user's history: items in the evaluated history
are removed from the ranking (the target is always kept), the RecBole convention. Sampled
ranking scores the target against 100 seeded negatives the user never touched. Ties count
against the target (see chord.metrics).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable

import numpy as np
import torch

from chord.data.split import EvalSet, Split, pad_sequences
from chord.metrics import full_ranks, rank_metrics, sample_negatives, target_ranks
from chord.models.base import Backbone

# score_fn(seqs [B, L], candidates [B, C] or None for the whole catalogue, users [B]) -> scores
# ([B, C], or [B, n_items + 1] with column 0 padding when candidates is None).
ScoreFn = Callable[[torch.Tensor, torch.Tensor | None, torch.Tensor], torch.Tensor]

_STAGE_SALT = {"valid": 1, "test": 2}
# Recent negative draws, keyed on the identity of a split's `seen` list (ML-1M: ~2 s a draw,
# paid by every evaluate call otherwise). The list itself is kept to make the identity safe.
_NEGATIVES: OrderedDict[tuple[int, int, str, int, int], tuple[object, np.ndarray]] = OrderedDict()
_NEGATIVES_KEPT = 8


def backbone_score_fn(model: Backbone) -> ScoreFn:
    """Wrap a backbone as a ScoreFn (users are ignored: the backbone is shared)."""

    def score(
        seqs: torch.Tensor, candidates: torch.Tensor | None, users: torch.Tensor
    ) -> torch.Tensor:
        if candidates is None:
            return model.score_all(seqs)
        return model.score_candidates(seqs, candidates)

    return score


def score_device(model_or_score_fn: object) -> torch.device:
    """Where a scorer's inputs belong: a module's parameters, a `.device` attribute, else CPU."""
    if isinstance(model_or_score_fn, torch.nn.Module):
        for param in model_or_score_fn.parameters():
            return param.device
        return torch.device("cpu")
    device = getattr(model_or_score_fn, "device", None)
    return torch.device(device) if device is not None else torch.device("cpu")


def _cached_negatives(split: Split, stage: str, n_negatives: int, seed: int) -> np.ndarray:
    """eval_negatives, drawn once per (split, stage, n_negatives, seed); do not modify."""
    key = (id(split.seen), split.n_items, stage, n_negatives, seed)
    hit = _NEGATIVES.get(key)
    if hit is not None and hit[0] is split.seen:
        _NEGATIVES.move_to_end(key)
        return hit[1]
    salt = _STAGE_SALT[stage]
    out = sample_negatives(split.n_items, split.seen, n_negatives, seed * 1000 + salt)
    _NEGATIVES[key] = (split.seen, out)
    while len(_NEGATIVES) > _NEGATIVES_KEPT:
        _NEGATIVES.popitem(last=False)
    return out


def eval_negatives(split: Split, stage: str, n_negatives: int = 100, seed: int = 0) -> np.ndarray:
    """The seeded negatives [n_users, n_negatives] of a stage (row = user index)."""
    return _cached_negatives(split, stage, n_negatives, seed).copy()


def evaluate(
    model_or_score_fn: Backbone | ScoreFn,
    split: Split,
    stage: str = "valid",
    full: bool = False,
    seed: int = 0,
    *,
    n_negatives: int = 100,
    batch_size: int = 256,
    max_len: int | None = None,
    users: np.ndarray | None = None,
    device: torch.device | str | None = None,
) -> dict[str, float]:
    """HR@5/10 and NDCG@5/10 of `stage` ("valid" or "test").

    The mean over users of what `stage_ranks` returns. Accepts a Backbone (put in eval mode
    for the call, then restored) or any ScoreFn, so quantized or personalized models are
    evaluated the same way. Histories are left-padded to `max_len` (default: the backbone's,
    else 50). `users` restricts evaluation to those user indices. Negatives depend only on
    (split, stage, seed, n_negatives). Inputs are put on `device` (default: the backbone's,
    or the score function's `.device`, else CPU).
    """
    return rank_metrics(
        stage_ranks(
            model_or_score_fn, split, stage, full, seed, n_negatives=n_negatives,
            batch_size=batch_size, max_len=max_len, users=users, device=device,
        )
    )


def stage_ranks(
    model_or_score_fn: Backbone | ScoreFn,
    split: Split,
    stage: str = "valid",
    full: bool = False,
    seed: int = 0,
    *,
    n_negatives: int = 100,
    batch_size: int = 256,
    max_len: int | None = None,
    users: np.ndarray | None = None,
    device: torch.device | str | None = None,
) -> np.ndarray:
    """The 0-based rank of each evaluated user's target (int64 [n_users], stage order).

    Per-user ranks are what paired comparisons (e.g. a bootstrap over users) need; arguments
    as in `evaluate`.
    """
    eval_set: EvalSet = split.stage(stage)
    if users is not None:
        eval_set = eval_set.subset(np.asarray(users, dtype=np.int64))
    model: Backbone | None = model_or_score_fn if isinstance(model_or_score_fn, Backbone) else None
    score_fn = backbone_score_fn(model) if model is not None else model_or_score_fn
    assert callable(score_fn)
    length = max_len or (model.max_len if model is not None else 50)
    if device is None:
        device = score_device(model_or_score_fn)
    negatives = None if full else _cached_negatives(split, stage, n_negatives, seed)
    was_training = model.training if model is not None else False
    if model is not None:
        model.eval()
    ranks: list[np.ndarray] = []
    try:
        with torch.no_grad():
            for start in range(0, len(eval_set), batch_size):
                rows = np.arange(start, min(start + batch_size, len(eval_set)))
                batch = eval_set.subset(rows)
                seqs = pad_sequences(batch.histories, length).to(device)
                user_t = torch.from_numpy(batch.users).to(device)
                targets = torch.from_numpy(batch.targets).to(device)
                if full:
                    scores = score_fn(seqs, None, user_t)
                    ranks.append(full_ranks(scores, targets, batch.histories))
                else:
                    assert negatives is not None
                    cands = np.concatenate([batch.targets[:, None], negatives[batch.users]], axis=1)
                    scores = score_fn(seqs, torch.from_numpy(cands).to(device), user_t)
                    ranks.append(target_ranks(scores, target_col=0))
    finally:
        if model is not None:
            model.train(was_training)
    return np.concatenate(ranks)


__all__ = [
    "ScoreFn",
    "backbone_score_fn",
    "eval_negatives",
    "evaluate",
    "score_device",
    "stage_ranks",
]
