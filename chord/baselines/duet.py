"""DUET-style baseline: a cloud hypernetwork generates one device layer's weights per user."""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from chord.data import Split
from chord.divergence import finite_loss
from chord.evaluation import evaluate
from chord.hyper.hypernet import layout_layers
from chord.hyper.personal import batched_call, module_device, sync
from chord.hyper.training import sample_examples
from chord.models import Backbone


@dataclass(frozen=True)
class DuetConfig:
    """Training of the weight generator."""

    steps: int = 600
    batch_size: int = 64
    lr: float = 1e-3
    hidden: int = 64
    n_negatives: int = 100
    eval_every: int = 100
    patience: int = 3
    valid_users: int = 400
    valid_negatives: int = 100  # validation protocol (chord.protocol): sampled negatives
    valid_ranking: str = "sampled"  # sampled | full
    seed: int = 0


def generated_layer(layout: Any) -> str:
    """The layer DUET generates: the last Linear (SASRec: last block's FFN output; Caser: fc)."""
    linears = [layer for layer in layout_layers(layout) if layer.kind == "linear"]
    if not linears:
        raise ValueError("the backbone has no nn.Linear layer for DUET to generate")
    return f"{linears[-1].name}.weight"


class DuetGenerator(nn.Module):
    """Profile -> full-precision weights of one layer, as a residual on the frozen weight."""

    def __init__(self, profile_dim: int, weight: torch.Tensor, hidden: int, seed: int) -> None:
        """Zero-initialised output head, so training starts from the shared weight."""
        super().__init__()
        self.shape = tuple(weight.shape)
        self.register_buffer("base", weight.detach().clone())
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            self.net = nn.Sequential(
                nn.LayerNorm(profile_dim, elementwise_affine=False),
                nn.Linear(profile_dim, hidden),
                nn.GELU(),
                nn.Linear(hidden, int(weight.numel())),
            )
        last = self.net[-1]
        assert isinstance(last, nn.Linear)
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)

    @property
    def n_generated(self) -> int:
        """Parameters generated (and transmitted) per user."""
        return int(np.prod(self.shape))

    def forward(self, profiles: torch.Tensor) -> torch.Tensor:
        """[B, d] -> [B, *weight.shape] per-user weights."""
        base: torch.Tensor = self.base  # type: ignore[assignment]
        return base + self.net(profiles).view(-1, *self.shape) * 0.1


class DuetScorer:
    """ScoreFn: each user's generated layer in fp32 on top of a (quantized) shared backbone."""

    def __init__(
        self, base_model: Backbone, profiler: Backbone, gen: DuetGenerator, key: str
    ) -> None:
        """`profiler` is the fp32 backbone whose encoding is the profile sent to the cloud."""
        self.base_model = base_model
        self.profiler = profiler
        self.gen = gen
        self.key = key
        self.device = module_device(base_model)
        self.adapt_ms: list[float] = []

    @torch.no_grad()
    def __call__(
        self,
        seqs: torch.Tensor,
        candidates: torch.Tensor | None = None,
        users: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Per-user generated weights, scored in one batched pass."""
        seqs = seqs.to(self.device)
        if candidates is not None:
            candidates = candidates.to(self.device)
        sync(self.device)
        start = time.perf_counter()
        weights = self.gen(self.profiler.encode(seqs))
        sync(self.device)
        self.adapt_ms.append((time.perf_counter() - start) * 1e3 / max(1, seqs.shape[0]))
        params = {self.key: weights}
        if candidates is None:
            return batched_call(self.base_model, params, "score_all", seqs)
        return batched_call(self.base_model, params, "score_candidates", seqs, candidates)


def train_duet(
    base_model: Backbone,
    profiler: Backbone,
    layout: Any,
    split: Split,
    cfg: DuetConfig,
    log: Callable[[str], None] | None = None,
) -> tuple[DuetGenerator, str, dict[str, Any]]:
    """Train a generator for the last Linear layer through the frozen (quantized) backbone.

    Runs on the base model's device; random draws are made on the CPU (same batches anywhere).
    """
    key = generated_layer(layout)
    device = module_device(base_model)
    weight = dict(profiler.state_dict())[key]
    gen = DuetGenerator(int(profiler.state_dim), weight, cfg.hidden, cfg.seed).to(device)
    opt = torch.optim.Adam(gen.parameters(), lr=cfg.lr)
    rng = np.random.default_rng(cfg.seed)
    tgen = torch.Generator().manual_seed(cfg.seed)  # cpu-ok: draws on CPU, same on any device
    n_items, max_len = int(base_model.n_items), int(base_model.max_len)
    vusers = np.arange(len(split.valid))
    if len(vusers) > cfg.valid_users:
        vusers = np.sort(np.random.default_rng(cfg.seed + 1).choice(vusers, cfg.valid_users, False))
    scorer = DuetScorer(base_model, profiler, gen, key)

    def validate() -> float:
        gen.eval()
        value = evaluate(scorer, split, "valid", full=cfg.valid_ranking == "full", seed=cfg.seed,
                         users=vusers, max_len=max_len, n_negatives=cfg.valid_negatives)
        gen.train()
        return float(value["NDCG@10"])

    best, best_state, bad, curve = validate(), copy.deepcopy(gen.state_dict()), 0, []
    curve.append((0, best))
    start = time.perf_counter()
    for step in range(1, cfg.steps + 1):
        seqs, targets = sample_examples(split.train, cfg.batch_size, max_len, rng)
        # cpu-ok: drawn on the CPU generator, moved with the candidates below
        negs = torch.randint(1, n_items + 1, (len(targets), cfg.n_negatives), generator=tgen)
        seqs = seqs.to(device)
        cands = torch.cat([targets[:, None], negs], dim=1).to(device)
        with torch.no_grad():
            profiles = profiler.encode(seqs)
        scores = batched_call(base_model, {key: gen(profiles)}, "score_candidates", seqs, cands)
        zeros = torch.zeros(len(targets), dtype=torch.long, device=device)
        loss = F.cross_entropy(scores, zeros)
        finite_loss(loss, f"DUET generator step {step}",
                    f"lower the DUET learning rate (lr={cfg.lr:g}) and train again")
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % cfg.eval_every == 0 or step == cfg.steps:
            value = validate()
            curve.append((step, value))
            if log:
                log(f"duet step {step} loss {float(loss.detach()):.4f} valid NDCG@10 {value:.4f}")
            if value > best:
                best, best_state, bad = value, copy.deepcopy(gen.state_dict()), 0
            else:
                bad += 1
                if bad >= cfg.patience:
                    break
    gen.load_state_dict(best_state)
    gen.eval()
    info = {"curve": curve, "best_valid_ndcg10": best, "seconds": time.perf_counter() - start}
    return gen, key, info
