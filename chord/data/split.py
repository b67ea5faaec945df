"""Leave-one-out split: last item for test, the one before for validation, the rest to train."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from chord.data.errors import SplitError
from chord.data.interactions import InteractionData


def pad_sequences(seqs: list[np.ndarray], max_len: int) -> torch.Tensor:
    """Left-pad (and cut to the last `max_len` items) into a LongTensor [len(seqs), max_len]."""
    out = np.zeros((len(seqs), max_len), dtype=np.int64)
    for row, seq in enumerate(seqs):
        tail = seq[-max_len:]
        if len(tail):
            out[row, max_len - len(tail) :] = tail
    return torch.from_numpy(out)


@dataclass(frozen=True)
class EvalSet:
    """Users to evaluate, each with a history (oldest first) and one held-out target item."""

    users: np.ndarray  # int64 user indices into InteractionData.sequences
    histories: list[np.ndarray]
    targets: np.ndarray  # int64 item ids

    def __len__(self) -> int:
        """Number of evaluated users."""
        return len(self.users)

    def subset(self, index: np.ndarray) -> EvalSet:
        """The rows at positions `index`."""
        return EvalSet(
            self.users[index], [self.histories[int(i)] for i in index], self.targets[index]
        )


@dataclass(frozen=True)
class Split:
    """A leave-one-out split of one dataset."""

    name: str
    n_items: int
    train: list[np.ndarray]  # per user: sequence without its last two items
    valid: EvalSet  # history = seq[:-2], target = seq[-2]
    test: EvalSet  # history = seq[:-1], target = seq[-1]
    seen: list[np.ndarray]  # per user: every item the user touched (for negative sampling)
    user_labels: np.ndarray | None = None  # raw user id of each user (as in the file), if known

    @property
    def n_users(self) -> int:
        """Number of users."""
        return len(self.train)

    def stage(self, stage: str) -> EvalSet:
        """The "valid" or "test" evaluation set."""
        if stage == "valid":
            return self.valid
        if stage == "test":
            return self.test
        raise SplitError(f"unknown stage {stage!r}; use 'valid' or 'test'")


def leave_one_out(data: InteractionData) -> Split:
    """Split each time-ordered sequence: train = seq[:-2], valid = seq[-2], test = seq[-1]."""
    short = [u for u, s in enumerate(data.sequences) if len(s) < 3]
    if short:
        raise SplitError(
            f"{data.name}: {len(short)} users have fewer than 3 interactions (e.g. user index "
            f"{short[0]}); leave-one-out needs 3 per user, load with min_interactions >= 3"
        )
    users = np.arange(data.n_users, dtype=np.int64)
    seqs = data.sequences
    return Split(
        name=data.name,
        n_items=data.n_items,
        train=[s[:-2] for s in seqs],
        valid=EvalSet(users, [s[:-2] for s in seqs], np.array([s[-2] for s in seqs], np.int64)),
        test=EvalSet(users, [s[:-1] for s in seqs], np.array([s[-1] for s in seqs], np.int64)),
        seen=[np.unique(s) for s in seqs],
        user_labels=np.asarray(data.user_labels),
    )


__all__ = ["EvalSet", "Split", "leave_one_out", "pad_sequences"]
