"""A thin Ray actor hosting many virtual devices: one torch-loaded process runs batches of jobs."""

from __future__ import annotations

import logging
import os
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from chord.heap import freeze_startup_heap
from device_client.artifacts import ArtifactCache, default_cache_dir
from device_client.device import DeviceJob, DeviceReport, VirtualDevice
from device_client.transport import NetworkFaults, RetryPolicy, Transport

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class HostConfig:
    """How every device in a host process reaches the cloud."""

    target: str  # HOST:PORT of the strategy service
    policy: RetryPolicy = field(default_factory=RetryPolicy)
    tls_root_ca: str = ""
    token: str = ""
    faults: NetworkFaults = field(default_factory=NetworkFaults)
    fault_seed: int = 0
    lanes: int = 1  # devices of a batch run at once (threads); >1 keeps the server batching
    artifact_cache_dir: str = ""  # devices' artifact cache on this host; "" = default_cache_dir()
    # False: every device downloads every artifact (a fresh phone; the shared cache only saves
    # disk); True: a device uses what an earlier device of this host fetched (returning phones).
    reuse_artifacts: bool = False


class DeviceHost:
    """Runs device jobs in this process; the Ray actor below is a shell around it."""

    def __init__(self, cfg: HostConfig) -> None:
        self.cfg = cfg
        self._pool: ThreadPoolExecutor | None = None
        root = cfg.artifact_cache_dir or default_cache_dir()
        self.cache = ArtifactCache(root)

    def transport_for(self, job: DeviceJob) -> Transport:
        """A per-device transport (own jitter and fault streams) over the shared channel."""
        seed = zlib.crc32(job.device_id.encode()) ^ (self.cfg.fault_seed * 1_000_003)
        return Transport(
            self.cfg.target,
            self.cfg.policy,
            tls_root_ca=self.cfg.tls_root_ca,
            token=self.cfg.token,
            faults=self.cfg.faults,
            seed=seed,
        )

    def run_one(self, job: DeviceJob) -> DeviceReport:
        """Run one job; an unexpected error becomes a failed report naming the error type."""
        try:
            return VirtualDevice(
                job, self.transport_for(job), self.cache, self.cfg.reuse_artifacts
            ).run()
        except Exception as exc:  # one broken device must not lose its batch-mates' reports
            log.exception("device %s crashed", job.device_id)
            return DeviceReport(
                job.device_id,
                job.tier,
                job.user_index,
                status="failed",
                reason=f"crash:{type(exc).__name__}",
                detail=repr(exc)[:500],
                worker_pid=os.getpid(),
            )

    def run_batch(self, jobs: list[DeviceJob]) -> list[DeviceReport]:
        """Run each job to completion (or reported failure); reports in job order.

        With lanes > 1, up to `lanes` devices run at once on threads: one device computes while
        others wait for the cloud, and the server's micro-batcher sees several requests at once.
        """
        if self.cfg.lanes <= 1 or len(jobs) <= 1:
            return [self.run_one(job) for job in jobs]
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.cfg.lanes, thread_name_prefix="device-lane")
        return list(self._pool.map(self.run_one, jobs))

    def close(self) -> None:
        """Stop the lane threads (idle ones; a running batch finishes first)."""
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None


def _make_actor_class() -> type:
    """Define the Ray actor lazily, so importing this module never imports Ray."""
    import ray

    @ray.remote(num_cpus=1, max_restarts=0)
    class DeviceActor:
        """Ray actor: one process, one torch thread, many virtual devices."""

        def __init__(self, cfg: HostConfig) -> None:
            import torch

            torch.set_num_threads(1)
            self.host = DeviceHost(cfg)
            # A dedicated process from here on: its imports stay out of full collections,
            # which would otherwise stall every device of this host (chord.heap).
            freeze_startup_heap()

        def pid(self) -> int:
            """The worker's process id (fault injection and tests)."""
            return os.getpid()

        def node_id(self) -> str:
            """The Ray node this actor runs on (hex id)."""
            return str(ray.get_runtime_context().get_node_id())

        # No task events: Ray's GCS keeps each task's status events for as long as the cluster
        # runs (measured on a virtual-clock day: its RSS grew 0.65 to 1.2 MiB per thousand
        # devices, 7 to 12 KB per batch task of 10 devices, and 0.27 MiB without them); the
        # simulator stores what every device of a batch did itself (reports.db).
        @ray.method(enable_task_events=False)
        def run_batch(self, jobs: list[DeviceJob]) -> list[DeviceReport]:
            """Run a batch of device jobs and return their reports."""
            return self.host.run_batch(jobs)

    return DeviceActor


_actor_class: type | None = None


def device_actor_class() -> type:
    """The Ray actor class (created on first use)."""
    global _actor_class
    if _actor_class is None:
        _actor_class = _make_actor_class()
    return _actor_class
