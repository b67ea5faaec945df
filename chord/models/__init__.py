"""Sequential recommendation backbones (SASRec, Caser) behind one interface."""

from __future__ import annotations

import torch

from chord.config import BackboneConfig, CaserConfig, SASRecConfig
from chord.models.base import PAD_SCORE, Backbone, LossError, fit_length
from chord.models.caser import Caser
from chord.models.sasrec import SASRec


def build_backbone(cfg: BackboneConfig, seed: int) -> Backbone:
    """A backbone whose weights depend only on (cfg, seed): the `random` mode a device rebuilds.

    Uses a private generator, so the global torch RNG is neither read nor advanced.
    """
    generator = torch.Generator().manual_seed(int(seed))
    model: SASRec | Caser
    # Module constructors run PyTorch's default init on the global RNG; fork it so callers'
    # random streams are unaffected (every weight is then overwritten from `generator`).
    with torch.random.fork_rng(devices=[]):
        if isinstance(cfg, SASRecConfig):
            model = SASRec(cfg)
        elif isinstance(cfg, CaserConfig):
            model = Caser(cfg)
        else:
            raise TypeError(f"expected SASRecConfig or CaserConfig, got {type(cfg).__name__}")
    model.reset_parameters(generator)
    return model


__all__ = [
    "PAD_SCORE",
    "Backbone",
    "Caser",
    "LossError",
    "SASRec",
    "build_backbone",
    "fit_length",
]
