"""Caser: horizontal and vertical convolutions over the last L items, without a user embedding."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from chord.config import CaserConfig
from chord.models.base import PAD_SCORE, Backbone, fit_length, next_item_loss


class Caser(Backbone):
    """Caser (Tang & Wang, WSDM 2018) made user-agnostic.

    The original model concatenates a per-user embedding to the convolutional features before
    the output layer. Every phone shares one frozen backbone and the cloud never holds a
    device-side user table, so this version drops the user embedding: the user state is the
    fully connected layer's output alone (width `embed`), and an item is scored by its output
    embedding plus a per-item bias. Personalization comes from the sequence (and, in CHORD, from
    the per-user precision strategy).
    """

    kind = "caser"

    def __init__(self, cfg: CaserConfig) -> None:
        """Create embeddings, convolutions and the output layer (see reset_parameters)."""
        super().__init__()
        self.config = cfg
        self.n_items = cfg.n_items
        self.max_len = cfg.max_len
        self.state_dim = cfg.embed
        d, length = cfg.embed, cfg.max_len
        self.item_emb = nn.Embedding(cfg.n_items + 1, d, padding_idx=0)
        self.conv_v = nn.Conv2d(1, cfg.n_v, (length, 1))
        self.conv_h = nn.ModuleList(nn.Conv2d(1, cfg.n_h, (h, d)) for h in range(1, length + 1))
        self.fc = nn.Linear(cfg.n_v * d + cfg.n_h * length, d)
        self.dropout = nn.Dropout(cfg.dropout)
        self.out_emb = nn.Embedding(cfg.n_items + 1, d, padding_idx=0)
        # A plain parameter, not an embedding: biases stay full precision and are not channels.
        self.out_bias = nn.Parameter(torch.zeros(cfg.n_items + 1))

    def reset_parameters(self, generator: torch.Generator) -> None:
        """Normal(0, 1/d) embeddings, Xavier conv/linear weights, zero biases; from `generator`."""
        d = self.state_dim
        for emb in (self.item_emb, self.out_emb):
            nn.init.normal_(emb.weight, 0.0, 1.0 / d, generator=generator)
        for module in self.modules():
            if isinstance(module, nn.Conv2d | nn.Linear):
                nn.init.xavier_normal_(module.weight, generator=generator)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
        with torch.no_grad():
            self.item_emb.weight[0].zero_()
            self.out_emb.weight[0].zero_()
            self.out_bias.zero_()

    @torch.no_grad()
    def fold_for_quantization(self) -> bool:
        """Subtract the mean output-item row from every output item row (padding stays zero).

        Every item's score drops by the same state . mean for a given user, so rankings and
        the softmax are unchanged. Trained output rows share a large common direction (on
        ML-100K the mean row has 0.7 of a row's norm), and a per-row quantization grid spent on
        it leaves little resolution for the part that ranks items; without it, 3-bit PTQ keeps
        far more of the fp32 NDCG (benchmarks/RESULTS.md, accuracy).
        """
        rows = self.out_emb.weight[1:]
        mean = rows.mean(0, keepdim=True)
        # Already centred (up to rounding): leave the weights, and so the version, alone.
        if float(mean.norm()) <= 1e-6 * float(rows.norm(dim=1).mean()):
            return False
        rows -= mean
        return True

    def encode(self, seqs: torch.Tensor) -> torch.Tensor:
        """User state from the last L items: [B, L'] -> [B, embed]."""
        seqs = fit_length(seqs, self.max_len)
        e = self.item_emb(seqs).unsqueeze(1)  # [B, 1, L, d]
        out_v = self.conv_v(e).flatten(1)  # [B, n_v * d]
        pooled = []
        for conv in self.conv_h:
            h = F.relu(conv(e).squeeze(3))  # [B, n_h, L - height + 1]
            pooled.append(h.max(dim=2).values)
        features = torch.cat([out_v, *pooled], dim=1)
        return F.relu(self.fc(self.dropout(features)))

    def score_candidates(self, seqs: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
        """Output-embedding dot products plus item bias for the candidates: [B, C]."""
        state = self.encode(seqs)
        return (self.out_emb(candidates) * state[:, None, :]).sum(-1) + self.out_bias[candidates]

    def score_all(self, seqs: torch.Tensor) -> torch.Tensor:
        """Scores of every item: [B, n_items + 1]; column 0 (padding) is PAD_SCORE."""
        scores = self.encode(seqs) @ self.out_emb.weight.t() + self.out_bias
        scores[:, 0] = PAD_SCORE
        return scores

    def training_loss(
        self,
        seqs: torch.Tensor,
        targets: torch.Tensor,
        *,
        loss: str = "ce",
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Next-item loss of the window's state against targets [B] or [B, T] (0 = ignore)."""
        state = self.encode(seqs)
        if targets.dim() == 1:
            targets = targets[:, None]
        states = state[:, None, :].expand(-1, targets.shape[1], -1)
        mask = targets != 0
        return next_item_loss(
            states[mask], targets[mask], self.out_emb.weight, self.out_bias, loss, generator
        )


__all__ = ["Caser"]
