"""The accuracy table of `chord eval`: CHORD in both backbone modes against every baseline."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from chord.baselines.duet import DuetConfig, DuetScorer, train_duet
from chord.baselines.finetune import FinetuneConfig, FinetuneScorer
from chord.baselines.rows import MethodRow, size_weighted_bits
from chord.baselines.static import (
    random_importance,
    static_levels,
    uniform_bits,
)
from chord.codes import encode_levels
from chord.data import Split, pad_sequences
from chord.evaluation import stage_ranks
from chord.hyper.fisher import fisher_importance
from chord.hyper.personal import sync
from chord.hyper.prior import PriorImportance
from chord.hyper.runs import ChordRun, RunConfig, load_run, load_split, prepare_run
from chord.hyper.scoring import PersonalScorer
from chord.levels import DEFAULT_TIERS, Tier, assign_levels, budget_range, levels_to_bits
from chord.metrics import rank_metrics, user_ndcg
from chord.protocol import Protocol, ProtocolError, check_protocol
from chord.quant import quantize_backbone

ALL_METHODS = (
    "fp32", "ptq-8", "ptq-4", "ptq-3", "ptq-2", "mixed-static", "mixed-random", "finetune",
    "duet", "chord-random", "chord-pretrained",
)
# Methods also measured over the random backbone (cheap, and they put chord-random in context).
RANDOM_MODE_METHODS = ("fp32", "ptq-8", "ptq-4", "ptq-3", "ptq-2", "mixed-static", "mixed-random")
STATIC_NOTE = "ships one model once (0 bytes per user)"
LOG = Callable[[str], None]


class EvalError(ValueError):
    """An evaluation request that cannot be met (budget outside the tier, unknown method)."""


@dataclass(frozen=True)
class EvalConfig:
    """One `chord eval` invocation."""

    dataset: str = "ml-100k"
    backbone: str = "sasrec"
    budget: float = 3.0
    tier: str | None = None  # None: low for budgets <= 2.5, mid otherwise
    preset: str = "full"  # run preset: smoke | quick | full
    seed: int = 0
    max_users: int | None = None  # keep only the first N users (smoke)
    methods: tuple[str, ...] = ALL_METHODS
    finetune_users: int | None = 1000  # cap on users the (slow) per-user fine-tuning evaluates
    finetune_steps: int = 5
    duet_steps: int | None = None  # None: from the preset
    backbone_path: str | None = None  # pretrained mode: reuse this trained backbone file
    hyper_steps: int | None = None  # None: from the preset
    hyper_lr: float | None = None  # None: RunConfig's default
    prior: str = "none"  # CHORD's importance prior (chord.hyper.prior): none | fisher
    fold: bool = True  # rewrite the backbone into its quantization-friendly form (RunConfig.fold)
    allocation: str = "rd"  # how levels follow importance (RunConfig.allocation): rd | quota
    # Random mode: epochs of the shared element mask learned over the seeded backbone before
    # anything else (RunConfig.mask_epochs); 0 measures the backbone as built; None: RunConfig's.
    mask_epochs: int | None = None
    device: str = "cpu"  # where training, evaluation and the timings run (not a run-cache key)
    n_negatives: int = 100  # sampled negatives per test user (ranking="sampled")
    ranking: str = "sampled"  # sampled | full: how the table's metrics rank the target

    def __post_init__(self) -> None:
        """Reject options that can never work before any data is loaded (EvalError)."""
        if not math.isfinite(self.budget) or self.budget <= 0:
            raise EvalError(f"budget must be a finite number of bits > 0, got {self.budget}")
        for name in ("max_users", "finetune_users", "hyper_steps", "duet_steps"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise EvalError(f"{name} must be >= 1, got {value}")
        if self.mask_epochs is not None and self.mask_epochs < 0:
            raise EvalError(f"mask_epochs must be >= 0 (0: no mask), got {self.mask_epochs}")
        if self.seed < 0:
            raise EvalError(f"seed must be >= 0, got {self.seed}")
        if self.finetune_steps < 1:
            raise EvalError(f"finetune_steps must be >= 1, got {self.finetune_steps}")
        if self.preset not in ("smoke", "quick", "full"):
            raise EvalError(f"preset must be smoke, quick or full, got {self.preset!r}")
        if self.backbone_path is not None and not Path(self.backbone_path).is_file():
            raise EvalError(f"--backbone-path {self.backbone_path!r} is not an existing file")
        check_device(self.device)
        try:
            Protocol(self.ranking, self.n_negatives)
        except ProtocolError as exc:
            raise EvalError(str(exc)) from None

    @property
    def protocol(self) -> Protocol:
        """The evaluation protocol of the table (raises ProtocolError when malformed)."""
        return Protocol(self.ranking, self.n_negatives)


def check_device(device: str) -> torch.device:
    """A torch device this machine has; EvalError naming what to send otherwise."""
    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError):
        raise EvalError(
            f"--device {device!r} is not a torch device; send cpu, cuda or cuda:N"
        ) from None
    if dev.type == "cuda":
        count = torch.cuda.device_count()
        index = dev.index or 0
        if index >= count:
            raise EvalError(
                f"--device {device!r}: this machine has {count} CUDA devices; send cpu"
                + (f" or cuda:0..cuda:{count - 1}" if count else "")
            )
    elif dev.type not in ("cpu", "mps"):
        raise EvalError(f"--device {device!r} is not supported here; send cpu or cuda[:N]")
    return dev


def device_name(device: str) -> str:
    """What a device is, for the record: the GPU's name for CUDA, else the device string."""
    dev = torch.device(device)
    if dev.type == "cuda" and torch.cuda.is_available():
        return str(torch.cuda.get_device_name(dev))
    return str(dev)


def pick_tier(budget: float, name: str | None, tiers: dict[str, Tier] = DEFAULT_TIERS) -> Tier:
    """The tier for a budget: given, or low (<= 2.5 bits) / mid; the budget must be inside."""
    if name is None:
        name = "low" if budget <= 2.5 else "mid"
    if name not in tiers:
        raise EvalError(f"unknown tier {name!r}; use one of {sorted(tiers)}")
    tier = tiers[name]
    lo, hi = budget_range(tier)
    if not lo < budget < hi:
        raise EvalError(
            f"budget {budget} is not strictly inside tier {name!r}'s range ({lo}, {hi}), so "
            "no channel could be given more bits than another; pick another tier or budget"
        )
    return tier


def population_prior(run: ChordRun) -> np.ndarray:
    """The run's measured per-channel prior (the rd rule's population sensitivity)."""
    model = run.importance_model
    if not isinstance(model, PriorImportance):
        raise EvalError(f"run {run.path} has no channel prior (quota rule without one)")
    return model.get_buffer("prior").detach().cpu().numpy().astype(np.float64)


def _metrics(
    score_fn: Any, split: Split, seed: int, protocol: Protocol, users: np.ndarray | None = None
) -> tuple[dict[str, float], np.ndarray]:
    """Test-split metrics of a backbone or score function under the table's protocol.

    Returns the metrics averaged over the evaluated users and the per-user NDCG@10 over every
    test user of the split, in split order ([n_test] float64; NaN for users outside `users`),
    so that methods can be compared user by user (benchmarks.intervals).
    """
    ranks = stage_ranks(score_fn, split, "test", full=protocol.full, seed=seed, users=users,
                        n_negatives=protocol.n_negatives)
    per_user = np.full(len(split.test), np.nan)
    if users is None:
        per_user[:] = user_ndcg(ranks, 10)
    else:
        per_user[users] = user_ndcg(ranks, 10)
    return rank_metrics(ranks), per_user


def code_bytes(levels: np.ndarray, version: str) -> int:
    """Bytes of one encoded strategy: payload + a small header (length, CRC32, version)."""
    header = 4 + 4 + 8 + 1
    return len(encode_levels(levels, version).payload) + header


def _chord_row(
    run: ChordRun, split: Split, tier: Tier, budget: float, seed: int, protocol: Protocol,
    log: LOG | None,
) -> MethodRow:
    """CHORD: per-user importance -> assign_levels -> per-user quantized backbone."""
    scorer = PersonalScorer(run.backbone, run.layout, run.importance_model.importance, tier, budget,
                            cost=run.level_cost, mask=run.mask)
    metrics, per_user = _metrics(scorer, split, seed, protocol)
    levels = np.concatenate(scorer.level_rows)
    n_bytes = float(np.mean([code_bytes(row, run.version) for row in levels[:200]]))
    # Per-user adaptation: cloud importance + levels + code, device quantization (20 users).
    times = []
    sizes = np.asarray(run.layout.channel_sizes(), dtype=np.int64)
    hist = split.test.histories[:20]
    seqs = pad_sequences(hist, run.backbone.max_len)
    device = scorer.device
    for i in range(len(hist)):
        sync(device)
        start = time.perf_counter()
        imp = run.importance_model.importance(run.profile(seqs[i : i + 1]))[0].cpu().numpy()
        lv = assign_levels(imp, sizes, tier, budget, run.level_cost)
        code_bytes(lv, run.version)
        bits = levels_to_bits(lv, tier).astype(np.int64)
        quantize_backbone(run.backbone, bits, layout=run.layout)
        sync(device)
        times.append((time.perf_counter() - start) * 1e3)
    counts = np.stack([np.bincount(r, minlength=4) for r in levels]).mean(0)
    distinct = len({r.tobytes() for r in levels})
    return MethodRow(
        f"chord-{run.mode}", run.mode, scorer.mean_avg_bits(), metrics, n_bytes,
        float(np.mean(times)),
        notes="bytes = 2-bit code + header; adapt = cloud strategy + device quantization"
        + ("" if device.type == "cpu" else f" (timed on {device.type})"),
        extra={
            "tier": tier.name, "budget": budget,
            "level_counts_mean": [round(float(c), 1) for c in counts],
            "distinct_strategies": distinct, "users": len(levels),
            "per_user_bits_std": float(np.std(scorer.avg_bits)),
        },
        per_user=per_user,
    )


def _static_rows(
    run: ChordRun, split: Split, tier: Tier, budget: float, cfg: EvalConfig, log: LOG | None
) -> list[MethodRow]:
    """fp32, uniform PTQ and the two non-personalized mixed-precision baselines."""
    rows: list[MethodRow] = []
    sizes = np.asarray(run.layout.channel_sizes(), dtype=np.int64)
    wanted = set(cfg.methods) if run.mode == "pretrained" else set(cfg.methods) & set(
        RANDOM_MODE_METHODS
    )
    if "fp32" in wanted:
        fp32, per_user = _metrics(run.backbone, split, cfg.seed, cfg.protocol)
        rows.append(MethodRow("fp32", run.mode, 32.0, fp32, notes=STATIC_NOTE, per_user=per_user))
    for bits in (8, 4, 3, 2):
        if f"ptq-{bits}" in wanted:
            model = quantize_backbone(run.backbone, uniform_bits(run.layout, bits),
                                      layout=run.layout)
            ptq, per_user = _metrics(model, split, cfg.seed, cfg.protocol)
            rows.append(MethodRow(f"ptq-{bits}", run.mode, float(bits), ptq, notes=STATIC_NOTE,
                                  per_user=per_user))
    for name in ("mixed-static", "mixed-random"):
        if name not in wanted:
            continue
        cost = None
        if name == "mixed-static" and run.level_cost is not None:
            # The rd rule's own population sensitivity: measured layer loss, score-weighted
            # channel shares, the same for every user (CHORD with its gate shut).
            imp, cost = population_prior(run), run.level_cost
        elif name == "mixed-static":
            imp = fisher_importance(run.backbone, run.layout, split, tier, seed=cfg.seed)
        else:  # random ranking under the quota rule: no measured sensitivity at all
            imp = random_importance(run.layout, cfg.seed)
        mixed = levels_to_bits(
            static_levels(imp, run.layout, tier, budget, cost), tier
        ).astype(np.int64)
        model = quantize_backbone(run.backbone, mixed, layout=run.layout)
        measured, per_user = _metrics(model, split, cfg.seed, cfg.protocol)
        rows.append(MethodRow(
            name, run.mode, size_weighted_bits(mixed, sizes), measured,
            notes=STATIC_NOTE,
            extra={"tier": tier.name, "budget": budget, "rule": "rd" if cost else "quota"},
            per_user=per_user,
        ))
    return rows


def _finetune_row(
    run: ChordRun, split: Split, budget: float, cfg: EvalConfig
) -> MethodRow:
    """Per-user fine-tuning on the device, then uniform PTQ at round(budget) bits."""
    bits = round(budget)
    scorer = FinetuneScorer(run.backbone, run.layout, FinetuneConfig(cfg.finetune_steps, bits=bits))
    users = None
    note = f"{cfg.finetune_steps} Adam steps per user, then uniform {bits}-bit PTQ"
    if scorer.device.type != "cpu":
        note += f" (timed on {scorer.device.type})"
    if cfg.finetune_users is not None and cfg.finetune_users < len(split.test):
        users = np.sort(np.random.default_rng(cfg.seed).choice(
            len(split.test), cfg.finetune_users, replace=False))
        note += f"; evaluated on {cfg.finetune_users} random test users"
    metrics, per_user = _metrics(scorer, split, cfg.seed, cfg.protocol, users)
    return MethodRow("finetune", run.mode, float(bits), metrics, 0.0, scorer.mean_adapt_ms(),
                     notes=note, per_user=per_user)


def _duet_row(
    run: ChordRun, split: Split, budget: float, cfg: EvalConfig, log: LOG | None
) -> MethodRow:
    """DUET-style generated last Linear layer (fp32) over a uniformly quantized backbone."""
    bits = round(budget)
    base = quantize_backbone(run.backbone, uniform_bits(run.layout, bits), layout=run.layout)
    steps = cfg.duet_steps or {"smoke": 30, "quick": 150, "full": 1000}[cfg.preset]
    dcfg = DuetConfig(steps=steps, seed=cfg.seed, eval_every=max(10, min(100, steps // 3)),
                      batch_size=32 if cfg.preset == "smoke" else 64,
                      valid_negatives=cfg.n_negatives, valid_ranking=cfg.ranking)
    gen, key, info = train_duet(base, run.backbone, run.layout, split, dcfg, log)
    scorer = DuetScorer(base, run.backbone, gen, key)
    metrics, per_user = _metrics(scorer, split, cfg.seed, cfg.protocol)
    sizes = np.asarray(run.layout.channel_sizes(), dtype=np.int64)
    per_channel = uniform_bits(run.layout, bits)
    sl = run.layout.slices()[key.removesuffix(".weight")]
    per_channel[sl] = 32
    return MethodRow(
        "duet", run.mode, size_weighted_bits(per_channel, sizes), metrics,
        float(gen.n_generated * 4), float(np.mean(scorer.adapt_ms)),
        notes=f"generates {key} ({gen.n_generated} fp32 params) per user; rest {bits}-bit PTQ"
        + ("" if scorer.device.type == "cpu" else f" (timed on {scorer.device.type})"),
        extra={"duet_valid_ndcg10": info["best_valid_ndcg10"]},
        per_user=per_user,
    )


def run_eval(cfg: EvalConfig, log: LOG | None = None) -> dict[str, Any]:
    """Measure every requested method on the test split.

    Returns {"rows": [...], "meta": {...}, "per_user": {(backbone_mode, method): [n_test]}}:
    JSON rows (MethodRow.to_dict) and, per row, its NDCG@10 for every test user of the split
    in split order (float64; NaN for users a method did not evaluate, e.g. fine-tuning's
    sample). Every method is ranked against the same seeded negatives per user, so the vectors
    pair user by user (benchmarks.intervals). Raises EvalError on an unknown method or a budget
    outside its tier.
    """
    unknown = sorted(set(cfg.methods) - set(ALL_METHODS))
    if unknown:
        raise EvalError(f"unknown methods {unknown}; choose from {list(ALL_METHODS)}")
    tier = pick_tier(cfg.budget, cfg.tier)
    protocol = cfg.protocol
    first = RunConfig.preset(cfg.preset, dataset=cfg.dataset, backbone=cfg.backbone,
                             seed=cfg.seed, max_users=cfg.max_users,
                             eval_negatives=cfg.n_negatives, eval_ranking=cfg.ranking)
    split0 = load_split(first)
    check_protocol(protocol, split0.n_items, split0.seen, split0.user_labels, split0.name)
    start = time.perf_counter()
    torch.manual_seed(cfg.seed)
    rows: list[MethodRow] = []
    runs: dict[str, Any] = {}
    modes = ["pretrained", "random"]
    for mode in modes:
        over: dict[str, Any] = {}
        if cfg.hyper_steps is not None:
            over["hyper_steps"] = cfg.hyper_steps
        if cfg.hyper_lr is not None:
            over["hyper_lr"] = cfg.hyper_lr
        over["prior"] = cfg.prior
        over["fold"] = cfg.fold
        over["allocation"] = cfg.allocation
        over["eval_negatives"] = cfg.n_negatives
        over["eval_ranking"] = cfg.ranking
        if mode == "pretrained" and cfg.backbone_path is not None:
            over["backbone_path"] = cfg.backbone_path
        if mode == "random" and cfg.mask_epochs is not None:
            over["mask_epochs"] = cfg.mask_epochs
        rcfg = RunConfig.preset(cfg.preset, dataset=cfg.dataset, backbone=cfg.backbone,
                                mode=mode, seed=cfg.seed, max_users=cfg.max_users, **over)
        t0 = time.perf_counter()
        run = load_run(prepare_run(rcfg, log=log, device=cfg.device), device=cfg.device)
        split = load_split(rcfg)
        runs[mode] = {"path": str(run.path), "prepare_s": round(time.perf_counter() - t0, 1),
                      "hyper_train": run.meta.get("hyper_train"),
                      "backbone_train": run.meta.get("backbone_train")}
        if log:
            log(f"{mode}: run ready at {run.path}")
        rows += _static_rows(run, split, tier, cfg.budget, cfg, log)
        if mode == "pretrained" and "finetune" in cfg.methods:
            rows.append(_finetune_row(run, split, cfg.budget, cfg))
        if mode == "pretrained" and "duet" in cfg.methods:
            rows.append(_duet_row(run, split, cfg.budget, cfg, log))
        if f"chord-{mode}" in cfg.methods:
            rows.append(_chord_row(run, split, tier, cfg.budget, cfg.seed, protocol, log))
        if log:
            log(f"{mode}: {len(rows)} rows after {time.perf_counter() - start:.0f}s")
    meta = {
        "config": asdict(cfg), "tier": tier.name, "tier_level_bits": list(tier.level_bits),
        "device": cfg.device, "device_name": device_name(cfg.device),
        "seconds": round(time.perf_counter() - start, 1), "runs": runs,
        "protocol": (
            "test split, target vs the whole catalogue (history masked)" if protocol.full
            else f"test split, target vs {protocol.n_negatives} sampled unseen negatives (seeded)"
        ),
    }
    per_user = {(r.backbone_mode, r.method): r.per_user for r in rows if r.per_user is not None}
    meta["test_users"] = len(split0.test)
    return {"rows": [r.to_dict() for r in rows], "meta": meta, "per_user": per_user}
