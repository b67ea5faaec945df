"""`chord train`: train and evaluate a full-precision backbone, write backbone.pt + metrics.json."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from chord.data import FORMATS, DataError
from chord.divergence import DivergedError
from chord.jsonfile import dumps
from chord.protocol import add_protocol_arguments
from chord.startcheck import StartupError, check_out_dir, thread_count
from chord.train import BACKBONES, METRIC_KEYS, TrainConfig, TrainConfigError, run_training


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Declare the flags of `chord train`."""
    parser.add_argument("--dataset", required=True,
                        help="ml-100k, ml-1m, or a path to an interaction file")
    parser.add_argument("--format", dest="fmt", choices=FORMATS, default="auto",
                        help="file format of a dataset path (default: auto-detect)")
    parser.add_argument("--backbone", choices=BACKBONES, default="sasrec")
    parser.add_argument("--epochs", type=int, default=200, help="upper bound on epochs")
    parser.add_argument("--patience", type=int, default=5,
                        help="validations without improvement before early stopping")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--loss", choices=("ce", "bce"), default="ce",
                        help="ce: cross-entropy over the catalogue; bce: one sampled negative")
    parser.add_argument("--max-len", type=int, default=None,
                        help="history length (default: 200 for SASRec on ml-1m, else model's)")
    parser.add_argument("--hidden", type=int, default=None, help="hidden/embedding width")
    parser.add_argument("--dropout", type=float, default=None)
    parser.add_argument("--min-interactions", type=int, default=5)
    add_protocol_arguments(parser)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=thread_count, default=None,
                        help="torch CPU threads (1 to 4 per usable core)")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    parser.add_argument("--out", required=True, help="output directory")


def run(args: argparse.Namespace) -> int:
    """Build a TrainConfig from the flags, train, print the metrics; 2 on bad input."""
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    try:
        cfg = TrainConfig(
            dataset=args.dataset, backbone=args.backbone, fmt=args.fmt,
            min_interactions=args.min_interactions, epochs=args.epochs, batch_size=args.batch_size,
            lr=args.lr, loss=args.loss, patience=args.patience, seed=args.seed,
            max_len=args.max_len, hidden=args.hidden, dropout=args.dropout,
            n_negatives=args.negatives, ranking="full" if args.full_ranking else "sampled",
            progress=not args.no_progress,
        )
        check_out_dir(args.out, "--out")
        created = not Path(args.out).exists()
        try:
            result = run_training(cfg, args.out)
        except BaseException:  # refused data, Ctrl-C: leave no empty --out behind
            if created and Path(args.out).is_dir() and not any(Path(args.out).iterdir()):
                Path(args.out).rmdir()
            raise
    except (DataError, TrainConfigError, StartupError) as exc:
        print(f"chord train: error: {exc}", file=sys.stderr)
        return 2
    except DivergedError as exc:
        print(f"chord train: error: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"chord train: error: cannot write the output ({exc}); pass a --out DIR you can "
              "write", file=sys.stderr)
        return 1
    m = result.metrics
    keys = ("dataset", "backbone", "n_users", "n_items", "protocol", *METRIC_KEYS,
            "train_seconds", "version")
    print(dumps({k: m[k] for k in keys if k in m}, indent=2))
    return 0
