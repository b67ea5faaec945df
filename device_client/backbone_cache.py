"""The frozen backbone, built or loaded once per worker process and shared by its devices."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from chord.checkpoint import load_backbone, weights_version
from chord.config import config_from_json
from chord.masks import (
    MaskArtifact,
    MaskError,
    check_weights,
    content_id,
    decode_mask,
    masked_backbone,
    rebuild_backbone,
)
from chord.models import Backbone, build_backbone
from chord.quant.layout import ChannelLayout, channel_layout
from device_client.wire import DeviceSpec


class BackboneMismatchError(RuntimeError):
    """The backbone a device built or loaded does not hash to the version the server named."""


def obtain_mask(spec: DeviceSpec) -> bytes:
    """The bytes of the spec's mask artifact: the one place a device fetches it.

    Today it reads ModelSpec.mask_uri, a path on the server's disk; the gRPC artifact download
    replaces this body. Callers check the bytes against spec.mask_id.
    """
    try:
        return Path(spec.mask_uri).read_bytes()
    except OSError as exc:
        raise BackboneMismatchError(
            f"cannot read the mask artifact {spec.mask_uri!r}: {exc}; the device needs the "
            "server's mask to run random mode"
        ) from exc


def load_mask(spec: DeviceSpec) -> tuple[MaskArtifact, int]:
    """The verified mask of a spec and its size in bytes; BackboneMismatchError when it is
    cut, tampered, of another format or not the artifact the spec names."""
    data = obtain_mask(spec)
    if content_id(data) != spec.mask_id:
        raise BackboneMismatchError(
            f"mask artifact hashes to {content_id(data)[:16]}..., the spec names "
            f"{spec.mask_id[:16]}...: refusing a mask that is not the server's"
        )
    try:
        artifact = decode_mask(data)
    except MaskError as exc:
        raise BackboneMismatchError(f"mask artifact refused: {exc}") from exc
    if artifact.header.weights_checksum != spec.weights_checksum:
        raise BackboneMismatchError(
            f"mask was learned over weights {artifact.header.weights_checksum}, the spec "
            f"rebuilds {spec.weights_checksum}"
        )
    return artifact, len(data)


@dataclass(frozen=True)
class CachedBackbone:
    """A frozen backbone with what it cost to obtain."""

    model: Backbone
    version: str
    fp32_bytes: int  # every parameter at 4 bytes: what shipping the fp32 weights would cost
    int8_bytes: int  # quantizable weights at 1 byte (+ a float32 scale per channel), rest fp32
    duet_bytes: int  # DUET-style: the generated non-embedding weights, fp32, sent per adaptation
    obtain_ms: float  # build (random mode) or load (pretrained mode) time in this process
    source: str  # "built", "built+mask" or "loaded"
    layout: ChannelLayout  # the quantizable channels, computed once instead of per strategy
    # Random mode with a mask: the rebuilt unmasked weights and the mask; `model` is then the
    # shared-mask model the device profiles with.
    raw: Backbone | None = None
    mask: MaskArtifact | None = None
    mask_bytes: int = 0  # the mask artifact's size: the one-time download in this mode


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


def _obtain(spec: DeviceSpec) -> CachedBackbone:
    """Build (random) or load (pretrained) the backbone and verify its version hash."""
    start = time.perf_counter()
    raw: Backbone | None = None
    mask: MaskArtifact | None = None
    mask_bytes = 0
    if spec.mode == "random" and spec.mask_id:
        try:
            raw = rebuild_backbone(spec.generator, config_from_json(spec.config_json), spec.seed)
            check_weights(raw, spec.weights_checksum)
        except MaskError as exc:
            raise BackboneMismatchError(str(exc)) from exc
        mask, mask_bytes = load_mask(spec)
        model = masked_backbone(raw, mask)
        source = "built+mask"
    elif spec.mode == "random":
        model = build_backbone(config_from_json(spec.config_json), spec.seed)
        source = "built"
    else:
        model, _meta = load_backbone(spec.weights_uri)
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
        raw=raw,
        mask=mask,
        mask_bytes=mask_bytes,
    )


def get_backbone(spec: DeviceSpec) -> tuple[CachedBackbone, bool]:
    """The process's backbone for spec.version and whether it came from the cache."""
    with _lock:
        cached = _cache.get(spec.version)
        if cached is not None:
            return cached, True
        cached = _obtain(spec)
        _cache[spec.version] = cached
        return cached, False


def clear_cache() -> None:
    """Forget every cached backbone (tests)."""
    with _lock:
        _cache.clear()
