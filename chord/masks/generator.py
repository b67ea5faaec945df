"""Named weight generators: how a device rebuilds the random backbone from seed and config."""

from __future__ import annotations

from collections.abc import Callable

import torch

from chord.checkpoint import weights_version
from chord.config import BackboneConfig
from chord.masks.ranks import MaskError
from chord.models import Backbone, build_backbone
from chord.quant.layout import channel_layout

# chord.models.build_backbone. A torch.Generator (Mersenne Twister 19937, CPU) seeded with
# `seed` draws, in named_modules order, Xavier-normal weights for every Linear and Embedding
# (std = sqrt(2 / (fan_in + fan_out))), zero biases, unit LayerNorms, and zeroes the padding
# row. Its draws depend on torch's CPU normal sampler, which is why every spec also carries the
# checksum of the rebuilt weights: a device whose library draws other numbers refuses instead
# of running a different model.
TORCH_XAVIER = "torch-mt19937-xavier-normal/1"
# Signed constants (Ramanujan et al. 2020, "What's hidden in a randomly weighted neural
# network?", CVPR, section 4: the "signed Kaiming constant" found better subnetworks than
# normal weights). The draws of TORCH_XAVIER, then every weight of a mask layer
# (chord.quant.channel_layout: each Linear, Conv2d and Embedding weight) becomes sign(w) x
# sigma, where sigma is the layer's root-mean-square over its non-zero draws, computed in
# float64 and stored as float32 (padding rows stay 0). Every kept weight of a channel then has
# the same magnitude, so per-channel quantization at any width (1..8 bits, chord.quant) is
# exact: the shared mask loses nothing at 2 bits.
TORCH_XAVIER_SIGNED = "torch-mt19937-xavier-signed/1"


def build_signed(config: BackboneConfig, seed: int) -> Backbone:
    """TORCH_XAVIER_SIGNED: build_backbone(config, seed) with every mask layer's weights
    replaced by sign(w) x the layer's RMS over its non-zero draws."""
    model = build_backbone(config, seed)
    params = dict(model.named_parameters())
    with torch.no_grad():
        for layer in channel_layout(model).layers:
            w = params[layer.weight_name]
            nonzero = w.detach().double()[w != 0]
            sigma = float(nonzero.square().mean().sqrt()) if nonzero.numel() else 0.0
            w.copy_(torch.sign(w) * torch.tensor(sigma, dtype=torch.float32))
    return model


GENERATORS: dict[str, Callable[[BackboneConfig, int], Backbone]] = {
    TORCH_XAVIER: build_backbone,
    TORCH_XAVIER_SIGNED: build_signed,
}
# What random mode learns masks over unless told otherwise (accuracy_random in
# benchmarks/RESULTS.md: signed weights ranked better and survive 2-bit quantization).
DEFAULT_GENERATOR = TORCH_XAVIER_SIGNED


class WeightsMismatchError(MaskError):
    """A rebuilt backbone whose weights do not hash to the checksum the cloud published."""


def rebuild_backbone(generator: str, config: BackboneConfig, seed: int) -> Backbone:
    """The frozen backbone (eval mode, no gradients) of a named generator, config and seed."""
    make = GENERATORS.get(generator)
    if make is None:
        raise MaskError(
            f"unknown weight generator {generator!r}; this library implements {sorted(GENERATORS)}"
        )
    model = make(config, int(seed))
    model.eval()
    model.requires_grad_(False)
    return model


def check_weights(model: Backbone, checksum: str) -> str:
    """The model's checksum (chord.checkpoint.weights_version); WeightsMismatchError if it
    differs from `checksum`."""
    got = weights_version(model)
    if got != checksum:
        raise WeightsMismatchError(
            f"rebuilt weights hash to {got} but the cloud published {checksum}: this device's "
            "generator draws other numbers; it must not run a mask learned for other weights"
        )
    return got


__all__ = [
    "DEFAULT_GENERATOR",
    "GENERATORS",
    "TORCH_XAVIER",
    "TORCH_XAVIER_SIGNED",
    "WeightsMismatchError",
    "build_signed",
    "check_weights",
    "rebuild_backbone",
]
