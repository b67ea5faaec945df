"""`chord bench`: the endpoint load generator and one-command entries for the benchmark scripts."""

from __future__ import annotations

import argparse
import importlib
import math
import sys
from pathlib import Path
from typing import Any, Protocol, cast

from benchmarks.harness import write_json
from benchmarks.loadgen import (
    METHODS,
    LoadConfig,
    LoadConfigError,
    LoadResult,
    LoadRunError,
    check_served,
    format_summary,
    run_load,
    send_schedule,
)
from benchmarks.schedules import MAX_ARRIVAL_T_S, SCHEDULES, ScheduleError, parse_seconds
from benchmarks.slo import check_search
from chord.jsonfile import dumps
from chord.startcheck import (
    StartupError,
    check_in_range,
    check_out_file,
    int_between,
    token_setting,
)

# Sub-subcommand -> (benchmark module, help). Each module offers add_arguments(parser) and
# run(args) -> int, like the top-level commands; imported lazily so `load` stays light.
SCRIPTS: dict[str, tuple[str, str]] = {
    "endpoint": ("benchmarks.endpoint_load", "echo vs micro-batched vs unbatched GetStrategy RPS"),
    "communication": ("benchmarks.communication", "bytes per adaptation against shipping weights"),
    "fleet": ("benchmarks.fleet_scale", "1,000 / 10,000 virtual devices: wall time and memory"),
    "fleet-day": ("benchmarks.fleet_day", "a simulated day on the virtual clock: devices/s/core"),
    "device-stages": ("benchmarks.device_stages", "one device's CPU per step, per runtime"),
}


class _Script(Protocol):
    """What a benchmark module offers to this command."""

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        """Declare the benchmark's flags."""

    def run(self, args: argparse.Namespace) -> int:
        """Run the benchmark with parsed flags; return the exit status."""


def _duration(text: str) -> float:
    """argparse type of a duration flag: parse_seconds, its message shown as argparse's error."""
    try:
        return parse_seconds(text)
    except ScheduleError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


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
    parser.add_argument("--token", default=None, help="bearer token for the server")
    parser.add_argument("--tier", default="", help="device tier (default: the spec's first)")
    parser.add_argument("--budget-bits", type=float, default=0.0, help="0 = the tier default")
    parser.add_argument("--seed", type=int, default=0, help="seeds the random profiles")
    parser.add_argument(
        "--channels", type=int, default=1,
        help="gRPC channels (TCP connections) per process; a `chord serve --workers N` server "
        "balances connections, not calls, so send several per worker",
    )
    parser.add_argument("--json", dest="json_out", default=None, help="write the result here")
    open_loop = parser.add_argument_group(
        "open loop (ghz's flags; latency runs from each call's scheduled send time)"
    )
    open_loop.add_argument(
        "--rps", type=float, default=0.0, help="constant rate, calls/s (0 = closed loop)"
    )
    open_loop.add_argument("--load-schedule", choices=SCHEDULES, default="const")
    open_loop.add_argument("--load-start", type=float, default=0.0, help="step/line: first rate")
    open_loop.add_argument(
        "--load-step", type=float, default=0.0, help="step: added each step; line: per second"
    )
    open_loop.add_argument(
        "--load-end", type=float, default=0.0, help="step/line: last rate (0 = none)"
    )
    open_loop.add_argument(
        "--load-step-duration", type=_duration, default=0.0, help="step: e.g. 5s or 500ms"
    )
    open_loop.add_argument(
        "--load-max-duration", type=_duration, default=0.0, help="ramp stops after this"
    )
    open_loop.add_argument(
        "--arrivals", default=None, help="arrivals.csv (t_s,device_id,reason) of a simulation"
    )
    open_loop.add_argument(
        "--speedup", type=float, default=1.0, help="arrivals: virtual seconds per real second"
    )
    open_loop.add_argument(
        "--slo-p99-ms",
        type=float,
        default=None,
        help="search the highest rate whose p99 stays within this; with --arrivals: judge "
        "the fleet's peak window against it",
    )
    open_loop.add_argument(
        "--search-start-rps", type=float, default=50.0, help="capacity search: first rate"
    )
    open_loop.add_argument(
        "--search-tolerance", type=float, default=0.1, help="capacity search: stop at hi/lo"
    )
    open_loop.add_argument(
        "--search-confirm", type=int_between(0, 5), default=0,
        help="capacity search: more probes a failing rate gets before it counts as failed",
    )
    open_loop.add_argument(
        "--peak-window", type=_duration, default=60.0, help="arrivals: peak window (virtual)"
    )
    parser.add_argument(
        "--format",
        choices=("summary", "ghz"),
        default="summary",
        help="ghz: print ghz's JSON report (ghz -O json) instead of the text summary (with "
        "--slo-p99-ms alone: the search as JSON)",
    )
    parser.add_argument("--details", action="store_true", help="ghz: one entry per call")
    parser.add_argument(
        "--output", default=None, help="write the --format report here instead of stdout"
    )


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
        token=token_setting(args.token),
        seed=args.seed,
        tier=args.tier,
        budget_bits=args.budget_bits,
        channels_per_process=args.channels,
        rps=args.rps,
        load_schedule=args.load_schedule,
        load_start=args.load_start,
        load_step=args.load_step,
        load_end=args.load_end,
        load_step_duration_s=args.load_step_duration,
        load_max_duration_s=args.load_max_duration,
        arrivals=args.arrivals,
        speedup=args.speedup,
    )


class ReportWriteError(RuntimeError):
    """A report could not be written to its file; it went to standard output instead."""


def _write(path: str | None, payload: Any) -> None:
    """JSON to path (or stdout when path is None).

    Raises ReportWriteError when the file cannot be written (a full disk, a path that became
    unwritable during the run), after writing the report to stdout, so the run is not lost.
    """
    if path is None:
        sys.stdout.write(dumps(payload, indent=2, default=str) + "\n")  # no NaN tokens
        return
    try:
        write_json(path, payload)
    except OSError as exc:
        _write(None, payload)
        raise ReportWriteError(
            f"cannot write {path} ({exc.strerror or type(exc).__name__}); the report went to "
            "standard output instead: send a path you can write"
        ) from None


def _report(args: argparse.Namespace, result: LoadResult) -> None:
    """Print the summary or the ghz report; write --json."""
    if args.format == "ghz":
        from benchmarks.ghz import ghz_report

        _write(args.output, ghz_report(result, details=args.details))
    else:
        print(format_summary(result))
    if args.json_out is not None:
        _write(args.json_out, result.to_json())


def _search(args: argparse.Namespace, cfg: LoadConfig) -> int:
    """`--slo-p99-ms X` without arrivals: the capacity search, one line per probe."""
    from benchmarks.slo import Probe, find_capacity

    def show(p: Probe, res: LoadResult) -> None:
        lag = f", send lag p99 {p.send_lag_p99_ms:.1f} ms" if p.send_lag_p99_ms else ""
        p99 = f"{p.p99_ms:8.2f} ms" if p.p99_ms is not None else "none measured"
        print(
            f"  {p.rps:9.1f} rps offered: {p.achieved_rps:9.1f} ok/s, p99 {p99}, "
            f"{p.errors} errors{lag} -> {'pass' if p.passed else 'FAIL'}",
            file=sys.stderr if args.format == "ghz" else sys.stdout,
            flush=True,
        )

    cap = find_capacity(
        cfg,
        args.slo_p99_ms,
        start_rps=args.search_start_rps,
        tolerance=args.search_tolerance,
        on_probe=show,
        confirm_failures=args.search_confirm,
    )
    hi = cap.bracket[1]
    failure = (f"first failure at {hi:.1f} rps" if math.isfinite(hi)
               else f"no probe failed up to {cap.bracket[0]:.1f} rps")
    line = (
        f"Capacity at p99 <= {cap.slo_p99_ms:g} ms: {cap.capacity_rps:.1f} rps "
        f"({failure}; {len(cap.probes)} probes of {cfg.duration_s:g} s)"
    )
    print(line, file=sys.stderr if args.format == "ghz" else sys.stdout)
    if args.format == "ghz":
        _write(args.output, cap.to_json())
    if args.json_out is not None:
        _write(args.json_out, cap.to_json())
    return 0 if cap.capacity_rps > 0 else 1


def check_report_flags(args: argparse.Namespace) -> None:
    """Refuse --slo-p99-ms and --peak-window values that can never be judged, and ghz-report
    flags without --format ghz, which would do nothing (LoadConfigError).

    Checked before any load is sent, so that a bad value does not surface after the run.
    """
    from benchmarks.slo import MAX_SLO_MS

    if args.format != "ghz" and args.details:
        raise LoadConfigError(
            "--details lists every call in the ghz report; add --format ghz or leave it out"
        )
    if args.format != "ghz" and args.output:
        raise LoadConfigError(
            "--output writes the --format ghz report; add --format ghz, or use --json FILE for "
            "the result as JSON"
        )
    if (args.output is not None and args.json_out is not None
            and Path(args.output).expanduser().resolve()
            == Path(args.json_out).expanduser().resolve()):
        raise LoadConfigError(
            f"--output and --json both name {args.output!r}; the second report would overwrite "
            "the first: send two paths"
        )
    if args.slo_p99_ms is not None and args.arrivals is None and (
            args.rps > 0 or args.load_schedule != "const"):
        raise LoadConfigError(
            "--slo-p99-ms searches for the highest rate itself; leave out --rps and "
            "--load-schedule (or send --rps R alone to measure one rate)"
        )
    try:
        if args.slo_p99_ms is not None:
            check_in_range(args.slo_p99_ms, "--slo-p99-ms", 0, MAX_SLO_MS, unit="milliseconds",
                           lo_open=True)
        if args.arrivals is not None:
            check_in_range(args.peak_window, "--peak-window", 0, MAX_ARRIVAL_T_S,
                           unit="virtual seconds (e.g. 60s or 1m)", lo_open=True)
    except StartupError as exc:
        raise LoadConfigError(str(exc)) from None


def run_load_command(args: argparse.Namespace) -> int:
    """`chord bench load`: run, print the summary (or ghz JSON), optionally write JSON.

    Exit status 1 if any call failed (or, with --slo-p99-ms, if the SLO was not kept), the
    run could not start or a report could not be written; 2 for flags that cannot run; each
    failure is one `chord bench load: error:` line.
    """
    try:
        return _load_command(args)
    except ReportWriteError as exc:
        print(f"chord bench load: error: {exc}", file=sys.stderr)
        return 1


def _load_command(args: argparse.Namespace) -> int:
    """run_load_command without the report-write failure."""
    try:
        if args.json_out is not None:
            check_out_file(args.json_out, "--json")
        if args.output is not None:
            check_out_file(args.output, "--output")
        cfg = load_config_from_args(args)
        cfg.validate()
        check_report_flags(args)
        if args.slo_p99_ms is not None and cfg.arrivals is None:
            check_search(args.slo_p99_ms, args.search_start_rps, args.search_tolerance)
            check_served(cfg)
            return _search(args, cfg)
        if cfg.arrivals is not None:
            send_schedule(cfg)  # an arrivals file that cannot be replayed is refused here
        check_served(cfg)
        result = run_load(cfg)
    except (LoadConfigError, ScheduleError, StartupError) as exc:
        print(f"chord bench load: error: {exc}", file=sys.stderr)
        return 2
    except LoadRunError as exc:
        print(f"chord bench load: error: {exc}", file=sys.stderr)
        return 1
    _report(args, result)
    if cfg.arrivals is not None:
        from benchmarks.slo import replay_verdict

        slo = args.slo_p99_ms if args.slo_p99_ms is not None else 50.0
        verdict = replay_verdict(result, slo, args.peak_window)
        p99 = verdict["peak_p99_ms"]
        there = f"p99 there {p99:.2f} ms" if p99 is not None else "no call measured there"
        print(
            f"Fleet peak: {verdict['peak_arrivals']} requests in {verdict['window_s']:g} virtual s "
            f"from t={verdict['peak_start_s']:.0f} s ({verdict['peak_rps_sent']:.1f} rps sent at "
            f"{cfg.speedup:g}x); {there}, "
            f"{verdict['peak_errors']} errors: SLO p99 <= {slo:g} ms "
            f"{'KEPT' if verdict['kept'] else 'NOT kept'}",
            file=sys.stderr if args.format == "ghz" and args.output is None else sys.stdout,
        )
        return 0 if verdict["kept"] else 1
    return _exit_status(result)


def _exit_status(result: LoadResult) -> int:
    """0 when calls completed and none failed; else 1, with one stderr line saying why."""
    if result.total == 0:
        sent = (f" of {result.scheduled} scheduled" if result.scheduled is not None else "")
        print(
            f"chord bench load: error: no call completed in the measured window (0{sent}); "
            "send a higher --rps, a longer --duration, or check the server",
            file=sys.stderr,
        )
        return 1
    if result.errors:
        print(
            f"chord bench load: {result.errors} of {result.total} calls failed (status codes "
            "above); exit status 1",
            file=sys.stderr,
        )
        return 1
    return 0


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
