"""`chord serve`: run the gRPC strategy service from the command line."""

from __future__ import annotations

import argparse
import logging
import sys

from chord.startcheck import (
    StartupError,
    check_bindable,
    check_dir,
    check_host,
    check_in_range,
    check_int,
    check_out_file,
    check_port,
    join_host_port,
    max_parallel,
    path_arg,
    token_setting,
)
from chord.textfile import TextFileError
from cloud_server.config import MIB, ServerConfig, metrics_dir_setting
from cloud_server.errors import ReportFileError
from cloud_server.logbudget import install_log_budget

log = logging.getLogger("cloud_server")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Declare the flags of `chord serve`."""
    parser.add_argument(
        "--run", type=path_arg, help="run directory (run.json, backbone.pt, hypernet.pt)"
    )
    parser.add_argument("--host", default="0.0.0.0", help="address to bind (default 0.0.0.0)")
    parser.add_argument("--port", type=int, default=50051, help="port to bind; 0 = any free port")
    parser.add_argument(
        "--max-batch", type=int, default=32, help="requests per forward pass; 1 = unbatched"
    )
    parser.add_argument(
        "--max-wait-ms", type=float, default=2.0, help="batch wait after the first request"
    )
    parser.add_argument(
        "--max-concurrency",
        type=int,
        default=256,
        help="in-flight GetStrategy calls before RESOURCE_EXHAUSTED",
    )
    parser.add_argument(
        "--max-receive-mib", type=float, default=1.0, help="largest request message, MiB"
    )
    parser.add_argument(
        "--metrics-port", type=int, default=0,
        help="Prometheus exporter port, bound on --host like the gRPC port; 0 = off"
    )
    parser.add_argument(
        "--tls-cert", type=path_arg, help="PEM certificate chain (enables TLS with --tls-key)"
    )
    parser.add_argument("--tls-key", type=path_arg, help="PEM private key")
    parser.add_argument(
        "--token",
        default=None,
        help="bearer token required on every call but health (default: $CHORD_TOKEN)",
    )
    parser.add_argument(
        "--echo", action="store_true", help="fixed replies, no model work (load ceiling)"
    )
    parser.add_argument(
        "--grace-s", type=float, default=10.0, help="drain period after SIGTERM, seconds"
    )
    parser.add_argument("--reports", type=path_arg, help="JSONL file to append device reports to")
    parser.add_argument(
        "--workers",
        type=int,
        default=1,
        help="server processes sharing the port (SO_REUSEPORT), each with its own engine; "
        "metrics of all of them on --metrics-port (multiprocess mode, $PROMETHEUS_MULTIPROC_DIR "
        "or a temporary directory)",
    )
    parser.add_argument(
        "--torch-threads",
        type=int,
        default=0,
        help="torch threads per worker when --workers > 1 (0 = cores / workers)",
    )
    parser.add_argument(
        "--log-level", default="INFO", type=str.upper,
        choices=("DEBUG", "INFO", "WARNING", "ERROR"), help="logging level (default INFO)",
    )


def config_from_args(args: argparse.Namespace) -> ServerConfig:
    """Turn parsed flags (and $CHORD_TOKEN) into a ServerConfig; StartupError names a bad one."""
    token = token_setting(args.token)
    metrics_dir_setting()
    if args.run is not None and not args.echo:
        check_dir(args.run, "--run")
    if args.reports is not None:
        check_out_file(args.reports, "--reports")
    check_host(args.host, "--host")
    check_port(args.port, "--port")
    if args.port and args.metrics_port == args.port:
        raise StartupError(
            f"--metrics-port {args.metrics_port} is also --port: the exporter and the service "
            "cannot share a port; send another --metrics-port (0 = no exporter)"
        )
    check_in_range(args.max_receive_mib, "--max-receive-mib", 1 / 1024, 1024.0, unit="MiB")
    check_int(args.workers, "--workers", 1, max_parallel(), "server processes; at most 4 per core")
    check_int(args.torch_threads, "--torch-threads", 0, max_parallel(),
              "threads per worker; 0 = cores / workers")
    return ServerConfig(
        run_dir=args.run,
        max_batch=args.max_batch,
        max_wait_ms=args.max_wait_ms,
        max_concurrency=args.max_concurrency,
        max_receive_bytes=round(args.max_receive_mib * MIB),
        metrics_port=args.metrics_port,
        metrics_host=args.host.strip("[]"),
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
        token=token,
        echo=args.echo,
        grace_s=args.grace_s,
        reports_path=args.reports,
    )


def _unservable(cfg: ServerConfig, reason: str) -> str:
    """The one line `chord serve` prints for a run that cannot be served."""
    return f"chord serve: error: --run {str(cfg.run_dir)!r} cannot be served: {reason}"


def run(args: argparse.Namespace) -> int:
    """Serve until SIGTERM/SIGINT; print the bound port; return the exit status."""
    logging.basicConfig(
        level=getattr(logging, str(args.log_level).upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    budget = install_log_budget()
    try:
        cfg = config_from_args(args)
    except ValueError as exc:
        print(f"chord serve: error: {exc}", file=sys.stderr)
        return 2
    try:
        # Bind plain sockets first, so that a host or port that cannot work is refused here in
        # one line, before gRPC core or the metrics exporter log their own errors.
        check_bindable(args.host, args.port, "--port", reuse_port=args.workers > 1)
        if cfg.metrics_port:
            check_bindable(args.host, cfg.metrics_port, "--metrics-port")
    except StartupError as exc:
        print(f"chord serve: error: {exc}", file=sys.stderr)
        return 2

    def bound(port: int) -> None:
        log.info(
            "listening on %s (tls=%s, token=%s, echo=%s, workers=%d)",
            join_host_port(args.host, port),
            cfg.tls_cert is not None,
            cfg.token is not None,
            cfg.echo,
            args.workers,
        )
        print(f"port={port}", flush=True)

    try:
        if args.workers > 1:
            # The parent imports neither grpc nor torch: workers are spawned interpreters.
            from cloud_server.workers import UnservableRunError, WorkerGroupError, serve_workers

            try:
                return serve_workers(
                    cfg,
                    args.host,
                    args.port,
                    args.workers,
                    on_bound=bound,
                    on_ready=lambda: print("ready", flush=True),
                    torch_threads=args.torch_threads,
                )
            except UnservableRunError as exc:
                print(_unservable(cfg, exc.reason), file=sys.stderr)
                return 2
            except WorkerGroupError as exc:
                print(f"chord serve: error: {exc}", file=sys.stderr)
                return 1
        from cloud_server.server import serve
        from cloud_server.service import load_engine, unservable_reason

        try:
            # Loaded before binding: a run that can never serve is refused before `port=`, and
            # the stored --reports are checked against the served tiers (echo's too).
            engine = load_engine(cfg)
        except Exception as exc:  # RunError, CheckpointError, TextFileError, a malformed field
            print(_unservable(cfg, unservable_reason(exc)), file=sys.stderr)
            return 2
        return serve(
            cfg,
            join_host_port(args.host, args.port),
            on_bound=bound,
            on_ready=lambda: print("ready", flush=True),
            engine=engine,
        )
    except ReportFileError as exc:  # a --reports file this server did not write
        print(f"chord serve: error: {exc}", file=sys.stderr)
        return 2
    except (OSError, TextFileError) as exc:
        print(f"chord serve: error: {exc}", file=sys.stderr)
        return 1
    finally:
        if budget.suppressed:
            print(f"chord serve: {budget.suppressed} repeated log records were suppressed",
                  file=sys.stderr)
