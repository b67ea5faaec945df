"""TorchScript-frozen scoring functions: the batch-1 deployment form of a runtime."""

from __future__ import annotations

import warnings
from typing import Any

import torch
from torch import nn


class _ScoreAll(nn.Module):
    """Calls `score_all` of the wrapped model."""

    def __init__(self, model: nn.Module) -> None:
        """Wrap a model with a `score_all` method."""
        super().__init__()
        self.model = model

    def forward(self, seqs: torch.Tensor) -> torch.Tensor:
        """Scores of the catalogue."""
        return self.model.score_all(seqs)  # type: ignore[no-any-return, operator]


class _ScoreCandidates(nn.Module):
    """Calls `score_candidates` of the wrapped model."""

    def __init__(self, model: nn.Module) -> None:
        """Wrap a model with a `score_candidates` method."""
        super().__init__()
        self.model = model

    def forward(self, seqs: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
        """Scores of the candidates."""
        return self.model.score_candidates(seqs, candidates)  # type: ignore[no-any-return, operator]


class FrozenScorer:
    """Traced and frozen `score_all` / `score_candidates` for inputs shaped like the examples.

    Tracing records the graph for the example shapes (sequence length, candidate count); the
    scores are the same as the model's. Weights become constants of the frozen graph.
    """

    def __init__(self, score_all: Any, score_candidates: Any) -> None:
        """Hold the two frozen TorchScript modules."""
        self._all = score_all
        self._cand = score_candidates

    def score_all(self, seqs: torch.Tensor) -> torch.Tensor:
        """Scores of the whole catalogue: [B, n_items + 1]."""
        return self._all(seqs)  # type: ignore[no-any-return]

    def score_candidates(self, seqs: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
        """Scores of the given items: [B, C]."""
        return self._cand(seqs, candidates)  # type: ignore[no-any-return]


def freeze_scorers(
    model: nn.Module,
    example_seqs: torch.Tensor,
    example_candidates: torch.Tensor,
    freeze_all: bool = True,
) -> FrozenScorer:
    """Trace and freeze a backbone's (or low-bit runtime's) scoring methods with no autograd.

    Freezing folds every input-independent expression into a constant. With a bit-packed
    item table that would fold the unpacked fp32 table into `score_all`, so pass
    `freeze_all=False` there: `score_all` then stays the model's own method.
    """
    model.eval()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TorchScript deprecation and tracer notices
        all_fn = (
            torch.jit.freeze(
                torch.jit.trace(_ScoreAll(model).eval(), (example_seqs,), check_trace=False)
            )
            if freeze_all
            else model.score_all
        )
        cand_fn = torch.jit.freeze(
            torch.jit.trace(
                _ScoreCandidates(model).eval(),
                (example_seqs, example_candidates),
                check_trace=False,
            )
        )
    return FrozenScorer(all_fn, cand_fn)


__all__ = ["FrozenScorer", "freeze_scorers"]
