"""Strategy engines: a batch of requests in, one importance forward pass, encoded levels out."""

from __future__ import annotations

import dataclasses
import time
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np
import torch

from chord.artifacts import (
    MASK_FORMAT,
    Artifact,
    ArtifactRef,
    backbone_to_artifact,
    reference_to_artifact,
)
from chord.codes import encode_levels, encode_levels_batch, reference_levels
from chord.hyper.frozen import serving_importance
from chord.levels import (
    DEFAULT_TIERS,
    BudgetError,
    Tier,
    assign_levels,
    assign_levels_batch,
    budget_range,
)
from chord.masks import encode_mask
from chord.spec import LayerSpec, ModelSpec, TierSpec
from chord.strategy import StrategyRequest, StrategyResult
from cloud_server.artifacts import ArtifactStore
from cloud_server.errors import InvalidRequestError, ServiceError
from cloud_server.validation import PROFILE_ABS_MAX

if TYPE_CHECKING:
    from chord.hyper.runs import ChordRun

__all__ = ["EchoEngine", "Engine", "StrategyEngine", "tier_specs"]

BatchOutcome = list[StrategyResult | ServiceError]
REFERENCE_CACHE = 256  # (tier, budget) pairs whose reference levels are kept


class Engine(Protocol):
    """What the service calls: a published spec, the artifacts it lists, a batch computation."""

    spec: ModelSpec
    artifacts: ArtifactStore
    inline: bool  # True when compute is so cheap it may run on the event loop

    def compute(self, requests: Sequence[StrategyRequest]) -> BatchOutcome:
        """One result (or the error of that one request) per request, in order."""
        ...


def tier_specs(tiers: Mapping[str, Tier]) -> tuple[TierSpec, ...]:
    """Publishable tiers with the budget range each can reach."""
    out = []
    for tier in tiers.values():
        lo, hi = budget_range(tier)
        out.append(TierSpec(tier.name, tier.level_bits, tier.default_budget_bits, lo, hi))
    return tuple(out)


def _result(
    req: StrategyRequest,
    levels: np.ndarray,
    sizes: np.ndarray,
    tier: Tier,
    version: str,
    model_ms: float,
    reference: np.ndarray | None = None,
) -> StrategyResult:
    """Encode one request's levels into its result (a delta to `reference` when smaller)."""
    levels = levels.astype(np.uint8, copy=False)
    counts = np.bincount(levels, minlength=4)
    # Integer-valued sums, so this equals chord.levels.average_bits exactly.
    level_sizes = np.bincount(levels, weights=sizes, minlength=4)
    avg_bits = float((np.asarray(tier.level_bits, dtype=np.float64) * level_sizes).sum())
    return StrategyResult(
        request_id=req.request_id,
        code=encode_levels(levels, version, reference=reference),
        level_counts=(int(counts[0]), int(counts[1]), int(counts[2]), int(counts[3])),
        avg_bits=avg_bits / float(sizes.sum()),
        timings={"model_ms": model_ms},
    )


class LevelTally:
    """Per row of levels [R, C]: how many channels and how many weights sit at each level.

    Built once per layout from channel_sizes (int [C], weights per channel): channels of equal
    size form one class, and one compiled pass per row (chord.levels.tally_kernel) counts
    channels per (class, level); the weights per level are class counts times class sizes,
    integers throughout, so they equal a weighted np.bincount exactly (which cost several
    times more CPU per batch).
    """

    def __init__(self, channel_sizes: np.ndarray) -> None:
        """channel_sizes: int [C] >= 1, in layout order."""
        sizes = np.asarray(channel_sizes, dtype=np.int64)
        self.class_sizes, size_class = np.unique(sizes, return_inverse=True)  # [K], [C]
        self._size_class = size_class.astype(np.intp).reshape(-1)
        self.total = float(sizes.sum())

    def __call__(self, levels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """levels uint8 [R, C] (0..3) -> (counts int64 [R, 4], weights per level int64 [R, 4])."""
        from chord.levels.tally_kernel import level_tally

        lv = np.ascontiguousarray(levels, dtype=np.uint8)
        counts = np.empty((lv.shape[0], 4), dtype=np.int64)
        weights = np.empty((lv.shape[0], 4), dtype=np.int64)
        level_tally(lv, self._size_class, self.class_sizes, counts, weights)
        return counts, weights


def _results_batch(
    requests: Sequence[StrategyRequest],
    levels: np.ndarray,
    tally: LevelTally,
    tiers: Sequence[Tier],
    version: str,
    references: list[np.ndarray | None],
    model_ms: float,
) -> list[StrategyResult]:
    """_result for every row of levels [R, C] at once: counts and weights per level from one
    compiled pass (LevelTally), codes packed in one pass (chord.codes.encode_levels_batch)."""
    counts, level_sizes = tally(levels)
    # Integer-valued sums, so avg_bits equals chord.levels.average_bits exactly.
    bits = np.array([t.level_bits for t in tiers], dtype=np.float64)
    avg = (bits * level_sizes).sum(1) / tally.total
    codes = encode_levels_batch(levels, version, references)
    return [
        StrategyResult(
            request_id=req.request_id,
            code=code,
            level_counts=(c0, c1, c2, c3),
            avg_bits=a,
            timings={"model_ms": model_ms},
        )
        for req, code, (c0, c1, c2, c3), a in zip(
            requests, codes, counts.tolist(), avg.tolist(), strict=True
        )
    ]


class StrategyEngine:
    """Computes strategies with a run's hypernetwork (one forward pass per batch)."""

    inline = False

    def __init__(self, run: ChordRun) -> None:
        """Wrap a loaded run (chord.hyper.runs.load_run)."""
        self.run = run
        run.importance_model.eval()  # serving only: eval_importance then skips mode switches
        # The weights are final once loaded: a snapshot skips the module machinery per batch.
        self._importance = serving_importance(run.importance_model)
        self.run_dir = Path(run.path).resolve()
        self._tiers = dict(run.tiers)
        self._sizes = np.asarray(run.layout.channel_sizes(), dtype=np.int64)
        self._tally = LevelTally(self._sizes)
        self._max_len = int(run.backbone.max_len)
        from chord.hyper.reference import reference_id, reference_importance

        self._cost = run.level_cost
        self._cost_bytes = self._cost.to_bytes() if self._cost is not None else b""
        self._reference = reference_importance(run)
        self._reference_id = reference_id(self._reference, self._cost_bytes)
        self._reference_levels: OrderedDict[tuple[str, float], np.ndarray] = OrderedDict()
        self.artifacts = ArtifactStore(self._run_artifacts())
        self.spec = self._build_spec()
        self._warm_kernels()

    def _warm_kernels(self) -> None:
        """Load (or compile, the first time on a machine) the compiled kernels compute uses,
        so the first request does not wait for them: one zero profile through the model and
        the level rule, and the replies' level tally. About 0.5 s of CPU from numba's cache,
        a few seconds without one."""
        tier = next(iter(self._tiers.values()))
        with torch.inference_mode():
            importance = self._importance(torch.zeros(1, int(self.run.profile_dim)))
        assign_levels_batch(importance.numpy(), self._sizes, [tier], [tier.default_budget_bits],
                            self._cost, compiled=True)
        self._tally(np.zeros((1, self._sizes.size), dtype=np.uint8))

    @classmethod
    def from_run_dir(cls, run_dir: Path | str) -> StrategyEngine:
        """Load RUN (run.json, backbone.pt, hypernet.pt) with chord.hyper.runs.load_run."""
        from chord.hyper.runs import load_run

        return cls(load_run(Path(run_dir)))

    def _run_artifacts(self) -> tuple[Artifact, ...]:
        """What a device of this run downloads: pretrained weights or the shared mask, and the
        reference data."""
        out = []
        if self.run.mode == "pretrained":
            out.append(backbone_to_artifact(self.run.backbone))
        if self.run.mask is not None:  # random mode with a learned mask: its rank classes
            mask = encode_mask(self.run.mask.artifact)
            out.append(Artifact.of("shared_mask", MASK_FORMAT, mask))
        n_layers = len(self.run.layout.layers)
        out.append(reference_to_artifact(self._reference, self._cost_bytes, n_layers))
        return tuple(out)

    def register_artifact(self, kind: str, fmt: str, data: bytes) -> ArtifactRef:
        """Serve one more artifact (e.g. the run's shared mask) and list it in the spec."""
        ref = self.artifacts.register(kind, fmt, data)
        self.spec = dataclasses.replace(self.spec, artifacts=self.artifacts.refs())
        return ref

    def _build_spec(self) -> ModelSpec:
        """The spec devices fetch: backbone recipe, layout, tiers, profile size, artifacts."""
        from chord.config import config_to_json

        run = self.run
        layers = tuple(
            LayerSpec(str(x.name), int(x.n_channels), int(x.channel_size))
            for x in run.layout.layers
        )
        spec = ModelSpec(
            kind=str(run.backbone.kind),
            mode=str(run.mode),
            config_json=config_to_json(run.backbone_config),
            seed=int(run.seed),
            version=str(run.version),
            layers=layers,
            n_channels=int(run.layout.n_channels),
            tiers=tier_specs(self._tiers),
            profile_dim=int(run.profile_dim),
            max_recent_items=self._max_len,
            n_items=int(run.backbone.n_items),
            reference_id=self._reference_id,
            artifacts=self.artifacts.refs(),
            reference_importance=self._reference.astype("<f2").tobytes(),
            level_cost=self._cost_bytes,
        )
        if run.mask is None:
            return spec
        # Random mode with a learned mask: how a device rebuilds the weights before masking.
        header = run.mask.artifact.header
        return dataclasses.replace(
            spec, generator=header.generator, weights_checksum=header.weights_checksum
        )

    def _reference_for(self, req: StrategyRequest, tier: Tier) -> np.ndarray | None:
        """Reference levels for a device that holds this spec's reference, else None."""
        if req.reference_id != self._reference_id:
            return None  # no reference, or one from another model: plain codes
        key = (tier.name, float(req.budget_bits))
        levels = self._reference_levels.get(key)
        if levels is None:
            levels = reference_levels(
                self._reference, self._sizes, tier, req.budget_bits, self._cost
            )
            self._reference_levels[key] = levels
            if len(self._reference_levels) > REFERENCE_CACHE:
                self._reference_levels.popitem(last=False)
        else:
            self._reference_levels.move_to_end(key)
        return levels

    def _profiles(self, requests: Sequence[StrategyRequest]) -> torch.Tensor:
        """[B, d] profiles: as sent, or profiled here from recent item ids (left-padded)."""
        d = self.spec.profile_dim
        seq_rows = [i for i, r in enumerate(requests) if r.profile is None]
        if not seq_rows:  # the common case: every device sent its profile
            rows = [np.asarray(r.profile, dtype=np.float32).reshape(d) for r in requests]
            return torch.from_numpy(np.stack(rows))
        out = torch.zeros(len(requests), d, dtype=torch.float32)
        for i, r in enumerate(requests):
            if r.profile is not None:
                out[i] = torch.from_numpy(np.asarray(r.profile, dtype=np.float32))
        seqs = torch.zeros(len(seq_rows), self._max_len, dtype=torch.long)
        for j, i in enumerate(seq_rows):
            items = requests[i].recent_items
            assert items is not None
            tail = torch.as_tensor(items[-self._max_len :], dtype=torch.long)
            seqs[j, self._max_len - len(tail) :] = tail
        out[seq_rows] = self.run.profile(seqs).to(torch.float32)
        return out

    def compute(self, requests: Sequence[StrategyRequest]) -> BatchOutcome:
        """One importance forward pass, one level assignment and one encoding for the batch.

        model_ms is the engine time for the whole batch (every request waited for all of it).
        """
        if not requests:
            return []
        start = time.perf_counter()
        with torch.inference_mode():
            importance = self._importance(self._profiles(requests))
        tiers = [self._tiers[req.tier] for req in requests]
        assigned = assign_levels_batch(
            importance.numpy(), self._sizes, tiers, [req.budget_bits for req in requests],
            self._cost, compiled=True,
        )
        # Per request: an error (non-finite importance, unreachable budget) or levels to encode.
        errors: dict[int, ServiceError] = {}
        finite = np.isfinite(importance.numpy()).all(axis=1)
        for row, (req, levels) in enumerate(zip(requests, assigned, strict=True)):
            if not finite[row]:
                field = "profile" if req.profile is not None else "recent_items"
                errors[row] = InvalidRequestError(
                    f"{field} gives non-finite channel importance; send profile values in "
                    f"[-{PROFILE_ABS_MAX:g}, {PROFILE_ABS_MAX:g}] (the on-device profiler output)"
                )
            elif isinstance(levels, BudgetError):
                errors[row] = InvalidRequestError(f"{levels}; send a budget this tier can reach")
        good = [i for i in range(len(requests)) if i not in errors]
        done: dict[int, StrategyResult] = {}
        if good:
            rows = np.stack([np.asarray(assigned[i], dtype=np.uint8) for i in good])
            refs = [self._reference_for(requests[i], tiers[i]) for i in good]
            ms = (time.perf_counter() - start) * 1e3
            results = _results_batch(
                [requests[i] for i in good], rows, self._tally, [tiers[i] for i in good],
                self.spec.version, refs, ms,
            )
            done = dict(zip(good, results, strict=True))
        return [done[i] if i in done else errors[i] for i in range(len(requests))]


def _synthetic_spec(tiers: Mapping[str, Tier]) -> ModelSpec:
    """A fixed spec for echo mode without a run: a small SASRec-shaped layout."""
    n_items, hidden = 1000, 64
    layers = (
        LayerSpec("item_emb", n_items + 1, hidden),
        LayerSpec("pos_emb", 50, hidden),
        LayerSpec("blocks.0.attn.q", hidden, hidden),
        LayerSpec("blocks.0.ffn.fc1", hidden, hidden),
    )
    return ModelSpec(
        kind="sasrec",
        mode="random",
        config_json='{"kind": "sasrec", "n_items": 1000, "hidden": 64}',
        seed=0,
        version="ec40ec40ec40ec40",
        layers=layers,
        n_channels=sum(x.n_channels for x in layers),
        tiers=tier_specs(tiers),
        profile_dim=hidden,
        max_recent_items=50,
        n_items=n_items,
    )


class EchoEngine:
    """Answers every request with a fixed valid reply per tier and no model work."""

    inline = True

    def __init__(
        self,
        spec: ModelSpec | None = None,
        tiers: Mapping[str, Tier] | None = None,
        seed: int = 0,
        artifacts: ArtifactStore | None = None,
    ) -> None:
        """Use a run's spec, tiers and artifacts or a synthetic spec; fixed levels from the seed."""
        self.artifacts = artifacts if artifacts is not None else ArtifactStore()
        self._tiers = dict(tiers if tiers is not None else DEFAULT_TIERS)
        self.spec = spec if spec is not None else _synthetic_spec(self._tiers)
        sizes = np.array(
            [x.channel_size for x in self.spec.layers for _ in range(x.n_channels)], dtype=np.int64
        )
        importance = np.random.default_rng(seed).random(self.spec.n_channels).astype(np.float32)
        self._fixed: dict[str, StrategyResult] = {}
        for name, tier in self._tiers.items():
            levels = assign_levels(importance, sizes, tier, tier.default_budget_bits)
            self._fixed[name] = _result(
                StrategyRequest("", "", self.spec.version, name, tier.default_budget_bits),
                levels,
                sizes,
                tier,
                self.spec.version,
                0.0,
            )

    @classmethod
    def from_run_dir(cls, run_dir: Path | str) -> EchoEngine:
        """Echo with a run's spec, so devices can still decode the reply against its backbone."""
        real = StrategyEngine.from_run_dir(run_dir)
        return cls(real.spec, real.run.tiers, artifacts=real.artifacts)

    def compute(self, requests: Sequence[StrategyRequest]) -> BatchOutcome:
        """The fixed reply of each request's tier, under the request's id."""
        out: BatchOutcome = []
        for req in requests:
            fixed = self._fixed[req.tier]
            out.append(
                StrategyResult(
                    req.request_id,
                    fixed.code,
                    fixed.level_counts,
                    fixed.avg_bits,
                    {"model_ms": 0.0},
                )
            )
        return out
