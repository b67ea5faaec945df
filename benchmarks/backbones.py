"""Full-precision SASRec and Caser on ML-100K and ML-1M: accuracy (100 negatives, full) and time.

Run: `python -m benchmarks.backbones [--datasets ml-100k ml-1m] [--backbones sasrec caser]`.
Rows from earlier invocations are kept (merged by dataset and backbone) unless --fresh, so
long runs can be split across processes.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

import torch

from benchmarks.harness import ResultStore, add_output_arguments, markdown_table
from chord.startcheck import thread_count
from chord.train import TrainConfig, run_training

NAME = "backbones"
# Upper bounds; early stopping (patience) and the time budget usually end a run sooner.
DEFAULT_EPOCHS = {"ml-100k": 200, "ml-1m": 60}
DEFAULT_PATIENCE = {"ml-100k": 5, "ml-1m": 3}
PUBLISHED = {("ml-1m", "sasrec"): {"HR@10": 0.8245, "NDCG@10": 0.5905}}
GOAL = {("ml-1m", "sasrec"): {"HR@10": 0.80, "NDCG@10": 0.56}}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Flags of the benchmark."""
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--datasets", nargs="+", default=["ml-100k", "ml-1m"])
    p.add_argument("--backbones", nargs="+", default=["sasrec", "caser"])
    p.add_argument("--epochs", type=int, default=None, help="epoch cap for every run")
    p.add_argument("--patience", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--caser-batch-size", type=int, default=512)
    p.add_argument("--time-budget", type=float, default=None,
                   help="seconds of training per run (stops after the crossing epoch)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=thread_count, default=1)
    p.add_argument("--out", default="/tmp/chord_bench_backbones", help="where models go")
    p.add_argument("--fresh", action="store_true", help="drop rows of earlier invocations")
    add_output_arguments(p)
    return p.parse_args(argv)


def _row(metrics: dict[str, Any]) -> dict[str, Any]:
    """One table row from a run's metrics."""
    test, full = metrics["test"], metrics["test_full"]
    return {
        "dataset": metrics["dataset"], "backbone": metrics["backbone"],
        "max_len": metrics["backbone_config"]["max_len"], "epochs": metrics["epochs_run"],
        "best_epoch": metrics["best_epoch"], "HR@5": test["HR@5"], "HR@10": test["HR@10"],
        "NDCG@5": test["NDCG@5"], "NDCG@10": test["NDCG@10"],
        "full HR@10": full["HR@10"], "full NDCG@10": full["NDCG@10"],
        "train s": metrics["train_seconds"],
    }


def _previous_runs(store: ResultStore) -> list[dict[str, Any]]:
    """Runs stored by earlier invocations (empty if none)."""
    runs: list[dict[str, Any]] = (store.read(NAME) or {}).get("runs", [])
    return runs


def write_report(runs: list[dict[str, Any]], store: ResultStore) -> None:
    """Write JSON and the Markdown section for all runs so far."""
    rows = [_row(r["metrics"]) for r in runs]
    columns = ["dataset", "backbone", "max_len", "epochs", "best_epoch", "HR@5", "HR@10",
               "NDCG@5", "NDCG@10", "full HR@10", "full NDCG@10", "train s"]
    checks = []
    for r in runs:
        key = (r["metrics"]["dataset"], r["metrics"]["backbone"])
        if key in GOAL:
            got = r["metrics"]["test"]
            ok = all(got[k] >= v for k, v in GOAL[key].items())
            checks.append(
                f"- {key[1]} on {key[0]}: HR@10 {got['HR@10']:.4f}, NDCG@10 "
                f"{got['NDCG@10']:.4f}; goal {GOAL[key]} {'MET' if ok else 'NOT met'}; "
                f"published {PUBLISHED[key]}."
            )
    notes = "\n".join([
        "Test split, leave-one-out. HR/NDCG columns: target vs 100 seeded negatives the user "
        "never touched; `full` columns: rank among the whole catalogue with the user's history "
        "masked. Ties count against the target. Cross-entropy over the catalogue, Adam lr 1e-3, "
        "early stopping on validation NDCG@10. SASRec reads 200 items on ML-1M (reference "
        "setting; long histories) and 50 elsewhere; Caser L=5 without a user embedding. "
        "`train s` is wall time on a CPU shared with other jobs (one torch thread).",
        *checks,
    ])
    store.write(NAME, {"runs": runs}, markdown_table(rows, columns), notes)


def main(argv: list[str] | None = None) -> int:
    """Train and evaluate every requested (dataset, backbone) pair; write the report."""
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    store = ResultStore.default(args.results_dir)
    mine: list[dict[str, Any]] = []
    for dataset in args.datasets:
        for backbone in args.backbones:
            cfg = TrainConfig(
                dataset=dataset, backbone=backbone,
                epochs=args.epochs or DEFAULT_EPOCHS.get(dataset, 100),
                patience=args.patience or DEFAULT_PATIENCE.get(dataset, 5),
                batch_size=args.caser_batch_size if backbone == "caser" else args.batch_size,
                seed=args.seed, time_budget_s=args.time_budget,
            )
            print(f"== {backbone} on {dataset}: {cfg}", flush=True)
            result = run_training(cfg, f"{args.out}/{dataset}-{backbone}")
            print(json.dumps(_row(result.metrics)), flush=True)
            mine.append({"metrics": result.metrics, "history": result.history})
            # Re-read before writing: another invocation may have added rows meanwhile.
            prior = [] if args.fresh and len(mine) == 1 else _previous_runs(store)
            keys = {(r["metrics"]["dataset"], r["metrics"]["backbone"]) for r in mine}
            kept = [r for r in prior
                    if (r["metrics"]["dataset"], r["metrics"]["backbone"]) not in keys]
            write_report(kept + mine, store)
    return 0


if __name__ == "__main__":
    sys.exit(main())
