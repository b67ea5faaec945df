"""`chord bench`: the endpoint load generator and one-command entries for the benchmark scripts."""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from typing import Protocol, cast

from benchmarks.harness import write_json
from benchmarks.loadgen import (
    METHODS,
    LoadConfig,
    LoadConfigError,
    LoadRunError,
    format_summary,
    run_load,
)
from chord.startcheck import StartupError, check_out_file

# Sub-subcommand -> (benchmark module, help). Each module offers add_arguments(parser) and
# run(args) -> int, like the top-level commands; imported lazily so `load` stays light.
SCRIPTS: dict[str, tuple[str, str]] = {
    "endpoint": ("benchmarks.endpoint_load", "echo vs micro-batched vs unbatched GetStrategy RPS"),
    "communication": ("benchmarks.communication", "bytes per adaptation against shipping weights"),
    "fleet": ("benchmarks.fleet_scale", "1,000 / 10,000 virtual devices: wall time and memory"),
}


class _Script(Protocol):
    """What a benchmark module offers to this command."""

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        """Declare the benchmark's flags."""

    def run(self, args: argparse.Namespace) -> int:
        """Run the benchmark with parsed flags; return the exit status."""


def add_load_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of `chord bench load`."""
    parser.add_argument("--target", required=True, help="HOST:PORT of the strategy server")
    parser.add_argument("--concurrency", type=int, default=64, help="requests in flight")
    parser.add_argument("--duration", type=float, default=10.0, help="measured seconds")
    parser.add_argument("--processes", type=int, default=1, help="client processes")
    parser.add_argument("--method", choices=METHODS, default="strategy")
    parser.add_argument("--warmup", type=float, default=0.0, help="unmeasured seconds first")
    parser.add_argument("--max-requests", type=int, default=5_000_000, help="hard request cap")
    parser.add_argument("--timeout", type=float, default=10.0, help="per-call deadline, seconds")
    parser.add_argument("--tls-ca", default=None, help="PEM CA certificate: use TLS")
    parser.add_argument("--tls-server-name", default=None, help="TLS name to verify")
    parser.add_argument("--token", default=None,
                        help="bearer token for the server (default: $CHORD_TOKEN)")
    parser.add_argument("--tier", default="", help="device tier (default: the spec's first)")
    parser.add_argument("--budget-bits", type=float, default=0.0, help="0 = the tier default")
    parser.add_argument("--seed", type=int, default=0, help="seeds the random profiles")
    parser.add_argument("--channels", type=int, default=1, help="gRPC channels per process")
    parser.add_argument("--json", dest="json_out", default=None, help="write the result here")


def load_config_from_args(args: argparse.Namespace) -> LoadConfig:
    """Turn `chord bench load` flags into a LoadConfig."""
    return LoadConfig(
        target=args.target,
        concurrency=args.concurrency,
        duration_s=args.duration,
        processes=args.processes,
        method=args.method,
        warmup_s=args.warmup,
        max_requests=args.max_requests,
        timeout_s=args.timeout,
        tls_ca=args.tls_ca,
        tls_server_name=args.tls_server_name,
        token=args.token if args.token is not None else os.environ.get("CHORD_TOKEN") or None,
        seed=args.seed,
        tier=args.tier,
        budget_bits=args.budget_bits,
        channels_per_process=args.channels,
    )


def run_load_command(args: argparse.Namespace) -> int:
    """`chord bench load`: run, print the summary, optionally write JSON; 1 if any error.

    A configuration that cannot work exits 2 and a run that cannot start exits 1, each with one
    `chord bench load: error:` line.
    """
    try:
        if args.json_out:
            check_out_file(args.json_out, "--json")
        result = run_load(load_config_from_args(args))
    except (LoadConfigError, StartupError) as exc:
        print(f"chord bench load: error: {exc}", file=sys.stderr)
        return 2
    except LoadRunError as exc:
        print(f"chord bench load: error: {exc}", file=sys.stderr)
        return 1
    print(format_summary(result))
    if args.json_out:
        write_json(args.json_out, result.to_json())
    return 0 if result.errors == 0 and result.total > 0 else 1


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Declare `chord bench load|endpoint|communication|fleet`."""
    sub = parser.add_subparsers(dest="bench", metavar="BENCHMARK", required=True)
    add_load_arguments(sub.add_parser("load", help="load a running server, ghz-style"))
    for name, (module, help_text) in SCRIPTS.items():
        p = sub.add_parser(name, help=help_text)
        try:
            cast(_Script, importlib.import_module(module)).add_arguments(p)
        except ImportError as exc:  # a benchmark whose dependencies are not installed
            p.set_defaults(import_error=f"{module}: {exc}")


def run(args: argparse.Namespace) -> int:
    """Dispatch to the chosen benchmark."""
    if args.bench == "load":
        return run_load_command(args)
    if getattr(args, "import_error", None):
        print(f"benchmark {args.bench} cannot run: {args.import_error}", file=sys.stderr)
        return 2
    return cast(_Script, importlib.import_module(SCRIPTS[args.bench][0])).run(args)
