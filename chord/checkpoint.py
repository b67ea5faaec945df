"""Backbone checkpoints: one file with weights, config JSON and a version hash."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from chord.config import ConfigError, config_from_json, config_to_json
from chord.jsonfile import dumps
from chord.models import Backbone, build_backbone

FORMAT = "chord-backbone/1"


class CheckpointError(ValueError):
    """A backbone file is missing, unreadable, of another format or fails its version check."""


def weights_version(model: nn.Module) -> str:
    """16 hex chars of sha256 over the state dict (name, dtype, shape, bytes) in key order."""
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        t = tensor.detach().cpu().contiguous()
        digest.update(name.encode())
        digest.update(str(t.dtype).encode())
        digest.update(str(tuple(t.shape)).encode())
        digest.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()[:16]


def save_backbone(path: str | Path, model: Backbone, extra: dict[str, Any] | None = None) -> str:
    """Write `model` to `path` atomically; `extra` must be JSON-serializable. Returns version."""
    path = Path(path)
    try:
        extra_json = dumps(extra or {}, sort_keys=True)
    except TypeError as exc:
        raise CheckpointError(f"extra metadata for {path} must be JSON-serializable: {exc}") from (
            exc
        )
    version = weights_version(model)
    payload = {
        "format": FORMAT,
        "config": config_to_json(model.config),
        "version": version,
        "extra": extra_json,
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        torch.save(payload, tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return version


def load_backbone(path: str | Path) -> tuple[Backbone, dict[str, Any]]:
    """Rebuild a saved backbone (eval mode) and its metadata: extra + "version" + "config".

    Loads with torch.load(weights_only=True) and checks the stored version hash.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"backbone checkpoint {path} does not exist; run `chord train` first")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several unrelated types for a corrupt file
        # One line, and never torch's text: it advises weights_only=False, which runs the
        # file's code (unsafe for a file of unknown origin).
        raise CheckpointError(
            f"{path} is not a chord backbone checkpoint (torch.load with weights_only=True "
            f"refused it: {type(exc).__name__}); pass a backbone.pt written by `chord train`"
        ) from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a {FORMAT} file (write it with save_backbone)")
    try:
        cfg = config_from_json(payload["config"])
    except (KeyError, ConfigError) as exc:
        raise CheckpointError(f"{path} holds an invalid backbone config: {exc}") from exc
    model = build_backbone(cfg, seed=0)
    try:
        model.load_state_dict(payload["state_dict"])
    except (KeyError, RuntimeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"{path}: weights do not match the config ({first})") from None
    version = weights_version(model)
    if version != payload.get("version"):
        raise CheckpointError(
            f"{path}: weights hash {version} differs from the stored version "
            f"{payload.get('version')}; the file is corrupt"
        )
    model.eval()
    meta: dict[str, Any] = json.loads(payload.get("extra", "{}"))
    meta["version"] = version
    meta["config"] = json.loads(payload["config"])
    return model, meta


__all__ = ["FORMAT", "CheckpointError", "load_backbone", "save_backbone", "weights_version"]
