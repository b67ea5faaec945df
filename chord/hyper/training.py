"""End-to-end training of the hypernetwork through a frozen backbone with relaxed level choice."""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from chord.data import Split
from chord.divergence import finite_loss
from chord.evaluation import evaluate
from chord.hyper.hypernet import HyperNetwork
from chord.hyper.personal import LevelBank, batched_call, compact_items, module_device
from chord.hyper.prior import PriorImportance
from chord.hyper.scoring import PersonalScorer, fast_assign
from chord.levels import DEFAULT_TIERS, LevelCost, Tier
from chord.levels.relaxed import TorchLevelCost, expected_bits, relaxed_masks, relaxed_rd_masks

# (tier, lowest budget, highest budget) sampled during training: one hypernetwork, all tiers.
DEFAULT_BUDGET_SAMPLING: tuple[tuple[str, float, float], ...] = (
    ("low", 1.5, 3.0),
    ("mid", 2.5, 5.0),
    ("high", 4.5, 7.0),
)


@dataclass(frozen=True)
class HyperTrainConfig:
    """How the hypernetwork is trained and selected."""

    steps: int = 1500  # optimizer steps at most
    batch_size: int = 64  # users per step
    lr: float = 1e-3
    weight_decay: float = 1e-5
    n_negatives: int = 100  # sampled negatives per training example
    tau: float = 0.5  # temperature of the relaxed level choice (in std units of importance)
    budget_penalty: float = 1.0  # weight of (expected bits - budget)^2
    eval_every: int = 100  # steps between validation checks
    patience: int = 4  # validation checks without improvement before stopping
    valid_users: int = 400  # validation users used for model selection
    valid_negatives: int = 100  # validation protocol (chord.protocol): sampled negatives
    valid_ranking: str = "sampled"  # sampled | full
    valid_tier: str = "mid"
    valid_budget: float = 3.0
    budget_sampling: tuple[tuple[str, float, float], ...] = DEFAULT_BUDGET_SAMPLING
    seed: int = 0


@dataclass
class HyperTrainReport:
    """What training did: the validation curve, the chosen step and the time it took."""

    curve: list[tuple[int, float]] = field(default_factory=list)  # (step, valid NDCG@10)
    best_step: int = 0
    best_ndcg10: float = float("nan")
    initial_ndcg10: float = float("nan")
    steps_run: int = 0
    seconds: float = 0.0
    losses: list[float] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly form."""
        return {
            "curve": [[s, v] for s, v in self.curve],
            "best_step": self.best_step,
            "best_valid_ndcg10": self.best_ndcg10,
            "initial_valid_ndcg10": self.initial_ndcg10,
            "steps_run": self.steps_run,
            "seconds": round(self.seconds, 2),
        }


def pad_left(seqs: Sequence[np.ndarray], length: int) -> torch.Tensor:
    """Left-pad (and cut to the last `length`) item sequences into a LongTensor [B, length]."""
    out = np.zeros((len(seqs), length), dtype=np.int64)
    for i, s in enumerate(seqs):
        tail = np.asarray(s, dtype=np.int64)[-length:]
        if len(tail):
            out[i, length - len(tail) :] = tail
    return torch.from_numpy(out)  # cpu-ok: callers move batches to their device


def sample_examples(
    train_seqs: Sequence[np.ndarray], batch: int, max_len: int, rng: np.random.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """A batch of (history, next item) pairs cut at random points of random users' sequences."""
    users = [i for i, s in enumerate(train_seqs) if len(s) >= 2]
    picked = rng.choice(len(users), size=batch, replace=len(users) < batch)
    hists, targets = [], []
    for j in picked:
        s = train_seqs[users[j]]
        t = int(rng.integers(1, len(s)))
        hists.append(s[max(0, t - max_len) : t])
        targets.append(int(s[t]))
    return pad_left(hists, max_len), torch.tensor(targets, dtype=torch.long)  # cpu-ok: moved


def train_hypernet(
    backbone: nn.Module,
    layout: Any,
    hypernet: HyperNetwork | PriorImportance,
    split: Split,
    cfg: HyperTrainConfig,
    tiers: dict[str, Tier] | None = None,
    log: Callable[[str], None] | None = None,
    cost: LevelCost | None = None,
) -> HyperTrainReport:
    """Train `hypernet` in place on training sequences; keep the best validation state.

    Each step samples one (tier, budget), assigns hard levels with assign_levels (the same
    rule as inference: rate-distortion with `cost`, else quotas), relaxes them around the
    per-user thresholds (straight-through),
    builds per-user weights sum_k m_k Q_k(W) and minimises the next-item cross-entropy over
    the target and sampled negatives plus a penalty on expected bits minus the budget.
    Runs on the backbone's device (the hypernetwork is moved there); random draws are made on
    the CPU, so a seed gives the same batches on every device.
    """
    tiers = tiers or DEFAULT_TIERS
    start = time.perf_counter()
    device = module_device(backbone)
    hypernet.to(device)
    rng = np.random.default_rng(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)  # cpu-ok: draws on CPU, same on any device
    n_items = int(backbone.n_items)  # type: ignore[arg-type]
    max_len = int(backbone.max_len)  # type: ignore[arg-type]
    backbone.eval()
    for p in backbone.parameters():
        p.requires_grad_(False)
    sizes_np = np.asarray(layout.channel_sizes(), dtype=np.int64)
    sizes_t = torch.from_numpy(sizes_np).to(device)
    sizes = sizes_t.float()
    rd = TorchLevelCost(cost, sizes_t) if cost is not None else None
    banks = {name: LevelBank(backbone, layout, tiers[name]) for name, _, _ in cfg.budget_sampling}
    if cfg.valid_tier not in banks:
        banks[cfg.valid_tier] = LevelBank(backbone, layout, tiers[cfg.valid_tier])
    train_seqs = split.train
    vusers = np.arange(len(split.valid))
    if len(vusers) > cfg.valid_users:
        vusers = np.sort(np.random.default_rng(cfg.seed + 1).choice(vusers, cfg.valid_users, False))

    def validate() -> float:
        hypernet.eval()
        scorer = PersonalScorer(
            backbone, layout, hypernet.importance, tiers[cfg.valid_tier], cfg.valid_budget,
            bank=banks[cfg.valid_tier], exact=False, cost=cost,
        )
        value = evaluate(
            scorer, split, "valid", full=cfg.valid_ranking == "full", seed=cfg.seed,
            users=vusers, max_len=max_len, device=device, n_negatives=cfg.valid_negatives,
        )
        hypernet.train()
        return float(value["NDCG@10"])

    report = HyperTrainReport()
    report.initial_ndcg10 = validate()
    report.curve.append((0, report.initial_ndcg10))
    best_state = copy.deepcopy(hypernet.state_dict())
    report.best_ndcg10 = report.initial_ndcg10
    opt = torch.optim.AdamW(hypernet.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    weights = np.array([hi - lo for _, lo, hi in cfg.budget_sampling])
    bad = 0
    hypernet.train()
    for step in range(1, cfg.steps + 1):
        k = int(rng.choice(len(cfg.budget_sampling), p=weights / weights.sum()))
        tier_name, lo, hi = cfg.budget_sampling[k]
        tier = tiers[tier_name]
        budget = float(rng.uniform(lo, hi))
        seqs, targets = sample_examples(train_seqs, cfg.batch_size, max_len, rng)
        # cpu-ok: drawn on the CPU generator, moved with the candidates below
        negs = torch.randint(1, n_items + 1, (len(targets), cfg.n_negatives), generator=gen)
        seqs = seqs.to(device)
        cands = torch.cat([targets[:, None], negs], dim=1).to(device)
        with torch.no_grad():
            profiles = backbone.encode(seqs)  # type: ignore[operator]
        imp = hypernet(profiles)
        if rd is not None:
            hard, keys, threshold = rd.assign(imp, tier, budget)
            masks, probs = relaxed_rd_masks(keys, hard, threshold, cfg.tau, rd.step_bits(tier))
        else:
            hard = fast_assign(imp, sizes_t, tier, budget)
            masks, probs = relaxed_masks(imp, hard, cfg.tau)
        ids, lseqs, lcands = compact_items(seqs, cands)
        params = banks[tier_name].mix(masks, ids)
        scores = batched_call(backbone, params, "score_candidates", lseqs, lcands)
        rec = F.cross_entropy(scores, torch.zeros(len(targets), dtype=torch.long, device=device))
        bits = expected_bits(probs, sizes, tier)
        pen = ((bits - budget) ** 2).mean()
        loss = rec + cfg.budget_penalty * pen
        finite_loss(loss, f"hypernetwork step {step}",
                    f"lower the hypernetwork learning rate (lr={cfg.lr:g}) and train again")
        opt.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(hypernet.parameters(), 5.0)
        opt.step()
        report.losses.append(float(rec.detach()))
        report.steps_run = step
        if step % cfg.eval_every == 0 or step == cfg.steps:
            value = validate()
            report.curve.append((step, value))
            if log:
                recent = float(np.mean(report.losses[-cfg.eval_every :]))
                log(f"step {step} loss {recent:.4f} valid NDCG@10 {value:.4f}")
            if value > report.best_ndcg10 + 1e-6 or math.isnan(report.best_ndcg10):
                report.best_ndcg10, report.best_step, bad = value, step, 0
                best_state = copy.deepcopy(hypernet.state_dict())
            else:
                bad += 1
                if bad >= cfg.patience:
                    break
    hypernet.load_state_dict(best_state)
    hypernet.eval()
    report.seconds = time.perf_counter() - start
    return report
