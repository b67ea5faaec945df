"""On-device fine-tuning baseline: a few backpropagation steps per user, then uniform PTQ."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.func import functional_call

from chord.hyper.hypernet import layout_layers
from chord.hyper.personal import MethodShim, module_device, sync
from chord.models import Backbone
from chord.quant import quantize_per_channel
from chord.train import training_examples


@dataclass(frozen=True)
class FinetuneConfig:
    """How each user's copy of the backbone is adapted on the device."""

    steps: int = 5  # optimizer steps on the user's own history
    lr: float = 5e-3  # Adam learning rate
    bits: int = 3  # uniform bit-width applied after adaptation


class FinetuneScorer:
    """ScoreFn that adapts the backbone to each user's history, quantizes it, then scores.

    The history is the evaluated one (what the device holds); the next-item loss trains on it
    with chord.train's examples. Dropout is off so runs are deterministic. Records the
    wall-clock adaptation time (fine-tuning + quantization) of every user, on the backbone's
    device (`self.device`).
    """

    def __init__(self, backbone: Backbone, layout: Any, cfg: FinetuneConfig) -> None:
        """Bind a frozen backbone (left untouched) and the adaptation settings."""
        self.backbone = backbone
        self.cfg = cfg
        self.keys = [f"{layer.name}.weight" for layer in layout_layers(layout)]
        self.device = module_device(backbone)
        self.base = {k: v.detach() for k, v in backbone.named_parameters()}
        self.loss_shim = MethodShim(backbone, "training_loss")
        self.cand_shim = MethodShim(backbone, "score_candidates")
        self.all_shim = MethodShim(backbone, "score_all")
        self.adapt_ms: list[float] = []

    def adapt(self, history: np.ndarray) -> dict[str, torch.Tensor]:
        """Fine-tune a copy of the parameters on one history, then quantize its weights."""
        params = {k: v.clone().requires_grad_(True) for k, v in self.base.items()}
        inputs, targets = training_examples([history], self.backbone.config)
        inputs, targets = inputs.to(self.device), targets.to(self.device)
        if len(inputs):
            opt = torch.optim.Adam(params.values(), lr=self.cfg.lr)
            with torch.enable_grad():
                for _ in range(self.cfg.steps):
                    named = {f"inner.{k}": v for k, v in params.items()}
                    loss = functional_call(self.loss_shim, named, (inputs, targets), strict=False)
                    opt.zero_grad()
                    loss.backward()
                    opt.step()
        with torch.no_grad():
            out = {k: v.detach() for k, v in params.items()}
            for k in self.keys:
                out[k] = quantize_per_channel(out[k], self.cfg.bits)
        return out

    @torch.no_grad()
    def __call__(
        self,
        seqs: torch.Tensor,
        candidates: torch.Tensor | None = None,
        users: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Adapt per user and score: [B, L] (+ [B, C]) -> [B, C] or [B, n_items + 1]."""
        rows = []
        seqs = seqs.to(self.device)
        if candidates is not None:
            candidates = candidates.to(self.device)
        for i in range(seqs.shape[0]):
            row = seqs[i]
            history = row[row != 0].cpu().numpy()
            start = time.perf_counter()
            params = self.adapt(history)
            sync(self.device)
            self.adapt_ms.append((time.perf_counter() - start) * 1e3)
            named = {f"inner.{k}": v for k, v in params.items()}
            if candidates is None:
                rows.append(functional_call(self.all_shim, named, (seqs[i : i + 1],))[0])
            else:
                args = (seqs[i : i + 1], candidates[i : i + 1])
                rows.append(functional_call(self.cand_shim, named, args)[0])
        return torch.stack(rows)

    def mean_adapt_ms(self) -> float:
        """Mean per-user adaptation time so far."""
        return float(np.mean(self.adapt_ms)) if self.adapt_ms else float("nan")
