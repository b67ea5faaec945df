"""SASRec: a causal self-attention sequence encoder with explicit q/k/v/out projections."""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from chord.config import SASRecConfig
from chord.models.base import PAD_SCORE, Backbone, fit_length, next_item_loss


def _is_vmapped(x: torch.Tensor) -> bool:
    """Whether x is a tensor seen inside torch.vmap (per-user weights in hypernetwork training)."""
    return bool(torch._C._functorch.is_batchedtensor(x))


class SelfAttention(nn.Module):
    """Multi-head scaled dot-product attention written with four nn.Linear layers."""

    def __init__(self, hidden: int, n_heads: int, dropout: float) -> None:
        """Create the query, key, value and output projections."""
        super().__init__()
        self.n_heads = n_heads
        self.head_dim = hidden // n_heads
        self.q = nn.Linear(hidden, hidden)
        self.k = nn.Linear(hidden, hidden)
        self.v = nn.Linear(hidden, hidden)
        self.out = nn.Linear(hidden, hidden)
        self.dropout = nn.Dropout(dropout)

    def forward(
        self, query: torch.Tensor, keys: torch.Tensor, allowed: torch.Tensor
    ) -> torch.Tensor:
        """Attend from query [B, L, d] to keys [B, L, d]; allowed [B, L, L] marks visible keys."""
        b, length, d = query.shape
        shape = (b, length, self.n_heads, self.head_dim)
        q = self.q(query).view(shape).transpose(1, 2)
        k = self.k(keys).view(shape).transpose(1, 2)
        v = self.v(keys).view(shape).transpose(1, 2)
        if _is_vmapped(q):
            # torch.vmap has no batching rule for the fused kernel; spell the same math out.
            logits = (q @ k.transpose(-2, -1)) / math.sqrt(self.head_dim)
            logits = logits.masked_fill(~allowed[:, None], float("-inf"))
            mixed = self.dropout(torch.softmax(logits, dim=-1)) @ v
        else:
            # softmax(q k^T / sqrt(d_head) masked) v with dropout on the weights, through
            # PyTorch's fused kernel (much faster on CPU for long histories).
            mixed = F.scaled_dot_product_attention(
                q,
                k,
                v,
                attn_mask=allowed[:, None],
                dropout_p=self.dropout.p if self.training else 0.0,
            )
        mixed = mixed.transpose(1, 2).reshape(b, length, d)
        return self.out(mixed)


class FeedForward(nn.Module):
    """Point-wise two-layer feed-forward network with ReLU and dropout."""

    def __init__(self, hidden: int, dropout: float) -> None:
        """Create both position-wise layers."""
        super().__init__()
        self.fc1 = nn.Linear(hidden, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[B, L, d] -> [B, L, d] (without the residual, which the block adds)."""
        return self.dropout(self.fc2(self.dropout(F.relu(self.fc1(x)))))


class SASRecBlock(nn.Module):
    """One pre-norm self-attention block as in the SASRec reference code."""

    def __init__(self, hidden: int, n_heads: int, dropout: float) -> None:
        """Create the attention, feed-forward and their layer norms."""
        super().__init__()
        self.attn_norm = nn.LayerNorm(hidden, eps=1e-8)
        self.attn = SelfAttention(hidden, n_heads, dropout)
        self.ffn_norm = nn.LayerNorm(hidden, eps=1e-8)
        self.ffn = FeedForward(hidden, dropout)

    def forward(self, x: torch.Tensor, allowed: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        """Apply attention then feed-forward; `keep` [B, L, 1] zeroes padded positions."""
        q = self.attn_norm(x)
        x = q + self.attn(q, x, allowed)
        x = self.ffn_norm(x)
        x = x + self.ffn(x)
        return x * keep


class SASRec(Backbone):
    """SASRec over left-padded item sequences; items are scored with the input embedding table."""

    kind = "sasrec"
    causal: torch.Tensor

    def __init__(self, cfg: SASRecConfig) -> None:
        """Create embeddings, blocks and the final layer norm (see `reset_parameters`)."""
        super().__init__()
        self.config = cfg
        self.n_items = cfg.n_items
        self.max_len = cfg.max_len
        self.state_dim = cfg.hidden
        self.emb_scale = math.sqrt(cfg.hidden)
        self.item_emb = nn.Embedding(cfg.n_items + 1, cfg.hidden, padding_idx=0)
        self.pos_emb = nn.Embedding(cfg.max_len, cfg.hidden)
        self.emb_dropout = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(
            SASRecBlock(cfg.hidden, cfg.n_heads, cfg.dropout) for _ in range(cfg.n_blocks)
        )
        self.final_norm = nn.LayerNorm(cfg.hidden, eps=1e-8)
        self.register_buffer(
            "causal",
            torch.tril(torch.ones(cfg.max_len, cfg.max_len, dtype=torch.bool)),
            persistent=False,
        )

    def reset_parameters(self, generator: torch.Generator) -> None:
        """Xavier-normal weights, zero biases, unit norms, zero padding row; from `generator`."""
        for module in self.modules():
            if isinstance(module, nn.Linear | nn.Embedding):
                nn.init.xavier_normal_(module.weight, generator=generator)
                if isinstance(module, nn.Linear) and module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.LayerNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
        with torch.no_grad():
            self.item_emb.weight[0].zero_()

    def states(self, seqs: torch.Tensor) -> torch.Tensor:
        """Hidden state at every position: [B, L] -> [B, max_len, d] (padded positions are 0).

        Position i attends only to positions <= i that hold an item, so a later item never
        changes an earlier state.
        """
        seqs = fit_length(seqs, self.max_len)
        keep = (seqs != 0).unsqueeze(-1).to(self.item_emb.weight.dtype)
        positions = torch.arange(self.max_len, device=seqs.device)
        x = self.item_emb(seqs) * self.emb_scale + self.pos_emb(positions)
        x = self.emb_dropout(x) * keep
        # Visible = causal and a real item; the diagonal stays visible so an all-padding row
        # still has one key (its output is zeroed by `keep` anyway) and never becomes NaN.
        allowed = self.causal & (seqs != 0)[:, None, :]
        allowed = allowed | torch.eye(self.max_len, dtype=torch.bool, device=seqs.device)
        for block in self.blocks:
            x = block(x, allowed, keep)
        return self.final_norm(x) * keep

    def encode(self, seqs: torch.Tensor) -> torch.Tensor:
        """User state after the last position: [B, L] -> [B, hidden]."""
        return self.states(seqs)[:, -1]

    def score_candidates(self, seqs: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
        """Dot products of the user state with the candidates' embeddings: [B, C]."""
        state = self.encode(seqs)
        return (self.item_emb(candidates) * state[:, None, :]).sum(-1)

    def score_all(self, seqs: torch.Tensor) -> torch.Tensor:
        """Scores of every item: [B, n_items + 1]; column 0 (padding) is PAD_SCORE."""
        scores = self.encode(seqs) @ self.item_emb.weight.t()
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
        """Next-item loss at every position whose target is non-zero; targets [B, L]."""
        states = self.states(seqs)
        targets = fit_length(targets, self.max_len)
        mask = targets != 0
        return next_item_loss(
            states[mask], targets[mask], self.item_emb.weight, None, loss, generator
        )


__all__ = ["SASRec", "SASRecBlock", "SelfAttention"]
