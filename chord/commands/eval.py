"""`chord eval`: the accuracy table of CHORD (both backbone modes) against every baseline."""

from __future__ import annotations

import argparse
import sys
import time

from chord.baselines.rows import COLUMNS
from chord.baselines.suite import ALL_METHODS, EvalConfig, EvalError, run_eval
from chord.checkpoint import CheckpointError
from chord.data import DataError
from chord.divergence import DivergedError
from chord.hyper.runs import RunError
from chord.jsonfile import write_json
from chord.protocol import add_protocol_arguments
from chord.startcheck import StartupError, check_out_file, thread_count


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Declare the flags of `chord eval`."""
    parser.add_argument("--dataset", default="ml-100k",
                        help="ml-100k, ml-1m, or a path to an interaction file")
    parser.add_argument("--backbone", choices=("sasrec", "caser"), default="sasrec")
    parser.add_argument("--budget", type=float, default=3.0,
                        help="average bits per weight the strategies must meet")
    parser.add_argument("--tier", default=None,
                        help="device tier (low, mid, high); default low for <= 2.5 bits, else mid")
    parser.add_argument("--quick", action="store_true",
                        help="short training (minutes on ML-100K) instead of the full schedule")
    parser.add_argument("--smoke", action="store_true",
                        help="seconds-long training on a few users (tests only)")
    parser.add_argument("--max-users", type=int, default=None,
                        help="keep only the first N users")
    parser.add_argument("--methods", default=",".join(ALL_METHODS),
                        help="comma-separated subset of: " + ", ".join(ALL_METHODS))
    parser.add_argument("--finetune-users", type=int, default=None,
                        help="users the per-user fine-tuning baseline evaluates (it is slow; "
                             "default 200 with --quick, else 1000)")
    parser.add_argument("--hyper-steps", type=int, default=None,
                        help="cap on hypernetwork training steps (default: from the preset)")
    parser.add_argument("--backbone-path", default=None,
                        help="pretrained mode: reuse this trained backbone (chord train output)")
    add_protocol_arguments(parser)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=thread_count, default=None,
                        help="torch CPU threads (1 to 4 per usable core)")
    parser.add_argument("--device", default="cpu",
                        help="torch device for training and evaluation (cpu, cuda, cuda:1)")
    parser.add_argument("--json", dest="json_out", default=None, help="write the rows here")
    parser.add_argument("--quiet", action="store_true", help="no progress lines")


def format_table(rows: list[dict[str, object]]) -> str:
    """Rows as an aligned plain-text table."""
    cols = list(COLUMNS)

    def cell(v: object) -> str:
        return f"{v:.4f}" if isinstance(v, float) else str(v)

    cells = [[cell(r.get(c, "")) for c in cols] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(cols)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(cols, widths, strict=True))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)) for row in cells]
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    """Run the suite, print the table, write the JSON; 2 on bad input."""
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    preset = "smoke" if args.smoke else "quick" if args.quick else "full"
    methods = tuple(m.strip() for m in args.methods.split(",") if m.strip())
    start = time.perf_counter()
    log = None if args.quiet else (
        lambda msg: print(f"[{time.perf_counter() - start:6.0f}s] {msg}", file=sys.stderr)
    )
    try:
        cfg = EvalConfig(
            dataset=args.dataset, backbone=args.backbone, budget=args.budget, tier=args.tier,
            preset=preset, seed=args.seed, max_users=args.max_users, methods=methods,
            finetune_users=args.finetune_users or (200 if args.quick else 1000),
            hyper_steps=args.hyper_steps,
            backbone_path=args.backbone_path, device=args.device,
            n_negatives=args.negatives, ranking="full" if args.full_ranking else "sampled",
        )
        if args.json_out is not None:
            check_out_file(args.json_out, "--json")
        result = run_eval(cfg, log)
    except (EvalError, RunError, DataError, StartupError, CheckpointError) as exc:
        print(f"chord eval: error: {exc}", file=sys.stderr)
        return 2
    except DivergedError as exc:
        print(f"chord eval: error: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"chord eval: error: cannot write the output ({exc}); pass a --json FILE you can "
              "write", file=sys.stderr)
        return 1
    print(format_table(result["rows"]))
    meta = result["meta"]
    print(f"tier {meta['tier']} {meta['tier_level_bits']}, budget {args.budget}, "
          f"{meta['seconds']}s")
    if args.json_out is not None:  # per-user vectors (result["per_user"]) stay with the benchmarks
        write_json(args.json_out, {"rows": result["rows"], "meta": meta})
    return 0
