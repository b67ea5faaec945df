"""The hypernetwork's error type (its own module, so serving snapshots need not import the net)."""

from __future__ import annotations

__all__ = ["HyperNetError"]


class HyperNetError(ValueError):
    """A hypernetwork that does not fit the backbone or profiles it was given."""
