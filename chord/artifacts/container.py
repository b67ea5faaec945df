"""The safetensors container every artifact layout uses: its header metadata, read safely."""

from __future__ import annotations

import json
import struct

MAX_HEADER_BYTES = 100 << 20  # the safetensors reference parser's own header ceiling


class ArtifactFormatError(ValueError):
    """Artifact bytes that are not the layout and version the model spec announced."""


def read_metadata(data: bytes | memoryview) -> dict[str, str]:
    """The "__metadata__" map of a safetensors file (empty if it has none).

    Layout (https://github.com/huggingface/safetensors): 8-byte little-endian header length N,
    then N bytes of JSON. Raises ArtifactFormatError for anything else.
    """
    view = memoryview(data)
    if len(view) < 8:
        raise ArtifactFormatError(f"{len(view)} bytes cannot hold a safetensors header")
    (n,) = struct.unpack("<Q", view[:8])
    if n > min(MAX_HEADER_BYTES, len(view) - 8):
        raise ArtifactFormatError(
            f"safetensors header claims {n} bytes but the artifact has {len(view) - 8} after it"
        )
    try:
        header = json.loads(bytes(view[8 : 8 + n]))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ArtifactFormatError(f"safetensors header is not JSON: {exc}") from exc
    if not isinstance(header, dict):
        raise ArtifactFormatError("safetensors header is not a JSON object")
    meta = header.get("__metadata__", {})
    if not isinstance(meta, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in meta.items()
    ):
        raise ArtifactFormatError("safetensors __metadata__ must map strings to strings")
    return dict(meta)


def expect_layout(meta: dict[str, str], layout: str) -> None:
    """ArtifactFormatError unless the metadata's "format" is exactly `layout`."""
    found = meta.get("format", "")
    if found != layout:
        raise ArtifactFormatError(
            f"artifact holds layout {found or 'none'!r}, this device reads {layout!r}; "
            "update the device or serve a run in that layout"
        )


__all__ = ["MAX_HEADER_BYTES", "ArtifactFormatError", "expect_layout", "read_metadata"]
