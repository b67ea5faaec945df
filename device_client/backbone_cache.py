"""The frozen backbone, built or loaded once per worker process and shared by its devices."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

import torch

from chord.artifacts import backbone_from_artifact
from chord.checkpoint import weights_version
from chord.config import config_from_json
from chord.models import Backbone, build_backbone
from chord.quant.layout import ChannelLayout, channel_layout
from chord.spec import ModelSpec


class BackboneMismatchError(RuntimeError):
    """The backbone a device built or loaded does not hash to the version the server named."""


@dataclass(frozen=True)
class CachedBackbone:
    """A frozen backbone with what it cost to obtain."""

    model: Backbone
    version: str
    fp32_bytes: int  # every parameter at 4 bytes: what shipping the fp32 weights would cost
    int8_bytes: int  # quantizable weights at 1 byte (+ a float32 scale per channel), rest fp32
    duet_bytes: int  # DUET-style: the generated non-embedding weights, fp32, sent per adaptation
    obtain_ms: float  # build (random mode) or decode (pretrained mode) time in this process
    source: str  # "built" or "loaded"
    layout: ChannelLayout  # the quantizable channels, computed once instead of per strategy


_cache: dict[str, CachedBackbone] = {}
_lock = threading.Lock()


def fp32_model_bytes(model: torch.nn.Module) -> int:
    """Bytes of every parameter stored as float32."""
    return int(sum(p.numel() for p in model.parameters()) * 4)


def reference_bytes(model: torch.nn.Module) -> tuple[int, int]:
    """(int8 model bytes, DUET-style generated-weights bytes) for the comparison plot."""
    quantizable = (torch.nn.Linear, torch.nn.Conv2d, torch.nn.Embedding)
    int8 = fp32_model_bytes(model)
    duet = fp32_model_bytes(model)
    for module in model.modules():
        if isinstance(module, quantizable):
            w = module.weight
            int8 -= w.numel() * 4 - (w.numel() + w.shape[0] * 4)
            if isinstance(module, torch.nn.Embedding):
                duet -= w.numel() * 4
    return int(int8), int(duet)


def _obtain(spec: ModelSpec, weights: bytes | None) -> CachedBackbone:
    """Build (random) or decode from the downloaded weights artifact (pretrained) the
    backbone, and verify its version hash. Raises BackboneMismatchError or, for weights that
    are not the spec's, chord.artifacts.ArtifactFormatError."""
    start = time.perf_counter()
    if spec.mode == "random":
        model = build_backbone(config_from_json(spec.config_json), spec.seed)
        source = "built"
    else:
        if weights is None:
            raise BackboneMismatchError(
                "a pretrained backbone needs its weights artifact; fetch it first"
            )
        model = backbone_from_artifact(weights, spec.config_json, spec.version)
        source = "loaded"
    model.eval()
    model.requires_grad_(False)
    version = weights_version(model)
    if version != spec.version:
        raise BackboneMismatchError(
            f"{source} backbone hashes to {version} but the server serves {spec.version}; "
            f"the device needs the same {spec.mode} backbone as the server's run"
        )
    int8, duet = reference_bytes(model)
    return CachedBackbone(
        model=model,
        version=version,
        fp32_bytes=fp32_model_bytes(model),
        int8_bytes=int8,
        duet_bytes=duet,
        obtain_ms=(time.perf_counter() - start) * 1e3,
        source=source,
        layout=channel_layout(model),
    )


def get_backbone(spec: ModelSpec, weights: bytes | None = None) -> tuple[CachedBackbone, bool]:
    """The process's backbone for spec.version and whether it came from the cache.

    weights: the verified BACKBONE_WEIGHTS artifact (pretrained mode); unused on a cache hit.
    """
    with _lock:
        cached = _cache.get(spec.version)
        if cached is not None:
            return cached, True
        cached = _obtain(spec, weights)
        _cache[spec.version] = cached
        return cached, False


def clear_cache() -> None:
    """Forget every cached backbone (tests)."""
    with _lock:
        _cache.clear()
