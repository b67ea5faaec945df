"""Random-init mode that ranks: learned element masks over a seeded, never-shipped backbone."""

from chord.masks.apply import (
    MaskedSource,
    class_gain,
    level_bank_weights,
    masked_backbone,
    personal_model,
    personal_weights,
    quantize_keep_zeros,
    shared_weights,
    stored_bytes,
)
from chord.masks.artifact import (
    FORMAT_VERSION,
    MaskArtifact,
    MaskHeader,
    content_id,
    decode_mask,
    encode_mask,
)
from chord.masks.generator import (
    DEFAULT_GENERATOR,
    GENERATORS,
    TORCH_XAVIER,
    TORCH_XAVIER_SIGNED,
    WeightsMismatchError,
    check_weights,
    rebuild_backbone,
)
from chord.masks.learn import MaskTrainConfig, MaskTrainReport, learn_scores
from chord.masks.ranks import MaskError, rank_classes

__all__ = [
    "DEFAULT_GENERATOR",
    "FORMAT_VERSION",
    "GENERATORS",
    "TORCH_XAVIER",
    "TORCH_XAVIER_SIGNED",
    "MaskArtifact",
    "MaskError",
    "MaskHeader",
    "MaskTrainConfig",
    "MaskTrainReport",
    "MaskedSource",
    "WeightsMismatchError",
    "check_weights",
    "class_gain",
    "content_id",
    "decode_mask",
    "encode_mask",
    "learn_scores",
    "level_bank_weights",
    "masked_backbone",
    "personal_model",
    "personal_weights",
    "quantize_keep_zeros",
    "rank_classes",
    "rebuild_backbone",
    "shared_weights",
    "stored_bytes",
]
