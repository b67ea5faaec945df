"""Symmetric per-channel uniform quantization (1..8 bits) with scales taken from the weight."""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch

ClipMethod = Literal["maxabs", "mse"]
CLIP_METHODS: tuple[str, ...] = ("maxabs", "mse")
MIN_BITS, MAX_BITS = 1, 8
FULL_PRECISION_BITS = 32  # a channel marked 32 bits is left as it is (fp32)
# Clip ratios tried by the MSE search, largest first so ties keep the max-abs grid.
MSE_CLIP_RATIOS = torch.linspace(1.0, 0.3, 36)


class QuantError(ValueError):
    """A bit-width, clip method or per-channel array the quantizer cannot use."""


def _check_clip(clip: str) -> None:
    """Raise QuantError for an unknown clip method."""
    if clip not in CLIP_METHODS:
        raise QuantError(f"unknown clip method {clip!r}; use one of {CLIP_METHODS}")


def bits_vector(
    bits: int | np.ndarray | torch.Tensor, n_channels: int, allow_full: bool = True
) -> torch.Tensor:
    """Per-channel bit-widths as a LongTensor [n_channels]; validates every entry.

    Entries must be 1..8, or 32 (left in full precision) when `allow_full`.
    """
    if isinstance(bits, int | np.integer):
        vec = torch.full((n_channels,), int(bits), dtype=torch.long)
    else:
        vec = torch.as_tensor(np.asarray(bits) if isinstance(bits, np.ndarray) else bits)
        vec = vec.reshape(-1).to(torch.long)
        if vec.numel() != n_channels:
            raise QuantError(f"expected {n_channels} per-channel bit-widths, got {vec.numel()}")
    ok = (vec >= MIN_BITS) & (vec <= MAX_BITS)
    if allow_full:
        ok |= vec == FULL_PRECISION_BITS
    if not bool(ok.all()):
        bad = sorted({int(b) for b in vec[~ok].tolist()})
        allowed = f"{MIN_BITS}..{MAX_BITS}" + (f" or {FULL_PRECISION_BITS}" if allow_full else "")
        raise QuantError(f"bit-widths must be {allowed}; got {bad}")
    return vec


def _round_to_grid(flat: torch.Tensor, scale: torch.Tensor, qmax: torch.Tensor) -> torch.Tensor:
    """Integers round(w / scale) clipped to [-qmax, qmax]; zero-scale rows give 0."""
    safe = torch.where(scale > 0, scale, torch.ones_like(scale))
    q = flat / safe  # the one full-size temporary; rounding and clipping happen in place
    return q.round_().clamp_(min=-qmax, max=qmax)


def _grid_scales(flat: torch.Tensor, bits: torch.Tensor, clip: str) -> torch.Tensor:
    """Scale per row [out, 1] for multi-bit rows (max-abs, or the MSE-best clip of it)."""
    qmax = ((1 << (bits - 1)) - 1).clamp_min(1).to(flat.dtype)[:, None]
    scale = flat.abs().amax(1, keepdim=True) / qmax
    if clip == "mse":
        best_err = torch.full_like(scale, float("inf"))
        best = scale
        for ratio in MSE_CLIP_RATIOS.tolist():
            s = scale * ratio
            err = ((flat - _round_to_grid(flat, s, qmax) * s) ** 2).sum(1, keepdim=True)
            better = err < best_err
            best = torch.where(better, s, best)
            best_err = torch.where(better, err, best_err)
        scale = best
    return scale


@torch.no_grad()
def quantize_int(
    w: torch.Tensor, bits: int | np.ndarray | torch.Tensor, clip: str = "maxabs"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Integer codes and scales: (q int8 shaped like w, scale float32 [out]); w ~= q * scale.

    Channel i (w[i]) with b >= 2 bits gets q in [-(2**(b-1) - 1), 2**(b-1) - 1] and scale
    max|w[i]| / (2**(b-1) - 1) (or a smaller MSE-optimal clip); with 1 bit q = +1 where
    w >= 0 else -1 and scale = mean|w[i]|. An all-zero channel gets scale 0.
    """
    _check_clip(clip)
    out = int(w.shape[0])
    vec = bits_vector(bits, out, allow_full=False).to(w.device)
    flat = w.detach().reshape(out, -1).float()
    qmax = ((1 << (vec - 1)) - 1).clamp_min(1).float()[:, None]
    scale = _grid_scales(flat, vec, clip)
    q = _round_to_grid(flat, scale, qmax)
    one = (vec == 1)[:, None]
    if bool(one.any()):
        sign = torch.where(flat >= 0, 1.0, -1.0)
        q = torch.where(one, sign, q)
        scale = torch.where(one, flat.abs().mean(1, keepdim=True), scale)
    return q.to(torch.int8).reshape(w.shape), scale.reshape(out)


def dequantize(q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Float weights q * scale (scale per output channel)."""
    shape = (-1,) + (1,) * (q.dim() - 1)
    return q.float() * scale.reshape(shape)


@torch.no_grad()
def quantize_per_channel(
    w: torch.Tensor, bits: int | np.ndarray | torch.Tensor, clip: str = "maxabs"
) -> torch.Tensor:
    """Fake-quantized copy of `w` (same dtype), one bit-width per output channel.

    `bits` is one int for every channel or one per channel; 32 leaves a channel unchanged.
    """
    out = int(w.shape[0])
    vec = bits_vector(bits, out, allow_full=True).to(w.device)
    full = vec == FULL_PRECISION_BITS
    if bool(full.all()):
        return w.detach().clone()
    q, scale = quantize_int(w, torch.where(full, torch.ones_like(vec), vec), clip)
    fq = dequantize(q, scale).to(w.dtype)
    if bool(full.any()):
        keep = full.reshape((-1,) + (1,) * (w.dim() - 1))
        fq = torch.where(keep, w.detach(), fq)
    return fq


@torch.no_grad()
def level_weights(
    w: torch.Tensor, level_bits: tuple[int, int, int, int], clip: str = "maxabs"
) -> torch.Tensor:
    """[4, *w.shape]: the frozen weight quantized at each of a tier's four bit-widths.

    Precompute once per tier; a trainer mixes the four with per-channel level probabilities.
    """
    if len(level_bits) != 4:
        raise QuantError(f"level_bits must have 4 entries, got {level_bits!r}")
    cache: dict[int, torch.Tensor] = {}
    for b in level_bits:
        if int(b) not in cache:
            cache[int(b)] = quantize_per_channel(w, int(b), clip)
    return torch.stack([cache[int(b)] for b in level_bits])


__all__ = [
    "CLIP_METHODS",
    "FULL_PRECISION_BITS",
    "MAX_BITS",
    "MIN_BITS",
    "ClipMethod",
    "QuantError",
    "bits_vector",
    "dequantize",
    "level_weights",
    "quantize_int",
    "quantize_per_channel",
]
