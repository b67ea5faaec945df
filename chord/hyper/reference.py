"""A reference importance both sides hold, so a strategy can travel as a delta to it."""

from __future__ import annotations

import numpy as np
import torch

from chord.artifacts.reference import reference_id_of
from chord.hyper.runs import ChordRun
from chord.hyper.training import pad_left

PSEUDO_USERS = 256  # seeded random histories averaged into the reference
PSEUDO_HISTORY = 10  # items per pseudo-history


@torch.no_grad()
def reference_importance(
    run: ChordRun, users: int = PSEUDO_USERS, history: int = PSEUDO_HISTORY, seed: int = 0
) -> np.ndarray:
    """Mean importance over seeded random-item histories, as float16 [n_channels].

    No user data is involved: the server derives it from the run alone, ships it once as the
    spec's REFERENCE_DATA artifact, and each device turns it into reference levels for its
    tier and budget.
    """
    gen = torch.Generator().manual_seed(seed)
    n_items = int(run.backbone.n_items)
    items = torch.randint(1, n_items + 1, (users, history), generator=gen).numpy()
    seqs = pad_left(list(items), int(run.backbone.max_len))
    mean = run.importance_model.importance(run.profile(seqs)).double().mean(0).cpu().numpy()
    if run.level_cost is not None:
        # The rd rule reads importance as a log-multiplier: keep its scale (float16 holds
        # these log values to about 1e-3 relative).
        return mean.astype(np.float16)
    # Only the order matters to the quota rule: standardize so float16 neither overflows nor
    # flattens the spread.
    std = float(mean.std())
    return ((mean - mean.mean()) / (std if std > 0 else 1.0)).astype(np.float16)


def reference_id(reference: np.ndarray, level_cost: bytes = b"") -> str:
    """Short name of a reference: CRC32 of its little-endian float16 bytes followed by the
    spec's level-cost bytes, 8 hex digits (a device with either one stale is caught)."""
    return reference_id_of(reference, level_cost)
