"""Serving snapshots of importance models: the parameters read once, no module machinery per call.

A served batch of one to four profiles spends most of its CPU not in arithmetic but around it:
nn.Module calls, attribute lookups, and the check that a cached packing of the heads still
matches the parameters (a data pointer and version per parameter, a few hundred of them). A
snapshot takes the tensors once, when a server loads its run, and then runs the same torch
operations in the same order on them, so its importance is bit for bit the module's
(tests/test_frozen_importance.py). The price is that it does not follow later changes of the
parameters: take a new snapshot after training or loading weights.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, cast

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from chord.hyper.errors import HyperNetError

__all__ = ["FrozenHyperNetwork", "FrozenPrior", "ShapeGroup", "serving_importance"]

Importance = Callable[[torch.Tensor], torch.Tensor]


class _Servable(Protocol):
    """An importance model (chord.strategy.ImportanceModel) with a serving snapshot."""

    def frozen(self) -> Importance:
        """The snapshot."""
        ...


@dataclass(frozen=True)
class ShapeGroup:
    """Layers of one shape (n_out, n_in), computed together by one GEMM and one kernel call."""

    n_out: int
    n_in: int
    layers: np.ndarray  # intp [L]: layout indices of the group's layers
    ref_t: torch.Tensor  # [L, n_in, n_out] view of the normalised weights W^T
    abs_t: np.ndarray  # float32 [L, n_in, n_out]: |W|^T
    filt_bias: np.ndarray  # float32 [L, n_out]
    columns: list[tuple[int, int]]  # (first column, layer index within the group) per layer
    start: int | None  # first column when the group's layers are adjacent, else None


def _trunk_layers(trunk: nn.Module) -> list[tuple[torch.Tensor, torch.Tensor, str]] | None:
    """(weight, bias, GELU approximation) per Linear + GELU pair of the trunk, or None when the
    trunk is not such a chain (the snapshot then calls the module itself)."""
    mods = list(trunk.children())
    if len(mods) % 2:
        return None
    out = []
    for lin, act in zip(mods[::2], mods[1::2], strict=True):
        if not (isinstance(lin, nn.Linear) and isinstance(act, nn.GELU) and lin.bias is not None):
            return None
        out.append((lin.weight.detach().clone(), lin.bias.detach().clone(), str(act.approximate)))
    return out


class FrozenHyperNetwork:
    """HyperNetwork's CPU inference path (channel_scores without autograd) over a snapshot.

    Built by HyperNetwork.frozen(). Call: profiles float32 [B, profile_dim] -> importance
    float32 [B, n_channels], the same values as HyperNetwork.importance bit for bit: the same
    torch operations in the same order (LayerNorm, the Linear + GELU trunk, the layer head,
    one GEMM for every head, then per group of equal-shape layers one batched GEMM and one
    call of chord.hyper.score_kernel.group_scores). Raises HyperNetError for profiles of
    another shape.
    """

    def __init__(
        self,
        *,
        profile_dim: int,
        n_channels: int,
        rank: int,
        norm_eps: float,
        trunk: nn.Module,
        layer_head: nn.Linear,
        heads_weight: torch.Tensor,
        heads_bias: torch.Tensor,
        groups: list[ShapeGroup],
    ) -> None:
        """heads_weight [rows, hidden] (a transposed view of a contiguous [hidden, rows]
        tensor) and heads_bias [rows]: every element/filter head as one Linear, rows group by
        group (A, then V, then f heads), held as given (the caller hands over copies); the
        trunk's and layer head's tensors are copied now. A trunk that is not a chain of
        Linear + GELU pairs is kept as the module and called, so it follows its parameters."""
        self.profile_dim = int(profile_dim)
        self.n_channels = int(n_channels)
        self.rank = int(rank)
        self._eps = float(norm_eps)
        self._trunk_module = trunk
        self._trunk = _trunk_layers(trunk)
        self._layer_w = layer_head.weight.detach().clone()
        self._layer_b = layer_head.bias.detach().clone()
        self._heads_wt = heads_weight.detach().t()  # [hidden, rows], contiguous: addmm's layout
        self._heads_b = heads_bias.detach()
        self._groups = groups

    def __call__(self, profiles: torch.Tensor) -> torch.Tensor:
        """[B, profile_dim] -> [B, n_channels] float32 (see the class docstring)."""
        from chord.hyper.score_kernel import group_scores

        if profiles.dim() != 2 or profiles.shape[1] != self.profile_dim:
            raise HyperNetError(
                f"profiles must be [batch, {self.profile_dim}] floats, got {tuple(profiles.shape)}"
            )
        h = F.layer_norm(profiles.float(), (self.profile_dim,), None, None, self._eps)
        if self._trunk is None:
            h = self._trunk_module(h)
        else:
            for w, b, approximate in self._trunk:
                h = F.gelu(F.linear(h, w, b), approximate=approximate)
        layer_w = F.softplus(F.linear(h, self._layer_w, self._layer_b)).numpy()  # [B, layers]
        heads = torch.addmm(self._heads_b, h, self._heads_wt).numpy()  # [B, all head outputs]
        n_b, r = heads.shape[0], self.rank
        out = torch.empty(n_b, self.n_channels)
        out_np = out.numpy()
        col = 0
        for grp in self._groups:
            n_l, n_in, n_out = len(grp.layers), grp.n_in, grp.n_out
            a = heads[:, col : col + n_l * n_in * r].reshape(n_b, n_l, n_in, r)
            col += n_l * n_in * r
            v = heads[:, col : col + n_l * n_in * r].reshape(n_b, n_l, n_in, r).copy()
            col += n_l * n_in * r
            f = heads[:, col : col + n_l * n_in].reshape(n_b, n_l, 1, n_in)
            col += n_l * n_in
            # [L, B * (r + 1), n_in]: A^T and f of every profile, then u^T and W f in one GEMM
            af = np.ascontiguousarray(
                np.concatenate([a.transpose(0, 1, 3, 2), f], axis=2).transpose(1, 0, 2, 3)
            ).reshape(n_l, n_b * (r + 1), n_in)
            uf = torch.bmm(torch.from_numpy(af), grp.ref_t).numpy()
            scores = np.empty((n_b, n_l, n_out), dtype=np.float32)
            group_scores(
                uf.reshape(n_l, n_b, r + 1, n_out), v, grp.abs_t, grp.filt_bias,
                layer_w[:, grp.layers], scores,
            )
            if grp.start is not None:  # the group's layers are adjacent: one block of columns
                out_np[:, grp.start : grp.start + n_l * n_out] = scores.reshape(n_b, n_l * n_out)
            else:
                for first, k in grp.columns:
                    out_np[:, first : first + n_out] = scores[:, k]
        return out


class FrozenPrior:
    """PriorImportance over a snapshot: prior + gate x FrozenHyperNetwork(profiles).

    Built by PriorImportance.frozen(). Call: float32 [B, profile_dim] -> float32
    [B, n_channels], bit for bit PriorImportance.importance.
    """

    def __init__(self, prior: torch.Tensor, gate: torch.Tensor, hyper: FrozenHyperNetwork) -> None:
        """prior float32 [n_channels]; gate a 0-d tensor; both copied now."""
        self._prior = prior.detach().clone().unsqueeze(0)
        self._gate = gate.detach().clone()
        self._hyper = hyper

    def __call__(self, profiles: torch.Tensor) -> torch.Tensor:
        """[B, profile_dim] -> [B, n_channels] float32."""
        return (self._prior + self._gate * self._hyper(profiles)).float()


def serving_importance(model: Any) -> Importance:
    """What a server calls per batch: the model's snapshot when it has one (HyperNetwork,
    PriorImportance on the CPU), else its importance method. Take it after the weights are
    final; the caller runs it under torch.inference_mode."""
    params = getattr(model, "parameters", None)
    on_cpu = params is None or all(p.device.type == "cpu" for p in params())
    if on_cpu and hasattr(model, "frozen"):
        return cast(_Servable, model).frozen()
    return cast(Importance, model.importance)
