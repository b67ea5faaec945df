"""Server wiring: gRPC aio server, health, reflection, limits, TLS, token, graceful shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Callable

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2

from chord.heap import freeze_startup_heap
from chord.startcheck import join_host_port
from cloud_server.auth import TokenInterceptor
from cloud_server.config import ServerConfig
from cloud_server.drain import DrainGate
from cloud_server.engine import Engine
from cloud_server.service import StrategyService
from cloud_server.servicer import StrategyServicer
from cloud_server.tolerant import REFLECTION_V1, TolerantDecodeInterceptor
from protos.serde import METHOD_CODECS, SERVICE_NAME, STREAM_METHOD_CODECS

__all__ = [
    "HEALTH_SERVICES",
    "REFLECTION_V1",
    "create_server",
    "serve",
    "serve_async",
    "stop_server",
]

log = logging.getLogger(__name__)

# After the grace period, how long calls failed with UNAVAILABLE get to send that status.
DRAIN_TAIL_S = 0.2

# Health is reported for the whole server ("") and for the strategy service by name.
HEALTH_SERVICES = ("", SERVICE_NAME)


class _Health(health.aio.HealthServicer):
    """The standard async health servicer, starting NOT_SERVING for our services."""

    def __init__(self) -> None:
        super().__init__()
        self._server_status = dict.fromkeys(
            HEALTH_SERVICES, health_pb2.HealthCheckResponse.NOT_SERVING
        )

    async def serving(self) -> None:
        """Mark every service SERVING."""
        for name in HEALTH_SERVICES:
            await self.set(name, health_pb2.HealthCheckResponse.SERVING)

    async def List(
        self, request: health_pb2.HealthListRequest, context: grpc.aio.ServicerContext
    ) -> health_pb2.HealthListResponse:
        """Every service's status (grpc.health.v1 List; the library's async servicer lacks it)."""
        return health_pb2.HealthListResponse(
            statuses={
                name: health_pb2.HealthCheckResponse(status=status)
                for name, status in self._server_status.items()
            }
        )




def _enable_reflection(server: grpc.aio.Server) -> None:
    """Server reflection under both grpc.reflection.v1 and grpc.reflection.v1alpha."""
    names = (SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME, REFLECTION_V1)
    reflection.enable_server_reflection(names, server)
    servicer = reflection.aio.ReflectionServicer(names)
    handler = grpc.stream_stream_rpc_method_handler(
        servicer.ServerReflectionInfo,
        request_deserializer=reflection_pb2.ServerReflectionRequest.FromString,
        response_serializer=reflection_pb2.ServerReflectionResponse.SerializeToString,
    )
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(REFLECTION_V1, {"ServerReflectionInfo": handler}),)
    )


async def _bring_up(service: StrategyService, health_servicer: _Health) -> None:
    """Load the model, then report SERVING; on failure stay NOT_SERVING and log why."""
    try:
        await service.load()
    except Exception:
        log.error("model failed to load (%s); health stays NOT_SERVING", service.load_error)
        raise
    await health_servicer.serving()


def _add_strategy_service(server: grpc.aio.Server, servicer: StrategyServicer) -> None:
    """Register the servicer with tolerant parsers (corrupt bytes -> INVALID_ARGUMENT)."""
    handlers = {
        name: grpc.unary_unary_rpc_method_handler(
            getattr(servicer, name), request_deserializer=parse, response_serializer=serialize
        )
        for name, (parse, serialize) in METHOD_CODECS.items()
    }
    handlers.update(
        {
            name: grpc.unary_stream_rpc_method_handler(
                getattr(servicer, name), request_deserializer=parse, response_serializer=serialize
            )
            for name, (parse, serialize) in STREAM_METHOD_CODECS.items()
        }
    )
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE_NAME, handlers),))


def _credentials(cfg: ServerConfig) -> grpc.ServerCredentials | None:
    """TLS server credentials when cfg names a certificate and key."""
    if cfg.tls_cert is None or cfg.tls_key is None:
        return None
    return grpc.ssl_server_credentials([(cfg.tls_key.read_bytes(), cfg.tls_cert.read_bytes())])


def create_server(
    address: str,
    cfg: ServerConfig,
    service: StrategyService | None = None,
    reuse_port: bool = False,
) -> tuple[grpc.aio.Server, int]:
    """Build and bind (not start) a server on address ("host:port", port 0 = any free port).

    Must be called with a running event loop. The model loads in the background once the loop
    runs; health reports NOT_SERVING until then. Pass your own `service` to reach its metrics
    and to close it (`stop_server`) after the server stops. reuse_port=True sets SO_REUSEPORT
    so several processes share the port (`chord serve --workers N`); off, a second server on
    the same port fails to bind instead of silently sharing it.
    """
    loop = asyncio.get_running_loop()
    service = service or StrategyService(cfg)
    gate = DrainGate()
    interceptors: list[grpc.aio.ServerInterceptor] = [gate]
    if cfg.token is not None:
        interceptors.append(
            TokenInterceptor(
                cfg.token,
                on_reject=lambda m: service.metrics.observe(
                    m.rsplit("/", 1)[-1], "UNAUTHENTICATED", 0.0
                ),
            )
        )
    interceptors.append(TolerantDecodeInterceptor())  # innermost: wraps the real handlers
    server = grpc.aio.server(
        interceptors=interceptors,
        options=[
            ("grpc.max_receive_message_length", cfg.max_receive_bytes),
            ("grpc.max_send_message_length", cfg.max_send_bytes),
            ("grpc.so_reuseport", 1 if reuse_port else 0),
        ],
    )
    _add_strategy_service(server, StrategyServicer(service))
    health_servicer = _Health()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    _enable_reflection(server)
    creds = _credentials(cfg)
    try:
        port = (
            server.add_secure_port(address, creds) if creds else server.add_insecure_port(address)
        )
    except RuntimeError as exc:
        raise OSError(f"cannot bind {address!r} ({exc}); pass a free port or port 0") from exc
    if port == 0:
        raise OSError(f"cannot bind {address!r}; pass a free port or port 0")
    service.health = health_servicer
    service.drain = gate
    service.load_task = loop.create_task(_bring_up(service, health_servicer), name="chord-load")
    return server, port


async def stop_server(server: grpc.aio.Server, service: StrategyService, grace_s: float) -> None:
    """Graceful stop within grace_s seconds (see cloud_server.drain for the rule).

    Health turns NOT_SERVING; calls already on the wire are admitted and run to completion;
    later calls get UNAVAILABLE; once the admitted calls are done (or grace_s has passed; when
    a download ran during the drain, once grace_s has passed, so that its buffered last chunks
    reach the client) the server stops, the model load is cancelled if still running, and the
    service closes.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + grace_s
    if isinstance(service.health, _Health):
        await service.health.enter_graceful_shutdown()
    gate = service.drain
    tail = 0.0
    if isinstance(gate, DrainGate) and grace_s > 0:
        await gate.close_admission(max_admit_s=min(0.25, grace_s / 2))
        if not await gate.wait_idle(deadline - loop.time()):
            log.warning(
                "grace period of %.1f s spent with %d calls still running; they get UNAVAILABLE",
                grace_s, gate.active,
            )
            await service.close()  # fails every queued or computing strategy call: UNAVAILABLE
            tail = DRAIN_TAIL_S
        elif gate.streamed:
            # A download's last chunks may still wait on the client (see cloud_server.drain):
            # keep the connections open, refusing new calls, for the rest of the grace period.
            log.info("a download ran during the drain: holding connections for the rest of "
                     "the %.1f s grace period so its last chunks reach the client", grace_s)
            await asyncio.sleep(max(0.0, deadline - loop.time() - DRAIN_TAIL_S))
            tail = DRAIN_TAIL_S
        if gate.refused:
            log.info("refused %d calls with UNAVAILABLE while draining", gate.refused)
    await server.stop(max(tail, deadline - loop.time()))
    if service.load_task is not None and not service.load_task.done():
        service.load_task.cancel()
    if service.load_task is not None:
        with contextlib.suppress(BaseException):
            await service.load_task
    await service.close()


async def serve_async(
    cfg: ServerConfig,
    address: str,
    on_bound: Callable[[int], None] | None = None,
    reuse_port: bool = False,
    worker: int = 0,
    on_ready: Callable[[], None] | None = None,
    engine: Engine | None = None,
) -> int:
    """Run until SIGTERM/SIGINT, then drain within cfg.grace_s; returns the exit status.

    on_bound(port) runs once the port is bound, on_ready() once the model is loaded (health
    SERVING). reuse_port and worker: set by `chord serve --workers N` (cloud_server.workers)
    for each of its processes; see create_server and StrategyService. engine: one already
    loaded (`chord serve` loads the run before binding); None = load it after binding.
    """
    service = StrategyService(cfg, engine=engine, worker=worker)
    server, port = create_server(address, cfg, service, reuse_port=reuse_port)
    await server.start()
    if cfg.metrics_port:
        try:
            bound = service.metrics.serve_http(cfg.metrics_port, cfg.metrics_host)
        except OSError as exc:  # taken since `chord serve` checked it: stop cleanly, then say so
            await stop_server(server, service, 0.0)
            raise OSError(
                f"--metrics-port {cfg.metrics_port} cannot be bound on {cfg.metrics_host} "
                f"({exc.strerror or exc}); send a free port, or 0 for no exporter"
            ) from None
        log.info("metrics on http://%s/metrics", join_host_port(cfg.metrics_host, bound))
    if on_bound is not None:
        on_bound(port)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()

    def on_signal() -> None:
        if stop.is_set():
            log.info("already draining; in-flight calls get up to %.1f s", cfg.grace_s)
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal)
    assert service.load_task is not None
    stop_wait = loop.create_task(stop.wait())
    await asyncio.wait({stop_wait, service.load_task}, return_when=asyncio.FIRST_COMPLETED)
    status = 0
    if service.load_task.done() and service.load_task.exception() is not None:
        log.error("exiting: the model failed to load (%s)", service.load_error)
        status = 1
    else:
        if service.load_task.done():
            # This process is a server from here on: what it loaded stays out of full
            # collections, whose pass over it stalled every call 150-250 ms (chord.heap).
            frozen = freeze_startup_heap()
            log.info("%d startup objects frozen out of garbage collection", frozen)
            if on_ready is not None:
                on_ready()
        await stop_wait
        log.info("signal received; draining in-flight calls for up to %.1f s", cfg.grace_s)
    stop_wait.cancel()
    # Handlers stay installed while draining: a repeated signal must not abort the drain.
    await stop_server(server, service, cfg.grace_s)
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.remove_signal_handler(sig)
    log.info("stopped")
    return status


def serve(
    cfg: ServerConfig,
    address: str,
    on_bound: Callable[[int], None] | None = None,
    on_ready: Callable[[], None] | None = None,
    engine: Engine | None = None,
) -> int:
    """Blocking entry point: serve_async on a fresh event loop."""
    return asyncio.run(serve_async(cfg, address, on_bound, on_ready=on_ready, engine=engine))
