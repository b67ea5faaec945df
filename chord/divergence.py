"""Stop training with a clear error as soon as a loss or a weight stops being a finite number."""

from __future__ import annotations

import math

import torch


class DivergedError(RuntimeError):
    """Training diverged (a non-finite loss or weight); the message says where and what to do."""


def finite_loss(loss: torch.Tensor, where: str, hint: str) -> float:
    """The loss as a float; raises DivergedError when it is NaN or infinite.

    where: e.g. "sasrec/u epoch 1 batch 3"; hint: what to change, e.g. "lower --lr (now 1e8)".
    Call it before `backward()` so a diverged step never updates the weights.
    """
    value = float(loss.detach())
    if not math.isfinite(value):
        raise DivergedError(f"training diverged: loss is {value} at {where}; {hint}")
    return value


def check_finite_weights(module: torch.nn.Module, where: str, hint: str) -> None:
    """Raise DivergedError naming the first parameter that holds a NaN or infinity."""
    for name, param in module.named_parameters():
        if not bool(torch.isfinite(param).all()):
            raise DivergedError(
                f"training diverged: weight {name} is not finite at {where}; {hint}"
            )


__all__ = ["DivergedError", "check_finite_weights", "finite_loss"]
