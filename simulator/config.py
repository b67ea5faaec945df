"""The fleet configuration: frozen dataclasses, loaded from TOML, saved as JSON with the run."""

from __future__ import annotations

import dataclasses
import tomllib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from chord.jsonfile import write_json
from chord.protocol import Protocol, ProtocolError
from chord.quant.adapt import DEVICE_RUNTIME, RUNTIMES
from chord.startcheck import (
    StartupError,
    check_address,
    check_dir,
    check_file,
    check_number,
    check_pem_ca,
    check_seconds,
    check_token,
)
from chord.textfile import TextFileError, read_json, read_text


class FleetConfigError(ValueError):
    """A fleet config value (or TOML/JSON field) that cannot be used."""


RAY_KEYWORDS = ("local", "auto", "none")


def check_ray_address(address: str) -> str:
    """'local', 'auto', 'none', HOST:PORT (a cluster's GCS) or ray://HOST:PORT (Ray Client)."""
    if address in RAY_KEYWORDS:
        return address
    bare = address.removeprefix("ray://")
    try:
        check_address(bare, "ray_address (--ray-address)")
    except StartupError:
        raise FleetConfigError(
            f"ray_address (--ray-address) {address!r} is not one of {', '.join(RAY_KEYWORDS)}, "
            "HOST:PORT or ray://HOST:PORT; send e.g. local or 127.0.0.1:6379"
        ) from None
    return address


@dataclass(frozen=True)
class TierProfile:
    """One device class of the fleet; its name must be a tier the server knows."""

    name: str
    share: float  # fraction of devices in this tier (normalized over all tiers)
    budget_bits: float  # average bits per weight the device asks for
    compute_factor: float = 1.0  # modeled: device compute time = measured here x this factor
    bandwidth_kbps: float = 10_000.0  # modeled link speed for transfer times
    rtt_ms: float = 50.0  # modeled round-trip time added to every transfer


@dataclass(frozen=True)
class DriftConfig:
    """Interest drift: a device replays its user's timeline and re-asks every K interactions."""

    rounds: int = 2  # strategy requests per device
    interactions_per_round: int = 1  # K: items scored with one strategy before asking again


@dataclass(frozen=True)
class ChurnConfig:
    """Devices going offline: an offline device skips a round (no request, nothing scored)."""

    offline_prob: float = 0.0  # chance a device is offline in a given round (round 0 excluded)


@dataclass(frozen=True)
class ClockConfig:
    """The virtual clock: devices come online as a trace or a diurnal model says, over a day.

    mode "rounds" (the default) keeps the round-based fleet of [drift]; "virtual" plans each
    device's requests in virtual time (simulator/clock.py) and runs them as fast as it can.
    """

    mode: str = "rounds"  # "rounds" or "virtual"
    duration_s: float = 86_400.0  # simulated span, virtual seconds
    behaviour_trace: str = ""  # FedScale behaviour trace (.pkl/.json/.csv); "" = diurnal model
    sessions_per_day: float = 6.0  # diurnal model: mean sessions a device starts per day
    session_minutes: float = 20.0  # diurnal model: mean session length (exponential)
    peak_hour: float = 20.0  # diurnal model: hour of day when sessions start most often
    diurnal_amplitude: float = 0.8  # 0 = flat, <1: session rate 1 + a cos(2 pi (h - peak) / 24)
    interactions_per_hour: float = 12.0  # interactions replayed per online hour (Poisson)
    drift_every: int = 5  # K: ask again after K new interactions (0 = never)
    refresh_interval_s: float = 0.0  # also ask when the held strategy is this old (0 = never)
    model_releases_s: tuple[float, ...] = ()  # virtual times the served model version changes
    min_history: int = 3  # items a user keeps as history before the day's replay starts
    staleness_sample: float = 0.05  # share of devices that also measure a fresh strategy

    def __post_init__(self) -> None:
        """Keep releases a tuple (TOML and JSON give lists) and reject unusable values."""
        object.__setattr__(self, "model_releases_s", tuple(float(t) for t in self.model_releases_s))
        _check_clock(self)


@dataclass(frozen=True)
class FaultConfig:
    """Injected faults, all drawn from `seed` so a chaos run repeats exactly."""

    seed: int = 0
    kill_actor_after: int = 0  # kill one device actor after this many devices finished (0 = never)
    restart_server_after: int = 0  # embedded mode: restart the server after this many devices
    net_delay_ms: float = 0.0  # client-side delay before each RPC attempt
    net_jitter_ms: float = 0.0  # uniform extra delay in [0, jitter]
    net_loss: float = 0.0  # chance an RPC attempt is dropped (seen as UNAVAILABLE, retried)
    corrupt_code_prob: float = 0.0  # chance a received strategy code gets a bit flipped
    net_stream_cut_bytes: int = 0  # break every artifact download stream after this many bytes


@dataclass(frozen=True)
class TransportConfig:
    """How devices call the cloud: deadlines, retries, TLS and auth."""

    call_timeout_s: float = 10.0  # deadline of one RPC attempt
    overall_timeout_s: float = 60.0  # all attempts of one call together
    max_attempts: int = 10
    backoff_base_s: float = 0.05  # first retry waits up to this (full jitter), doubling
    backoff_max_s: float = 2.0
    tls_root_ca: str = ""  # PEM file of the CA that signed the server's certificate; "" = plaintext
    token: str = ""  # bearer token sent as `authorization` metadata; "" = none
    report_to_server: bool = True  # also send ReportMetrics after each round


@dataclass(frozen=True)
class FleetConfig:
    """Everything one simulation needs; CLI flags override fields of a TOML file."""

    devices: int = 200
    seed: int = 0
    dataset: str = "ml-100k"
    backbone: str = "sasrec"
    mode: str = "pretrained"  # backbone mode of the embedded run: "pretrained" or "random"
    server: str = "embedded"  # "embedded" or HOST:PORT of a running `chord serve`
    server_workers: int = 1  # embedded: > 1 runs `chord serve --workers N` as a child process
    ray_address: str = "local"  # "local" (start a private Ray), "auto", an address, or "none"
    num_cpus: int = 0  # local Ray CPUs; 0 = os.cpu_count()
    actors: int = 0  # device actors; 0 = the cluster's CPUs
    batch_size: int = 10  # virtual devices per actor task
    lanes: int = 4  # devices an actor runs at once (threads); >1 lets the server batch requests
    negatives: int = 100  # sampled negatives per scored target (ranking = "sampled")
    ranking: str = "sampled"  # sampled | full: how a device ranks each target
    # Device scoring runtime (chord.quant.adapt.RUNTIMES): "ort" is the phones' runtime and the
    # fastest per query; "int8" adapts 3-7x faster, for fleets where adaptation dominates.
    runtime: str = DEVICE_RUNTIME
    run_dir: str = ""  # embedded server: use this run directory instead of preparing one
    run_preset: str = "quick"  # embedded default run: chord.hyper.runs preset (smoke|quick|full)
    device_cache_dir: str = ""  # devices' content-addressed artifact cache; "" = OUT/device-cache
    reuse_artifacts: bool = False  # False: each device downloads every artifact (fresh phones)
    traces_file: str = (
        ""  # FedScale-style JSON device traces: {client: {computation, communication}}
    )
    trace_reference_ms: float = (
        0.0  # computation (ms/sample) meaning factor 1.0; 0 = traces' median
    )
    tiers: tuple[TierProfile, ...] = field(
        default_factory=lambda: (
            TierProfile("low", 0.3, 2.5, compute_factor=4.0, bandwidth_kbps=2_000, rtt_ms=120),
            TierProfile("mid", 0.5, 3.0, compute_factor=2.0, bandwidth_kbps=10_000, rtt_ms=60),
            TierProfile("high", 0.2, 6.0, compute_factor=1.0, bandwidth_kbps=50_000, rtt_ms=30),
        )
    )
    drift: DriftConfig = field(default_factory=DriftConfig)
    churn: ChurnConfig = field(default_factory=ChurnConfig)
    faults: FaultConfig = field(default_factory=FaultConfig)
    transport: TransportConfig = field(default_factory=TransportConfig)
    clock: ClockConfig = field(default_factory=ClockConfig)

    def __post_init__(self) -> None:
        """Reject values the simulator cannot run with, saying what to send instead."""
        if self.devices < 1:
            raise FleetConfigError(f"devices must be >= 1, got {self.devices}")
        if not self.tiers:
            raise FleetConfigError("at least one [[tiers]] entry is needed")
        if any(t.share < 0 for t in self.tiers) or sum(t.share for t in self.tiers) <= 0:
            raise FleetConfigError("tier shares must be >= 0 and sum to more than 0")
        if self.drift.rounds < 1 or self.drift.interactions_per_round < 1:
            raise FleetConfigError("drift.rounds and drift.interactions_per_round must be >= 1")
        if self.mode not in ("pretrained", "random"):
            raise FleetConfigError(f"mode must be 'pretrained' or 'random', got {self.mode!r}")
        if self.batch_size < 1:
            raise FleetConfigError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.lanes < 1:
            raise FleetConfigError(f"lanes must be >= 1, got {self.lanes}")
        if self.server_workers < 1:
            raise FleetConfigError(f"server_workers must be >= 1, got {self.server_workers}")
        if self.server_workers > 1 and self.faults.restart_server_after:
            raise FleetConfigError(
                "faults.restart_server_after restarts the in-process server; with "
                "server_workers > 1 leave it 0 (or run one worker)"
            )
        for name in ("net_loss", "corrupt_code_prob"):
            p = getattr(self.faults, name)
            if not 0.0 <= p < 1.0:
                raise FleetConfigError(f"faults.{name} must be in [0, 1), got {p}")
        if self.faults.net_stream_cut_bytes < 0:
            raise FleetConfigError(
                f"faults.net_stream_cut_bytes must be >= 0, got {self.faults.net_stream_cut_bytes}"
            )
        if self.clock.mode == "virtual" and self.churn.offline_prob > 0:
            raise FleetConfigError(
                "churn.offline_prob drives the round-based clock; on the virtual clock devices "
                "are offline as [clock] says (a behaviour_trace or the diurnal model): set "
                "churn.offline_prob = 0"
            )
        if not 0.0 <= self.churn.offline_prob < 1.0:
            raise FleetConfigError(
                f"churn.offline_prob must be in [0, 1), got {self.churn.offline_prob}"
            )
        try:
            self._check_settings()
        except (StartupError, ProtocolError) as exc:
            raise FleetConfigError(str(exc)) from None

    def _check_settings(self) -> None:
        """Addresses, Ray settings, tokens, files and numbers that can never work."""
        if self.server != "embedded":
            check_address(self.server, "server (--server or `server` in the fleet TOML)")
        check_ray_address(self.ray_address)
        for name in ("num_cpus", "actors", "seed"):
            if getattr(self, name) < 0:
                raise FleetConfigError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.backbone not in ("sasrec", "caser"):
            raise FleetConfigError(f"backbone must be 'sasrec' or 'caser', got {self.backbone!r}")
        if self.run_preset not in ("smoke", "quick", "full"):
            raise FleetConfigError(
                f"run_preset must be 'smoke', 'quick' or 'full', got {self.run_preset!r}"
            )
        Protocol(self.ranking, self.negatives)
        if self.runtime not in RUNTIMES:
            raise FleetConfigError(f"runtime must be one of {RUNTIMES}, got {self.runtime!r}")
        if self.run_dir:
            check_dir(self.run_dir, "run_dir (--run-dir)")
        if self.traces_file:
            check_file(self.traces_file, "traces_file (--traces)")
        if self.clock.behaviour_trace:
            check_file(self.clock.behaviour_trace, "clock.behaviour_trace (--behaviour-trace)")
        check_number(self.trace_reference_ms, "trace_reference_ms", allow_zero=True)
        for i, t in enumerate(self.tiers):
            where = f"tiers[{i}] ({t.name!r})"
            check_number(t.share, f"{where}.share", allow_zero=True)
            check_number(t.budget_bits, f"{where}.budget_bits")
            check_number(t.compute_factor, f"{where}.compute_factor")
            check_number(t.bandwidth_kbps, f"{where}.bandwidth_kbps")
            check_number(t.rtt_ms, f"{where}.rtt_ms", allow_zero=True)
        for name in ("net_delay_ms", "net_jitter_ms"):
            check_number(getattr(self.faults, name), f"faults.{name}", allow_zero=True)
        for name in ("kill_actor_after", "restart_server_after"):
            if getattr(self.faults, name) < 0:
                raise FleetConfigError(f"faults.{name} must be >= 0 (0 = never)")
        tr = self.transport
        if tr.token:
            check_token(tr.token, "transport.token (--token or [transport] token)")
        if tr.tls_root_ca:
            check_pem_ca(tr.tls_root_ca, "transport.tls_root_ca (--tls-ca)")
        check_seconds(tr.call_timeout_s, "transport.call_timeout_s")
        check_seconds(tr.overall_timeout_s, "transport.overall_timeout_s")
        check_seconds(tr.backoff_base_s, "transport.backoff_base_s", allow_zero=True)
        check_seconds(tr.backoff_max_s, "transport.backoff_max_s", allow_zero=True)
        if tr.max_attempts < 1:
            raise FleetConfigError(f"transport.max_attempts must be >= 1, got {tr.max_attempts}")

    @property
    def embedded(self) -> bool:
        """True when the simulator starts its own cloud server."""
        return self.server == "embedded"


def _check_clock(c: ClockConfig) -> None:
    """Reject clock values the planner cannot use."""
    if c.mode not in ("rounds", "virtual"):
        raise FleetConfigError(f"clock.mode must be 'rounds' or 'virtual', got {c.mode!r}")
    positive = ("duration_s", "sessions_per_day", "session_minutes", "interactions_per_hour")
    for name in positive:
        if getattr(c, name) <= 0:
            raise FleetConfigError(f"clock.{name} must be > 0, got {getattr(c, name)}")
    if not 0.0 <= c.diurnal_amplitude <= 1.0:
        raise FleetConfigError(
            f"clock.diurnal_amplitude must be in [0, 1], got {c.diurnal_amplitude}"
        )
    if c.drift_every < 0 or c.refresh_interval_s < 0 or c.min_history < 1:
        raise FleetConfigError(
            "clock.drift_every and clock.refresh_interval_s must be >= 0, clock.min_history >= 1"
        )
    if not 0.0 <= c.staleness_sample <= 1.0:
        raise FleetConfigError(
            f"clock.staleness_sample must be in [0, 1], got {c.staleness_sample}"
        )
    if any(not 0 <= t < c.duration_s for t in c.model_releases_s):
        raise FleetConfigError(
            f"clock.model_releases_s must lie in [0, duration_s={c.duration_s}), got "
            f"{list(c.model_releases_s)}"
        )


_SECTIONS: dict[str, type[Any]] = {
    "drift": DriftConfig,
    "churn": ChurnConfig,
    "faults": FaultConfig,
    "transport": TransportConfig,
    "clock": ClockConfig,
}


_KINDS: dict[Any, tuple[str, tuple[type, ...]]] = {
    int: ("an integer", (int,)),
    float: ("a number", (int, float)),
    str: ("a string", (str,)),
    bool: ("true or false", (bool,)),
}


def _check_value(value: Any, kind: Any, name: str) -> None:
    """value must match the annotation kind (bools are not numbers; ints pass as floats)."""
    if kind in _KINDS:
        what, types = _KINDS[kind]
        if isinstance(value, types) and (kind is bool or not isinstance(value, bool)):
            return
        raise FleetConfigError(f"{name} must be {what}, got {value!r}")
    if typing.get_origin(kind) is tuple:  # tuple[X, ...]: a TOML/JSON array of X
        if not isinstance(value, (list, tuple)):
            raise FleetConfigError(f"{name} must be a list, got {value!r}")
        item = typing.get_args(kind)[0]
        for i, v in enumerate(value):
            _check_value(v, item, f"{name}[{i}]")


def _build(cls: type[Any], data: dict[str, Any], where: str) -> Any:
    """Instantiate a dataclass from a dict, rejecting unknown keys and wrong types by name.

    where: the field prefix in messages ("" at the top, "drift.", "tiers[0].").
    """
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        section = where.rstrip(".") or "the fleet config"
        raise FleetConfigError(f"unknown keys {unknown} in {section}; valid: {sorted(known)}")
    hints = typing.get_type_hints(cls)
    for key, value in data.items():
        _check_value(value, hints[key], f"{where}{key}")
    try:
        return cls(**data)
    except TypeError as exc:
        raise FleetConfigError(f"invalid {where.rstrip('.') or 'fleet config'}: {exc}") from exc


def _table(value: Any, name: str) -> dict[str, Any]:
    """A TOML table ([name]) or JSON object, else a one-line error naming it."""
    if not isinstance(value, dict):
        raise FleetConfigError(f"{name} must be a table, got {value!r}")
    return dict(value)


def config_from_dict(data: dict[str, Any]) -> FleetConfig:
    """A FleetConfig from nested dicts (TOML layout: top-level keys, [[tiers]], [drift], ...)."""
    top = _table(data.get("fleet", {}), "fleet")
    top.update({k: v for k, v in data.items() if k != "fleet"})
    kwargs: dict[str, Any] = {}
    for key, value in top.items():
        if key == "tiers":
            if not isinstance(value, list):
                raise FleetConfigError(
                    f"tiers must be a list of tables ([[tiers]] in TOML), got {value!r}"
                )
            kwargs["tiers"] = tuple(
                _build(TierProfile, _table(t, f"tiers[{i}]"), f"tiers[{i}].")
                for i, t in enumerate(value)
            )
        elif key in _SECTIONS:
            kwargs[key] = _build(_SECTIONS[key], _table(value, key), f"{key}.")
        else:
            kwargs[key] = value
    return _build(FleetConfig, kwargs, "")


def load_config(path: str | Path) -> FleetConfig:
    """Read a fleet TOML file."""
    try:
        data = tomllib.loads(read_text(path))
    except TextFileError as exc:
        raise FleetConfigError(f"fleet config {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise FleetConfigError(f"fleet config {path}: {exc}") from None
    return config_from_dict(data)


def config_to_dict(cfg: FleetConfig) -> dict[str, Any]:
    """Nested plain dicts (tiers as a list), the inverse of config_from_dict."""
    data = dataclasses.asdict(cfg)
    data["tiers"] = [dict(t) for t in data["tiers"]]
    return data


def save_config(cfg: FleetConfig, path: str | Path) -> None:
    """Write the config as JSON (the copy `--resume` reads back)."""
    write_json(path, config_to_dict(cfg), sort_keys=True)


def read_saved_config(path: str | Path) -> FleetConfig:
    """Read a config written by save_config."""
    try:
        return config_from_dict(read_json(path))
    except TextFileError as exc:
        raise FleetConfigError(f"saved fleet config {exc}") from None


def with_overrides(cfg: FleetConfig, **overrides: Any) -> FleetConfig:
    """A copy with the given top-level fields replaced; None values are ignored."""
    changes = {k: v for k, v in overrides.items() if v is not None}
    return dataclasses.replace(cfg, **changes)
