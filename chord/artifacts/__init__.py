"""Artifacts a device downloads once: content-addressed references and their decoded layouts."""

from chord.artifacts.backbone import BACKBONE_FORMAT, backbone_from_artifact, backbone_to_artifact
from chord.artifacts.container import ArtifactFormatError, read_metadata
from chord.artifacts.reference import (
    REFERENCE_FORMAT,
    ReferenceData,
    reference_from_artifact,
    reference_to_artifact,
)
from chord.artifacts.refs import (
    DIGEST_PREFIX,
    KINDS,
    MAX_ARTIFACT_BYTES,
    Artifact,
    ArtifactChunk,
    ArtifactRef,
    ArtifactRequest,
    check_digest,
    sha256_digest,
)

# The layout a device reads for each kind it knows; anything else it refuses before fetching.
# The shared mask of random mode has no layout yet (issue 13, item 1): add it here when it lands.
FORMATS: dict[str, str] = {
    "backbone_weights": BACKBONE_FORMAT,
    "reference_data": REFERENCE_FORMAT,
}

__all__ = [
    "BACKBONE_FORMAT",
    "DIGEST_PREFIX",
    "FORMATS",
    "KINDS",
    "MAX_ARTIFACT_BYTES",
    "REFERENCE_FORMAT",
    "Artifact",
    "ArtifactChunk",
    "ArtifactFormatError",
    "ArtifactRef",
    "ArtifactRequest",
    "ReferenceData",
    "backbone_from_artifact",
    "backbone_to_artifact",
    "check_digest",
    "read_metadata",
    "reference_from_artifact",
    "reference_to_artifact",
    "sha256_digest",
]
