"""Learning element scores over a frozen random backbone (edge-popup, Ramanujan et al. 2020)."""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch.func import functional_call

from chord.data import Split
from chord.evaluation import evaluate
from chord.masks.ranks import layer_gain, top_fraction_mask
from chord.models import Backbone
from chord.quant.layout import ChannelLayout
from chord.train import training_examples


@dataclass(frozen=True)
class MaskTrainConfig:
    """How the shared element scores are learned (defaults: the probe of METHOD.md C, tuned)."""

    epochs: int = 60  # passes over the training sequences at most
    batch_size: int = 32  # sequences per step
    lr: float = 0.05  # Adam on the scores
    keep: float = 0.5  # fraction of each layer's weights the shared mask keeps
    # Extra keep fractions sampled per step (nested masks: levels keep more or less of a
    # channel); an empty tuple trains the shared fraction only.
    nested: tuple[float, ...] = ()
    eval_every: int = 5  # epochs between validation checks
    patience: int = 4  # validation checks without improvement before stopping
    valid_users: int = 500  # validation users used for model selection
    valid_negatives: int = 100  # validation protocol (chord.protocol): sampled negatives
    valid_ranking: str = "sampled"  # sampled | full
    seed: int = 0
    # How each layer's kept weights are picked by score (chord.masks.ranks.BALANCES): over the
    # whole layer, or the same count from every channel (what Caser needs to rank at all).
    balance: str = "layer"


@dataclass
class MaskTrainReport:
    """The validation curve of score learning and the epoch that was kept."""

    curve: list[tuple[int, float]] = field(default_factory=list)  # (epoch, valid NDCG@10)
    best_epoch: int = 0
    best_ndcg10: float = float("nan")
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly form."""
        return {
            "curve": [[e, v] for e, v in self.curve], "best_epoch": self.best_epoch,
            "best_valid_ndcg10": self.best_ndcg10, "seconds": round(self.seconds, 2),
        }


def init_scores(backbone: Backbone, layout: ChannelLayout, seed: int) -> list[torch.Tensor]:
    """Seeded uniform scores, one tensor per layout layer shaped like its weight."""
    gen = torch.Generator().manual_seed(seed + 7)  # cpu-ok: moved with the backbone below
    params = dict(backbone.named_parameters())
    out = []
    for layer in layout.layers:
        w = params[layer.weight_name]
        s = torch.rand(w.shape, generator=gen).to(w.device)
        out.append(s.requires_grad_(True))
    return out


def masked_params(
    backbone: Backbone,
    layout: ChannelLayout,
    scores: list[torch.Tensor],
    keep: float,
    straight_through: bool = True,
    balance: str = "layer",
) -> dict[str, torch.Tensor]:
    """Weights W * mask * gain for every layer (top `keep` of each layer by score).

    With straight_through the gradient reaches the scores as if the mask were the identity
    (edge-popup): d loss / d s = d loss / d w_eff * W * gain. `balance`: how the top is
    taken (chord.masks.ranks.BALANCES).
    """
    params = dict(backbone.named_parameters())
    out = {}
    for layer, s in zip(layout.layers, scores, strict=True):
        w = params[layer.weight_name].detach()
        hard = top_fraction_mask(s.detach(), keep, balance).to(w.dtype)
        m = hard + s - s.detach() if straight_through else hard
        out[layer.weight_name] = w * m * layer_gain(keep)
    return out


def learn_scores(
    backbone: Backbone,
    layout: ChannelLayout,
    split: Split,
    cfg: MaskTrainConfig,
    log: Callable[[str], None] | None = None,
) -> tuple[list[torch.Tensor], MaskTrainReport]:
    """Element scores (one float tensor per layer, detached) and how their training went.

    The backbone stays frozen; every step keeps the top `cfg.keep` (or a sampled nested
    fraction) of each layer's weights by score and minimises the next-item cross-entropy over
    the catalogue. The scores of the best validation NDCG@10 (shared fraction) are returned.
    """
    start = time.perf_counter()
    device = next(backbone.parameters()).device
    for p in backbone.parameters():
        p.requires_grad_(False)
    scores = init_scores(backbone, layout, cfg.seed)
    opt = torch.optim.Adam(scores, lr=cfg.lr)
    inputs, targets = training_examples(split.train, backbone.config)
    shuffle = torch.Generator().manual_seed(cfg.seed + 1)  # cpu-ok: CPU indices
    rng = np.random.default_rng(cfg.seed + 2)
    fractions = (cfg.keep, *cfg.nested)
    vusers = np.arange(len(split.valid))
    if len(vusers) > cfg.valid_users:
        vusers = np.sort(np.random.default_rng(cfg.seed + 3).choice(vusers, cfg.valid_users, False))

    def validate() -> float:
        with torch.no_grad():
            params = masked_params(backbone, layout, scores, cfg.keep, straight_through=False,
                                   balance=cfg.balance)

            def score_fn(
                seqs: torch.Tensor, cands: torch.Tensor | None, users: torch.Tensor
            ) -> torch.Tensor:
                named = {f"inner.{k}": v for k, v in params.items()}
                if cands is None:
                    return functional_call(_Method(backbone, "score_all"), named, (seqs,),
                                           strict=False)
                return functional_call(_Method(backbone, "score_candidates"), named,
                                       (seqs, cands), strict=False)

            res = evaluate(score_fn, split, "valid", full=cfg.valid_ranking == "full",
                           seed=cfg.seed, users=vusers, max_len=backbone.max_len, device=device,
                           n_negatives=cfg.valid_negatives)
        return float(res["NDCG@10"])

    report = MaskTrainReport()
    best = [s.detach().clone() for s in scores]
    bad = 0
    torch.manual_seed(cfg.seed)  # dropout
    for epoch in range(1, cfg.epochs + 1):
        backbone.train()
        order = torch.randperm(len(inputs), generator=shuffle)  # cpu-ok
        for b in range(0, len(order), cfg.batch_size):
            idx = order[b : b + cfg.batch_size]
            keep = float(fractions[int(rng.integers(len(fractions)))])
            params = masked_params(backbone, layout, scores, keep, balance=cfg.balance)
            loss = functional_call(
                _Method(backbone, "training_loss"), {f"inner.{k}": v for k, v in params.items()},
                (inputs[idx].to(device), targets[idx].to(device)), strict=False,
            )
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        if epoch % cfg.eval_every == 0 or epoch == cfg.epochs:
            backbone.eval()
            value = validate()
            report.curve.append((epoch, value))
            if log:
                log(f"mask epoch {epoch} loss {float(loss.detach()):.4f} valid NDCG@10 {value:.4f}")
            if math.isnan(report.best_ndcg10) or value > report.best_ndcg10 + 1e-6:
                report.best_ndcg10, report.best_epoch, bad = value, epoch, 0
                best = [s.detach().clone() for s in scores]
            else:
                bad += 1
                if bad >= cfg.patience:
                    break
    backbone.eval()
    report.seconds = time.perf_counter() - start
    return [copy.deepcopy(s) for s in best], report


class _Method(torch.nn.Module):
    """A backbone method as forward(), so functional_call can swap the backbone's weights."""

    def __init__(self, backbone: Backbone, method: str) -> None:
        super().__init__()
        self.inner = backbone
        self.method = method

    def forward(self, *args: torch.Tensor) -> torch.Tensor:
        """backbone.METHOD(*args)."""
        out: torch.Tensor = getattr(self.inner, self.method)(*args)
        return out


__all__ = ["MaskTrainConfig", "MaskTrainReport", "learn_scores", "masked_params"]
