"""Empirical-Fisher channel sensitivity: the quota rule's population prior (and its baseline)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from chord.data import Split
from chord.hyper.hypernet import layout_layers
from chord.hyper.personal import module_device
from chord.levels import Tier
from chord.models import Backbone
from chord.quant import quantize_per_channel
from chord.train import training_examples


def fisher_importance(
    backbone: Backbone,
    layout: Any,
    split: Split,
    tier: Tier,
    n_batches: int = 8,
    batch_size: int = 128,
    seed: int = 0,
) -> np.ndarray:
    """Per-channel sensitivity: sum_j F_j (Q_low(w)_j - w_j)^2, per weight of the channel.

    F is the empirical Fisher (squared gradients of the next-item loss) on training users'
    training sequences; Q_low quantizes at the tier's lowest bit-width, so the score estimates
    how much the loss grows if that channel drops to the lowest level.
    """
    device = module_device(backbone)
    inputs, targets = training_examples(split.train, backbone.config)
    # cpu-ok: CPU indices into the CPU example tensors; batches are moved when used
    gen = torch.Generator().manual_seed(seed)  # cpu-ok
    order = torch.randperm(len(inputs), generator=gen)[: n_batches * batch_size]  # cpu-ok
    params = {name: p for name, p in backbone.named_parameters()}
    weights = [params[f"{layer.name}.weight"] for layer in layout_layers(layout)]
    fisher = [torch.zeros_like(w) for w in weights]
    backbone.eval()
    with torch.enable_grad():
        for w in weights:
            w.requires_grad_(True)
        try:
            for b in range(0, len(order), batch_size):
                idx = order[b : b + batch_size]
                loss = backbone.training_loss(inputs[idx].to(device), targets[idx].to(device))
                grads = torch.autograd.grad(loss, weights)
                for f, g in zip(fisher, grads, strict=True):
                    f += g.detach() ** 2
        finally:
            for w in weights:
                w.requires_grad_(False)
    low = int(min(tier.level_bits))
    scores = []
    for w, f in zip(weights, fisher, strict=True):
        err = (quantize_per_channel(w.detach(), low) - w.detach()) ** 2
        scores.append((f * err).reshape(w.shape[0], -1).mean(1))
    return torch.cat(scores).cpu().numpy().astype(np.float64)


__all__ = ["fisher_importance"]
