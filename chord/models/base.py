"""The interface every backbone offers: encode, train, score candidates, score the catalogue."""

from __future__ import annotations

import abc

import torch
from torch import nn
from torch.nn import functional as F

from chord.config import BackboneConfig

# Score given to the padding column of `score_all`: finite so differences and softmaxes stay
# well defined, low enough that padding never ranks above a real item.
PAD_SCORE = -1.0e4

LOSSES = ("ce", "bce")


class LossError(ValueError):
    """An unknown training-loss name was asked for."""


def fit_length(seqs: torch.Tensor, max_len: int) -> torch.Tensor:
    """Keep the last `max_len` columns of left-padded sequences, left-padding with 0 if shorter."""
    if seqs.dim() != 2:
        raise ValueError(f"sequences must be a [batch, length] LongTensor, got shape {seqs.shape}")
    length = seqs.shape[1]
    if length >= max_len:
        return seqs[:, length - max_len :]
    return F.pad(seqs, (max_len - length, 0), value=0)


def sample_uniform_negatives(
    shape: torch.Size | tuple[int, ...],
    n_items: int,
    generator: torch.Generator | None = None,
    device: torch.device | None = None,
) -> torch.Tensor:
    """Uniform random item ids in 1..n_items (may collide with positives; standard for BCE)."""
    return torch.randint(1, n_items + 1, tuple(shape), generator=generator, device=device)


class Backbone(nn.Module, abc.ABC):
    """A frozen-able sequential recommender.

    Sequences are LongTensors [B, L] of item ids, left-padded with 0, most recent item last.
    Items are 1..n_items; 0 is padding. Every weight that may be quantized lives in an
    nn.Linear, nn.Conv2d or nn.Embedding (no fused attention parameters), so channel layouts
    are discovered generically and torch.func.functional_call can swap weights.
    Inputs of any length are accepted: longer ones are cut to the last `max_len` items,
    shorter ones are left-padded.
    """

    kind: str  # "sasrec" or "caser"
    n_items: int
    max_len: int
    config: BackboneConfig
    state_dim: int  # width of `encode` output (the user profile dimension)
    item_emb: nn.Embedding  # input item table (row 0 = padding, kept at zero)

    @torch.no_grad()
    def fold_for_quantization(self) -> bool:
        """Rewrite weights in place into a ranking-equivalent form that quantizes better.

        Returns whether anything changed. The default changes nothing; a backbone overrides it
        only with rewrites under which every user's item ranking is exactly preserved.
        """
        return False

    @abc.abstractmethod
    def encode(self, seqs: torch.Tensor) -> torch.Tensor:
        """User state after the last position: [B, L] -> [B, d]."""

    @abc.abstractmethod
    def score_candidates(self, seqs: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
        """Scores of given items: seqs [B, L], candidates [B, C] -> [B, C]."""

    @abc.abstractmethod
    def score_all(self, seqs: torch.Tensor) -> torch.Tensor:
        """Scores of the whole catalogue: [B, L] -> [B, n_items + 1] (column 0 is PAD_SCORE)."""

    @abc.abstractmethod
    def training_loss(
        self,
        seqs: torch.Tensor,
        targets: torch.Tensor,
        *,
        loss: str = "ce",
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Mean next-item loss; targets [B, L] (0 = ignore) for SASRec, or [B] / [B, T] for Caser.

        `loss="ce"` is cross-entropy over the full catalogue (default); `loss="bce"` is binary
        cross-entropy against one uniformly sampled negative per target (drawn with `generator`).
        """


def next_item_loss(
    states: torch.Tensor,
    targets: torch.Tensor,
    item_weight: torch.Tensor,
    item_bias: torch.Tensor | None,
    loss: str,
    generator: torch.Generator | None,
) -> torch.Tensor:
    """Mean loss of user states [N, d] against non-zero target ids [N] using the item table."""
    if loss == "ce":
        # Softmax over real items 1..n only (padding is no class): column j is item j + 1.
        logits = states @ item_weight[1:].t()
        if item_bias is not None:
            logits = logits + item_bias[1:]
        return F.cross_entropy(logits, targets - 1)
    if loss == "bce":
        n_items = item_weight.shape[0] - 1
        negatives = sample_uniform_negatives(targets.shape, n_items, generator, targets.device)
        pos = (states * item_weight[targets]).sum(-1)
        neg = (states * item_weight[negatives]).sum(-1)
        if item_bias is not None:
            pos = pos + item_bias[targets]
            neg = neg + item_bias[negatives]
        return 0.5 * (
            F.binary_cross_entropy_with_logits(pos, torch.ones_like(pos))
            + F.binary_cross_entropy_with_logits(neg, torch.zeros_like(neg))
        )
    raise LossError(f"unknown training loss {loss!r}; use one of {LOSSES}")


__all__ = [
    "LOSSES",
    "PAD_SCORE",
    "Backbone",
    "LossError",
    "fit_length",
    "next_item_loss",
    "sample_uniform_negatives",
]
