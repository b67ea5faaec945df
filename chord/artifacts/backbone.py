"""Frozen backbone weights as an artifact: a safetensors file of the state dict, no pickle."""

from __future__ import annotations

import json

from safetensors import SafetensorError
from safetensors.torch import load as load_tensors
from safetensors.torch import save as save_tensors

from chord.artifacts.container import ArtifactFormatError, expect_layout, read_metadata
from chord.artifacts.refs import Artifact
from chord.checkpoint import weights_version
from chord.config import ConfigError, config_from_json, config_to_json
from chord.models import Backbone, build_backbone

BACKBONE_LAYOUT = "chord.backbone.v1"
BACKBONE_FORMAT = f"{BACKBONE_LAYOUT}+safetensors"


def backbone_to_artifact(model: Backbone) -> Artifact:
    """The BACKBONE_WEIGHTS artifact of `model`: every state-dict tensor by name, as stored.

    __metadata__ carries "format", "version" (weights_version of the model), "config"
    (config_to_json) and "order" (JSON list of the state-dict names, the order the version
    hash uses), so the bytes say what they are even outside a model spec.
    """
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    meta = {
        "format": BACKBONE_LAYOUT,
        "version": weights_version(model),
        "config": config_to_json(model.config),
        "order": json.dumps(list(tensors)),  # the version hash runs over entries in this order
    }
    return Artifact.of("backbone_weights", BACKBONE_FORMAT, save_tensors(tensors, metadata=meta))


def backbone_from_artifact(data: bytes, config_json: str, version: str) -> Backbone:
    """Rebuild the backbone of a model spec (its config_json and version) from artifact bytes.

    Returns the model in eval mode with gradients off. Raises ArtifactFormatError when the
    bytes are not a chord.backbone.v1 file, were made for another version or config, miss or
    add tensors, or do not hash to `version` once loaded.
    """
    meta = read_metadata(data)
    expect_layout(meta, BACKBONE_LAYOUT)
    if meta.get("version") != version:
        raise ArtifactFormatError(
            f"weights artifact is for backbone {meta.get('version')!r}, the spec serves "
            f"{version!r}; fetch the ModelSpec again"
        )
    try:
        cfg = config_from_json(config_json)
        if meta.get("config") is None or config_from_json(meta["config"]) != cfg:
            raise ArtifactFormatError(
                "weights artifact was saved for another backbone config than the spec's"
            )
        tensors = load_tensors(bytes(data))
    except (ConfigError, SafetensorError) as exc:
        raise ArtifactFormatError(f"weights artifact cannot be read: {exc}") from exc
    model = build_backbone(cfg, seed=0)
    try:
        model.load_state_dict(tensors, strict=True)
    except RuntimeError as exc:
        raise ArtifactFormatError(
            f"weights artifact does not fit the spec's config: {exc}"
        ) from exc
    found = weights_version(model)
    if found != version:
        raise ArtifactFormatError(
            f"weights artifact loads to a backbone hashing to {found}, not {version}; "
            "the artifact is corrupt"
        )
    model.eval()
    model.requires_grad_(False)
    return model


__all__ = ["BACKBONE_FORMAT", "BACKBONE_LAYOUT", "backbone_from_artifact", "backbone_to_artifact"]
