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


def top_fraction_mask(scores: torch.Tensor, fraction: float) -> torch.Tensor:
    """Bool mask (shape of scores) of the keep_count(n, fraction) highest scores of the tensor."""
    flat = scores.reshape(-1)
    k = keep_count(flat.numel(), fraction)
    mask = torch.zeros(flat.numel(), dtype=torch.bool, device=scores.device)
    mask[torch.topk(flat, k, sorted=False).indices] = True
    return mask.reshape(scores.shape)


def rank_classes(scores: torch.Tensor, fractions: tuple[float, ...]) -> np.ndarray:
    """uint8 class per element (flattened, row-major): how many nested top fractions hold it.

    Element e has class >= j (j = 1..len(fractions)) iff it is among the keep_count(n,
    fractions[j-1]) highest scores of its layer; ties go to the lower flat index.
    """
    fr = check_fractions(fractions)
    flat = scores.detach().reshape(-1).double().cpu().numpy()
    order = np.argsort(-flat, kind="stable")
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
    "MaskError",
    "check_fractions",
    "class_mask",
    "keep_count",
    "layer_gain",
    "rank_classes",
    "top_fraction_mask",
]
