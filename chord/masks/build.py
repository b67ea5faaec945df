"""Turning learned scores into a mask artifact for a rebuilt random backbone."""

from __future__ import annotations

import numpy as np
import torch

from chord.checkpoint import weights_version
from chord.config import config_to_json
from chord.masks.artifact import MaskArtifact, MaskHeader
from chord.masks.ranks import MaskError, check_balance, check_fractions, rank_classes
from chord.models import Backbone
from chord.quant.layout import ChannelLayout


def build_artifact(
    backbone: Backbone,
    layout: ChannelLayout,
    scores: list[torch.Tensor],
    *,
    generator: str,
    seed: int,
    keep_fractions: tuple[float, ...],
    level_min_class: tuple[int, int, int, int],
    shared_min_class: int,
    balance: str = "layer",
) -> MaskArtifact:
    """The artifact of learned `scores` (one tensor per layout layer) over `backbone`.

    `backbone` must be the unmasked model the generator rebuilds; its checksum goes into the
    header so a device that rebuilds other weights refuses the mask. `balance`: how each
    layer's classes are cut from its scores (chord.masks.ranks.BALANCES); a device reads the
    classes, so it need not know. MaskError for a score list that does not fit the layout or
    an unknown balance.
    """
    fr = check_fractions(keep_fractions)
    if len(scores) != len(layout.layers):
        raise MaskError(f"{len(scores)} score tensors for {len(layout.layers)} layout layers")
    check_balance(balance)
    classes = [rank_classes(s, fr, balance) for s in scores]
    header = MaskHeader(
        generator=generator, seed=int(seed), backbone_config=config_to_json(backbone.config),
        weights_checksum=weights_version(backbone),
        layers=tuple((x.name, x.n_channels, x.channel_size) for x in layout.layers),
        keep_fractions=fr, level_min_class=level_min_class, shared_min_class=shared_min_class,
    )
    return MaskArtifact(header, np.concatenate(classes).astype(np.uint8))


__all__ = ["build_artifact"]
