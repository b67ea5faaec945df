"""The channel layout of a model: every quantizable weight and where its channels sit."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from torch import nn

QUANTIZABLE = (nn.Linear, nn.Conv2d, nn.Embedding)


class LayoutError(ValueError):
    """A per-channel array that does not match the layout it was meant for."""


@dataclass(frozen=True)
class ChannelLayer:
    """One quantizable weight: its channels are its output rows, filters or embedding rows."""

    name: str  # module name in named_modules (the weight is `<name>.weight`)
    kind: str  # "linear", "conv2d" or "embedding"
    n_channels: int  # output rows / filters / embedding rows
    channel_size: int  # weights per channel
    offset: int  # index of the first channel in the model-wide channel order

    @property
    def weight_name(self) -> str:
        """State-dict key of the weight."""
        return f"{self.name}.weight" if self.name else "weight"

    @property
    def n_weights(self) -> int:
        """Weights in the layer."""
        return self.n_channels * self.channel_size


@dataclass(frozen=True)
class ChannelLayout:
    """Ordered quantizable layers of a model (named_modules order) and their channels."""

    layers: tuple[ChannelLayer, ...]

    @property
    def n_channels(self) -> int:
        """Channels over all layers."""
        return sum(layer.n_channels for layer in self.layers)

    @property
    def n_weights(self) -> int:
        """Quantizable weights over all layers."""
        return sum(layer.n_weights for layer in self.layers)

    def channel_sizes(self) -> np.ndarray:
        """Weights per channel (int64), one entry per channel in layout order."""
        if not self.layers:
            return np.zeros(0, dtype=np.int64)
        return np.concatenate(
            [np.full(layer.n_channels, layer.channel_size, dtype=np.int64) for layer in self.layers]
        )

    def slices(self) -> dict[str, slice]:
        """Each layer's channel range in a model-wide per-channel array."""
        return {
            layer.name: slice(layer.offset, layer.offset + layer.n_channels)
            for layer in self.layers
        }

    def split(self, array_per_channel: np.ndarray) -> dict[str, np.ndarray]:
        """Cut a model-wide per-channel array into one view per layer (keyed by layer name)."""
        arr = np.asarray(array_per_channel)
        if arr.ndim < 1 or arr.shape[0] != self.n_channels:
            raise LayoutError(
                f"expected one entry per channel ({self.n_channels}), got shape {arr.shape}"
            )
        return {name: arr[s] for name, s in self.slices().items()}

    def layer(self, name: str) -> ChannelLayer:
        """The layer called `name`."""
        for layer in self.layers:
            if layer.name == name:
                return layer
        raise LayoutError(f"no quantizable layer named {name!r}")


def _kind(module: nn.Module) -> str:
    """The layer kind of a quantizable module (subclasses map to their base kind)."""
    if isinstance(module, nn.Linear):
        return "linear"
    if isinstance(module, nn.Conv2d):
        return "conv2d"
    return "embedding"


def channel_layout(model: nn.Module) -> ChannelLayout:
    """Every nn.Linear / nn.Conv2d / nn.Embedding weight of `model`, in named_modules order."""
    layers: list[ChannelLayer] = []
    offset = 0
    for name, module in model.named_modules():
        if isinstance(module, QUANTIZABLE):
            w = module.weight
            n, size = int(w.shape[0]), int(w[0].numel())
            layers.append(ChannelLayer(name, _kind(module), n, size, offset))
            offset += n
    return ChannelLayout(tuple(layers))


__all__ = ["QUANTIZABLE", "ChannelLayer", "ChannelLayout", "LayoutError", "channel_layout"]
