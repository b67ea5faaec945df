"""Named errors of the strategy service; the servicer maps each one to one gRPC status code."""

from __future__ import annotations

from chord.textfile import TextFileError


class ReportFileError(TextFileError):
    """A --reports file holding a line that is not a report this server could have stored; the
    message names file, line and field. A start-up error (`chord serve` exits 2), no call's."""


class ServiceError(Exception):
    """Base of every error reported to a caller; the message says what to send instead."""


class InvalidRequestError(ServiceError):
    """A request whose content is malformed (INVALID_ARGUMENT)."""


class StaleVersionError(ServiceError):
    """A request computed for another backbone version (FAILED_PRECONDITION)."""


class DuplicateRequestError(ServiceError):
    """A request id reused by the same device for a different request (ALREADY_EXISTS)."""


class OverloadedError(ServiceError):
    """Too many strategy calls in flight (RESOURCE_EXHAUSTED)."""


class RequestExpiredError(ServiceError):
    """A request whose deadline passed before the model got to it (DEADLINE_EXCEEDED)."""


class ModelNotReadyError(ServiceError):
    """The model is still loading or the server is shutting down (UNAVAILABLE)."""


class EngineError(ServiceError):
    """The strategy engine failed on a batch (INTERNAL)."""


class NotFoundError(ServiceError):
    """A request naming something the server does not hold, e.g. an artifact digest (NOT_FOUND)."""


class OutOfRangeError(ServiceError):
    """A position past the end of what it indexes, e.g. an artifact offset (OUT_OF_RANGE)."""
