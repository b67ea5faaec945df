"""`chord simulate`: flags and an optional fleet TOML turned into a FleetConfig, then one run."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from pathlib import Path

from chord.data.errors import DataError
from chord.startcheck import StartupError, check_out_dir, path_arg, token_setting
from cloud_server.logbudget import install_log_budget
from simulator.config import FleetConfig, FleetConfigError, load_config, with_overrides
from simulator.runner import DB_FILE, SimulationError, prepare_embedded_run, run_simulation


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Declare the simulate flags (each overrides the TOML file's value)."""
    parser.add_argument(
        "--config", type=path_arg, help="fleet TOML file (tiers, drift, churn, faults)"
    )
    parser.add_argument("--devices", type=int, help="number of virtual devices (default 200)")
    parser.add_argument("--dataset", help="dataset name or interaction file (default ml-100k)")
    parser.add_argument("--backbone", choices=["sasrec", "caser"], help="backbone (default sasrec)")
    parser.add_argument(
        "--mode", choices=["pretrained", "random"],
        help="embedded run's backbone mode (default random: seeded weights and a learned mask)"
    )
    parser.add_argument("--run-dir", help="embedded server: serve this run directory")
    parser.add_argument(
        "--run-preset",
        choices=["smoke", "quick", "full"],
        help="embedded default run's training preset (default quick)",
    )
    parser.add_argument("--server", help="'embedded' (default) or HOST:PORT of `chord serve`")
    parser.add_argument(
        "--server-workers",
        type=int,
        help="embedded server: processes sharing its port (`chord serve --workers N`; default 1, "
        "in this process)",
    )
    parser.add_argument("--ray-address", help="'local' (default), 'auto', ADDRESS or 'none'")
    parser.add_argument("--num-cpus", type=int, help="CPUs of the local Ray (default: all)")
    parser.add_argument("--actors", type=int, help="device actors (default: the cluster's CPUs)")
    parser.add_argument("--batch-size", type=int, help="virtual devices per actor task")
    parser.add_argument("--lanes", type=int, help="devices an actor runs at once (threads)")
    parser.add_argument("--seed", type=int, help="fleet seed (users, tiers, churn, negatives)")
    parser.add_argument(
        "--negatives", type=int, metavar="N",
        help="sampled ranking: each target against N unseen negatives (default 100)",
    )
    parser.add_argument(
        "--full-ranking", action="store_true",
        help="rank each target against the whole catalogue instead of sampled negatives",
    )
    parser.add_argument(
        "--device-runtime", dest="runtime",
        help="device scoring runtime: ort (default, the phones' ONNX Runtime), int8, packed, fake",
    )
    parser.add_argument("--token", help="bearer token for the server (default: $CHORD_TOKEN)")
    parser.add_argument(
        "--tls-ca", "--tls-root-ca", dest="tls_root_ca",
        help="PEM CA file to verify the server's TLS certificate",
    )
    parser.add_argument(
        "--traces", help="FedScale capacity map (.pkl, .json or .csv): compute and bandwidth"
    )
    parser.add_argument(
        "--clock",
        choices=["rounds", "virtual"],
        help="'rounds' (default): drift rounds; 'virtual': a simulated span on a virtual clock",
    )
    parser.add_argument(
        "--duration-s", type=float, help="virtual clock: simulated seconds (default 86400)"
    )
    parser.add_argument(
        "--behaviour-trace",
        help="virtual clock: FedScale behaviour trace (.pkl, .json or .csv) for availability "
        "(default: a seeded diurnal model)",
    )
    parser.add_argument(
        "--resume",
        type=path_arg,
        metavar="DIR",
        help="finish the simulation stored in DIR (its saved config is used)",
    )
    parser.add_argument("--out", type=path_arg, help="output directory (required unless --resume)")
    parser.add_argument(
        "--prepare-run",
        type=path_arg,
        metavar="DIR",
        help="only train (or reuse) the run the embedded server would serve, into "
        "DIR, and exit (for `chord serve --run DIR`)",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar or table")


def build_config(args: argparse.Namespace) -> FleetConfig:
    """The FleetConfig: TOML file (or defaults), then the flags that were given."""
    cfg = load_config(args.config) if args.config else FleetConfig()
    import dataclasses

    transport = cfg.transport
    token = token_setting(args.token)  # named by its source, not by the config field it fills
    if token is not None or args.tls_root_ca is not None:
        transport = dataclasses.replace(
            transport,
            token=token if token is not None else transport.token,
            tls_root_ca=args.tls_root_ca if args.tls_root_ca is not None else transport.tls_root_ca,
        )
    if args.duration_s is not None and (args.clock or cfg.clock.mode) != "virtual":
        raise FleetConfigError(
            "--duration-s sets the span of the virtual clock, but the clock is 'rounds'; add "
            "--clock virtual, or leave --duration-s out (the round clock runs [drift] rounds)"
        )
    clock = dataclasses.replace(
        cfg.clock,
        **{
            k: v
            for k, v in (
                ("mode", args.clock),
                ("duration_s", args.duration_s),
                ("behaviour_trace", args.behaviour_trace),
            )
            if v is not None
        },
    )
    return with_overrides(
        cfg,
        clock=clock,
        devices=args.devices,
        dataset=args.dataset,
        backbone=args.backbone,
        mode=args.mode,
        run_dir=args.run_dir,
        run_preset=args.run_preset,
        server=args.server,
        server_workers=args.server_workers,
        ray_address=args.ray_address,
        num_cpus=args.num_cpus,
        actors=args.actors,
        batch_size=args.batch_size,
        lanes=args.lanes,
        seed=args.seed,
        traces_file=args.traces,
        negatives=args.negatives,
        ranking="full" if args.full_ranking else None,
        runtime=args.runtime,
        transport=transport,
    )


_KEEP_WITH_RESUME = ("resume", "quiet")  # flags that mean the same on a resumed run
_FLAG_OF = {"runtime": "--device-runtime", "tls_root_ca": "--tls-ca"}  # dest -> flag, if renamed


def flags_beside_resume(args: argparse.Namespace) -> list[str]:
    """The simulate flags given with --resume that a resumed run would ignore (it runs the
    config saved in its directory), as `--flag` names; empty when there are none."""
    parser = argparse.ArgumentParser(add_help=False)
    add_arguments(parser)
    defaults = vars(parser.parse_args([]))
    return [
        _FLAG_OF.get(dest, "--" + dest.replace("_", "-"))
        for dest, default in defaults.items()
        if dest not in _KEEP_WITH_RESUME and getattr(args, dest, default) != default
    ]


def run(args: argparse.Namespace) -> int:
    """Run or resume a simulation; exit status 0 when every device completed, 1 otherwise."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    install_log_budget()  # the embedded server's repeated warnings stay bounded here too
    # SIGTERM unwinds like Ctrl-C, so the local Ray, its workers and the embedded server are
    # stopped by their `finally` blocks instead of left running.
    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _terminated) if main_thread else None
    try:
        return _run(args)
    except KeyboardInterrupt:
        out = args.resume or args.out
        kept = out is not None and (Path(out) / DB_FILE).exists()
        print("chord simulate: stopped" + (f"; finish it with --resume {out}" if kept else ""),
              file=sys.stderr)
        return 130
    finally:
        if main_thread:
            signal.signal(signal.SIGTERM, previous)


def _terminated(signum: int, frame: object) -> None:
    """SIGTERM handler: raise KeyboardInterrupt in the main thread (unwinds every finally)."""
    raise KeyboardInterrupt


def _run(args: argparse.Namespace) -> int:
    """run() without the signal handling."""
    try:
        for flag, value in (("--out", args.out), ("--prepare-run", args.prepare_run)):
            if value is not None:
                check_out_dir(value, flag)
        if args.prepare_run is not None:
            path = prepare_embedded_run(build_config(args), args.prepare_run)
            print(f"run directory ready: {path}")
            return 0
        if args.resume is not None:
            ignored = flags_beside_resume(args)
            if ignored:
                raise SimulationError(
                    f"--resume DIR finishes the run with the config saved in DIR; leave out "
                    f"{', '.join(ignored)} (they would be ignored), or start a new run with --out"
                )
            summary = run_simulation(
                FleetConfig(), args.resume, resume=True, progress=not args.quiet
            )
            out = args.resume
        else:
            if args.out is None:
                raise SimulationError("--out DIR is required (or --resume DIR)")
            summary = run_simulation(build_config(args), args.out, progress=not args.quiet)
            out = args.out
    except (FleetConfigError, SimulationError, StartupError, DataError) as exc:
        print(f"chord simulate: error: {exc}", file=sys.stderr)
        return 2
    extra = f", {out}/arrivals.csv, {out}/timeline.png" if "timeline" in summary else ""
    print(f"wrote {out}/summary.json, {out}/report.md, {out}/rounds.csv{extra}")
    return 0 if summary["completed"] == summary["devices"] else 1
