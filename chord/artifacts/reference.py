"""The reference importance behind delta codes (and the level-cost table) as an artifact."""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_tensors
from safetensors.torch import save as save_tensors

from chord.artifacts.container import ArtifactFormatError, expect_layout, read_metadata
from chord.artifacts.refs import Artifact

REFERENCE_LAYOUT = "chord.reference.v1"
REFERENCE_FORMAT = f"{REFERENCE_LAYOUT}+safetensors"
LEVEL_WIDTHS = 8  # level_cost columns: loss growth at widths 1..8


@dataclass(frozen=True)
class ReferenceData:
    """What the REFERENCE_DATA artifact holds."""

    importance: np.ndarray  # float16 [n_channels], channel order of the spec
    level_cost: bytes  # float32 LE [n_layers x 8], row-major; b"" when levels follow quotas
    reference_id: str  # CRC32 of importance bytes then level_cost bytes, 8 lowercase hex


def reference_id_of(importance: np.ndarray, level_cost: bytes) -> str:
    """CRC32 (zlib) of the float16 LE importance bytes followed by the level-cost bytes."""
    raw = np.ascontiguousarray(importance, dtype="<f2").tobytes()
    return f"{zlib.crc32(raw + bytes(level_cost)):08x}"


def reference_to_artifact(importance: np.ndarray, level_cost: bytes, n_layers: int) -> Artifact:
    """The REFERENCE_DATA artifact: "importance" F16 [C] and, if any, "level_cost" F32 [L, 8]."""
    imp = np.ascontiguousarray(importance, dtype="<f2")
    tensors = {"importance": torch.from_numpy(imp.copy())}
    if level_cost:
        table = np.frombuffer(level_cost, dtype="<f4")
        if table.size != n_layers * LEVEL_WIDTHS:
            raise ValueError(
                f"level cost has {table.size} floats; {n_layers} layers need "
                f"{n_layers * LEVEL_WIDTHS}"
            )
        tensors["level_cost"] = torch.from_numpy(table.reshape(n_layers, LEVEL_WIDTHS).copy())
    meta = {"format": REFERENCE_LAYOUT, "reference_id": reference_id_of(imp, level_cost)}
    return Artifact.of("reference_data", REFERENCE_FORMAT, save_tensors(tensors, metadata=meta))


def reference_from_artifact(
    data: bytes, reference_id: str, n_channels: int, n_layers: int
) -> ReferenceData:
    """Decode and check the REFERENCE_DATA artifact a spec with these counts and id lists.

    Raises ArtifactFormatError for another layout, tensors of the wrong name, dtype or shape,
    or contents whose CRC32 is not `reference_id`.
    """
    meta = read_metadata(data)
    expect_layout(meta, REFERENCE_LAYOUT)
    try:
        tensors = load_tensors(bytes(data))
    except SafetensorError as exc:
        raise ArtifactFormatError(f"reference artifact cannot be read: {exc}") from exc
    extra = sorted(set(tensors) - {"importance", "level_cost"})
    imp = tensors.get("importance")
    if extra or imp is None or imp.dtype != torch.float16 or tuple(imp.shape) != (n_channels,):
        raise ArtifactFormatError(
            f"reference artifact must hold 'importance' F16 [{n_channels}] and optionally "
            f"'level_cost' F32 [{n_layers}, {LEVEL_WIDTHS}]; it holds "
            f"{ {k: (str(v.dtype), tuple(v.shape)) for k, v in tensors.items()} }"
        )
    cost = tensors.get("level_cost")
    if cost is not None and (
        cost.dtype != torch.float32 or tuple(cost.shape) != (n_layers, LEVEL_WIDTHS)
    ):
        raise ArtifactFormatError(
            f"reference artifact's level_cost is {cost.dtype} {tuple(cost.shape)}; "
            f"expected float32 [{n_layers}, {LEVEL_WIDTHS}]"
        )
    importance = imp.numpy().astype("<f2")
    cost_bytes = cost.numpy().astype("<f4").tobytes() if cost is not None else b""
    found = reference_id_of(importance, cost_bytes)
    if found != reference_id:
        raise ArtifactFormatError(
            f"reference artifact has id {found}, the spec names {reference_id!r}; "
            "fetch the ModelSpec again"
        )
    return ReferenceData(importance, cost_bytes, found)


__all__ = [
    "REFERENCE_FORMAT",
    "REFERENCE_LAYOUT",
    "ReferenceData",
    "reference_from_artifact",
    "reference_id_of",
    "reference_to_artifact",
]
