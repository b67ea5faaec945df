"""The cloud hypernetwork: user profile -> per-channel importance at three granularities."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any, Protocol

import torch
from torch import nn
from torch.nn import functional as F


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


class HyperNetError(ValueError):
    """A hypernetwork that does not fit the backbone or profiles it was given."""


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

    def hyper_config(self) -> dict[str, Any]:
        """Constructor arguments beyond the layout and weights, for saving."""
        return {**asdict(self.config), "profile_dim": self.profile_dim}

    def channel_scores(self, profiles: torch.Tensor) -> list[torch.Tensor]:
        """Per-layer importance [B, n_out] for a batch of profiles [B, profile_dim]."""
        if profiles.dim() != 2 or profiles.shape[1] != self.profile_dim:
            raise HyperNetError(
                f"profiles must be [batch, {self.profile_dim}] floats, got {tuple(profiles.shape)}"
            )
        h = self.trunk(self.norm(profiles.float()))
        layer_w = F.softplus(self.layer_head(h))
        r = self.config.rank
        out = []
        for i, (_, n_in) in enumerate(self.shapes):
            w: torch.Tensor = getattr(self, self._refs[i])
            a = self.elem_a[i](h).view(-1, n_in, r)
            v = self.elem_v[i](h).view(-1, n_in, r)
            u = torch.einsum("oj,bjr->bor", w, a)
            s = torch.einsum("bor,bjr->boj", u, v)
            elem = (s * w).abs().mean(-1)
            filt = torch.einsum("oj,bj->bo", w, self.filt[i](h)) / n_in**0.5 + self.filt_bias[i]
            out.append(layer_w[:, i : i + 1] * (elem + filt))
        return out

    def forward(self, profiles: torch.Tensor) -> torch.Tensor:
        """[B, profile_dim] -> [B, n_channels] importance (differentiable)."""
        return torch.cat(self.channel_scores(profiles), dim=1)

    @torch.no_grad()
    def importance(self, profiles: torch.Tensor) -> torch.Tensor:
        """[B, profile_dim] float32 -> [B, n_channels] float32 (higher = keep more bits)."""
        was_training = self.training
        self.eval()
        try:
            return self.forward(profiles).float()
        finally:
            self.train(was_training)
