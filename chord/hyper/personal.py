"""Per-user quantized weights: level banks, relaxed level choice and batched forward passes."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.func import functional_call

from chord.hyper.hypernet import layout_layers, weight_param_name
from chord.levels import Tier
from chord.masks import MaskedSource
from chord.quant import level_weights


def module_device(module: nn.Module) -> torch.device:
    """The device of a module's first parameter (or buffer); CPU for a module with neither."""
    for param in module.parameters():
        return param.device
    for buf in module.buffers():
        return buf.device
    return torch.device("cpu")


def sync(device: torch.device | str) -> None:
    """Wait for queued kernels on `device` (CUDA), so wall-clock timings cover the work."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


class LevelBank:
    """Each quantizable weight of a frozen backbone, quantized once at each level of a tier.

    Item-indexed tables (embeddings with n_items + 1 rows, and unquantized per-item parameters
    such as Caser's output bias) can be mixed for a few rows per user only: see compact_items.
    """

    def __init__(
        self, backbone: nn.Module, layout: Any, tier: Tier, mask: MaskedSource | None = None
    ) -> None:
        """Precompute Q_{b_k}(W) for the four levels of `tier` (B's level_weights).

        With `mask` (random mode with a learned mask) level k is instead the raw weight masked
        as the mask's level k keeps it, quantized at its bits (chord.masks.level_bank_weights).
        """
        self.tier = tier
        self.mask = mask
        state = dict(backbone.state_dict())
        self.item_rows = int(getattr(backbone, "n_items", -2)) + 1
        self.names: list[str] = []
        self.banks: list[torch.Tensor] = []  # [4, n_out, *rest]
        for layer in layout_layers(layout):
            key = weight_param_name(layer.name)
            w = state[key].detach().float()
            self.names.append(key)
            if mask is not None:
                self.banks.append(mask.level_weights(key, tier.level_bits).float().to(w.device))
            else:
                self.banks.append(level_weights(w, tier.level_bits).float())
        self.splits = [b.shape[1] for b in self.banks]
        self.item_tables = {
            k for k, b in zip(self.names, self.banks, strict=True)
            if b.shape[1] == self.item_rows and b.dim() == 3
        }
        self.item_extras = {
            k: v.detach() for k, v in backbone.named_parameters()
            if k not in self.names and v.dim() >= 1 and v.shape[0] == self.item_rows
        }

    def mix(
        self, masks: torch.Tensor, ids: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        """Per-user weights: masks [B, n_channels, 4] (one-hot or relaxed) -> {key: [B, *w]}.

        With ids [B, K] (global item ids per user), item tables hold only those K rows.
        """
        out: dict[str, torch.Tensor] = {}
        for key, bank, m in zip(
            self.names, self.banks, torch.split(masks, self.splits, dim=1), strict=True
        ):
            flat = bank.reshape(4, bank.shape[1], -1)
            if ids is not None and key in self.item_tables:
                m = torch.gather(m, 1, ids[:, :, None].expand(-1, -1, 4))
                rows = flat[:, ids]  # [4, B, K, D]
                mixed = m[:, :, 0:1] * rows[0]
                for k in range(1, 4):
                    mixed = mixed + m[:, :, k : k + 1] * rows[k]
                out[key] = mixed
                continue
            # Four fused multiply-adds beat one einsum here (it would batch over channels).
            mixed = m[:, :, 0:1] * flat[0]
            for k in range(1, 4):
                mixed = mixed + m[:, :, k : k + 1] * flat[k]
            out[key] = mixed.reshape(m.shape[0], *bank.shape[1:])
        if ids is not None:
            for key, v in self.item_extras.items():
                out[key] = v[ids]
        return out


def compact_items(
    seqs: torch.Tensor, candidates: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-user item tables of K = 1 + L + C rows: (global ids [B, K], local seqs, local cands).

    Row 0 is padding; then one row per history position and per candidate (duplicates are
    harmless: equal rows get equal levels). Scores are identical to the full-table ones.
    """
    b, length = seqs.shape
    n_c = candidates.shape[1]
    dev = seqs.device
    ids = torch.cat([torch.zeros(b, 1, dtype=torch.long, device=dev), seqs, candidates], dim=1)
    pos = torch.arange(1, length + 1, device=dev).expand(b, -1)
    local_seqs = torch.where(seqs == 0, torch.zeros_like(pos), pos)
    local_cands = torch.arange(length + 1, length + 1 + n_c, device=dev).expand(b, -1).contiguous()
    return ids, local_seqs.contiguous(), local_cands


class MethodShim(nn.Module):
    """Routes forward() to a named method of a backbone so functional_call can swap its weights."""

    def __init__(self, backbone: nn.Module, method: str) -> None:
        super().__init__()
        self.inner = backbone
        self.method = method

    def forward(self, *args: torch.Tensor) -> torch.Tensor:
        """Call the wrapped method."""
        fn: Callable[..., torch.Tensor] = getattr(self.inner, self.method)
        return fn(*args)


def batched_call(
    backbone: nn.Module, params: dict[str, torch.Tensor], method: str, *args: torch.Tensor
) -> torch.Tensor:
    """backbone.METHOD(*args) for each user with that user's weights, batched with vmap.

    params maps state-dict keys to [B, ...] tensors (keys not given keep the shared weight);
    args are per-user inputs [B, ...]; the result is [B, ...].
    """
    shim = MethodShim(backbone, method)

    def one(p: dict[str, torch.Tensor], *xs: torch.Tensor) -> torch.Tensor:
        named = {f"inner.{k}": v for k, v in p.items()}
        res = functional_call(
            shim, named, tuple(x.unsqueeze(0) for x in xs), strict=False, tie_weights=False
        )
        return res.squeeze(0)

    return torch.func.vmap(one, randomness="different")(params, *args)
