"""Run directories: a frozen backbone plus its trained hypernetwork, written once and reused."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from chord.checkpoint import load_backbone, save_backbone, weights_version
from chord.config import BackboneConfig, config_to_dict
from chord.data import Split, leave_one_out, load_dataset
from chord.data.interactions import default_cache_dir
from chord.hyper.calibrate import calibrate
from chord.hyper.fisher import fisher_importance
from chord.hyper.hypernet import HyperNetwork
from chord.hyper.personal import module_device
from chord.hyper.prior import PriorImportance, standardize_prior
from chord.hyper.training import HyperTrainConfig, train_hypernet
from chord.jsonfile import write_json
from chord.levels import DEFAULT_TIERS, LevelCost, LevelCostError, Tier
from chord.masks import (
    DEFAULT_GENERATOR,
    GENERATORS,
    TORCH_XAVIER,
    MaskArtifact,
    MaskedSource,
    MaskError,
    MaskTrainConfig,
    MaskTrainReport,
    content_id,
    decode_mask,
    encode_mask,
    learn_scores,
    masked_backbone,
    quantize_keep_zeros,
    rebuild_backbone,
)
from chord.masks.build import build_artifact
from chord.masks.ranks import BALANCES
from chord.models import Backbone, build_backbone, fit_length
from chord.plain_numbers import NumberError, json_float, json_int
from chord.quant import channel_layout, quantize_per_channel
from chord.textfile import TextFileError, read_json
from chord.train import TrainConfig, backbone_config_for, train_backbone

RUN_FORMAT = "chord-run/1"
HYPERNET_FORMAT = "chord-hypernet/1"
MODES = ("random", "pretrained")
PRIORS = ("fisher", "none")
ALLOCATIONS = ("rd", "quota")
PRESETS = ("smoke", "quick", "full")
# The quick random-mode SASRec run (the embedded default of `chord simulate` and `make run`):
# benchmarks/RESULTS.md accuracy_random_h256_sparse4, the best measured setting whose mask fits
# 1/16 of the fp32 hidden-64 backbone: hidden 256, the top 4% of each layer kept, mask lr 0.01,
# 40 epochs (test NDCG@10 0.428 on ML-100K, 0.974 of pretrained CHORD at 3 bits; mask 38,286 B).
RANDOM_QUICK_SASREC: dict[str, Any] = {
    "width": 256, "mask_fractions": (0.04,), "mask_lr": 0.01, "mask_epochs": 40,
}
MASK_FILE = "mask.chmk"  # random mode: the shared mask artifact (chord.masks.artifact)


class RunError(ValueError):
    """A run directory that is missing, incomplete or does not match what was asked."""


@dataclass(frozen=True)
class RunConfig:
    """Everything that determines a run directory's contents (its identity for reuse)."""

    dataset: str = "ml-100k"  # packaged name (ml-100k, ml-1m) or an interaction file path
    backbone: str = "sasrec"  # sasrec | caser
    mode: str = "pretrained"  # random (seed + config) | pretrained (trained once, frozen)
    seed: int = 0
    max_users: int | None = None  # keep only the first N users (smoke runs and tests)
    backbone_path: str | None = None  # pretrained mode: reuse this chord.checkpoint file
    backbone_epochs: int = 200  # pretrained mode: upper bound, early stopping ends sooner
    backbone_patience: int = 5
    hyper_steps: int = 1500
    hyper_batch: int = 64
    hyper_eval_every: int = 100
    hyper_patience: int = 4
    hyper_lr: float = 1e-3  # 2e-3 peaked early and then drifted on ML-100K (both backbones)
    hyper_valid_users: int = 400
    rank: int = 4
    hidden: int = 128
    # Quota rule only. "fisher": importance = the mixed-static Fisher sensitivity + a gated
    # hypernetwork correction (chord.hyper.prior); "none": the hypernetwork alone (its gate often
    # stayed shut and ML-100K SASRec scored lower with it: accuracy_prior in RESULTS.md). The rd
    # rule always starts from its own measured prior, with the gate open.
    prior: str = "none"
    tau: float = 0.5
    # Rewrite a trained backbone into a ranking-equivalent form that quantizes better before
    # anything sees it (Backbone.fold_for_quantization; Caser centres its output item table).
    # Random-mode backbones stay as built: devices rebuild them from seed and config.
    fold: bool = True
    # How levels follow importance (chord.levels.assign_levels): "rd" measures each layer's
    # loss at every width on training data and places bits where they remove the most loss
    # (chord.levels.rd), importance scaling each channel's share; "quota" gives the
    # maximum-entropy level quotas to channels in importance order.
    allocation: str = "rd"
    # Backbone width (SASRec hidden, Caser embed); None: the model's default. Random mode can
    # trade width for accuracy since no weight is shipped (the mask grows with it).
    width: int | None = None
    # Random mode: epochs of learning the shared element mask over the seeded weights
    # (chord.masks); 0 keeps the unmasked random backbone (the chance-level baseline).
    mask_epochs: int = 60
    mask_lr: float = 0.05  # Adam; 0.05 beat 0.01 after 20 epochs on ML-100K (accuracy_random log)
    mask_batch: int = 32  # sequences per step (32 learned faster per epoch than 128 on ML-100K)
    # Nested keep fractions of the rank classes (class >= j keeps the top fractions[j-1] of a
    # layer's weights), the lowest class each level keeps (len + 1 = channel pruned) and the
    # class of the shared mask. Default: one class, every level keeps the shared mask and
    # levels differ in bits only.
    mask_fractions: tuple[float, ...] = (0.5,)
    mask_levels: tuple[int, int, int, int] = (1, 1, 1, 1)
    mask_shared: int = 1
    # Random mode with a mask: the named generator (chord.masks.GENERATORS) of the weights the
    # mask is learned over; the devices rebuild them from it. Random runs without a mask (the
    # chance baseline) use chord.models.build_backbone (TORCH_XAVIER). Left out of the cache
    # key at TORCH_XAVIER, so runs cached before this field existed keep their directories.
    generator: str = DEFAULT_GENERATOR
    # Random mode with a mask: how each layer's kept weights are picked by score
    # (chord.masks.ranks.BALANCES): "layer" (the whole layer's top) or "channel" (the same count
    # from every channel; Caser's output item table needs it, see ranks.py). Left out of the
    # cache key at "layer", so runs cached before this field existed keep their directories.
    mask_balance: str = "layer"
    # The evaluation protocol of model selection (backbone early stopping, hypernetwork
    # validation): chord.protocol. Left out of the cache keys at their defaults, so runs cached
    # before these fields existed keep their directories.
    eval_negatives: int = 100
    eval_ranking: str = "sampled"

    def __post_init__(self) -> None:
        """Reject unknown modes and backbones with a message that says what to send."""
        if self.mode not in MODES:
            raise RunError(f"mode must be one of {MODES}, got {self.mode!r}")
        if self.backbone not in ("sasrec", "caser"):
            raise RunError(f"backbone must be 'sasrec' or 'caser', got {self.backbone!r}")
        if self.prior not in PRIORS:
            raise RunError(f"prior must be one of {PRIORS}, got {self.prior!r}")
        if self.allocation not in ALLOCATIONS:
            raise RunError(f"allocation must be one of {ALLOCATIONS}, got {self.allocation!r}")
        if self.mask_epochs < 0:
            raise RunError(f"mask_epochs must be >= 0, got {self.mask_epochs}")
        if self.mask_balance not in BALANCES:
            raise RunError(
                f"mask_balance must be one of {BALANCES}, got {self.mask_balance!r}"
            )
        if self.generator not in GENERATORS:
            raise RunError(
                f"generator must be one of {sorted(GENERATORS)}, got {self.generator!r}"
            )
        object.__setattr__(self, "mask_fractions", tuple(float(f) for f in self.mask_fractions))
        object.__setattr__(self, "mask_levels", tuple(int(c) for c in self.mask_levels))
        if self.allocation == "rd" and self.prior != "none":
            raise RunError(
                f"prior {self.prior!r} belongs to the quota rule; the rd rule measures its own "
                "channel prior (use allocation='quota' with it)"
            )

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> RunConfig:
        """smoke (seconds, tests), quick (minutes, `chord eval --quick`) or full (benchmarks).

        quick in random mode for SASRec also takes RANDOM_QUICK_SASREC (overrides still win).
        Raises RunError for an unknown preset.
        """
        base: dict[str, dict[str, Any]] = {
            "smoke": {
                "max_users": 200, "backbone_epochs": 3, "hyper_steps": 40, "hyper_batch": 32,
                "hyper_eval_every": 20, "hyper_valid_users": 100, "hidden": 32, "mask_epochs": 2,
            },
            "quick": {
                "backbone_epochs": 15, "hyper_steps": 150, "hyper_eval_every": 50,
                "hyper_valid_users": 300, "mask_epochs": 30,
            },
            "full": {},
        }
        if name not in base:
            raise RunError(f"unknown preset {name!r}; use one of {PRESETS}")
        if name == "quick" and overrides.get("mode") == "random" and (
            overrides.get("backbone", "sasrec") == "sasrec"
        ):
            base["quick"].update(RANDOM_QUICK_SASREC)
        return cls(**{**base[name], **overrides})

    def _protocol_key(self) -> dict[str, Any]:
        """The protocol fields that differ from their defaults (none: the key is unchanged)."""
        out: dict[str, Any] = {}
        if self.eval_ranking != "sampled":
            out["eval_ranking"] = self.eval_ranking
        elif self.eval_negatives != 100:
            out["eval_negatives"] = self.eval_negatives
        return out

    def key(self) -> str:
        """Short hash of the config, naming its cache directory."""
        fields = asdict(self)
        for name in ("eval_negatives", "eval_ranking"):
            del fields[name]
        if not self.masked() or self.generator == TORCH_XAVIER:
            del fields["generator"]
        if not self.masked() or self.mask_balance == "layer":
            del fields["mask_balance"]
        text = json.dumps({**fields, **self._protocol_key()}, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:10]

    def backbone_key(self) -> dict[str, Any]:
        """The fields that determine the backbone alone (shared by runs with other hypernets)."""
        return {
            "dataset": self.dataset, "backbone": self.backbone, "mode": self.mode,
            "seed": self.seed, "max_users": self.max_users, "path": self.backbone_path,
            "epochs": self.backbone_epochs if self.mode == "pretrained" else 0,
            "patience": self.backbone_patience if self.mode == "pretrained" else 0,
            **({"width": self.width} if self.width is not None else {}),
            **(self._protocol_key() if self.mode == "pretrained" else {}),
        }

    def masked(self) -> bool:
        """Whether this run learns a shared mask over a seeded random backbone."""
        return self.mode == "random" and self.mask_epochs > 0


@dataclass
class ChordRun:
    """A loaded run: the frozen backbone, its layout, and the importance model for it."""

    path: Path
    backbone: Backbone
    backbone_config: BackboneConfig
    mode: str
    seed: int
    version: str
    layout: Any
    importance_model: HyperNetwork | PriorImportance
    profile_dim: int
    tiers: dict[str, Tier]
    dataset: str
    meta: dict[str, Any] = field(default_factory=dict)
    level_cost: LevelCost | None = None  # the rate-distortion rule's table; None: quota rule
    # Random mode with a learned mask: the raw rebuilt backbone and the mask; `backbone` is then
    # the shared-mask fp32 model (profiles, hypernetwork) and `version` its hash.
    mask: MaskedSource | None = None

    @torch.no_grad()
    def profile(self, seqs: torch.Tensor) -> torch.Tensor:
        """The on-device profiler: the frozen fp32 encoder over recent items [B, L] -> [B, d]."""
        if seqs.dim() == 1:
            seqs = seqs.unsqueeze(0)
        seqs = fit_length(seqs.long(), self.backbone.max_len).to(module_device(self.backbone))
        return self.backbone.encode(seqs).float()

    @property
    def n_channels(self) -> int:
        """Channels of the backbone (= length of every strategy)."""
        return int(self.layout.n_channels)


def cache_root() -> Path:
    """Where run directories and trained backbones are cached ($CHORD_CACHE_DIR/runs)."""
    return default_cache_dir() / "runs"


def restrict_split(split: Split, n_users: int | None) -> Split:
    """The first `n_users` users of a split (as chord.train does for max_train_users)."""
    if n_users is None or n_users >= split.n_users:
        return split
    keep = np.arange(n_users)
    return dataclasses.replace(
        split, train=split.train[:n_users], valid=split.valid.subset(keep),
        test=split.test.subset(keep), seen=split.seen[:n_users],
        user_labels=None if split.user_labels is None else split.user_labels[:n_users],
    )


def load_split(cfg: RunConfig) -> Split:
    """The leave-one-out split a run is trained and evaluated on."""
    return restrict_split(leave_one_out(load_dataset(cfg.dataset)), cfg.max_users)


def _atomic_json(path: Path, data: dict[str, Any]) -> None:
    """Write JSON atomically."""
    write_json(path, data, sort_keys=True)


def obtain_backbone(
    cfg: RunConfig,
    split: Split,
    log: Callable[[str], None] | None = None,
    device: torch.device | str = "cpu",
) -> tuple[Backbone, dict[str, Any]]:
    """The frozen backbone of a run on `device`: rebuilt from seed (random) or trained once."""
    tcfg = TrainConfig(
        dataset=cfg.dataset, backbone=cfg.backbone, epochs=cfg.backbone_epochs,
        patience=cfg.backbone_patience, seed=cfg.seed, max_train_users=cfg.max_users,
        hidden=cfg.width, n_negatives=cfg.eval_negatives, ranking=cfg.eval_ranking,
        progress=False,
    )
    if cfg.mode == "random":
        bcfg = backbone_config_for(tcfg, split.n_items, split.name)
        model = (rebuild_backbone(cfg.generator, bcfg, cfg.seed) if cfg.masked()
                 else build_backbone(bcfg, cfg.seed))
        info: dict[str, Any] = {}
    elif cfg.backbone_path is not None:
        model, meta = load_backbone(cfg.backbone_path)
        if model.n_items != split.n_items or model.kind != cfg.backbone:
            raise RunError(
                f"backbone {cfg.backbone_path} is a {model.kind} over {model.n_items} items, but "
                f"the run needs a {cfg.backbone} over {split.n_items} items of {cfg.dataset}"
            )
        info = {"path": str(cfg.backbone_path), **{k: meta[k] for k in ("version",) if k in meta}}
        if log:
            log(f"using trained backbone {cfg.backbone_path}")
    else:
        key = cfg.backbone_key()
        digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:10]
        name = f"{Path(cfg.dataset).name}-{cfg.backbone}-s{cfg.seed}-{digest}"
        cached = cache_root() / "backbones" / name / "backbone.pt"
        if cached.is_file():
            model, meta = load_backbone(cached)
            info = meta.get("train", {})
            if log:
                log(f"reusing trained backbone {cached}")
        else:
            if log:
                log(f"training {cfg.backbone} on {cfg.dataset} (pretrained mode)")
            result = train_backbone(tcfg, split, device=device)
            model = result.model
            info = {k: result.metrics[k] for k in ("valid", "test", "valid_full", "test_full",
                                                   "train_seconds", "epochs_run")
                    if k in result.metrics}
            save_backbone(cached, model, {"train": info, "key": key})
    if cfg.fold and cfg.mode == "pretrained" and model.fold_for_quantization():
        info = {**info, "folded_for_quantization": True}
    model.to(device)
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model, info


def _tiers_json(tiers: dict[str, Tier]) -> dict[str, Any]:
    """Tiers as JSON."""
    return {
        n: {"level_bits": list(t.level_bits), "default_budget_bits": t.default_budget_bits}
        for n, t in tiers.items()
    }


def _tiers_from_json(data: dict[str, Any]) -> dict[str, Tier]:
    """Tiers from run.json."""
    return {
        n: Tier(n, tuple(int(b) for b in v["level_bits"]), float(v["default_budget_bits"]))  # type: ignore[arg-type]
        for n, v in data.items()
    }


def default_run_dir(cfg: RunConfig) -> Path:
    """The cache directory of a run config."""
    name = f"{Path(cfg.dataset).name}-{cfg.backbone}-{cfg.mode}-s{cfg.seed}-{cfg.key()}"
    return cache_root() / name


def _stored_config(meta: dict[str, Any]) -> Any:
    """run.json's run_config; runs written before `generator` existed used TORCH_XAVIER, and
    before `mask_balance` existed the layer-wide rule."""
    stored = meta.get("run_config")
    if isinstance(stored, dict):
        return {"generator": TORCH_XAVIER, "mask_balance": "layer", **stored}
    return stored


def run_matches(out: Path, cfg: RunConfig) -> bool:
    """Whether OUT already holds a complete run of exactly this config."""
    try:
        meta = read_json(out / "run.json")
    except TextFileError:
        return False
    return (
        meta.get("format") == RUN_FORMAT
        and _stored_config(meta) == json.loads(json.dumps(asdict(cfg)))
        and (out / "backbone.pt").is_file()
        and (out / "hypernet.pt").is_file()
        and (not cfg.masked() or (out / MASK_FILE).is_file())
    )


def learn_mask(
    cfg: RunConfig,
    raw: Backbone,
    split: Split,
    log: Callable[[str], None] | None = None,
) -> tuple[MaskArtifact, MaskTrainReport]:
    """Learn the shared element mask of a random-mode run over its frozen seeded backbone."""
    layout = channel_layout(raw)
    mcfg = MaskTrainConfig(
        epochs=cfg.mask_epochs, lr=cfg.mask_lr, batch_size=cfg.mask_batch,
        valid_negatives=cfg.eval_negatives, valid_ranking=cfg.eval_ranking,
        keep=cfg.mask_fractions[cfg.mask_shared - 1] if cfg.mask_shared else 1.0,
        nested=tuple(f for i, f in enumerate(cfg.mask_fractions) if i != cfg.mask_shared - 1),
        seed=cfg.seed, balance=cfg.mask_balance,
    )
    scores, report = learn_scores(raw, layout, split, mcfg, log)
    artifact = build_artifact(
        raw, layout, scores, generator=cfg.generator, seed=cfg.seed,
        keep_fractions=cfg.mask_fractions, level_min_class=cfg.mask_levels,
        shared_min_class=cfg.mask_shared, balance=cfg.mask_balance,
    )
    return artifact, report


def prepare_run(
    cfg: RunConfig,
    out_dir: str | Path | None = None,
    log: Callable[[str], None] | None = None,
    device: torch.device | str = "cpu",
) -> Path:
    """Train (or reuse) the backbone and hypernetwork of `cfg`; write and return the run dir.

    OUT/run.json, OUT/backbone.pt (chord.checkpoint format), OUT/hypernet.pt. A directory that
    already holds a run of the same config is returned untouched. `device` is where training
    runs; it is not part of the config (files are saved from CPU copies and load anywhere).
    """
    out = Path(out_dir) if out_dir is not None else default_run_dir(cfg)
    if run_matches(out, cfg):
        if log:
            log(f"reusing run {out}")
        return out
    start = time.perf_counter()
    torch.manual_seed(cfg.seed)
    split = load_split(cfg)
    backbone, backbone_info = obtain_backbone(cfg, split, log, device)
    raw = backbone
    mask: MaskedSource | None = None
    mask_info: dict[str, Any] = {}
    mask_bytes = b""
    if cfg.masked():
        if log:
            log(f"learning the shared mask over the seeded backbone ({cfg.mask_epochs} epochs)")
        artifact, mask_report = learn_mask(cfg, raw, split, log)
        mask_bytes = encode_mask(artifact)
        backbone = masked_backbone(raw, artifact)
        mask = MaskedSource(raw, artifact)
        mask_info = {
            "file": MASK_FILE, "id": content_id(mask_bytes), "bytes": len(mask_bytes),
            "generator": artifact.header.generator,
            "weights_checksum": artifact.header.weights_checksum,
            "train": mask_report.to_dict(),
        }
    layout = channel_layout(backbone)
    net = HyperNetwork(
        layout, backbone.state_dim, dict(backbone.state_dict()), rank=cfg.rank,
        hidden=cfg.hidden, seed=cfg.seed,
    ).to(device)
    hyper: HyperNetwork | PriorImportance = net
    cost: LevelCost | None = None
    if cfg.allocation == "rd":
        quantize = quantize_keep_zeros if mask is not None else quantize_per_channel
        source = mask
        at_width = (None if source is None else
                    lambda name, _w, bits: source.width_weights(name, bits,
                                                                DEFAULT_TIERS.values()))
        table, share = calibrate(backbone, layout, split, seed=cfg.seed, quantize=quantize,
                                 at_width=at_width)
        cost = LevelCost.from_layout(table, layout)
        # Gate open from the start: a fresh hypernetwork moves log-costs by a few hundredths,
        # so training starts near the population rule and the heads get gradients at once.
        share_t = torch.from_numpy(share)  # cpu-ok: moved with the module below
        hyper = PriorImportance(net, share_t, gate=1.0).to(device)
        if log:
            log(f"calibrated the level cost of {len(layout.layers)} layers")
    elif cfg.prior == "fisher":
        mid = DEFAULT_TIERS["mid"]
        prior = standardize_prior(fisher_importance(backbone, layout, split, mid, seed=cfg.seed))
        hyper = PriorImportance(net, prior).to(device)
    tcfg = HyperTrainConfig(
        steps=cfg.hyper_steps, batch_size=cfg.hyper_batch, lr=cfg.hyper_lr, tau=cfg.tau,
        eval_every=cfg.hyper_eval_every, patience=cfg.hyper_patience,
        valid_users=cfg.hyper_valid_users, seed=cfg.seed,
        valid_negatives=cfg.eval_negatives, valid_ranking=cfg.eval_ranking,
    )
    report = train_hypernet(backbone, layout, hyper, split, tcfg, DEFAULT_TIERS, log, cost, mask)
    out.mkdir(parents=True, exist_ok=True)
    version = save_backbone(
        out / "backbone.pt", raw, {"dataset": split.name, "mode": cfg.mode, "seed": cfg.seed}
    )
    weights_checksum = version
    if mask is not None:
        (out / MASK_FILE).write_bytes(mask_bytes)
        version = weights_version(backbone)  # the shared-mask model: covers weights and mask
    save_hypernet(out / "hypernet.pt", hyper, version, cost)
    meta = {
        "format": RUN_FORMAT,
        "dataset": split.name,
        "backbone": cfg.backbone,
        "mode": cfg.mode,
        "seed": cfg.seed,
        "version": version,
        "weights_checksum": weights_checksum,
        "profile_dim": int(backbone.state_dim),
        "n_channels": int(layout.n_channels),
        "n_items": int(split.n_items),
        "n_users": int(split.n_users),
        "backbone_config": config_to_dict(backbone.config),
        "hyper_config": hyper.hyper_config(),
        "tiers": _tiers_json(DEFAULT_TIERS),
        "run_config": asdict(cfg),
        "backbone_train": backbone_info,
        "hyper_train": report.to_dict(),
        "mask": mask_info,
        "prepare_seconds": round(time.perf_counter() - start, 2),
        "prepare_device": str(torch.device(device)),
    }
    _atomic_json(out / "run.json", meta)
    return out


def save_hypernet(
    path: Path,
    hyper: HyperNetwork | PriorImportance,
    version: str,
    cost: LevelCost | None = None,
) -> None:
    """Write the hypernetwork's weights and shape, and the run's level cost if it has one
    (loadable with weights_only=True)."""
    payload: dict[str, Any] = {
        "format": HYPERNET_FORMAT,
        "version": version,
        "n_channels": hyper.n_channels,
        "config": hyper.hyper_config(),
        "state_dict": {k: v.detach().cpu() for k, v in hyper.state_dict().items()},
    }
    if cost is not None:
        payload["level_cost"] = torch.from_numpy(cost.layer_loss.copy())  # cpu-ok: saved
    tmp = path.with_suffix(".tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)


UINT32_MAX = 2**32 - 1
UINT64_MAX = 2**64 - 1
MAX_TIER_NAME_CHARS = 64  # GetStrategyRequest.tier is at most 64 characters (strategy.proto)
RUN_MODES = ("pretrained", "random")


def _run_int(meta: dict[str, Any], key: str, lo: int, hi: int, proto: str, where: Path) -> None:
    """run.json `key` is an integer in lo..hi (proto: the ModelSpec field type it is sent as)."""
    value = meta.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise RunError(
            f"{where}: {key} is {value!r}; it must be an integer in {lo}..{hi} (ModelSpec.{key} "
            f"is {proto}); rerun prepare_run to rewrite the run directory"
        )


def check_run_json(meta: dict[str, Any], where: Path) -> None:
    """Check the run.json fields the served ModelSpec copies against their proto types' ranges.

    So that a run no device could be told about is refused when it loads (`chord serve` says
    so in one line before binding) rather than failing every GetModelSpec. Raises RunError
    naming the file, the field, its value and the range. Tier level widths and budgets are
    checked by Tier when the tiers are built.
    """
    _run_int(meta, "seed", 0, UINT64_MAX, "uint64", where)
    _run_int(meta, "profile_dim", 1, UINT32_MAX, "uint32", where)
    if meta.get("mode") not in RUN_MODES:
        raise RunError(
            f"{where}: mode is {meta.get('mode')!r}; it must be one of {', '.join(RUN_MODES)}; "
            "rerun prepare_run to rewrite the run directory"
        )
    tiers = meta.get("tiers")
    if not isinstance(tiers, dict) or not tiers:
        raise RunError(f"{where}: tiers must be a non-empty object of tier name -> levels; "
                       "rerun prepare_run to rewrite the run directory")
    for name, tier in tiers.items():
        if not 1 <= len(name) <= MAX_TIER_NAME_CHARS or not name.isprintable():
            raise RunError(
                f"{where}: tier name {name[:MAX_TIER_NAME_CHARS]!r}... must be 1.."
                f"{MAX_TIER_NAME_CHARS} printable characters (GetStrategyRequest.tier)"
                if len(name) > MAX_TIER_NAME_CHARS else
                f"{where}: tier name {name!r} must be 1..{MAX_TIER_NAME_CHARS} printable "
                "characters (GetStrategyRequest.tier)"
            )
        if not isinstance(tier, dict) or not isinstance(tier.get("level_bits"), list):
            raise RunError(f"{where}: tier {name!r} must hold level_bits (a list of 4 widths) "
                           "and default_budget_bits")
        try:  # JSON numbers only: "4" or 4.7 would otherwise pass through int()
            for i, bits in enumerate(tier["level_bits"]):
                json_int(bits, f"tiers.{name}.level_bits[{i}]")
            json_float(tier.get("default_budget_bits"), f"tiers.{name}.default_budget_bits")
        except NumberError as exc:
            raise RunError(
                f"{where}: {exc}; rerun prepare_run to rewrite the run directory"
            ) from None


RUN_FILES = ("run.json", "backbone.pt", "hypernet.pt")  # what load_run reads


def missing_run_files(root: Path) -> list[str]:
    """The RUN_FILES that root lacks (all of them when root is not a directory)."""
    return [n for n in RUN_FILES if not (root / n).is_file()]


def load_run(path: str | Path, device: torch.device | str = "cpu") -> ChordRun:
    """Load a run directory written by prepare_run onto `device`; RunError says what is wrong."""
    root = Path(path)
    if not root.is_dir():
        raise RunError(f"run directory {root} does not exist; create it with prepare_run")
    missing = missing_run_files(root)
    if missing:
        raise RunError(
            f"run directory {root} lacks {', '.join(missing)}; rerun prepare_run to complete it"
        )
    try:
        meta = read_json(root / "run.json")
    except TextFileError as exc:
        raise RunError(f"{exc}; rerun prepare_run to rewrite the run directory") from None
    if not isinstance(meta, dict) or meta.get("format") != RUN_FORMAT:
        raise RunError(f"{root / 'run.json'} is not a {RUN_FORMAT} file")
    check_run_json(meta, root / "run.json")
    backbone, _ = load_backbone(root / "backbone.pt")
    version = weights_version(backbone)
    expected = meta.get("weights_checksum", meta.get("version"))
    if version != expected:
        raise RunError(f"{root}: backbone.pt has version {version} but run.json says {expected}")
    if meta["mode"] == "random":
        generator = (meta.get("mask") or {}).get("generator", TORCH_XAVIER)
        try:
            rebuilt = rebuild_backbone(generator, backbone.config, int(meta["seed"]))
        except MaskError as exc:
            raise RunError(f"{root}: {exc}") from exc
        if weights_version(rebuilt) != version:
            raise RunError(
                f"{root}: random-mode backbone does not match generator {generator} (config, "
                f"seed={meta['seed']}); the run was written by another model version"
            )
    backbone.eval()
    for p in backbone.parameters():
        p.requires_grad_(False)
    mask: MaskedSource | None = None
    if meta.get("mask"):
        try:
            artifact = decode_mask((root / MASK_FILE).read_bytes())
        except (OSError, MaskError) as exc:
            raise RunError(f"{root / MASK_FILE}: {exc}; rerun prepare_run to rewrite it") from exc
        if artifact.header.weights_checksum != version:
            raise RunError(
                f"{root / MASK_FILE} was learned over weights {artifact.header.weights_checksum},"
                f" backbone.pt is {version}"
            )
        mask = MaskedSource(backbone, artifact)
        backbone = masked_backbone(backbone, artifact)
        version = weights_version(backbone)
    if version != meta.get("version"):
        raise RunError(
            f"{root}: the served model has version {version} but run.json says "
            f"{meta.get('version')}"
        )
    try:
        payload = torch.load(root / "hypernet.pt", map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several unrelated types for a corrupt file
        raise RunError(  # never torch's text: it advises the unsafe weights_only=False
            f"cannot read {root / 'hypernet.pt'}: not a {HYPERNET_FORMAT} file (torch.load with "
            f"weights_only=True refused it: {type(exc).__name__})"
        ) from None
    if not isinstance(payload, dict) or payload.get("format") != HYPERNET_FORMAT:
        raise RunError(f"{root / 'hypernet.pt'} is not a {HYPERNET_FORMAT} file")
    if payload["version"] != version:
        raise RunError(
            f"{root}: hypernet.pt was trained for backbone {payload['version']}, "
            f"backbone.pt is {version}"
        )
    layout = channel_layout(backbone)
    hc = payload["config"]
    net = HyperNetwork(
        layout, int(hc["profile_dim"]), dict(backbone.state_dict()), rank=int(hc["rank"]),
        hidden=int(hc["hidden"]), seed=int(hc["seed"]),
    )
    hyper: HyperNetwork | PriorImportance = net
    if hc.get("prior"):  # the prior's values come with the state dict below
        hyper = PriorImportance(net, torch.zeros(net.n_channels))  # cpu-ok: moved below
    if hyper.n_channels != payload["n_channels"]:
        raise RunError(
            f"{root}: hypernet.pt covers {payload['n_channels']} channels, backbone has "
            f"{hyper.n_channels}"
        )
    hyper.load_state_dict(payload["state_dict"])
    cost = None
    if payload.get("level_cost") is not None:
        try:
            cost = LevelCost.from_layout(np.asarray(payload["level_cost"]), layout)
        except LevelCostError as exc:
            raise RunError(f"{root / 'hypernet.pt'}: {exc}") from exc
    backbone.to(device)
    if mask is not None:
        mask.raw.to(device)
    hyper.to(device)
    hyper.eval()
    return ChordRun(
        path=root, backbone=backbone, backbone_config=backbone.config, mode=meta["mode"],
        seed=int(meta["seed"]), version=version, layout=layout, importance_model=hyper,
        profile_dim=int(meta["profile_dim"]), tiers=_tiers_from_json(meta["tiers"]),
        dataset=meta["dataset"], meta=meta, level_cost=cost, mask=mask,
    )


def copy_run(src: str | Path, dst: str | Path) -> Path:
    """Copy a run directory (e.g. from the cache to a user-chosen place)."""
    shutil.copytree(src, dst, dirs_exist_ok=True)
    return Path(dst)
