"""Named errors of the data loaders."""

from __future__ import annotations


class DataError(ValueError):
    """Base class of every data-loading error."""


class DataFormatError(DataError):
    """A file does not match its format; the message names file, line and what was expected."""


class UnknownDatasetError(DataError):
    """A dataset name is neither a packaged dataset nor an existing file."""


class SplitError(DataError):
    """A dataset cannot be split (e.g. a user has fewer than three interactions)."""


__all__ = ["DataError", "DataFormatError", "SplitError", "UnknownDatasetError"]
