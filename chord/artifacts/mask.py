"""The layout name of the SHARED_MASK artifact (the layout itself: chord.masks.artifact)."""

# Version 1 of the CHMK layout: magic, header JSON, class bit planes, SHA-256 trailer.
MASK_FORMAT = "chord.mask.v1+chmk"

__all__ = ["MASK_FORMAT"]
