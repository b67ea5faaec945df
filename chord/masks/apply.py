"""Masked weights from rank classes: the shared profiling model and per-user quantized ones."""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping

import numpy as np
import torch

from chord.levels import Tier
from chord.masks.artifact import MaskArtifact, MaskHeader
from chord.masks.ranks import MaskError, layer_gain
from chord.models import Backbone
from chord.quant.quantizer import quantize_per_channel


def class_gain(header: MaskHeader, min_class: int) -> float:
    """Scale of weights kept from `min_class` up: 1 / sqrt(keep fraction); 1 for class 0 and
    for the pruned sentinel K + 1."""
    if min_class == 0 or min_class > len(header.keep_fractions):
        return 1.0
    return layer_gain(header.keep_fractions[min_class - 1])


def quantize_keep_zeros(w: torch.Tensor, bits: int | torch.Tensor) -> torch.Tensor:
    """Per-channel symmetric quantization (chord.quant) that leaves pruned (exact 0) weights 0.

    w [n_out, ...]; bits one int or LongTensor [n_out] in 1..8. Widths >= 2 already map 0 to 0
    (max-abs scale over the row). A 1-bit channel becomes sign(w) x mean |w| over its non-zero
    weights, zeros kept (chord.quant's 1-bit rule would turn them into +scale).
    """
    n = int(w.shape[0])
    vec = (torch.full((n,), int(bits), dtype=torch.long) if isinstance(bits, int)
           else bits.reshape(-1).long().cpu())
    out = quantize_per_channel(w, vec.numpy()).float()
    one = (vec == 1).to(w.device)
    if bool(one.any()):
        flat = w.detach().reshape(n, -1).float()
        nz = flat != 0
        scale = (flat.abs() * nz).sum(1) / nz.sum(1).clamp_min(1)
        binar = torch.sign(flat) * scale[:, None]
        out = torch.where(one[:, None], binar, out.reshape(n, -1)).reshape(w.shape)
    return out.to(w.dtype)


def _layer_weights(backbone: Backbone, header: MaskHeader) -> dict[str, torch.Tensor]:
    """The raw weight of every header layer, checked against its declared shape."""
    params = dict(backbone.state_dict())
    out = {}
    for name, n, s in header.layers:
        key = f"{name}.weight"
        w = params.get(key)
        if w is None or int(w.shape[0]) != n or int(w[0].numel()) != s:
            raise MaskError(
                f"mask layer {name!r} [{n} x {s}] does not match the backbone "
                f"({None if w is None else tuple(w.shape)}); rebuild the backbone the mask names"
            )
        out[key] = w.detach()
    return out


def shared_weights(backbone: Backbone, artifact: MaskArtifact) -> dict[str, torch.Tensor]:
    """fp32 weights of the shared mask: W x [class >= shared_min_class] x gain, per layer."""
    h = artifact.header
    gain = class_gain(h, h.shared_min_class)
    raw = _layer_weights(backbone, h)
    out = {}
    for (name, _, _), cls in zip(h.layers, artifact.layer_classes().values(), strict=True):
        w = raw[f"{name}.weight"]
        keep = torch.from_numpy(cls >= h.shared_min_class).reshape(w.shape).to(w.device)
        out[f"{name}.weight"] = w * keep * gain
    return out


def masked_backbone(backbone: Backbone, artifact: MaskArtifact) -> Backbone:
    """A copy of the raw backbone carrying the shared mask's fp32 weights (eval, frozen).

    This is the model a device profiles its user with and the cloud's hypernetwork reads.
    """
    model = copy.deepcopy(backbone)
    state = dict(model.state_dict())
    state.update(shared_weights(backbone, artifact))
    model.load_state_dict(state)
    model.eval()
    model.requires_grad_(False)
    return model


def level_bank_weights(
    w: torch.Tensor, classes: np.ndarray, header: MaskHeader, level_bits: tuple[int, ...]
) -> torch.Tensor:
    """[4, *w.shape]: the raw weight masked, scaled and quantized as each level of a tier keeps it.

    Level l keeps class >= level_min_class[l] at gain 1 / sqrt(its keep fraction) and
    quantizes the kept weights per channel at level_bits[l] bits (zeros stay zero).
    """
    cls = torch.from_numpy(np.asarray(classes)).reshape(w.shape).to(w.device)
    out = []
    for level in range(4):
        m = int(header.level_min_class[level])
        wk = w.detach().float() * (cls >= m) * class_gain(header, m)
        out.append(quantize_keep_zeros(wk, int(level_bits[level])))
    return torch.stack(out)


def personal_weights(
    backbone: Backbone, artifact: MaskArtifact, levels: np.ndarray, tier: Tier
) -> dict[str, torch.Tensor]:
    """What a device runs: every masked layer's weight for its channel levels [n_channels].

    Channel c at level l keeps class >= level_min_class[l], scaled, quantized at
    tier.level_bits[l]; equal to the cloud's MaskedLevelBank with one-hot levels.
    """
    h = artifact.header
    lv = np.asarray(levels).reshape(-1)
    total = sum(n for _, n, _ in h.layers)
    if lv.size != total or (lv.size and int(lv.max()) > 3):
        raise MaskError(f"levels must be {total} values in 0..3, got {lv.size} values")
    raw = _layer_weights(backbone, h)
    out: dict[str, torch.Tensor] = {}
    at = 0
    for (name, n, _), cls in zip(h.layers, artifact.layer_classes().values(), strict=True):
        key = f"{name}.weight"
        w = raw[key].float()
        layer_lv = torch.from_numpy(lv[at : at + n].astype(np.int64)).to(w.device)
        at += n
        keep_min = torch.tensor(h.level_min_class, dtype=torch.long, device=w.device)[layer_lv]
        gains = torch.tensor([class_gain(h, int(m)) for m in h.level_min_class],
                             device=w.device)[layer_lv]
        c = torch.from_numpy(cls.astype(np.int64)).to(w.device)
        shape = (n,) + (1,) * (w.dim() - 1)
        wk = w * (c.reshape(w.shape) >= keep_min.reshape(shape)) * gains.reshape(shape)
        bits = torch.tensor(tier.level_bits, dtype=torch.long)[layer_lv.cpu()]
        out[key] = quantize_keep_zeros(wk, bits).to(raw[key].dtype)
    return out


def personal_model(
    backbone: Backbone, artifact: MaskArtifact, levels: np.ndarray, tier: Tier
) -> Backbone:
    """A copy of the raw backbone carrying personal_weights (eval mode, frozen)."""
    model = copy.deepcopy(backbone)
    state = dict(model.state_dict())
    state.update(personal_weights(backbone, artifact, levels, tier))
    model.load_state_dict(state)
    model.eval()
    model.requires_grad_(False)
    return model


def stored_bytes(
    artifact: MaskArtifact, levels: np.ndarray, tier: Tier, other: Mapping[str, int] | None = None
) -> int:
    """Device memory of a personal model: kept weights packed at their bits, one fp32 scale per
    channel, a 1-bit keep bitmap per weight, plus `other` (name -> bytes of unmasked params)."""
    h = artifact.header
    lv = np.asarray(levels).reshape(-1)
    bits = 0
    at = 0
    for (_, n, _), cls in zip(h.layers, artifact.layer_classes().values(), strict=True):
        layer_lv = lv[at : at + n]
        at += n
        keep_min = np.asarray(h.level_min_class)[layer_lv]
        kept = (cls >= keep_min[:, None]).sum(1)
        bits += int((kept * np.asarray(tier.level_bits)[layer_lv]).sum()) + n * 32 + cls.size
    return (bits + 7) // 8 + sum((other or {}).values())


class MaskedSource:
    """The raw rebuilt backbone and its mask: where a masked level bank takes its weights."""

    def __init__(self, raw: Backbone, artifact: MaskArtifact) -> None:
        """Bind a raw (unmasked) backbone and the artifact learned over it."""
        _layer_weights(raw, artifact.header)  # shapes must match
        self.raw = raw
        self.artifact = artifact
        self._classes = artifact.layer_classes()

    def width_class(self, bits: int, tiers: Iterable[Tier]) -> int:
        """The lowest class kept at a width: the sparsest class any level of `tiers` with
        `bits` bits keeps (the shared class where no level has that width)."""
        h = self.artifact.header
        classes = [int(h.level_min_class[lv]) for t in tiers for lv in range(4)
                   if int(t.level_bits[lv]) == int(bits)]
        return max(classes) if classes else int(h.shared_min_class)

    def width_weights(self, name: str, bits: int, tiers: Iterable[Tier]) -> torch.Tensor:
        """Layer `name`'s weight as a channel at `bits` bits keeps it (width_class, scaled,
        quantized with zeros kept): what the rate-distortion table prices for that width."""
        h = self.artifact.header
        m = self.width_class(bits, tiers)
        w = dict(self.raw.state_dict())[f"{name}.weight"].detach().float()
        keep = torch.from_numpy(self._classes[name] >= m).reshape(w.shape).to(w.device)
        return quantize_keep_zeros(w * keep * class_gain(h, m), int(bits))

    def level_weights(self, key: str, level_bits: tuple[int, ...]) -> torch.Tensor:
        """[4, *w.shape] of the layer whose weight is `key` (see level_bank_weights)."""
        name = key[: -len(".weight")] if key.endswith(".weight") else key
        w = dict(self.raw.state_dict())[f"{name}.weight"]
        return level_bank_weights(w, self._classes[name], self.artifact.header, level_bits)


__all__ = [
    "MaskedSource",
    "class_gain",
    "level_bank_weights",
    "masked_backbone",
    "personal_model",
    "personal_weights",
    "quantize_keep_zeros",
    "shared_weights",
    "stored_bytes",
]
