"""Named weight generators: how a device rebuilds the random backbone from seed and config."""

from __future__ import annotations

from collections.abc import Callable

from chord.checkpoint import weights_version
from chord.config import BackboneConfig
from chord.masks.ranks import MaskError
from chord.models import Backbone, build_backbone

# The one generator today: chord.models.build_backbone. A torch.Generator (Mersenne Twister
# 19937, CPU) seeded with `seed` draws, in named_modules order, Xavier-normal weights for every
# Linear and Embedding (std = sqrt(2 / (fan_in + fan_out))), zero biases, unit LayerNorms, and
# zeroes the padding row. Its draws depend on torch's CPU normal sampler, which is why every
# spec also carries the checksum of the rebuilt weights: a device whose library draws other
# numbers refuses instead of running a different model.
TORCH_XAVIER = "torch-mt19937-xavier-normal/1"
GENERATORS: dict[str, Callable[[BackboneConfig, int], Backbone]] = {TORCH_XAVIER: build_backbone}


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
    "GENERATORS",
    "TORCH_XAVIER",
    "WeightsMismatchError",
    "check_weights",
    "rebuild_backbone",
]
