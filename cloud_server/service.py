"""The strategy service without gRPC: readiness, bounded concurrency, validation, dedup, reports."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from contextlib import contextmanager

from chord.artifacts import ArtifactChunk, ArtifactRequest
from chord.spec import DeviceReport, ModelSpec, ReportOutcome
from chord.strategy import StrategyRequest, StrategyResult
from cloud_server.batching import Dispatcher, make_dispatcher
from cloud_server.config import ServerConfig
from cloud_server.dedup import RequestCache
from cloud_server.engine import EchoEngine, Engine, StrategyEngine
from cloud_server.errors import ModelNotReadyError, OverloadedError
from cloud_server.metrics import ServerMetrics
from cloud_server.reports import ReportStore
from cloud_server.validation import (
    validate_artifact_request,
    validate_report,
    validate_strategy_request,
)

__all__ = ["StrategyService", "load_engine"]

log = logging.getLogger(__name__)


def load_engine(cfg: ServerConfig) -> Engine:
    """The engine cfg asks for: echo (with the run's spec if a run is given) or the real one."""
    if cfg.echo:
        return EchoEngine.from_run_dir(cfg.run_dir) if cfg.run_dir is not None else EchoEngine()
    assert cfg.run_dir is not None  # ServerConfig guarantees it
    return StrategyEngine.from_run_dir(cfg.run_dir)


def unservable_reason(exc: BaseException) -> str:
    """One line saying why load_engine failed (RunError, CheckpointError, TextFileError and
    other ValueErrors as their message; anything else prefixed with its type)."""
    reason = (str(exc).splitlines() or [type(exc).__name__])[0]
    return reason if isinstance(exc, ValueError) else f"{type(exc).__name__}: {reason}"


class StrategyService:
    """Serves strategies, the model spec and device reports; raises ServiceError subclasses."""

    def __init__(
        self,
        cfg: ServerConfig,
        engine: Engine | None = None,
        metrics: ServerMetrics | None = None,
        worker: int = 0,
    ) -> None:
        """engine: a ready engine (e.g. shared by tests); None = load from cfg in load().

        worker: this process's index under `chord serve --workers N` (0 for one process); it
        travels in every strategy reply's timings.
        """
        self.cfg = cfg
        self.worker = worker
        self.metrics = metrics or ServerMetrics()
        self.engine: Engine | None = engine
        self.dispatcher: Dispatcher | None = None
        self.cache = RequestCache(cfg.dedup_window_s, cfg.dedup_max_entries)
        # Stored reports are checked as ReportMetrics calls are, against the served tiers when
        # the engine is already loaded (`chord serve` loads it before binding).
        self.reports = ReportStore(
            cfg.reports_path,
            tiers=engine.spec.tiers if engine is not None else None,
            max_age_s=cfg.report_window_s,
        )
        self.in_flight = 0
        self.artifact_streams = 0
        self.load_error: str | None = None
        self.load_task: asyncio.Task[None] | None = None
        self.health: object | None = None  # the health servicer create_server registered
        self.drain: object | None = None  # the DrainGate create_server installed

    @property
    def ready(self) -> bool:
        """True once the engine is loaded and the dispatcher runs."""
        return self.dispatcher is not None

    async def load(self) -> None:
        """Load the engine (in a worker thread) and start the dispatcher."""
        if self.engine is None:
            try:
                self.engine = await asyncio.to_thread(load_engine, self.cfg)
            except Exception as exc:
                self.load_error = f"{type(exc).__name__}: {exc}"
                raise
        dispatcher = make_dispatcher(
            self.engine,
            self.cfg.max_batch,
            self.cfg.max_wait_ms,
            on_batch=self.metrics.batch_size.observe,
            on_dropped=self.metrics.drop,
            worker=self.worker,
        )
        await dispatcher.start()
        self.dispatcher = dispatcher
        log.info("model %s loaded; serving", self.engine.spec.version)

    async def close(self) -> None:
        """Stop the dispatcher and the metrics exporter."""
        if self.dispatcher is not None:
            await self.dispatcher.stop()
        self.metrics.stop_http()

    def _not_ready(self) -> ModelNotReadyError:
        """Why nothing can be served yet."""
        if self.load_error is not None:
            return ModelNotReadyError(
                f"the model failed to load ({self.load_error}); fix the server"
            )
        return ModelNotReadyError("the model is still loading; retry when health reports SERVING")

    def model_spec(self) -> ModelSpec:
        """The spec of the served backbone."""
        if self.engine is None:
            raise self._not_ready()
        return self.engine.spec

    async def get_strategy(self, req: StrategyRequest, deadline: float | None) -> StrategyResult:
        """Validate, deduplicate and compute one strategy within the concurrency bound."""
        if self.dispatcher is None or self.engine is None:
            raise self._not_ready()
        if self.in_flight >= self.cfg.max_concurrency:
            raise OverloadedError(
                f"the server already serves {self.cfg.max_concurrency} strategy calls; "
                "retry after a backoff"
            )
        self.in_flight += 1
        self.metrics.in_flight.inc()
        try:
            validate_strategy_request(req, self.engine.spec)
            dispatcher = self.dispatcher
            return await self.cache.run(req, lambda: dispatcher.submit(req, deadline))
        finally:
            self.in_flight -= 1
            self.metrics.in_flight.dec()

    def artifact_chunks(self, req: ArtifactRequest) -> Iterator[ArtifactChunk]:
        """The chunks of one FetchArtifact call; every check runs before the first chunk.

        Raises InvalidRequestError (digest or max_chunk_bytes malformed), NotFoundError (digest
        not served), OutOfRangeError (offset past the end) or ModelNotReadyError.
        """
        if self.engine is None:
            raise self._not_ready()
        validate_artifact_request(req)
        return self.engine.artifacts.chunks(req.digest, req.offset, req.max_chunk_bytes)

    @contextmanager
    def artifact_stream(self) -> Iterator[None]:
        """Hold one of cfg.max_artifact_streams download slots; OverloadedError if none is free."""
        if self.artifact_streams >= self.cfg.max_artifact_streams:
            raise OverloadedError(
                f"the server already serves {self.cfg.max_artifact_streams} artifact downloads; "
                "retry after a backoff from the bytes already received"
            )
        self.artifact_streams += 1
        try:
            yield
        finally:
            self.artifact_streams -= 1

    def report(self, report: DeviceReport) -> ReportOutcome:
        """Store a device's report once per (device_id, round)."""
        validate_report(report, self.model_spec().tiers)
        return self.reports.record(report)
