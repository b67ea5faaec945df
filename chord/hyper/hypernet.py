"""The cloud hypernetwork: user profile -> per-channel importance at three granularities."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any, Protocol, cast

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from chord.hyper.errors import HyperNetError
from chord.hyper.frozen import FrozenHyperNetwork, ShapeGroup

__all__ = ["HyperConfig", "HyperNetError", "HyperNetwork", "eval_importance"]


class LayerLike(Protocol):
    """What the hypernetwork needs to know about one quantizable layer."""

    name: str
    n_channels: int
    channel_size: int


class LayoutLike(Protocol):
    """An ordered channel layout (chord.quant.ChannelLayout satisfies it)."""

    @property
    def n_channels(self) -> int:
        """Total channels."""
        ...


# The inference cache of HyperNetwork._packed_heads: (parameter key, weight, bias, group biases).
_Packed = tuple[tuple[int, ...], torch.Tensor, torch.Tensor, list[torch.Tensor]]


@dataclass(frozen=True)
class HyperConfig:
    """Shape of the hypernetwork (saved with its weights)."""

    rank: int = 4  # rank of the element-level low-rank score U(z) V(z)^T
    hidden: int = 128  # width of the shared profile trunk
    seed: int = 0  # initialisation seed


def weight_param_name(layer_name: str) -> str:
    """The state-dict key of a layout layer's weight."""
    return layer_name if layer_name.endswith(".weight") else f"{layer_name}.weight"


def layout_layers(layout: Any) -> list[Any]:
    """The layers of a channel layout, in order."""
    return list(layout.layers)


class HyperNetwork(nn.Module):
    """Multi-granularity sensitivity estimator implementing chord.strategy.ImportanceModel.

    For each quantizable layer with frozen weight W [n_out, n_in] (flattened, normalised):
    element level  S(z) = (W A(z)) V(z)^T, aggregated to channels as mean_j |S_ij W_ij|;
    filter level   W f(z) + a learned per-channel bias;
    layer level    softplus(g(z)) one weight per layer.
    importance = layer weight x (element + filter). Expressing the element and filter heads
    through W itself relates each channel (e.g. an item's embedding row) to the profile.
    """

    def __init__(
        self,
        layout: Any,
        profile_dim: int,
        weights: Mapping[str, torch.Tensor],
        rank: int = 4,
        hidden: int = 128,
        seed: int = 0,
    ) -> None:
        """Heads for every layer of `layout`; `weights` maps state-dict keys to frozen weights."""
        super().__init__()
        if profile_dim < 1 or rank < 1 or hidden < 1:
            raise HyperNetError(
                f"profile_dim, rank and hidden must be >= 1, got {profile_dim}, {rank}, {hidden}"
            )
        self.config = HyperConfig(rank=rank, hidden=hidden, seed=seed)
        self.profile_dim = int(profile_dim)
        layers = layout_layers(layout)
        self.layer_names = [layer.name for layer in layers]
        self.n_channels = int(sum(layer.n_channels for layer in layers))
        self.shapes = [(int(layer.n_channels), int(layer.channel_size)) for layer in layers]
        gen_state = torch.random.get_rng_state()
        torch.manual_seed(seed)
        try:
            self.norm = nn.LayerNorm(profile_dim, elementwise_affine=False)
            self.trunk = nn.Sequential(
                nn.Linear(profile_dim, hidden), nn.GELU(), nn.Linear(hidden, hidden), nn.GELU()
            )
            self.elem_a = nn.ModuleList(nn.Linear(hidden, n_in * rank) for _, n_in in self.shapes)
            self.elem_v = nn.ModuleList(nn.Linear(hidden, n_in * rank) for _, n_in in self.shapes)
            self.filt = nn.ModuleList(nn.Linear(hidden, n_in) for _, n_in in self.shapes)
            self.filt_bias = nn.ParameterList(
                nn.Parameter(torch.zeros(n_out)) for n_out, _ in self.shapes
            )
            self.layer_head = nn.Linear(hidden, len(self.shapes))
            for lin in [*self.elem_a, *self.elem_v, *self.filt]:
                nn.init.normal_(lin.weight, std=0.3 / hidden**0.5)
                nn.init.zeros_(lin.bias)
            nn.init.zeros_(self.layer_head.weight)
            nn.init.constant_(self.layer_head.bias, 0.5413)  # softplus(0.5413) = 1
        finally:
            torch.random.set_rng_state(gen_state)
        self._refs: list[str] = []
        for i, (layer, (n_out, n_in)) in enumerate(zip(layers, self.shapes, strict=True)):
            key = weight_param_name(layer.name)
            if key not in weights:
                raise HyperNetError(
                    f"layout layer {layer.name!r} has no weight {key!r} in the backbone state; "
                    "build the hypernetwork from the same backbone its layout came from"
                )
            w = weights[key].detach().float().reshape(n_out, -1)
            if w.shape != (n_out, n_in):
                raise HyperNetError(
                    f"weight {key!r} has shape {tuple(w.shape)}, layout says {(n_out, n_in)}"
                )
            w = w / w.std().clamp_min(1e-8)
            self.register_buffer(f"ref{i}", w, persistent=False)
            self._refs.append(f"ref{i}")
        self._groups = _shape_groups(self.shapes)
        self._widths = [n_out for n_out, _ in self.shapes]
        self._offsets = [0, *np.cumsum(self._widths).tolist()][:-1]  # first column per layer
        self._group_layers = [np.array(idx, dtype=np.intp) for _, _, idx in self._groups]
        self._group_runs = [  # True where a group's layers are adjacent in the layout
            idx == list(range(idx[0], idx[0] + len(idx))) for _, _, idx in self._groups
        ]
        for g, (_, _, idx) in enumerate(self._groups):
            stacked = torch.stack([getattr(self, self._refs[i]) for i in idx])
            self.register_buffer(f"gref{g}", stacked, persistent=False)
            # |W|^T [L, n_in, n_out], contiguous: what the fused inference kernel streams
            abs_t = stacked.abs().transpose(1, 2).contiguous()
            self.register_buffer(f"gabst{g}", abs_t, persistent=False)
            self.register_buffer(f"gidx{g}", torch.tensor(idx, dtype=torch.long), persistent=False)
        self._packed: _Packed | None = None
        self._snapshot: tuple[torch.Tensor, FrozenHyperNetwork] | None = None

    def hyper_config(self) -> dict[str, Any]:
        """Constructor arguments beyond the layout and weights, for saving."""
        return {**asdict(self.config), "profile_dim": self.profile_dim}

    def _head_params(self) -> list[torch.Tensor]:
        """Weights then biases of every element/filter head, in the packed row order."""
        mods: list[nn.Linear] = []
        # Lists, not the ModuleLists: their indexing costs a serving batch tens of microseconds.
        lists = [cast(list[nn.Linear], list(h)) for h in (self.elem_a, self.elem_v, self.filt)]
        for _, _, idx in self._groups:
            for heads in lists:
                mods += [heads[i] for i in idx]
        return [m.weight for m in mods] + [m.bias for m in mods]

    def _packed_heads(self) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
        """All element/filter heads as one Linear ([rows, hidden] weight, [rows] bias), and the
        filter biases of each shape group stacked ([L, n_out] per group).

        With autograd on they are rebuilt each call (differentiable); without, they are cached
        until a head parameter or filter bias is replaced or changed in place (tracked by data
        pointer and version).
        """
        params = self._head_params()
        half = len(params) // 2
        biases = list(self.filt_bias.parameters(recurse=False))  # faster than its __getitem__
        if torch.is_grad_enabled():
            stacks = [torch.stack([biases[i] for i in idx]) for _, _, idx in self._groups]
            return torch.cat(params[:half]), torch.cat(params[half:]), stacks
        # Every parameter, not only the heads': the snapshot of _fused_importance reads the
        # trunk's and the layer head's too.
        key = tuple(x for p in self.parameters() for x in (p.data_ptr(), p._version))
        if self._packed is None or self._packed[0] != key:
            # Kept as a transposed view of a contiguous [hidden, rows] tensor: addmm on it
            # (h @ weight.T) is about 1.5x faster than linear on the [rows, hidden] original.
            weight_t = torch.cat(params[:half]).t().contiguous()
            stacks = [torch.stack([biases[i] for i in idx]) for _, _, idx in self._groups]
            self._packed = (key, weight_t.t(), torch.cat(params[half:]), stacks)
        return self._packed[1], self._packed[2], self._packed[3]

    def channel_scores(self, profiles: torch.Tensor) -> list[torch.Tensor]:
        """Per-layer importance [B, n_out] for a batch of profiles [B, profile_dim].

        Layers of equal shape are computed together. With autograd on (training), or on an
        accelerator, the element scores go through [B, L, n_out, n_in] tensors; on the CPU
        without autograd (serving), each group is one call of the fused kernel
        chord.hyper.score_kernel.group_scores (the same formulas; float32 sums in another
        order, so values agree to about 1e-6 of the largest score).
        """
        if profiles.dim() != 2 or profiles.shape[1] != self.profile_dim:
            raise HyperNetError(
                f"profiles must be [batch, {self.profile_dim}] floats, got {tuple(profiles.shape)}"
            )
        if not torch.is_grad_enabled() and profiles.device.type == "cpu":
            return list(torch.split(self._fused_importance(profiles), self._widths, dim=1))
        h = self.trunk(self.norm(profiles.float()))
        layer_w = F.softplus(self.layer_head(h))
        weight, bias, filt_biases = self._packed_heads()
        heads = F.linear(h, weight, bias)  # [B, all head outputs], sliced per group below
        n_b, r = h.shape[0], self.config.rank
        out: list[torch.Tensor | None] = [None] * len(self.shapes)
        col = 0
        for g, (_n_out, n_in, idx) in enumerate(self._groups):
            n_l = len(idx)
            w: torch.Tensor = getattr(self, f"gref{g}")  # [L, n_out, n_in]
            a = heads[:, col : col + n_l * n_in * r].reshape(n_b, n_l, n_in, r)
            col += n_l * n_in * r
            v = heads[:, col : col + n_l * n_in * r].reshape(n_b, n_l, n_in, r)
            col += n_l * n_in * r
            f = heads[:, col : col + n_l * n_in].reshape(n_b, n_l, n_in)
            col += n_l * n_in
            u = torch.einsum("loj,bljr->blor", w, a)
            elem = _element_scores(u, v, w)
            filt = torch.einsum("loj,blj->blo", w, f) / n_in**0.5 + filt_biases[g]
            lw = layer_w.index_select(1, getattr(self, f"gidx{g}"))
            scores = lw.unsqueeze(-1) * (elem + filt)  # [B, L, n_out]
            for k, i in enumerate(idx):
                out[i] = scores[:, k]
        return [x for x in out if x is not None]

    def _fused_importance(self, profiles: torch.Tensor) -> torch.Tensor:
        """channel_scores without autograd on the CPU, as one [B, n_channels] tensor: the trunk
        and the packed heads in torch, then per group of equal-shape layers one GEMM (W [A | f])
        and one call of the fused kernel chord.hyper.score_kernel.group_scores
        (chord.hyper.frozen.FrozenHyperNetwork, kept while the parameters are unchanged)."""
        weight, _, _ = self._packed_heads()
        if self._snapshot is None or self._snapshot[0] is not weight:
            self._snapshot = (weight, self.frozen())
        return self._snapshot[1](profiles)

    @torch.no_grad()
    def frozen(self) -> FrozenHyperNetwork:
        """A serving snapshot of the current parameters: importance bit for bit, without the
        per-call module machinery and cache checks; it does not follow later changes."""
        weight, bias, filt_biases = self._packed_heads()
        groups = []
        for g, (n_out, n_in, idx) in enumerate(self._groups):
            groups.append(ShapeGroup(
                n_out=n_out,
                n_in=n_in,
                layers=self._group_layers[g],
                ref_t=self.get_buffer(f"gref{g}").transpose(1, 2),
                abs_t=self.get_buffer(f"gabst{g}").numpy(),
                filt_bias=filt_biases[g].detach().numpy(),
                columns=[(self._offsets[i], k) for k, i in enumerate(idx)],
                start=self._offsets[idx[0]] if self._group_runs[g] else None,
            ))
        return FrozenHyperNetwork(
            profile_dim=self.profile_dim, n_channels=self.n_channels, rank=self.config.rank,
            norm_eps=self.norm.eps, trunk=self.trunk, layer_head=self.layer_head,
            heads_weight=weight, heads_bias=bias, groups=groups,
        )

    def forward(self, profiles: torch.Tensor) -> torch.Tensor:
        """[B, profile_dim] -> [B, n_channels] importance (differentiable)."""
        if not torch.is_grad_enabled() and profiles.device.type == "cpu":
            return self._fused_importance(profiles)
        return torch.cat(self.channel_scores(profiles), dim=1)

    def importance(self, profiles: torch.Tensor) -> torch.Tensor:
        """[B, profile_dim] float32 -> [B, n_channels] float32 (higher = keep more bits)."""
        return eval_importance(self, profiles)


@torch.no_grad()
def eval_importance(model: nn.Module, profiles: torch.Tensor) -> torch.Tensor:
    """model(profiles) as float32, in eval mode and without autograd; the mode is restored.

    A model already in eval mode (a serving engine puts it there once) is called as it is:
    switching modes walks every submodule, a sizeable share of a served batch's CPU.
    """
    if not model.training:
        return model(profiles).float()
    model.eval()
    try:
        return model(profiles).float()
    finally:
        model.train(True)


def _shape_groups(shapes: list[tuple[int, int]]) -> list[tuple[int, int, list[int]]]:
    """Layers grouped by (n_out, n_in), in order of first appearance: (n_out, n_in, indices)."""
    groups: dict[tuple[int, int], list[int]] = {}
    for i, shape in enumerate(shapes):
        groups.setdefault(shape, []).append(i)
    return [(n_out, n_in, idx) for (n_out, n_in), idx in groups.items()]


def _element_scores(u: torch.Tensor, v: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """mean_j |(u v^T)_oj w_oj| for u [B, L, n_out, r], v [B, L, n_in, r], w [L, n_out, n_in]
    (differentiable; the inference path is the fused kernel of chord.hyper.score_kernel)."""
    return (torch.matmul(u, v.transpose(-1, -2)) * w).abs().mean(-1)
