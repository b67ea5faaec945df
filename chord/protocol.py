"""The evaluation protocol (sampled or full-catalogue ranking), checked against the data at load.

Sampled ranking scores each target against `n_negatives` items the user never touched, so
every evaluated user must leave at least that many items untouched; full-catalogue ranking
ranks the target among every item and fits any catalogue. `check_protocol` refuses a split the
protocol cannot run on, naming the raw user id and the rule, before any training starts.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from chord.data.errors import DataError

RANKINGS = ("sampled", "full")


class ProtocolError(DataError):
    """The evaluation protocol does not fit the data (e.g. too few unseen items to sample)."""


@dataclass(frozen=True)
class Protocol:
    """How ranking metrics are computed.

    ranking: "sampled" (target vs `n_negatives` seeded unseen negatives; the literature's
    100-negatives protocol, Kang & McAuley 2018) or "full" (target vs the whole catalogue with
    the history masked, the RecBole convention; `n_negatives` is then unused).
    """

    ranking: str = "sampled"
    n_negatives: int = 100

    def __post_init__(self) -> None:
        """Reject a ranking name outside RANKINGS or a negative count below 1."""
        if self.ranking not in RANKINGS:
            raise ProtocolError(f"ranking must be one of {RANKINGS}, got {self.ranking!r}")
        if self.ranking == "sampled" and self.n_negatives < 1:
            raise ProtocolError(
                f"--negatives must be >= 1, got {self.n_negatives}; "
                "or pass --full-ranking to rank against the whole catalogue"
            )

    @property
    def full(self) -> bool:
        """True for full-catalogue ranking."""
        return self.ranking == "full"


def add_protocol_arguments(parser: argparse.ArgumentParser) -> None:
    """Declare --negatives N and --full-ranking (the same two flags on every command)."""
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--negatives", type=int, default=100, metavar="N",
                       help="sampled ranking: the target against N unseen negatives (default 100)")
    group.add_argument("--full-ranking", action="store_true",
                       help="rank the target against the whole catalogue instead (history masked)")


def protocol_from_args(args: argparse.Namespace) -> Protocol:
    """The Protocol that --negatives / --full-ranking name."""
    return Protocol("full" if args.full_ranking else "sampled", args.negatives)


def check_protocol(
    protocol: Protocol,
    n_items: int,
    seen: Sequence[np.ndarray],
    user_labels: Sequence[str] | np.ndarray | None = None,
    dataset: str = "the dataset",
) -> None:
    """Raise ProtocolError when sampled ranking cannot draw its negatives for some user.

    seen[u]: every item user u touched; user_labels[u]: its raw id as in the file (the index is
    shown when labels are not given). One check gives the binding constraint at once: the user
    with the fewest unseen items, and the largest --negatives that works for every user.
    """
    if protocol.full:
        return
    need = protocol.n_negatives
    if not len(seen):
        if n_items - 1 < need:
            raise ProtocolError(
                f"{dataset}: a catalogue of {n_items} items cannot give {need} unseen negatives "
                f"per user; pass --negatives {max(n_items - 1, 1)} or fewer, or --full-ranking"
            )
        return
    touched = np.array([len(np.unique(np.asarray(items))) for items in seen])
    u = int(np.argmax(touched))  # the fewest unseen items: the binding user (first if tied)
    fewest = n_items - int(touched[u])
    if fewest >= need:
        return
    who = f"user {user_labels[u]!s}" if user_labels is not None else f"user index {u}"
    hint = (
        f"pass --negatives {fewest} or fewer, or --full-ranking"
        if fewest >= 1 else "pass --full-ranking"
    )
    raise ProtocolError(
        f"{dataset}: sampled ranking needs {need} unseen negatives per user, but {who} touched "
        f"{touched[u]} of {n_items} items, leaving {fewest} unseen (the fewest of any user); "
        f"{hint}"
    )


__all__ = [
    "RANKINGS",
    "Protocol",
    "ProtocolError",
    "add_protocol_arguments",
    "check_protocol",
    "protocol_from_args",
]
