"""Typed architecture configs of the backbones and their JSON round trip."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Any


class ConfigError(ValueError):
    """A backbone config (or its JSON form) is invalid."""


@dataclass(frozen=True)
class SASRecConfig:
    """SASRec: causal self-attention over the last `max_len` items (Kang & McAuley, 2018)."""

    n_items: int  # catalogue size; item ids are 1..n_items, 0 is padding
    hidden: int = 64  # embedding and hidden width
    n_blocks: int = 2  # self-attention blocks
    n_heads: int = 1  # attention heads (hidden must be divisible by it)
    max_len: int = 50  # longest history the model reads (older items are cut)
    dropout: float = 0.2  # dropout on embeddings, attention and feed-forward
    kind: str = dataclasses.field(default="sasrec", init=False)

    def __post_init__(self) -> None:
        """Reject impossible shapes early with a message that says what to send."""
        _check_positive(self, ("n_items", "hidden", "n_blocks", "n_heads", "max_len"))
        if self.hidden % self.n_heads:
            raise ConfigError(
                f"SASRecConfig.hidden={self.hidden} must be divisible by n_heads={self.n_heads}"
            )
        _check_dropout(self.dropout)


@dataclass(frozen=True)
class CaserConfig:
    """Caser: horizontal and vertical convolutions over the last `max_len` items (Tang & Wang)."""

    n_items: int  # catalogue size; item ids are 1..n_items, 0 is padding
    embed: int = 50  # item embedding width
    max_len: int = 5  # L, the window of recent items the convolutions read
    n_h: int = 16  # horizontal filters per height 1..L
    n_v: int = 4  # vertical filters
    dropout: float = 0.5  # dropout before the fully connected layer
    kind: str = dataclasses.field(default="caser", init=False)

    def __post_init__(self) -> None:
        """Reject impossible shapes early with a message that says what to send."""
        _check_positive(self, ("n_items", "embed", "max_len", "n_h", "n_v"))
        _check_dropout(self.dropout)


BackboneConfig = SASRecConfig | CaserConfig

_KINDS: dict[str, type[SASRecConfig] | type[CaserConfig]] = {
    "sasrec": SASRecConfig,
    "caser": CaserConfig,
}


def _check_positive(cfg: Any, names: tuple[str, ...]) -> None:
    """Raise ConfigError unless every named integer field is >= 1."""
    for name in names:
        value = getattr(cfg, name)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ConfigError(
                f"{type(cfg).__name__}.{name} must be a positive integer, got {value!r}"
            )


def _check_dropout(p: float) -> None:
    """Raise ConfigError unless 0 <= p < 1."""
    if not 0.0 <= float(p) < 1.0:
        raise ConfigError(f"dropout must be in [0, 1), got {p!r}")


def config_to_dict(cfg: BackboneConfig) -> dict[str, Any]:
    """A plain dict of the config, including its `kind` tag."""
    return dataclasses.asdict(cfg)


def config_from_dict(data: dict[str, Any]) -> BackboneConfig:
    """Rebuild a config from `config_to_dict` output; `kind` selects the class."""
    fields = dict(data)
    kind = fields.pop("kind", None)
    if kind not in _KINDS:
        raise ConfigError(
            f"backbone config kind must be one of {sorted(_KINDS)}, got {kind!r}"
        )
    cls = _KINDS[kind]
    known = {f.name for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(fields) - known)
    if unknown:
        raise ConfigError(f"unknown {kind} config fields {unknown}; valid: {sorted(known)}")
    try:
        return cls(**fields)
    except TypeError as exc:
        raise ConfigError(f"invalid {kind} config {data!r}: {exc}") from exc


def config_to_json(cfg: BackboneConfig) -> str:
    """The config as canonical JSON (sorted keys), tagged with its kind."""
    return json.dumps(config_to_dict(cfg), sort_keys=True)


def config_from_json(s: str) -> BackboneConfig:
    """Parse `config_to_json` output back into the matching config class."""
    try:
        data = json.loads(s)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"backbone config is not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"backbone config JSON must be an object, got {type(data).__name__}")
    return config_from_dict(data)


__all__ = [
    "BackboneConfig",
    "CaserConfig",
    "ConfigError",
    "SASRecConfig",
    "config_from_dict",
    "config_from_json",
    "config_to_dict",
    "config_to_json",
]
