"""Importance = a population sensitivity prior + a gated, personalized hypernetwork correction."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from chord.hyper.frozen import FrozenPrior
from chord.hyper.hypernet import HyperNetwork, eval_importance


def standardize_prior(sensitivity: np.ndarray) -> torch.Tensor:
    """Log-sensitivity scaled to mean 0 and std 1 (float32 [n_channels])."""
    s = np.log(np.maximum(np.asarray(sensitivity, dtype=np.float64), 1e-30))
    std = float(s.std())
    return torch.from_numpy((s - s.mean()) / (std if std > 0 else 1.0)).float()


class PriorImportance(nn.Module):
    """importance(z) = prior + gate * hypernet(z), with the gate starting at `gate` (0: the
    prior alone; the rd rule starts at 1, where a fresh hypernetwork adds a few hundredths).

    The prior is one sensitivity per channel measured on training data (the Fisher score of the
    quota rule's mixed-static baseline, or the rd rule's measured channel shares), so training
    starts from the population assignment and the hypernetwork learns only what each user
    changes; model selection on validation can keep the prior alone when personalization does
    not help.
    """

    def __init__(self, hyper: HyperNetwork, prior: torch.Tensor, gate: float = 0.0) -> None:
        super().__init__()
        if prior.shape != (hyper.n_channels,):
            raise ValueError(
                f"prior has shape {tuple(prior.shape)}; the hypernetwork scores "
                f"{hyper.n_channels} channels"
            )
        self.hyper = hyper
        self.register_buffer("prior", prior.detach().float().clone())
        self.gate = nn.Parameter(torch.full((), float(gate)))
        self.profile_dim = hyper.profile_dim
        self.n_channels = hyper.n_channels

    def hyper_config(self) -> dict[str, Any]:
        """The wrapped hypernetwork's constructor arguments, marked as carrying a prior."""
        return {**self.hyper.hyper_config(), "prior": True}

    def forward(self, profiles: torch.Tensor) -> torch.Tensor:
        """[B, profile_dim] -> [B, n_channels] importance (differentiable)."""
        prior = self.get_buffer("prior")
        return prior.unsqueeze(0) + self.gate * self.hyper(profiles)

    def channel_scores(self, profiles: torch.Tensor) -> list[torch.Tensor]:
        """Per-layer importance [B, n_out], in layout order."""
        sizes = [int(s.shape[1]) for s in self.hyper.channel_scores(profiles[:1])]
        return list(torch.split(self.forward(profiles), sizes, dim=1))

    def importance(self, profiles: torch.Tensor) -> torch.Tensor:
        """[B, profile_dim] float32 -> [B, n_channels] float32 (higher = keep more bits)."""
        return eval_importance(self, profiles)

    @torch.no_grad()
    def frozen(self) -> FrozenPrior:
        """A serving snapshot of the current parameters (chord.hyper.frozen.FrozenPrior)."""
        return FrozenPrior(self.get_buffer("prior"), self.gate, self.hyper.frozen())
