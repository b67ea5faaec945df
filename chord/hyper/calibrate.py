"""Measure, on training data, what each layer's width costs and how a layer's channels share it."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch.nn import functional as F

from chord.data import Split
from chord.hyper.hypernet import layout_layers
from chord.hyper.personal import module_device
from chord.levels import MAX_WIDTH
from chord.models import Backbone
from chord.quant import quantize_per_channel
from chord.train import training_examples

SHARE_BITS = 3  # width whose quantization error splits a layer's loss among its channels


def calibration_batch(
    backbone: Backbone, split: Split, n_examples: int, n_negatives: int, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Seeded (history, candidates) pairs from training sequences; candidate 0 is the target."""
    inputs, targets = training_examples(split.train, backbone.config)
    if targets.dim() == 2:  # sequence models: the item after the last position
        targets = targets[:, -1]
    keep = targets > 0
    inputs, targets = inputs[keep], targets[keep]
    gen = torch.Generator().manual_seed(seed)  # cpu-ok: draws on the CPU, moved when used
    order = torch.randperm(len(inputs), generator=gen)[:n_examples]  # cpu-ok
    negatives = torch.randint(  # cpu-ok
        1, int(backbone.n_items) + 1, (len(order), n_negatives), generator=gen
    )
    return inputs[order], torch.cat([targets[order][:, None], negatives], dim=1)


@torch.no_grad()
def _loss(backbone: Backbone, seqs: torch.Tensor, cands: torch.Tensor, chunk: int = 256) -> float:
    """Mean cross-entropy of the target (candidate 0) against the sampled negatives."""
    device = module_device(backbone)
    total = 0.0
    for i in range(0, len(seqs), chunk):
        scores = backbone.score_candidates(seqs[i : i + chunk].to(device),
                                           cands[i : i + chunk].to(device))
        zero = torch.zeros(len(scores), dtype=torch.long, device=device)
        total += float(F.cross_entropy(scores, zero, reduction="sum"))
    return total / max(len(seqs), 1)


def score_sensitivity(
    backbone: Backbone, layout: Any, seqs: torch.Tensor, n_items: int, seed: int
) -> list[torch.Tensor]:
    """Per-weight E[(d s / d w)^2] summed over random candidates' scores (Hutchinson probes)."""
    device = module_device(backbone)
    params = dict(backbone.named_parameters())
    weights = [params[f"{layer.name}.weight"] for layer in layout_layers(layout)]
    sens = [torch.zeros_like(w) for w in weights]
    gen = torch.Generator().manual_seed(seed + 1)  # cpu-ok: draws on the CPU
    backbone.eval()
    with torch.enable_grad():
        for w in weights:
            w.requires_grad_(True)
        try:
            for i in range(0, len(seqs), 128):
                batch = seqs[i : i + 128]
                cands = torch.randint(1, n_items + 1, (len(batch), 101), generator=gen)  # cpu-ok
                probe = torch.randn(len(batch), 101, generator=gen)  # cpu-ok
                out = backbone.score_candidates(batch.to(device), cands.to(device))
                grads = torch.autograd.grad((out * probe.to(device)).sum(), weights)
                for s, g in zip(sens, grads, strict=True):
                    s += g.detach() ** 2
        finally:
            for w in weights:
                w.requires_grad_(False)
    return sens


@torch.no_grad()
def calibrate(
    backbone: Backbone,
    layout: Any,
    split: Split,
    seed: int = 0,
    n_examples: int = 1024,
    n_negatives: int = 100,
    quantize: Callable[[torch.Tensor, int], torch.Tensor] = quantize_per_channel,
    at_width: Callable[[str, torch.Tensor, int], torch.Tensor] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """(layer_loss float32 [n_layers, 8], channel prior float32 [n_channels]).

    layer_loss[L, b - 1] is how much the sampled-softmax loss on training examples grows when
    layer L alone is quantized at b bits (the others stay fp32). The prior is each channel's log
    share of its layer's score-weighted quantization error at 3 bits, relative to an even split
    by size, so exp(prior) * layer_loss * n_c / N_L estimates what the channel alone costs.
    `quantize(w, bits)` is the per-channel quantizer (a masked backbone passes one that keeps
    pruned weights at zero). `at_width(layer name, weight, bits)`, when given, is the layer's
    weight at a width instead of `quantize(weight, bits)`: a masked run's levels also choose
    how much of a channel survives (chord.masks.MaskedSource.width_weights).
    """
    seqs, cands = calibration_batch(backbone, split, n_examples, n_negatives, seed)
    base = _loss(backbone, seqs, cands)
    params = dict(backbone.named_parameters())
    layers = layout_layers(layout)
    table = np.zeros((len(layers), MAX_WIDTH), dtype=np.float64)
    for i, layer in enumerate(layers):
        weight = params[f"{layer.name}.weight"]
        original = weight.detach().clone()
        try:
            for b in range(1, MAX_WIDTH + 1):
                weight.copy_(quantize(original, b) if at_width is None
                             else at_width(layer.name, original, b))
                table[i, b - 1] = max(_loss(backbone, seqs, cands) - base, 0.0)
        finally:
            weight.copy_(original)
    sens = score_sensitivity(backbone, layout, seqs, int(backbone.n_items), seed)
    prior = []
    for layer, s in zip(layers, sens, strict=True):
        w = params[f"{layer.name}.weight"].detach()
        err = (s * (quantize(w, SHARE_BITS) - w) ** 2).reshape(w.shape[0], -1)
        per_weight = err.mean(1).double().cpu().numpy()
        mean = float(per_weight.mean())
        if mean <= 0:
            prior.append(np.zeros(w.shape[0]))
            continue
        prior.append(np.log(np.maximum(per_weight, 1e-6 * mean) / mean))
    return table.astype(np.float32), np.concatenate(prior).astype(np.float32)


__all__ = ["calibrate", "calibration_batch", "score_sensitivity"]
