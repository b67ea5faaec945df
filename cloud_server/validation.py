"""Checks of incoming requests against the published model spec, with fixes in every message."""

from __future__ import annotations

import math

import numpy as np

from chord.artifacts import ArtifactRequest, check_digest
from chord.spec import DeviceReport, ModelSpec
from chord.strategy import StrategyRequest
from cloud_server.errors import InvalidRequestError, StaleVersionError

MAX_ID_CHARS = 128  # device_id / request_id length limit
# FetchArtifactRequest.max_chunk_bytes: 0 (server default) or this range, as the .proto states.
MIN_REQUEST_CHUNK_BYTES = 1024
MAX_REQUEST_CHUNK_BYTES = 4 << 20
# Tolerance on the published budget range: assign_levels meets a budget within 0.1 bit.
BUDGET_SLACK = 1e-9


def _check_id(value: str, field: str) -> None:
    """A non-empty printable id of at most MAX_ID_CHARS characters."""
    if not value:
        raise InvalidRequestError(
            f"{field} is empty; send a non-empty {field} (<= {MAX_ID_CHARS} chars)"
        )
    if len(value) > MAX_ID_CHARS:
        raise InvalidRequestError(
            f"{field} has {len(value)} characters; send at most {MAX_ID_CHARS}"
        )
    if not value.isprintable():
        raise InvalidRequestError(f"{field} contains control characters; send printable text only")


def validate_strategy_request(req: StrategyRequest, spec: ModelSpec) -> None:
    """Raise InvalidRequestError / StaleVersionError when req cannot be served under spec."""
    _check_id(req.device_id, "device_id")
    _check_id(req.request_id, "request_id")
    if req.backbone_version != spec.version:
        got = repr(req.backbone_version) if req.backbone_version else "no backbone_version"
        raise StaleVersionError(
            f"{got} is not the served backbone version {spec.version!r}; "
            "call GetModelSpec, rebuild the backbone and send its version"
        )
    tier = spec.tier(req.tier)
    if tier is None:
        names = ", ".join(t.name for t in spec.tiers)
        raise InvalidRequestError(f"unknown tier {req.tier!r}; send one of: {names}")
    budget = req.budget_bits
    lo, hi = tier.min_budget_bits, tier.max_budget_bits
    if not math.isfinite(budget) or budget <= 0:
        raise InvalidRequestError(
            f"budget_bits {budget} is not a positive finite number; send a value in "
            f"[{lo:g}, {hi:g}] for tier {tier.name!r} (default {tier.default_budget_bits:g})"
        )
    if budget < lo - BUDGET_SLACK or budget > hi + BUDGET_SLACK:
        raise InvalidRequestError(
            f"budget_bits {budget:g} is outside tier {tier.name!r}'s reachable range; "
            f"send a value in [{lo:g}, {hi:g}]"
        )
    has_profile = req.profile is not None and req.profile.size > 0
    has_items = req.recent_items is not None and req.recent_items.size > 0
    if has_profile and has_items:
        raise InvalidRequestError("both profile and recent_items are set; send exactly one of them")
    if not has_profile and not has_items:
        raise InvalidRequestError(
            f"neither profile nor recent_items is set; send a profile of {spec.profile_dim} floats "
            f"or 1..{spec.max_recent_items} recent item ids"
        )
    if has_profile:
        assert req.profile is not None
        profile = req.profile
        if profile.ndim != 1 or profile.size != spec.profile_dim:
            raise InvalidRequestError(
                f"profile has {profile.size} values; send exactly {spec.profile_dim} floats "
                "(the on-device profiler output)"
            )
        bad = ~np.isfinite(profile)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise InvalidRequestError(
                f"profile[{i}] is {profile[i]} ({int(bad.sum())} non-finite values); "
                "send finite floats only"
            )
    else:
        assert req.recent_items is not None
        items = req.recent_items
        if items.size > spec.max_recent_items:
            raise InvalidRequestError(
                f"recent_items has {items.size} ids; send at most {spec.max_recent_items} "
                "(the most recent ones, oldest first)"
            )
        bad = (items < 1) | (items > spec.n_items)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise InvalidRequestError(
                f"recent_items[{i}] = {int(items[i])} is not an item id; "
                f"send ids in 1..{spec.n_items} (0 is padding)"
            )


_PROBABILITY_FIELDS = ("hr5", "hr10", "ndcg5", "ndcg10")
_NONNEGATIVE_FIELDS = ("adapt_ms", "infer_ms", "rpc_ms", "avg_bits")


def validate_report(report: DeviceReport, tiers: tuple[str, ...]) -> None:
    """Raise InvalidRequestError when a device report is incomplete or holds impossible values."""
    _check_id(report.device_id, "device_id")
    if report.tier and report.tier not in tiers:
        raise InvalidRequestError(f"unknown tier {report.tier!r}; send one of: {', '.join(tiers)}")
    if report.metrics is None:
        raise InvalidRequestError("metrics is missing; send the DeviceMetrics measured this round")
    m = report.metrics
    for name in (*_PROBABILITY_FIELDS, *_NONNEGATIVE_FIELDS):
        value = float(getattr(m, name))
        if not math.isfinite(value):
            raise InvalidRequestError(f"metrics.{name} is {value}; send a finite number")
        if value < 0:
            raise InvalidRequestError(f"metrics.{name} is {value}; send a value >= 0")
        if name in _PROBABILITY_FIELDS and value > 1:
            raise InvalidRequestError(f"metrics.{name} is {value}; send a rate in [0, 1]")


def validate_artifact_request(req: ArtifactRequest) -> None:
    """Raise InvalidRequestError naming the field when a FetchArtifact request is malformed.

    Whether the digest is held and the offset in range is the artifact store's to say.
    """
    try:
        check_digest(req.digest)
    except ValueError as exc:
        raise InvalidRequestError(str(exc)) from exc
    chunk = req.max_chunk_bytes
    if chunk and not MIN_REQUEST_CHUNK_BYTES <= chunk <= MAX_REQUEST_CHUNK_BYTES:
        raise InvalidRequestError(
            f"max_chunk_bytes {chunk} is outside {MIN_REQUEST_CHUNK_BYTES}.."
            f"{MAX_REQUEST_CHUNK_BYTES}; send 0 for the server's default or a value in that range"
        )
