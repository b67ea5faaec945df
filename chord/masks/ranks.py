"""Element rank classes: nested top fractions of each layer's learned scores, and their masks."""

from __future__ import annotations

import itertools
import math

import numpy as np
import torch


class MaskError(ValueError):
    """Rank classes, keep fractions or levels that do not fit together."""


def check_fractions(fractions: tuple[float, ...]) -> tuple[float, ...]:
    """Keep fractions of classes >= 1, >= 2, ...: strictly decreasing, each in (0, 1]."""
    fr = tuple(float(f) for f in fractions)
    if not 1 <= len(fr) <= 3:
        raise MaskError(f"give 1 to 3 nested keep fractions, got {fr!r}")
    if any(not 0.0 < f <= 1.0 for f in fr) or any(a <= b for a, b in itertools.pairwise(fr)):
        raise MaskError(f"keep fractions must be strictly decreasing in (0, 1], got {fr!r}")
    return fr


def keep_count(n: int, fraction: float) -> int:
    """Weights of an n-weight layer kept at `fraction`: round half up, at least one."""
    return max(1, min(n, math.floor(fraction * n + 0.5)))


def layer_gain(fraction: float) -> float:
    """Scale of kept weights, 1 / sqrt(fraction): keeps a layer's output variance (edge-popup)."""
    return 1.0 / math.sqrt(fraction)


# How a layer's kept weights are chosen by score. "layer": the top of the whole layer (the
# edge-popup rule). "channel": the same number of weights in every channel (dim 0 of the
# weight: an item row of an embedding table, an output unit of a Linear or Conv2d), the
# remainder going to the channels with the highest next score. Without it, Caser's separate
# output item table spends a sparse budget on the rows of rare items (their negative weights
# lower their logits) and leaves every popular item's row empty, so popular candidates score
# exactly 0 and tie (benchmarks/RESULTS.md, accuracy_random_modes). Either way a layer keeps
# exactly keep_count(n, fraction) weights, which is all the mask format fixes.
BALANCES = ("layer", "channel")


def check_balance(balance: str) -> str:
    """`balance` if it names a rule of BALANCES; MaskError naming the choices otherwise."""
    if balance not in BALANCES:
        raise MaskError(f"mask balance must be one of {BALANCES}, got {balance!r}")
    return balance


def _channel_order(scores: np.ndarray) -> np.ndarray:
    """Flat indices of a [C, S] score matrix in the channel-balanced keep order.

    Element (c, i) with rank r within channel c (by score, ties to the lower index) comes
    before every element of rank r + 1; among one rank, higher scores (ties: lower channel)
    come first. The first k indices keep k // C or k // C + 1 weights of every channel.
    """
    size = scores.shape[1]
    within = np.argsort(-scores, axis=1, kind="stable")  # [C, S] column index by rank
    ranked = np.take_along_axis(scores, within, axis=1)  # [C, S] scores by rank
    across = np.argsort(-ranked, axis=0, kind="stable")  # [C, S] channel order per rank
    cols = np.take_along_axis(within, across, axis=0)  # [C, S]
    return (across * size + cols).T.reshape(-1)  # rank-major


def top_fraction_mask(
    scores: torch.Tensor, fraction: float, balance: str = "layer"
) -> torch.Tensor:
    """Bool mask (shape of scores) of the keep_count(n, fraction) highest scores of the tensor.

    balance "channel": the same count from every channel (dim 0), see BALANCES; it selects
    exactly what rank_classes(scores, (fraction,), "channel") marks class 1.
    """
    flat = scores.reshape(-1)
    k = keep_count(flat.numel(), fraction)
    mask = torch.zeros(flat.numel(), dtype=torch.bool, device=scores.device)
    if check_balance(balance) == "layer" or scores.dim() < 2:
        mask[torch.topk(flat, k, sorted=False).indices] = True
        return mask.reshape(scores.shape)
    rows = scores.reshape(scores.shape[0], -1)
    n_ch, size = rows.shape
    full, extra = divmod(k, n_ch)
    # torch.sort with stable=True keeps the lower index first among ties, as _channel_order.
    ranked, within = torch.sort(rows, dim=1, descending=True, stable=True)
    grid = mask.view(n_ch, size)
    grid.scatter_(1, within[:, :full], True)
    if extra:
        _, best = torch.sort(ranked[:, full], descending=True, stable=True)
        chosen = best[:extra]
        grid[chosen, within[chosen, full]] = True
    return mask.reshape(scores.shape)


def rank_classes(
    scores: torch.Tensor, fractions: tuple[float, ...], balance: str = "layer"
) -> np.ndarray:
    """uint8 class per element (flattened, row-major): how many nested top fractions hold it.

    Element e has class >= j (j = 1..len(fractions)) iff it is among the keep_count(n,
    fractions[j-1]) first elements of its layer's keep order: by score over the whole layer
    (balance "layer", ties to the lower flat index) or channel-balanced (balance "channel",
    see _channel_order). The classes are nested either way, since one order is cut shorter.
    """
    fr = check_fractions(fractions)
    values = scores.detach().double().cpu().numpy()
    flat = values.reshape(-1)
    if check_balance(balance) == "layer" or values.ndim < 2:
        order = np.argsort(-flat, kind="stable")
    else:
        order = _channel_order(values.reshape(values.shape[0], -1))
    position = np.empty(flat.size, dtype=np.int64)
    position[order] = np.arange(flat.size)
    classes = np.zeros(flat.size, dtype=np.uint8)
    for f in fr:
        classes += (position < keep_count(flat.size, f)).astype(np.uint8)
    return classes


def class_mask(classes: np.ndarray, min_class: int) -> np.ndarray:
    """Bool mask: elements whose class is at least `min_class` (0 keeps every element)."""
    return np.asarray(classes) >= int(min_class)


__all__ = [
    "BALANCES",
    "MaskError",
    "check_balance",
    "check_fractions",
    "class_mask",
    "keep_count",
    "layer_gain",
    "rank_classes",
    "top_fraction_mask",
]
