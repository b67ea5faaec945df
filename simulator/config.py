"""The fleet configuration: frozen dataclasses, loaded from TOML, saved as JSON with the run."""

from __future__ import annotations

import dataclasses
import math
import numbers
import os
import tomllib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from chord.hyper.runs import missing_run_files
from chord.jsonfile import write_json
from chord.protocol import Protocol, ProtocolError
from chord.quant.adapt import DEVICE_RUNTIME, RUNTIMES
from chord.startcheck import (
    StartupError,
    check_address,
    check_dir,
    check_file,
    check_out_dir,
    check_pem_ca,
    check_token,
    clipped,
    exact,
    max_parallel,
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


DAY_S = 86_400.0
MAX_DURATION_S = 366 * DAY_S  # the virtual clock spans at most a (leap) year
LOCAL_CPUS_PER_CORE = 4  # a private local Ray may claim at most this many CPUs per core


def max_local_cpus() -> int:
    """The most CPUs a private local Ray may claim: LOCAL_CPUS_PER_CORE x os.cpu_count()."""
    return LOCAL_CPUS_PER_CORE * (os.cpu_count() or 1)


@dataclass(frozen=True)
class Bounds:
    """The documented range of one numeric config field: [lo, hi], lo excluded when lo_open.

    off: a value outside [lo, hi] that is also accepted and means "off" (0 = never / all CPUs).
    integer: the field is a whole number. note: the meaning of `off`, or the unit, for messages.
    """

    lo: float
    hi: float
    lo_open: bool = False
    hi_open: bool = False
    off: float | None = None
    integer: bool = False
    note: str = ""

    def holds(self, value: Any) -> bool:
        """True when value is a number of the right kind, finite, and in range (or `off`)."""
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            return False
        if self.integer and not isinstance(value, numbers.Integral):
            return False
        # NaN compares False with everything: test it first. An int is finite (and float() of
        # one beyond a double raises OverflowError), so only non-integers are tested.
        if not isinstance(value, numbers.Integral) and not math.isfinite(value):
            return False
        v: int | float = int(value) if isinstance(value, numbers.Integral) else float(value)
        if self.off is not None and v == self.off:
            return True
        above = v > self.lo if self.lo_open else v >= self.lo
        below = v < self.hi if self.hi_open else v <= self.hi
        return above and below

    def describe(self) -> str:
        """e.g. "a finite number in (0, 31622400]" or "an integer in [1, 64] (0 = never)"."""
        kind = "an integer" if self.integer else "a finite number"
        interval = (
            f"{'(' if self.lo_open else '['}{exact(self.lo)}, {exact(self.hi)}"
            f"{')' if self.hi_open else ']'}"
        )
        off = f" or {exact(self.off)}" if self.off is not None else ""
        note = f" ({self.note})" if self.note else ""
        return f"{kind} in {interval}{off}{note}"


def _int(lo: int, hi: int, note: str = "", off: int | None = None) -> Bounds:
    """Bounds of an integer field."""
    return Bounds(lo, hi, integer=True, note=note, off=off)


_SEED = _int(0, 2**32 - 1)
_PROB = Bounds(0.0, 1.0, hi_open=True)
_SHARE = Bounds(0.0, 1.0)

# Every numeric field of the fleet config and its range, in one place. Keys are the dotted
# names messages use ("tiers." applies to every [[tiers]] entry). A test keeps this table
# complete: a new int or float field without an entry here fails it.
FIELD_BOUNDS: dict[str, Bounds] = {
    "devices": _int(1, 10_000_000),
    "seed": _SEED,
    "server_workers": _int(1, 64),
    # num_cpus and actors: on a private local Ray also at most max_local_cpus() (check_runnable).
    "num_cpus": _int(0, 4096, "0 = this machine's CPUs"),
    "actors": _int(0, 1024, "0 = the cluster's CPUs"),
    "batch_size": _int(1, 10_000),
    "lanes": _int(1, 64),
    "negatives": _int(1, 1_000_000),
    "trace_reference_ms": Bounds(
        1e-3, 1e7, off=0.0, note="ms per sample; 0 = the traces' median"
    ),
    "tiers.share": Bounds(0.0, 1e9),
    "tiers.budget_bits": Bounds(1.0, 8.0, note="bits per weight; the tier's own range applies"),
    "tiers.compute_factor": Bounds(0.0, 1000.0, lo_open=True),
    # A slower link models transfers of hours per artifact; near 0 they overflow to infinity.
    "tiers.bandwidth_kbps": Bounds(1.0, 1e8, note="kbit/s"),
    "tiers.rtt_ms": Bounds(0.0, 60_000.0, note="ms"),
    "drift.rounds": _int(1, 10_000),
    "drift.interactions_per_round": _int(1, 10_000),
    "churn.offline_prob": _PROB,
    "faults.seed": _SEED,
    # kill_actor_after and restart_server_after must also be below `devices` (checked there).
    "faults.kill_actor_after": _int(0, 9_999_999, "0 = never"),
    "faults.restart_server_after": _int(0, 9_999_999, "0 = never"),
    "faults.net_delay_ms": Bounds(0.0, 60_000.0, note="ms"),
    "faults.net_jitter_ms": Bounds(0.0, 60_000.0, note="ms"),
    "faults.net_loss": _PROB,
    "faults.corrupt_code_prob": _PROB,
    "faults.net_stream_cut_bytes": _int(0, 2**31 - 1, "0 = never"),
    "transport.call_timeout_s": Bounds(0.0, 3600.0, lo_open=True, note="seconds"),
    "transport.overall_timeout_s": Bounds(0.0, DAY_S, lo_open=True, note="seconds"),
    "transport.max_attempts": _int(1, 100),
    "transport.backoff_base_s": Bounds(0.0, 60.0, note="seconds"),
    "transport.backoff_max_s": Bounds(0.0, 3600.0, note="seconds"),
    "clock.duration_s": Bounds(0.0, MAX_DURATION_S, lo_open=True, note="virtual seconds, 366 days"),
    "clock.sessions_per_day": Bounds(0.0, 1440.0, lo_open=True),
    "clock.session_minutes": Bounds(0.0, 366 * 1440.0, lo_open=True),
    "clock.peak_hour": Bounds(0.0, 24.0, hi_open=True, note="hour of the day"),
    "clock.diurnal_amplitude": _SHARE,
    "clock.interactions_per_hour": Bounds(0.0, 3600.0, lo_open=True),
    "clock.drift_every": _int(0, 1_000_000, "0 = never"),
    "clock.refresh_interval_s": Bounds(
        60.0, MAX_DURATION_S, off=0.0, note="seconds; 0 = never"
    ),
    "clock.model_releases_s": Bounds(0.0, MAX_DURATION_S, hi_open=True, note="virtual seconds"),
    "clock.min_history": _int(1, 10_000),
    "clock.staleness_sample": _SHARE,
    "clock.staleness_max_devices": _int(0, 10_000_000, "0 = no cap"),
}

# Flags that set a field, named in its message next to the field.
FIELD_FLAGS: dict[str, str] = {
    "devices": "--devices", "seed": "--seed", "server_workers": "--server-workers",
    "num_cpus": "--num-cpus", "actors": "--actors", "batch_size": "--batch-size",
    "lanes": "--lanes", "negatives": "--negatives", "clock.duration_s": "--duration-s",
}  # fmt: skip


def field_name(key: str, where: str | None = None) -> str:
    """The field as messages name it: `where` (e.g. "tiers[0] ('low').share") or the key, plus
    its flag, e.g. "devices (--devices)"."""
    flag = FIELD_FLAGS.get(key)
    return f"{where or key}" + (f" ({flag})" if flag else "")


def check_field(key: str, value: Any, where: str | None = None) -> None:
    """Raise FleetConfigError unless value lies in FIELD_BOUNDS[key] (finite, right kind).

    The message names the field (and its flag), the value, and the range to send.
    """
    bounds = FIELD_BOUNDS[key]
    if not bounds.holds(value):
        raise FleetConfigError(
            f"{field_name(key, where)} is {clipped(value, 40, keep=20)}; send {bounds.describe()}"
        )


def _check_fields(obj: Any, prefix: str, where: str | None = None) -> None:
    """check_field on every numeric field of dataclass obj; prefix "clock." etc."""
    for f in dataclasses.fields(obj):
        key = prefix + f.name
        if key not in FIELD_BOUNDS:
            continue
        value = getattr(obj, f.name)
        label = f"{where}.{f.name}" if where else None
        if isinstance(value, tuple):
            for i, v in enumerate(value):
                check_field(key, v, f"{label or key}[{i}]")
        else:
            check_field(key, value, label)


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
    # ... and at most this many devices (0 = no cap): the staleness estimate's precision comes
    # from the number of probed targets, not from the share of the fleet, and each probe
    # fetches and builds a strategy per later target (13% of a 3,000-device day's wall time).
    staleness_max_devices: int = 1_000

    def __post_init__(self) -> None:
        """Keep releases a tuple (TOML and JSON give lists) and reject unusable values."""
        for i, t in enumerate(self.model_releases_s):
            check_field("clock.model_releases_s", t, f"clock.model_releases_s[{i}]")
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
    # Backbone mode of the embedded run: "random" (the paper's design, no trained weight reaches
    # a device; the default since random CHORD at 3 bits came within 5% of pretrained CHORD on
    # ML-100K SASRec, benchmarks/RESULTS.md accuracy_random_h256_sparse4) or "pretrained".
    mode: str = "random"
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
        """Reject values the simulator cannot run with, saying what to send instead.

        Every numeric field is checked against FIELD_BOUNDS (finite, in its documented range);
        then the fields that must agree with each other, then addresses, files and tokens.
        Raises FleetConfigError with one line naming the field.
        """
        try:
            Protocol(self.ranking, self.negatives)
        except ProtocolError as exc:
            raise FleetConfigError(str(exc)) from None
        for f in dataclasses.fields(self):
            if f.name in FIELD_BOUNDS and not (f.name == "negatives" and self.ranking == "full"):
                check_field(f.name, getattr(self, f.name))
        if not self.tiers:
            raise FleetConfigError("at least one [[tiers]] entry is needed")
        for i, t in enumerate(self.tiers):
            _check_fields(t, "tiers.", f"tiers[{i}] ({t.name!r})")
        for name in ("drift", "churn", "faults", "transport", "clock"):
            _check_fields(getattr(self, name), f"{name}.")
        self._check_agreement()
        try:
            self._check_settings()
        except (StartupError, ProtocolError) as exc:
            raise FleetConfigError(str(exc)) from None

    def _check_agreement(self) -> None:
        """Fields that are each in range but contradict each other."""
        names = [t.name for t in self.tiers]
        for i, name in enumerate(names):
            if not name:
                raise FleetConfigError(
                    f"tiers[{i}].name is empty; send a tier the server serves (e.g. low, mid, high)"
                )
            if name in names[:i]:
                raise FleetConfigError(
                    f"tiers[{i}].name {name!r} repeats tiers[{names.index(name)}]; send each "
                    "tier once (merge their shares)"
                )
        if sum(t.share for t in self.tiers) <= 0:
            raise FleetConfigError("tier shares must sum to more than 0; give a tier a share > 0")
        if self.server_workers > 1 and self.faults.restart_server_after:
            raise FleetConfigError(
                "faults.restart_server_after restarts the in-process server; with "
                "server_workers > 1 leave it 0 (or run one worker)"
            )
        for name in ("kill_actor_after", "restart_server_after"):
            after = getattr(self.faults, name)
            if after >= self.devices:
                raise FleetConfigError(
                    f"faults.{name} is {after}, so it would never fire in a fleet of "
                    f"{self.devices} devices; send 1 to {self.devices - 1}, or 0 for never"
                )
        if self.clock.mode == "virtual" and self.churn.offline_prob > 0:
            raise FleetConfigError(
                "churn.offline_prob drives the round-based clock; on the virtual clock devices "
                "are offline as [clock] says (a behaviour_trace or the diurnal model): set "
                "churn.offline_prob = 0"
            )
        tr = self.transport
        if tr.overall_timeout_s < tr.call_timeout_s:
            raise FleetConfigError(
                f"transport.overall_timeout_s ({tr.overall_timeout_s:g} s) is shorter than "
                f"transport.call_timeout_s ({tr.call_timeout_s:g} s), so no call gets its "
                "deadline; send overall_timeout_s >= call_timeout_s"
            )
        if tr.backoff_max_s < tr.backoff_base_s:
            raise FleetConfigError(
                f"transport.backoff_max_s ({tr.backoff_max_s:g} s) is below "
                f"transport.backoff_base_s ({tr.backoff_base_s:g} s); send backoff_max_s >= "
                "backoff_base_s"
            )

    def _check_settings(self) -> None:
        """Addresses, Ray settings, tokens, files and names that can never work."""
        if self.server != "embedded":
            check_address(self.server, "server (--server or `server` in the fleet TOML)")
        check_ray_address(self.ray_address)
        if self.mode not in ("pretrained", "random"):
            raise FleetConfigError(f"mode must be 'pretrained' or 'random', got {self.mode!r}")
        if self.backbone not in ("sasrec", "caser"):
            raise FleetConfigError(f"backbone must be 'sasrec' or 'caser', got {self.backbone!r}")
        if self.run_preset not in ("smoke", "quick", "full"):
            raise FleetConfigError(
                f"run_preset must be 'smoke', 'quick' or 'full', got {self.run_preset!r}"
            )
        if self.runtime not in RUNTIMES:
            raise FleetConfigError(f"runtime must be one of {RUNTIMES}, got {self.runtime!r}")
        if self.run_dir:
            run = check_dir(self.run_dir, "run_dir (--run-dir)")
            missing = missing_run_files(run)
            if missing:
                raise FleetConfigError(
                    f"run_dir (--run-dir) {self.run_dir!r} is not a run directory (it lacks "
                    f"{', '.join(missing)}); send a directory written by `chord simulate "
                    "--prepare-run DIR`, or leave --run-dir out to use the cached run"
                )
        if self.device_cache_dir:
            check_out_dir(self.device_cache_dir, "device_cache_dir")
        if self.traces_file:
            check_file(self.traces_file, "traces_file (--traces)")
        if self.clock.behaviour_trace:
            check_file(self.clock.behaviour_trace, "clock.behaviour_trace (--behaviour-trace)")
        tr = self.transport
        if tr.token:
            check_token(tr.token, "transport.token (--token or [transport] token)")
        if tr.tls_root_ca:
            check_pem_ca(tr.tls_root_ca, "transport.tls_root_ca (--tls-ca)")
            if self.embedded:
                raise FleetConfigError(
                    "transport.tls_root_ca (--tls-ca) verifies a TLS server, but the embedded "
                    "server speaks plaintext; leave --tls-ca out, or pass --server HOST:PORT of "
                    "a `chord serve --tls-cert ... --tls-key ...`"
                )

    @property
    def embedded(self) -> bool:
        """True when the simulator starts its own cloud server."""
        return self.server == "embedded"


def check_runnable(cfg: FleetConfig) -> None:
    """What a FleetConfig cannot check on its own, as flags may still override a TOML file's
    fields: run once the config is final, before any work. Raises FleetConfigError.

    - a private local Ray gets at most max_local_cpus() CPUs and device actors (more start
      workers that never answer, or exhaust memory);
    - an embedded server gets at most chord.startcheck.max_parallel() workers (`chord serve
      --workers` refuses more), and only an embedded server takes server_workers;
    - a behaviour trace drives only the virtual clock (on the round clock it would be ignored).
    """
    for name, flag, zero in (
        ("num_cpus", "--num-cpus", "0 for all CPUs"),
        ("actors", "--actors", "0 for one per CPU"),  # each actor is a process with a model
    ):
        value = getattr(cfg, name)
        if cfg.ray_address == "local" and value > max_local_cpus():
            raise FleetConfigError(
                f"{name} ({flag}) is {value}, more than a local Ray can use on this machine "
                f"({os.cpu_count()} CPUs); send at most {max_local_cpus()} "
                f"({LOCAL_CPUS_PER_CORE} per CPU), or {zero}"
            )
    if cfg.server_workers > 1 and not cfg.embedded:
        raise FleetConfigError(
            f"server_workers (--server-workers) is {cfg.server_workers}, but the server is "
            f"{cfg.server!r}, which this run does not start; leave it 1, or start that server "
            "with `chord serve --workers N`"
        )
    if cfg.server_workers > (most := max_parallel()):
        raise FleetConfigError(
            f"server_workers (--server-workers) is {cfg.server_workers}; send an integer in "
            f"1..{most} (server processes; at most 4 per usable core)"
        )
    if cfg.clock.behaviour_trace and cfg.clock.mode != "virtual":
        raise FleetConfigError(
            "clock.behaviour_trace (--behaviour-trace) sets when devices are online on the "
            "virtual clock, but the clock is 'rounds'; add --clock virtual ([clock] mode = "
            '"virtual") or leave the trace out'
        )


def _check_clock(c: ClockConfig) -> None:
    """Reject clock values the planner cannot use (ranges from FIELD_BOUNDS, then the mode)."""
    if c.mode not in ("rounds", "virtual"):
        raise FleetConfigError(f"clock.mode must be 'rounds' or 'virtual', got {c.mode!r}")
    _check_fields(c, "clock.")
    if any(not 0 <= t < c.duration_s for t in c.model_releases_s):
        raise FleetConfigError(
            f"clock.model_releases_s must lie in [0, duration_s={c.duration_s:g}), got "
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
    """A FleetConfig from nested dicts (TOML layout: top-level keys, [[tiers]], [drift], ...).

    Raises FleetConfigError naming the key whose value is wrong (or saying data is no table).
    """
    if not isinstance(data, dict):
        raise FleetConfigError(
            f"a fleet config is a table of settings (a JSON object), got "
            f"{type(data).__name__}; send e.g. {{\"devices\": 100}}"
        )
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
    except FleetConfigError as exc:  # a fleet.json edited or damaged since the run started
        raise FleetConfigError(
            f"saved fleet config {path}: {exc}; resume needs the fleet.json this run wrote, or "
            "start over with a fresh --out DIR"
        ) from None


def with_overrides(cfg: FleetConfig, **overrides: Any) -> FleetConfig:
    """A copy with the given top-level fields replaced; None values are ignored."""
    changes = {k: v for k, v in overrides.items() if v is not None}
    return dataclasses.replace(cfg, **changes)
