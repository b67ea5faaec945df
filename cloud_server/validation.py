"""Checks of incoming requests against the published model spec, with fixes in every message.

Every request field has a range, documented next to the field in protos/chord/v1/strategy.proto
and checked here; an error names the field and its range. The constants below are those ranges.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

import numpy as np

from chord.artifacts import ArtifactRequest, check_digest
from chord.spec import DeviceMetrics, DeviceReport, ModelSpec, TierSpec
from chord.startcheck import exact, shown
from chord.strategy import StrategyRequest
from cloud_server.errors import InvalidRequestError, StaleVersionError

MAX_ID_CHARS = 128  # device_id / request_id length limit
MAX_TIER_CHARS = 64  # tier: a ModelSpec.tiers[].name is a short word ("low", "mid", "high")
MAX_VERSION_CHARS = 64  # backbone_version: the served one is 16 hex digits
# |profile[i]| bound. The on-device profiler (the backbone's encoder, ending in a LayerNorm for
# SASRec) gives values of order 1-10; larger values overflow the hypernetwork's float32
# normalization (1e30 squared is inf) and can only come from a broken or hostile client.
PROFILE_ABS_MAX = 1e4
REFERENCE_ID = re.compile(r"[0-9a-f]{8}")  # a spec's reference_id: CRC32 as 8 lowercase hex
MAX_REPORT_MS = 3_600_000.0  # adapt_ms / infer_ms / rpc_ms: at most one hour
MAX_REPORT_BYTES = 1 << 40  # bytes_up / bytes_down: at most 1 TiB in one round
# FetchArtifactRequest.max_chunk_bytes: 0 (server default) or this range, as the .proto states.
MIN_REQUEST_CHUNK_BYTES = 1024
MAX_REQUEST_CHUNK_BYTES = 4 << 20
# Rounding slack on the relations between HR@k and NDCG@k means (_check_metric_bounds).
METRIC_SLACK = 1e-6


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
        raise InvalidRequestError(
            f"{field} contains non-printable characters (controls, format or separator "
            "characters such as U+200B or U+FEFF); send printable text only"
        )


def _float32(value: np.floating) -> str:
    """A float32 as it round-trips (numpy's shortest form), "-10001" rather than "-10001.0"."""
    text = str(value)
    return text.removesuffix(".0")


def _check_length(value: str, field: str, limit: int) -> None:
    """A string field of at most limit characters (the .proto comment's bound)."""
    if len(value) > limit:
        raise InvalidRequestError(
            f"{field} has {len(value)} characters; send at most {limit} ({field} "
            f"{shown(value)})"
        )


def _tier(name: str, tiers: Sequence[TierSpec], *, allow_empty: bool) -> TierSpec | None:
    """The tier called name; None for "" when allow_empty; InvalidRequestError otherwise."""
    if not name and allow_empty:
        return None
    names = ", ".join(t.name for t in tiers)
    if not name:
        raise InvalidRequestError(f"tier is empty; send one of: {names}")
    _check_length(name, "tier", MAX_TIER_CHARS)
    tier = next((t for t in tiers if t.name == name), None)
    if tier is None:
        raise InvalidRequestError(f"unknown tier {shown(name)}; send one of: {names}")
    return tier


def validate_spec_request(device_id: str) -> None:
    """GetModelSpec: device_id is optional ("" for anonymous probes) but, if set, an id."""
    if device_id:
        _check_id(device_id, "device_id")


def validate_strategy_request(req: StrategyRequest, spec: ModelSpec) -> None:
    """Raise InvalidRequestError / StaleVersionError when req cannot be served under spec."""
    _check_id(req.device_id, "device_id")
    _check_id(req.request_id, "request_id")
    _check_length(req.backbone_version, "backbone_version", MAX_VERSION_CHARS)
    if req.backbone_version != spec.version:
        if not req.backbone_version:
            raise StaleVersionError(
                f"backbone_version is empty; call GetModelSpec and send its version "
                f"{spec.version!r} (the served backbone) once the device holds that backbone"
            )
        raise StaleVersionError(
            f"backbone_version {shown(req.backbone_version)} is not the served backbone version "
            f"{spec.version!r}; call GetModelSpec, rebuild the backbone and send its version"
        )
    tier = _tier(req.tier, spec.tiers, allow_empty=False)
    assert tier is not None
    budget = req.budget_bits
    lo, hi = tier.min_budget_bits, tier.max_budget_bits
    if not math.isfinite(budget) or budget <= 0:
        raise InvalidRequestError(
            f"budget_bits {exact(budget)} is not a positive finite number; send a value in "
            f"[{exact(lo)}, {exact(hi)}] for tier {tier.name!r} (default "
            f"{exact(tier.default_budget_bits)})"
        )
    if budget < lo or budget > hi:  # the level rules refuse anything outside, by any margin
        raise InvalidRequestError(
            f"budget_bits {exact(budget)} is outside tier {tier.name!r}'s reachable range; "
            f"send a value in [{exact(lo)}, {exact(hi)}]"
        )
    if req.reference_id and not REFERENCE_ID.fullmatch(req.reference_id):
        raise InvalidRequestError(
            f"reference_id {shown(req.reference_id)} is not 8 lowercase hex digits; send the "
            "spec's reference_id, or \"\" for plain codes"
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
        bad = ~np.isfinite(profile) | (np.abs(profile) > PROFILE_ABS_MAX)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise InvalidRequestError(
                f"profile[{i}] is {_float32(profile[i])} ({int(bad.sum())} values outside the "
                f"range); send finite floats in [-{PROFILE_ABS_MAX:g}, {PROFILE_ABS_MAX:g}] "
                "(the on-device profiler output)"
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
_MS_FIELDS = ("adapt_ms", "infer_ms", "rpc_ms")
_BYTE_FIELDS = ("bytes_up", "bytes_down")


def _check_range(name: str, value: float, lo: float, hi: float, what: str) -> None:
    """metrics.NAME must be a finite number in [lo, hi]."""
    if not math.isfinite(value) or not lo <= value <= hi:
        raise InvalidRequestError(
            f"metrics.{name} is {exact(value)}; send {what} in [{exact(lo)}, {exact(hi)}]"
        )


def validate_report(report: DeviceReport, tiers: Sequence[TierSpec]) -> None:
    """Raise InvalidRequestError when a device report is incomplete or holds impossible values.

    Ranges: hr5/hr10/ndcg5/ndcg10 in [0, 1]; *_ms in [0, MAX_REPORT_MS]; bytes_* in
    [0, MAX_REPORT_BYTES]; avg_bits 0 (not measured) or within the tier's level widths (any
    tier's when tier is ""), since an average of per-channel widths cannot leave that range.
    """
    _check_id(report.device_id, "device_id")
    tier = _tier(report.tier, tiers, allow_empty=True)
    if report.metrics is None:
        raise InvalidRequestError("metrics is missing; send the DeviceMetrics measured this round")
    m = report.metrics
    for name in _PROBABILITY_FIELDS:
        _check_range(name, float(getattr(m, name)), 0.0, 1.0, "a rate")
    for name in _MS_FIELDS:
        _check_range(name, float(getattr(m, name)), 0.0, MAX_REPORT_MS, "milliseconds")
    for name in _BYTE_FIELDS:
        value = getattr(m, name)  # an int: 2**40 + 1 must not round to 2**40 as a float
        if not 0 <= value <= MAX_REPORT_BYTES:
            raise InvalidRequestError(
                f"metrics.{name} is {exact(value)}; send a byte count in [0, {MAX_REPORT_BYTES}]"
            )
    widths = [b for t in ([tier] if tier is not None else tiers) for b in t.level_bits]
    avg = float(m.avg_bits)
    if avg != 0.0 and widths:
        lo, hi = float(min(widths)), float(max(widths))
        where = f"tier {tier.name!r}'s" if tier is not None else "the tiers'"
        if not math.isfinite(avg) or not lo <= avg <= hi:
            raise InvalidRequestError(
                f"metrics.avg_bits is {exact(avg)}; send 0 (not measured) or bits per weight "
                f"within {where} level widths [{exact(lo)}, {exact(hi)}]"
            )
    _check_metric_bounds(m)


def _check_metric_bounds(m: DeviceMetrics) -> None:
    """The relations every measured round keeps (strategy.proto, DeviceMetrics).

    Per target, a hit at 0-based rank r < k scores HR@k 1 and NDCG@k 1 / log2(r + 2), which lies
    in [1 / log2(k + 1), 1]; a hit at rank 5..9 adds 1 / log2(r + 2) in [1 / log2(11),
    1 / log2(7)] to NDCG@10 over NDCG@5. The round's values are means over its targets, so the
    same bounds hold between the means (Jarvelin & Kekalainen 2002 for NDCG).
    """
    hr5, hr10, ndcg5, ndcg10 = (float(m.hr5), float(m.hr10), float(m.ndcg5), float(m.ndcg10))
    rules = (
        (hr5 <= hr10 + METRIC_SLACK, "hr5 <= hr10"),
        (ndcg5 <= hr5 + METRIC_SLACK, "ndcg5 <= hr5"),
        (ndcg5 >= hr5 / math.log2(6) - METRIC_SLACK, "ndcg5 >= hr5 / log2(6)"),
        (ndcg10 - ndcg5 <= (hr10 - hr5) / math.log2(7) + METRIC_SLACK,
         "ndcg10 - ndcg5 <= (hr10 - hr5) / log2(7)"),
        (ndcg10 - ndcg5 >= (hr10 - hr5) / math.log2(11) - METRIC_SLACK,
         "ndcg10 - ndcg5 >= (hr10 - hr5) / log2(11)"),
    )  # fmt: skip
    for holds, rule in rules:
        if not holds:
            raise InvalidRequestError(
                f"metrics hr5={exact(hr5)}, hr10={exact(hr10)}, ndcg5={exact(ndcg5)}, "
                f"ndcg10={exact(ndcg10)} break {rule}, which every measured round keeps "
                "(means of per-target HR@k and NDCG@k); send the values the device measured"
            )


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
