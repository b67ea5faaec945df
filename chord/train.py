"""Full-precision backbone training with early stopping on validation NDCG@10."""

from __future__ import annotations

import copy
import dataclasses
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from chord.checkpoint import save_backbone
from chord.config import BackboneConfig, CaserConfig, SASRecConfig, config_to_dict
from chord.data import Split, leave_one_out, load_dataset, pad_sequences
from chord.divergence import check_finite_weights, finite_loss
from chord.evaluation import evaluate
from chord.jsonfile import write_json
from chord.models import Backbone, build_backbone
from chord.models.base import LOSSES
from chord.protocol import Protocol, ProtocolError, check_protocol

BACKBONES = ("sasrec", "caser")
# The metric groups a training run reports (sampled ones only under sampled ranking).
METRIC_KEYS = ("valid", "test", "valid_full", "test_full")

# ML-1M histories are long (about 165 items on average); SASRec's reference setting for it
# reads the last 200. Every other dataset uses the method default (50). A knob: TrainConfig.max_len.
DATASET_MAX_LEN = {"ml-1m": 200}


class TrainConfigError(ValueError):
    """A training option is out of range."""


@dataclass(frozen=True)
class TrainConfig:
    """How to train one full-precision backbone."""

    dataset: str  # packaged name (ml-100k, ml-1m) or a path to an interaction file
    backbone: str = "sasrec"  # sasrec | caser
    fmt: str = "auto"  # file format for a path: auto|grouplens|movielens-dat|inter|csv
    min_interactions: int = 5  # users with fewer interactions are dropped
    epochs: int = 200  # upper bound; early stopping usually ends sooner
    batch_size: int = 128
    lr: float = 1e-3  # Adam learning rate
    weight_decay: float = 0.0
    loss: str = "ce"  # ce = cross-entropy over the catalogue; bce = one sampled negative
    patience: int = 5  # evaluations without a better validation NDCG@10 before stopping
    eval_every: int = 1  # epochs between validation runs
    seed: int = 0  # model init, batch order, dropout and evaluation negatives
    max_len: int | None = None  # None: DATASET_MAX_LEN for SASRec, else the model default
    hidden: int | None = None  # SASRec hidden / Caser embedding width; None = model default
    dropout: float | None = None  # None = model default
    n_negatives: int = 100  # sampled negatives per evaluated user (ranking="sampled")
    ranking: str = "sampled"  # sampled | full: how validation and test metrics rank the target
    eval_batch_size: int = 512
    max_train_users: int | None = None  # keep only the first N users (fast smoke runs)
    time_budget_s: float | None = None  # stop after the epoch that crosses this wall time
    progress: bool = True  # tqdm bar with loss and validation metrics

    def __post_init__(self) -> None:
        """Reject impossible options with a message that says what to send."""
        if self.backbone not in BACKBONES:
            raise TrainConfigError(f"backbone must be one of {BACKBONES}, got {self.backbone!r}")
        if self.loss not in LOSSES:
            raise TrainConfigError(f"loss must be one of {LOSSES}, got {self.loss!r}")
        for name in ("epochs", "batch_size", "patience", "eval_every", "eval_batch_size"):
            if getattr(self, name) < 1:
                raise TrainConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.seed < 0:
            raise TrainConfigError(f"seed must be >= 0, got {self.seed}")
        if not math.isfinite(self.lr) or self.lr <= 0:
            raise TrainConfigError(f"lr must be a finite number > 0, got {self.lr}")
        if not math.isfinite(self.weight_decay) or self.weight_decay < 0:
            raise TrainConfigError(
                f"weight_decay must be a finite number >= 0, got {self.weight_decay}"
            )
        if self.dropout is not None and not 0.0 <= self.dropout < 1.0:
            raise TrainConfigError(f"dropout must be in [0, 1), got {self.dropout}")
        for name in ("max_len", "hidden", "max_train_users"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise TrainConfigError(f"{name} must be >= 1, got {value}")
        try:
            Protocol(self.ranking, self.n_negatives)
        except ProtocolError as exc:
            raise TrainConfigError(str(exc)) from None

    @property
    def protocol(self) -> Protocol:
        """The evaluation protocol of validation and test metrics."""
        return Protocol(self.ranking, self.n_negatives)


@dataclass
class TrainResult:
    """A trained backbone (best validation weights, eval mode) and its measurements."""

    model: Backbone
    metrics: dict[str, Any]
    history: list[dict[str, float]] = field(default_factory=list)


def backbone_config_for(cfg: TrainConfig, n_items: int, dataset_name: str) -> BackboneConfig:
    """The architecture config implied by a training config and the dataset."""
    if cfg.backbone == "sasrec":
        sas: dict[str, Any] = {"max_len": cfg.max_len or DATASET_MAX_LEN.get(dataset_name, 50)}
        if cfg.hidden is not None:
            sas["hidden"] = cfg.hidden
        if cfg.dropout is not None:
            sas["dropout"] = cfg.dropout
        return SASRecConfig(n_items=n_items, **sas)
    cas: dict[str, Any] = {}
    if cfg.max_len is not None:
        cas["max_len"] = cfg.max_len
    if cfg.hidden is not None:
        cas["embed"] = cfg.hidden
    if cfg.dropout is not None:
        cas["dropout"] = cfg.dropout
    return CaserConfig(n_items=n_items, **cas)


def training_examples(
    train: list[np.ndarray], backbone: BackboneConfig
) -> tuple[torch.Tensor, torch.Tensor]:
    """(inputs, targets) of one epoch.

    SASRec: one row per user, input = seq[:-1] and target = seq[1:] (every position trains).
    Caser: one row per position t >= 1 of each sequence: the previous `max_len` items -> seq[t].
    """
    length = backbone.max_len
    if isinstance(backbone, SASRecConfig):
        rows = [s for s in train if len(s) >= 2]
        return pad_sequences([s[:-1] for s in rows], length), pad_sequences(
            [s[1:] for s in rows], length
        )
    windows: list[np.ndarray] = []
    targets: list[np.ndarray] = []
    for seq in train:
        if len(seq) < 2:
            continue
        padded = np.concatenate([np.zeros(length, np.int64), seq])
        idx = np.arange(1, len(seq))[:, None] + np.arange(length)[None, :]
        windows.append(padded[idx])
        targets.append(seq[1:])
    if not windows:
        empty = torch.zeros((0, length), dtype=torch.long)  # cpu-ok: examples live on the CPU
        return empty, torch.zeros(0, dtype=torch.long)  # cpu-ok
    windows_t = torch.from_numpy(np.concatenate(windows))  # cpu-ok: batches are moved when used
    return windows_t, torch.from_numpy(np.concatenate(targets))  # cpu-ok


def _restrict(split: Split, n_users: int) -> Split:
    """The first `n_users` users of a split (smoke runs)."""
    keep = np.arange(min(n_users, split.n_users))
    return dataclasses.replace(
        split, train=split.train[: len(keep)], valid=split.valid.subset(keep),
        test=split.test.subset(keep), seen=split.seen[: len(keep)],
        user_labels=None if split.user_labels is None else split.user_labels[: len(keep)],
    )


def train_backbone(
    cfg: TrainConfig, split: Split | None = None, device: torch.device | str = "cpu"
) -> TrainResult:
    """Train, early-stop on validation NDCG@10, and evaluate the best weights.

    Loads and splits `cfg.dataset` unless a split is given. Deterministic for a fixed seed
    on a fixed machine and thread count. Trains on `device`; the model is returned there.
    Raises DivergedError (chord.divergence) when a loss or a weight becomes NaN or infinite, so
    no diverged epoch is ever evaluated, kept as the best, or written out.
    """
    if split is None:
        split = leave_one_out(load_dataset(cfg.dataset, cfg.fmt, cfg.min_interactions))
    if cfg.max_train_users is not None:
        split = _restrict(split, cfg.max_train_users)
    protocol = cfg.protocol
    check_protocol(protocol, split.n_items, split.seen, split.user_labels, split.name)
    bcfg = backbone_config_for(cfg, split.n_items, split.name)
    model = build_backbone(bcfg, cfg.seed).to(device)
    torch.manual_seed(cfg.seed)  # dropout
    shuffle = torch.Generator().manual_seed(cfg.seed + 1)  # cpu-ok: CPU indices, CPU examples
    # BCE draws its negatives on the batch's device, so the generator must live there.
    negatives = torch.Generator(device=device).manual_seed(cfg.seed + 2)
    inputs, targets = training_examples(split.train, bcfg)
    if len(inputs) == 0:
        raise TrainConfigError(f"{split.name}: no training examples (every history is too short)")
    optimizer = torch.optim.Adam(
        model.parameters(), lr=cfg.lr, betas=(0.9, 0.98), weight_decay=cfg.weight_decay
    )

    def validate() -> dict[str, float]:
        return evaluate(
            model, split, "valid", full=protocol.full, seed=cfg.seed,
            n_negatives=cfg.n_negatives, batch_size=cfg.eval_batch_size,
        )

    hint = f"lower the learning rate (lr={cfg.lr:g}; default 1e-3) and train again"
    best_ndcg, best_epoch, best_state, stale = -1.0, 0, copy.deepcopy(model.state_dict()), 0
    history: list[dict[str, float]] = []
    start = time.perf_counter()
    bar = tqdm(range(1, cfg.epochs + 1), desc=f"{cfg.backbone}/{split.name}",
               disable=not cfg.progress, unit="epoch")
    for epoch in bar:
        model.train()
        order = torch.randperm(len(inputs), generator=shuffle)  # cpu-ok
        total, count = 0.0, 0
        for b in range(0, len(order), cfg.batch_size):
            idx = order[b : b + cfg.batch_size]
            loss = model.training_loss(inputs[idx].to(device), targets[idx].to(device),
                                       loss=cfg.loss, generator=negatives)
            value = finite_loss(loss, f"epoch {epoch} batch {b // cfg.batch_size + 1}", hint)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += value * len(idx)
            count += len(idx)
        check_finite_weights(model, f"the end of epoch {epoch}", hint)
        record: dict[str, float] = {"epoch": epoch, "loss": total / count}
        if epoch % cfg.eval_every == 0 or epoch == cfg.epochs:
            valid = validate()
            record.update({f"valid_{k}": v for k, v in valid.items()})
            if valid["NDCG@10"] > best_ndcg:
                best_ndcg, best_epoch, stale = valid["NDCG@10"], epoch, 0
                best_state = copy.deepcopy(model.state_dict())
            else:
                stale += 1
            bar.set_postfix(loss=f"{record['loss']:.4f}", hr10=f"{valid['HR@10']:.4f}",
                            ndcg10=f"{valid['NDCG@10']:.4f}", best=best_epoch)
        history.append(record)
        if stale >= cfg.patience:
            break
        if cfg.time_budget_s is not None and time.perf_counter() - start > cfg.time_budget_s:
            break
    bar.close()
    train_seconds = time.perf_counter() - start
    model.load_state_dict(best_state)
    model.eval()
    kw: dict[str, Any] = {"seed": cfg.seed, "batch_size": cfg.eval_batch_size}
    sampled: dict[str, Any] = {}
    if not protocol.full:
        sampled = {
            "valid": evaluate(model, split, "valid", n_negatives=cfg.n_negatives, **kw),
            "test": evaluate(model, split, "test", n_negatives=cfg.n_negatives, **kw),
        }
    metrics: dict[str, Any] = {
        "dataset": split.name,
        "backbone": cfg.backbone,
        "n_users": split.n_users,
        "n_items": split.n_items,
        "protocol": {"ranking": protocol.ranking,
                     "n_negatives": None if protocol.full else protocol.n_negatives},
        **sampled,
        **({"valid_full": evaluate(model, split, "valid", full=True, **kw)} if protocol.full
           else {}),
        "test_full": evaluate(model, split, "test", full=True, **kw),
        "train_seconds": round(train_seconds, 2),
        "epochs_run": len(history),
        "best_epoch": best_epoch,
        "backbone_config": config_to_dict(bcfg),
        "train_config": dataclasses.asdict(cfg),
    }
    return TrainResult(model=model, metrics=metrics, history=history)


def run_training(cfg: TrainConfig, out_dir: str | Path) -> TrainResult:
    """Train and write OUT/backbone.pt (weights, config, version) and OUT/metrics.json."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    result = train_backbone(cfg)
    version = save_backbone(
        out / "backbone.pt", result.model,
        {"dataset": result.metrics["dataset"], "mode": "pretrained", "seed": cfg.seed,
         "metrics": {k: result.metrics[k] for k in METRIC_KEYS if k in result.metrics}},
    )
    result.metrics["version"] = version
    write_json(out / "metrics.json", result.metrics)
    return result


__all__ = [
    "BACKBONES",
    "DATASET_MAX_LEN",
    "TrainConfig",
    "TrainConfigError",
    "TrainResult",
    "backbone_config_for",
    "run_training",
    "train_backbone",
    "training_examples",
]
