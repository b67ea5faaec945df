"""The interface every backbone offers: encode, train, score candidates, score the catalogue."""
# INTERFACE STUB (owned by the foundation helper): signatures are the contract.
from __future__ import annotations

import abc

import torch
from torch import nn


class Backbone(nn.Module, abc.ABC):
    """A frozen-able sequential recommender.

    Sequences are LongTensors [B, L] of item ids, left-padded with 0, most recent item last.
    Items are 1..n_items; 0 is padding. Every weight that may be quantized lives in an
    nn.Linear, nn.Conv2d or nn.Embedding (no fused attention parameters), so channel layouts
    are discovered generically and torch.func.functional_call can swap weights.
    """

    kind: str  # "sasrec" or "caser"
    n_items: int
    max_len: int

    @abc.abstractmethod
    def encode(self, seqs: torch.Tensor) -> torch.Tensor:
        """User state after the last position: [B, L] -> [B, d]."""

    @abc.abstractmethod
    def score_candidates(self, seqs: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
        """Scores of given items: seqs [B, L], candidates [B, C] -> [B, C]."""

    @abc.abstractmethod
    def score_all(self, seqs: torch.Tensor) -> torch.Tensor:
        """Scores of the whole catalogue: [B, L] -> [B, n_items + 1] (column 0 is padding)."""

    @abc.abstractmethod
    def training_loss(self, seqs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Mean next-item loss; targets [B, L] (0 = ignore) for SASRec, or [B] / [B, T] for Caser."""
