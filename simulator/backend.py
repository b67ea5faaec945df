"""Where device jobs run: a backend interface (build, submit, collect, terminate), two backends."""

from __future__ import annotations

import logging
import os
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Protocol

from device_client.actor import DeviceHost, HostConfig, device_actor_class
from device_client.device import DeviceJob, DeviceReport

log = logging.getLogger(__name__)


ACTOR_START_TIMEOUT_S = 180.0  # device actors must all answer within this after being created


class BackendError(RuntimeError):
    """The execution backend cannot start or lost its cluster."""


@dataclass
class BatchResult:
    """Reports of one finished batch."""

    batch_id: int
    reports: list[DeviceReport]


@dataclass
class BackendStats:
    """What happened to the workers: replacements after actor deaths, re-run batches."""

    actors: int = 0
    actors_replaced: int = 0
    batches_rerun: int = 0
    killed: list[str] = field(default_factory=list)
    nodes: list[str] = field(default_factory=list)  # Ray node ids the first actors started on


class Backend(Protocol):
    """Runs batches of device jobs somewhere and hands back their reports."""

    stats: BackendStats

    def build(self, host: HostConfig) -> None:
        """Start the workers."""

    def submit(self, batch_id: int, jobs: list[DeviceJob]) -> None:
        """Queue a batch."""

    def collect(self, timeout_s: float) -> list[BatchResult]:
        """Batches finished within timeout_s (possibly none)."""

    def pending(self) -> int:
        """Batches queued or running."""

    def kill_one(self) -> str:
        """Fault injection: kill a busy worker; its batch must still finish elsewhere."""

    def terminate(self) -> None:
        """Stop the workers."""


class InProcessBackend:
    """Runs batches in the calling process, one per collect call (tests, `--ray-address none`)."""

    def __init__(self) -> None:
        self.stats = BackendStats(actors=1)
        self._queue: deque[tuple[int, list[DeviceJob]]] = deque()
        self._host: DeviceHost | None = None

    def build(self, host: HostConfig) -> None:
        """Create the in-process device host."""
        self._host = DeviceHost(host)

    def submit(self, batch_id: int, jobs: list[DeviceJob]) -> None:
        """Queue a batch."""
        self._queue.append((batch_id, jobs))

    def collect(self, timeout_s: float) -> list[BatchResult]:
        """Run the next queued batch now."""
        if not self._queue or self._host is None:
            return []
        batch_id, jobs = self._queue.popleft()
        return [BatchResult(batch_id, self._host.run_batch(jobs))]

    def pending(self) -> int:
        """Batches queued."""
        return len(self._queue)

    def kill_one(self) -> str:
        """Nothing to kill in-process; the fault is reported as skipped."""
        return ""

    def terminate(self) -> None:
        """Drop queued work and stop the host's lane threads."""
        self._queue.clear()
        if self._host is not None:
            self._host.close()


class RayBackend:
    """A pool of device actors sized to the cluster; a dead actor is replaced, its batches re-run.

    Each actor is kept `depth` batches deep (Ray runs an actor's tasks in order), so it starts
    its next batch without waiting for the driver to collect the last one and submit another.
    """

    def __init__(self, n_actors: int = 0, depth: int = 2) -> None:
        self.n_actors = n_actors
        self.depth = max(1, depth)
        self.stats = BackendStats()
        self._host: HostConfig | None = None
        self._cpus = 1.0  # CPUs each actor reserves
        self._actors: list[Any] = []
        self._load: list[int] = []  # batches in flight on each slot's current actor
        self._gen: list[int] = []  # bumped when a slot's actor is replaced
        self._queue: deque[tuple[int, list[DeviceJob]]] = deque()
        self._running: dict[Any, tuple[int, int, int, list[DeviceJob]]] = {}

    def build(self, host: HostConfig, start_timeout_s: float = ACTOR_START_TIMEOUT_S) -> None:
        """Start n_actors actors (default: the cluster's CPUs) and wait until they answer.

        Raises BackendError when they do not all answer within start_timeout_s (a joined
        cluster whose CPUs other jobs hold would otherwise keep them pending forever).
        """
        import ray

        if not ray.is_initialized():
            raise BackendError("Ray is not initialized; call ray.init before building the pool")
        self._host = host
        cpus = float(ray.cluster_resources().get("CPU", os.cpu_count() or 1))
        n = self.n_actors or max(1, int(cpus))
        self._cpus = min(1.0, cpus / n)  # more actors than CPUs share them
        self._actors = [self._new_actor() for _ in range(n)]
        try:
            nodes = ray.get([a.node_id.remote() for a in self._actors], timeout=start_timeout_s)
        except ray.exceptions.GetTimeoutError:
            self.terminate()
            raise BackendError(
                f"{n} device actor(s) did not start within {start_timeout_s:g} s on a Ray cluster "
                f"of {cpus:g} CPUs (other jobs may hold them: `ray status` shows what is used); "
                "free CPUs there, pass a smaller --actors, or --ray-address local for a private "
                "cluster"
            ) from None
        self.stats.nodes = sorted(set(nodes))
        self._load = [0] * n
        self._gen = [0] * n
        self.stats.actors = n

    def submit(self, batch_id: int, jobs: list[DeviceJob]) -> None:
        """Queue a batch; it is handed to an actor with fewer than `depth` batches in flight."""
        self._queue.append((batch_id, jobs))
        self._dispatch()

    def _dispatch(self) -> None:
        """Hand queued batches to the least loaded actors, up to `depth` each."""
        while self._queue and self._actors:
            idx = min(range(len(self._actors)), key=self._load.__getitem__)
            if self._load[idx] >= self.depth:
                return
            batch_id, jobs = self._queue.popleft()
            ref = self._actors[idx].run_batch.remote(jobs)
            self._running[ref] = (idx, self._gen[idx], batch_id, jobs)
            self._load[idx] += 1

    def _new_actor(self) -> Any:
        """Start one device actor."""
        cls: Any = device_actor_class()
        return cls.options(num_cpus=self._cpus).remote(self._host)

    def _replace(self, idx: int) -> None:
        """Start a fresh actor in slot idx."""
        self._actors[idx] = self._new_actor()
        self._load[idx] = 0
        self._gen[idx] += 1
        self.stats.actors_replaced += 1

    def collect(self, timeout_s: float) -> list[BatchResult]:
        """Finished batches; batches whose actor died go back to the queue for a new actor."""
        import ray
        from ray.exceptions import RayActorError

        self._dispatch()
        if not self._running:
            return []
        ready, _ = ray.wait(list(self._running), num_returns=1, timeout=timeout_s)
        out = []
        for ref in ready:
            idx, gen, batch_id, jobs = self._running.pop(ref)
            current = gen == self._gen[idx]
            try:
                out.append(BatchResult(batch_id, ray.get(ref)))
            except RayActorError as exc:
                if current:  # the slot's other in-flight batches fail the same way, later
                    log.warning("actor %d died in batch %d (%s); replacing", idx, batch_id, exc)
                    self._replace(idx)
                self._queue.appendleft((batch_id, jobs))
                self.stats.batches_rerun += 1
                continue
            if current:
                self._load[idx] -= 1
        self._dispatch()
        return out

    def pending(self) -> int:
        """Batches queued or running."""
        return len(self._queue) + len(self._running)

    def kill_one(self) -> str:
        """ray.kill a busy actor (or any, if none is busy); returns a description."""
        import ray

        if not self._actors:
            return ""
        idx = next(iter(self._running.values()))[0] if self._running else 0  # a busy one
        ray.kill(self._actors[idx], no_restart=True)
        what = f"actor {idx}"
        self.stats.killed.append(what)
        return what

    def terminate(self) -> None:
        """Kill every actor."""
        import ray

        for actor in self._actors:
            try:
                ray.kill(actor, no_restart=True)
            except Exception as exc:  # already dead is fine at shutdown
                log.debug("kill at terminate: %s", exc)
        self._actors.clear()
        self._running.clear()
        self._queue.clear()
