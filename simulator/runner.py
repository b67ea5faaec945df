"""Run a fleet: start or join the cloud and Ray, schedule devices, inject faults, store, report."""

from __future__ import annotations

import itertools
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, closing, contextmanager
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from chord.data.errors import DataError
from chord.jsonfile import write_json
from chord.process_env import apply_process_env
from chord.protocol import Protocol, check_protocol
from chord.startcheck import StartupError, tls_failure, wait_for_tcp
from device_client.actor import HostConfig
from device_client.device import DeviceJob
from device_client.transport import NetworkFaults, RetryPolicy, Transport, TransportError
from simulator.backend import Backend, BackendError, InProcessBackend, RayBackend
from simulator.clock import OnlineCounter
from simulator.cloud import Cloud, CloudError
from simulator.config import (
    FleetConfig,
    FleetConfigError,
    check_ray_address,
    check_runnable,
    read_saved_config,
    save_config,
)
from simulator.fleet import iter_jobs
from simulator.report import summary_table, write_outputs
from simulator.runstate import RunStateError, check_reports_db, new_state, read_state
from simulator.store import ReportStore
from simulator.summary import fleet_summary
from simulator.timeline import timeline_markdown, write_timeline

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parent.parent
CONFIG_FILE = "fleet.json"
STATE_FILE = "state.json"
DB_FILE = "reports.db"


class SimulationError(RuntimeError):
    """A simulation that cannot start or resume (missing config, mismatched data, no cluster)."""


def _say(message: str) -> None:
    """Progress of a long preparation step, on stderr."""
    print(f"chord simulate: {message}", file=sys.stderr, flush=True)


def prepare_embedded_run(
    cfg: FleetConfig, out_dir: Path | None = None, verbose: bool = True
) -> Path:
    """Train (or reuse) the run of cfg's dataset, backbone, mode, seed and preset; its directory."""
    from chord.hyper.runs import RunConfig, prepare_run

    run_cfg = RunConfig.preset(
        cfg.run_preset, dataset=cfg.dataset, backbone=cfg.backbone, mode=cfg.mode, seed=cfg.seed
    )
    if verbose:
        _say(
            f"preparing the {cfg.run_preset} {cfg.mode} {cfg.backbone} run on {cfg.dataset} "
            "(trained once, then reused from the cache)"
        )
    return prepare_run(run_cfg, out_dir, log=_say if verbose else log.info)


def embedded_run_dir(cfg: FleetConfig, verbose: bool = True) -> Path:
    """The run directory the embedded server serves: cfg.run_dir, or D's cached/trained run."""
    return Path(cfg.run_dir) if cfg.run_dir else prepare_embedded_run(cfg, verbose=verbose)


def load_users(dataset: str, protocol: Protocol | None = None) -> tuple[list[np.ndarray], int]:
    """Every test user's full timeline (test history + test target) and the catalogue size.

    With a protocol, checks it fits every user (ProtocolError names the raw user id).
    """
    from chord.data import leave_one_out, load_dataset

    data = load_dataset(dataset)
    split = leave_one_out(data)
    if protocol is not None:
        check_protocol(protocol, split.n_items, split.seen, split.user_labels, split.name)
    test = split.test
    seqs = [
        np.append(np.asarray(h, dtype=np.int64), int(t))
        for h, t in zip(test.histories, test.targets, strict=True)
    ]
    return seqs, int(data.n_items)


# How long joining a Ray cluster at an address may take before the run gives up.
RAY_CONNECT_TIMEOUT_S = 10.0


def probe_ray(address: str, timeout_s: float = RAY_CONNECT_TIMEOUT_S) -> None:
    """Refuse a Ray address where no gRPC peer answers within timeout_s (Ray retries forever).

    First a TCP connect (nothing listens: "Connection refused"), then, within what is left of
    timeout_s, a gRPC channel to it must turn READY (the HTTP/2 handshake of the GCS answered).
    Raises SimulationError with one line naming the address and what to check.

    'local' and 'none' are not probed; 'auto' is probed at $RAY_ADDRESS when that is set (Ray
    joins it then), else left to Ray, which finds a cluster from this machine's files.
    """
    source = "--ray-address"
    if address == "auto" and os.environ.get("RAY_ADDRESS"):
        address, source = os.environ["RAY_ADDRESS"], "$RAY_ADDRESS"
        try:
            check_ray_address(address)
        except FleetConfigError as exc:
            raise SimulationError(str(exc).replace("ray_address (--ray-address)", source)) from None
        if address in ("local", "auto"):
            return
    if address in ("local", "none", "auto"):
        return
    host, _, port = address.removeprefix("ray://").rpartition(":")
    hint = (
        f"start one there (`ray start --head --port {port}`) or pass --ray-address local"
        + (" (and unset RAY_ADDRESS)" if source == "$RAY_ADDRESS" else "")
    )
    start = time.monotonic()
    try:
        wait_for_tcp(host, int(port), timeout_s, "a Ray cluster", hint)
    except StartupError as exc:
        raise SimulationError(str(exc)) from None
    # Something listens; Ray's GCS (and the Ray Client server behind ray://) speak gRPC over
    # HTTP/2, so a channel turns READY only once the peer answers the HTTP/2 handshake. A silent
    # listener, an HTTP/1 server (the dashboard) or another service never does, and ray.init
    # would then retry "Failed to connect to GCS" forever.
    left = max(timeout_s - (time.monotonic() - start), 0.1)
    channel = grpc.insecure_channel(f"{host}:{port}")
    try:
        grpc.channel_ready_future(channel).result(timeout=left)
    except grpc.FutureTimeoutError:
        raise SimulationError(
            f"cannot join a Ray cluster at {host}:{port} within {timeout_s:g} s (something "
            "listens there but no Ray GCS answered: is it Ray's GCS port, 6379 by default, and "
            f"not the dashboard 8265?); {hint}"
        ) from None
    finally:
        channel.close()


RAY_WORKER_NICENESS_ENV = "RAY_worker_niceness"  # read by the raylet a local Ray starts
LOCAL_RAY_ATTEMPTS = 2  # a raylet that does not register in Ray's 30 s is started once more


def start_local_ray(**init_kwargs: Any) -> None:
    """ray.init(address="local", **init_kwargs): always a new private cluster, never one that a
    `ray start` left running on this machine.

    Its workers run at this process's priority: Ray would start them 15 nice levels lower
    (the raylet's `worker_niceness`), below the driver and its embedded server, although here
    the device actors are the workload; $RAY_worker_niceness, when set, still decides.

    Ray raises a bare Exception when its raylet does not register with the GCS within 30 s
    (seen on a busy machine, and rarely on an idle one); the half-started cluster is shut down
    and started once more. Raises SimulationError after LOCAL_RAY_ATTEMPTS failed starts.
    """
    import ray

    os.environ.setdefault(RAY_WORKER_NICENESS_ENV, "0")  # the raylet reads it at its start
    for attempt in range(1, LOCAL_RAY_ATTEMPTS + 1):
        try:
            ray.init(address="local", **init_kwargs)
            return
        except Exception as exc:  # Ray's startup timeout is a plain Exception
            ray.shutdown()
            if "timed out during startup" not in str(exc) or attempt == LOCAL_RAY_ATTEMPTS:
                raise SimulationError(
                    f"the local Ray did not start ({exc}); check free memory and /dev/shm, "
                    "or pass --ray-address none to run devices in this process"
                ) from exc
            log.warning("local Ray did not start (attempt %d): %s; retrying", attempt, exc)


@contextmanager
def ray_cluster(cfg: FleetConfig) -> Iterator[bool]:
    """Ray for the run: a private local cluster, or join `auto`/an address; yields True if in use.

    A Ray already initialized in this process (a test fixture) is used and left running.
    """
    if cfg.ray_address == "none":
        yield False
        return
    import ray

    if ray.is_initialized():
        yield True
        return
    sigterm = signal.getsignal(signal.SIGTERM)  # ray.init replaces it with a native handler
    worker_env = apply_process_env()  # workers of a cluster joined by address need them too
    if cfg.ray_address == "local":
        os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # private cluster on this machine only
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        path = os.environ.get("PYTHONPATH", "")
        if str(REPO_ROOT) not in path.split(os.pathsep):  # workers import device_client from here
            os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), path) if p)
        start_local_ray(
            num_cpus=cfg.num_cpus or os.cpu_count(), include_dashboard=False,
            log_to_driver=False, logging_level=logging.WARNING,
            runtime_env={"env_vars": worker_env},
        )
    else:
        probe_ray(cfg.ray_address)
        try:
            ray.init(
                address=cfg.ray_address, log_to_driver=False, logging_level=logging.WARNING,
                runtime_env={"env_vars": worker_env},
            )
        except (ConnectionError, RuntimeError) as exc:
            raise SimulationError(
                f"cannot join Ray at {cfg.ray_address!r}: {exc}; start `ray start --head` there "
                "or pass --ray-address local"
            ) from exc
    if callable(sigterm) and threading.current_thread() is threading.main_thread():
        # Ray's handler prints a native stack and aborts, skipping every `finally` below it:
        # the caller's handler (chord simulate: unwind as on Ctrl-C) is put back.
        signal.signal(signal.SIGTERM, sigterm)
    try:
        yield True
    finally:
        ray.shutdown()


@contextmanager
def _one_torch_thread(enabled: bool) -> Iterator[None]:
    """One torch thread here: the server leaves cores to the actors, thread CPU timers are whole."""
    import torch

    before = torch.get_num_threads()
    if enabled:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _host_config(cfg: FleetConfig, target: str, out: Path) -> HostConfig:
    """How device actors reach the cloud and where they keep artifacts, from the fleet config."""
    t, f = cfg.transport, cfg.faults
    return HostConfig(
        target=target,
        policy=RetryPolicy(
            t.call_timeout_s, t.overall_timeout_s, t.max_attempts, t.backoff_base_s, t.backoff_max_s
        ),
        tls_root_ca=t.tls_root_ca,
        token=t.token,
        faults=NetworkFaults(f.net_delay_ms, f.net_jitter_ms, f.net_loss, f.net_stream_cut_bytes),
        fault_seed=f.seed,
        lanes=cfg.lanes,
        artifact_cache_dir=cfg.device_cache_dir or str(out.resolve() / "device-cache"),
        reuse_artifacts=cfg.reuse_artifacts,
    )


def _check_server(cfg: FleetConfig, target: str, n_items: int) -> None:
    """Fail fast when the server's catalogue or tiers do not match the fleet's data and config."""
    t = cfg.transport
    transport = Transport(
        target,
        RetryPolicy(t.call_timeout_s, t.overall_timeout_s, t.max_attempts),
        tls_root_ca=t.tls_root_ca,
        token=t.token,
    )
    try:
        spec, _ = transport.get_model_spec("simulator")
    except TransportError as exc:
        hint = tls_failure(str(exc), "--tls-ca") if exc.reason == "tls_handshake" else None
        if hint is not None:
            raise SimulationError(f"{target}: {hint}") from exc
        raise SimulationError(
            f"cannot reach the strategy service at {target} within "
            f"{t.overall_timeout_s:g} s: {exc}; check that `chord serve` listens there (and "
            "that --token / --tls-ca match its settings)"
        ) from exc
    if spec.n_items != n_items:
        raise SimulationError(
            f"the server's backbone has {spec.n_items} items but dataset {cfg.dataset!r} has "
            f"{n_items}; pass the --dataset the server's run was trained on"
        )
    missing = sorted({tier.name for tier in cfg.tiers} - set(spec.tier_map))
    if missing:
        raise SimulationError(
            f"tiers {missing} are not served; the server has {sorted(spec.tier_map)}"
        )
    for i, tier in enumerate(cfg.tiers):  # a budget outside the tier's range fails every device
        served = spec.tier(tier.name)
        if served and not served.min_budget_bits <= tier.budget_bits <= served.max_budget_bits:
            raise SimulationError(
                f"tiers[{i}] ({tier.name!r}).budget_bits is {tier.budget_bits:g}, outside what "
                f"the server's {tier.name!r} tier reaches; send a budget in "
                f"[{served.min_budget_bits:g}, {served.max_budget_bits:g}]"
            )


def retry_horizon_s(cfg: FleetConfig) -> float:
    """Seconds after a call's first attempt within which a device may still retry it.

    A device's Transport stops retrying once transport.overall_timeout_s has passed since the
    first attempt; twice that leaves a margin for the first attempt's queueing in the server
    and for injected network delay. The embedded server keeps replies and reports this long.
    """
    return 2.0 * cfg.transport.overall_timeout_s


def _state(out: Path, resume: bool) -> dict[str, Any]:
    """The run's persistent state (its request tag); created at start, read back on resume
    (simulator.runstate checks every field)."""
    path = out / STATE_FILE
    if resume and path.exists():
        try:
            return read_state(path)
        except RunStateError as exc:
            raise SimulationError(str(exc)) from None
    state = new_state()
    write_json(path, state, indent=None)
    return state


def _batches(jobs: Iterator[DeviceJob], size: int) -> Iterator[list[DeviceJob]]:
    """Consecutive batches of at most `size` jobs, drawn lazily from `jobs`."""
    while batch := list(itertools.islice(jobs, size)):
        yield batch


def _refill(backend: Backend, batches: Iterator[list[DeviceJob]], window: int, next_id: int) -> int:
    """Submit batches until `window` are queued or running; returns the next batch id.

    Jobs are planned only as the backend needs them, so the driver's memory does not grow with
    the number of devices.
    """
    while backend.pending() < window:
        batch = next(batches, None)
        if batch is None:
            break
        backend.submit(next_id, batch)
        next_id += 1
    return next_id


class _FaultSchedule:
    """Fires the configured actor kill and server restart once each, at device-count thresholds."""

    def __init__(self, cfg: FleetConfig, store: ReportStore, already_done: int) -> None:
        self.cfg = cfg
        self.store = store
        # On resume, faults whose threshold had passed are not re-fired.
        self.kill_pending = cfg.faults.kill_actor_after > already_done
        self.restart_pending = cfg.faults.restart_server_after > already_done
        self.injected: dict[str, int] = {}

    def _note(self, kind: str, detail: str) -> None:
        """Count and store an injected fault."""
        self.injected[kind] = self.injected.get(kind, 0) + 1
        self.store.log_event(kind, detail)

    def tick(self, done: int, backend: Backend, cloud: Cloud) -> None:
        """Fire whatever is due now that `done` devices are stored."""
        f = self.cfg.faults
        if self.kill_pending and done >= f.kill_actor_after and backend.pending():
            self.kill_pending = False
            what = backend.kill_one()
            self._note("actor_killed" if what else "actor_kill_skipped", what or "no actors")
        if self.restart_pending and done >= f.restart_server_after:
            self.restart_pending = False
            if cloud.embedded:
                down = cloud.restart()
                self._note("server_restarted", f"{down:.3f} s down")
            else:
                self._note("server_restart_skipped", "server is not embedded")


def run_simulation(
    cfg: FleetConfig, out: Path, *, resume: bool = False, progress: bool = True
) -> dict[str, Any]:
    """Run (or finish) a simulation into `out`; returns the summary also written to summary.json."""
    out = Path(out)
    if not resume:
        check_runnable(cfg)
        probe_ray(cfg.ray_address)  # before any work: a wrong address fails in seconds
    if resume:
        if not (out / CONFIG_FILE).exists():
            raise SimulationError(
                f"{out} holds no {CONFIG_FILE}; pass the --out DIR of a started run"
            )
        cfg = read_saved_config(out / CONFIG_FILE)
        try:  # damaged saved state is refused before any work (data, Ray, server) starts
            if (out / STATE_FILE).exists():
                read_state(out / STATE_FILE)
            check_reports_db(out / DB_FILE)
        except RunStateError as exc:
            raise SimulationError(str(exc)) from None
        check_runnable(cfg)
        probe_ray(cfg.ray_address)
    else:
        created = not out.exists()
        out.mkdir(parents=True, exist_ok=True)
        if (out / DB_FILE).exists():
            raise SimulationError(
                f"{out} already holds a simulation; use --resume {out} or another --out"
            )
        save_config(cfg, out / CONFIG_FILE)
        try:
            return _simulate(cfg, out, resume=False, progress=progress)
        except BaseException:
            _discard_unstarted(out, created)
            raise
    return _simulate(cfg, out, resume=True, progress=progress)


def _discard_unstarted(out: Path, created: bool) -> None:
    """After a failed start: remove what the run wrote when no device was stored, so that the
    same --out can be used again (not --resume of a run that never ran); else keep it all."""
    db = out / DB_FILE
    if db.exists():
        import sqlite3

        try:
            with closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as conn:
                if conn.execute("SELECT COUNT(*) FROM devices").fetchone()[0]:
                    return
        except sqlite3.Error:
            pass  # no devices table yet: nothing was stored
    for name in (CONFIG_FILE, STATE_FILE, DB_FILE, f"{DB_FILE}-wal", f"{DB_FILE}-shm",
                 f"{DB_FILE}-journal"):
        (out / name).unlink(missing_ok=True)
    if created and not any(out.iterdir()):
        out.rmdir()


def _simulate(cfg: FleetConfig, out: Path, *, resume: bool, progress: bool) -> dict[str, Any]:
    """The run itself, once fleet.json is in place (run_simulation's body)."""
    try:
        sequences, n_items = load_users(cfg.dataset, Protocol(cfg.ranking, cfg.negatives))
    except DataError as exc:
        raise SimulationError(str(exc)) from None
    state = _state(out, resume)
    start = time.perf_counter()
    virtual = cfg.clock.mode == "virtual"
    online = OnlineCounter(cfg.clock.duration_s) if virtual else None
    jobs = iter_jobs(cfg, sequences, state["request_tag"], online)
    store = ReportStore(out / DB_FILE)
    if resume:
        store.log_event("resumed", f"{len(store.done_ids())} devices already stored")
    threads = ExitStack()  # restored in the finally below (tests run many simulations)
    threads.enter_context(_one_torch_thread(True))  # in-process devices time their thread
    try:
        cloud = (
            Cloud.start_embedded(
                embedded_run_dir(cfg, progress),
                token=cfg.transport.token or None,
                workers=cfg.server_workers,
                retry_horizon_s=retry_horizon_s(cfg),
            )
            if cfg.embedded
            else Cloud.external(cfg.server)
        )
    except CloudError as exc:  # a run that cannot serve, said in one line
        threads.close()
        raise SimulationError(str(exc)) from None
    except BaseException:
        threads.close()
        raise
    duplicates = 0
    backend: Backend | None = None
    try:
        _check_server(cfg, cloud.target, n_items)
        with ray_cluster(cfg) as use_ray:
            backend = RayBackend(cfg.actors) if use_ray else InProcessBackend()
            try:
                backend.build(_host_config(cfg, cloud.target, out))
            except BackendError as exc:
                raise SimulationError(str(exc)) from None
            done = store.done_ids()
            todo = _batches((j for j in jobs if j.device_id not in done), cfg.batch_size)
            window = 4 * max(1, backend.stats.actors)  # batches queued or running at once
            faults = _FaultSchedule(cfg, store, len(done))
            next_id = _refill(backend, todo, window, 0)
            bar = _progress(progress, cfg.devices, len(done))
            while backend.pending():
                for result in backend.collect(timeout_s=1.0):
                    for report in result.reports:
                        if store.add(report):
                            bar.update(1)
                        else:
                            duplicates += 1
                faults.tick(bar.n, backend, cloud)
                next_id = _refill(backend, todo, window, next_id)
            bar.close()
            stats = backend.stats
            backend.terminate()
    finally:
        cloud.stop()
        threads.close()
    timeline = (
        write_timeline(out, store, online, cfg.clock.duration_s) if online is not None else None
    )
    summary = fleet_summary(cfg.devices, store)
    summary.update(
        wall_s=time.perf_counter() - start,
        duplicates=duplicates,
        resumed=resume,
        catalogue_items=n_items,
        server="embedded" if cfg.embedded else cfg.server,
        backend={
            "actors": stats.actors,
            "actors_replaced": stats.actors_replaced,
            "batches_rerun": stats.batches_rerun,
            "nodes": stats.nodes,
        },
        faults_injected=faults.injected,
        server_restarts=cloud.restarts,
        events=[{"kind": e["kind"], "detail": e["detail"]} for e in store.events()],
        clock=cfg.clock.mode,
    )
    if timeline is not None:
        summary["timeline"] = timeline
    write_outputs(out, summary, store, timeline_markdown(timeline) if timeline else None)
    store.close()
    if progress:
        print(summary_table(summary))
    return summary


class _Bar:
    """The tqdm interface used here, without output (progress=False)."""

    def __init__(self, initial: int) -> None:
        self.n = initial

    def update(self, k: int) -> None:
        """Count k more devices."""
        self.n += k

    def close(self) -> None:
        """Nothing to close."""


def _progress(enabled: bool, total: int, initial: int) -> Any:
    """A tqdm bar over devices, or a silent counter."""
    if not enabled:
        return _Bar(initial)
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, unit="device", desc="fleet")
