"""Accuracy table: CHORD (random and pretrained backbones) against every baseline, per budget.

Run: `python -m benchmarks.accuracy [--datasets ml-100k ml-1m] [--backbones sasrec caser]
[--budgets 2 3 4] [--device cuda]`; `--random-masks [--widths 64 128 256]` measures random mode
with learned masks instead (benchmarks/random_masks.py). Writes results/accuracy.json, its
section of RESULTS.md, a plot of NDCG@10 against average bits
(results/accuracy_ndcg_vs_bits.png) and one of how importance varies across layers and channels
for a few users (results/importance.png). Results are rewritten after every (dataset, backbone,
budget), so a long run leaves a usable partial table. With --results-dir the files go there
(NAME.json, RESULTS.md, plots) and the committed ones are left alone; --import-json later folds
such files into results/NAME.json and RESULTS.md.

Every compressed row carries a paired bootstrap 95% interval over test users of its NDCG@10
minus that of the best other compressed method at the same bits (benchmarks.intervals); the
per-user NDCG@10 of every row is kept beside the JSON (NAME_per_user.npz), so --replot and
--import-json recompute the intervals without measuring.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks import random_masks
from benchmarks.harness import (
    ResultStore,
    Stopwatch,
    add_output_arguments,
    machine_info,
    markdown_table,
    read_json,
)
from benchmarks.intervals import (
    BOOTSTRAP,
    add_intervals,
    load_keyed_vectors,
    save_keyed_vectors,
    vectors_path,
)
from benchmarks.intervals import COLUMNS as INTERVAL_COLUMNS
from chord.baselines import ALL_METHODS, EvalConfig, run_eval
from chord.baselines.rows import COLUMNS
from chord.hyper.runs import RunConfig
from chord.masks import DEFAULT_GENERATOR, GENERATORS
from chord.masks.ranks import BALANCES
from chord.startcheck import thread_count as threads_arg

NAME = "accuracy"
# Budget-independent rows are measured once per (dataset, backbone), at the first budget.
BUDGET_FREE = ("fp32", "ptq-8", "ptq-4", "ptq-3", "ptq-2")
TRAINED_BACKBONES = Path("/tmp/chord_bench_backbones")  # benchmarks.backbones' default --out
# A row's per-user NDCG@10: (dataset, backbone, backbone_mode, method, budget of the row).
VectorKey = tuple[str, str, str, str, float]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Flags of the benchmark."""
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--datasets", nargs="+", default=["ml-100k", "ml-1m"])
    p.add_argument("--backbones", nargs="+", default=["sasrec", "caser"])
    p.add_argument("--budgets", nargs="+", type=float, default=[2.0, 3.0, 4.0])
    p.add_argument("--hyper-steps", type=int, default=300, help="hypernetwork steps at most")
    p.add_argument("--hyper-lr", type=float, default=None, help="hypernetwork learning rate")
    p.add_argument("--duet-steps", type=int, default=300)
    p.add_argument("--finetune-users", type=int, default=300)
    p.add_argument("--trained-backbones", default=str(TRAINED_BACKBONES),
                   help="folder of benchmarks.backbones models (DATASET-BACKBONE/backbone.pt), "
                        "reused for the pretrained mode when present")
    p.add_argument("--preset", choices=("smoke", "quick", "full"), default="full",
                   help="run preset (smoke only checks that the script works)")
    p.add_argument("--max-users", type=int, default=None)
    p.add_argument("--name", default=NAME, help="result name (results/NAME.json)")
    p.add_argument("--merge", action="store_true",
                   help="keep rows of other (dataset, backbone) pairs from results/NAME.json")
    add_output_arguments(p)
    p.add_argument("--import-json", nargs="+", default=None, metavar="FILE",
                   help="run nothing: fold these result files into results/NAME.json and "
                        "RESULTS.md (their (dataset, backbone) pairs replace existing ones; "
                        "other pairs are kept with --merge)")
    p.add_argument("--allocation", choices=("rd", "quota"), default="rd",
                   help="level rule: rate-distortion over measured layer losses (rd) or "
                        "maximum-entropy quotas in importance order (quota)")
    p.add_argument("--prior", choices=("fisher", "none"), default="none",
                   help="quota rule only: CHORD importance = Fisher sensitivity prior + gated "
                        "hypernetwork, or the hypernetwork alone")
    p.add_argument("--no-fold", dest="fold", action="store_false",
                   help="use the backbone as trained, without Backbone.fold_for_quantization")
    p.add_argument("--device", default="cpu",
                   help="torch device for training, evaluation and timings (cpu, cuda)")
    p.add_argument("--replot", action="store_true",
                   help="measure nothing: recompute the intervals from results/NAME.json and "
                        "NAME_per_user.npz, rewrite them and the section, redraw the NDCG plot")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=threads_arg, default=None,
                   help="torch CPU threads (default 1 on cpu; on cuda half the cores, at most 8)")
    p.add_argument("--random-masks", action="store_true",
                   help="measure random mode with learned masks instead (benchmarks.random_masks:"
                        " random fp32, shared mask, DIET-style, CHORD; bootstrap intervals)")
    p.add_argument("--widths", nargs="+", type=int, default=[64],
                   help="--random-masks: backbone widths (the first gets the full table)")
    p.add_argument("--mask-epochs", type=int, default=None,
                   help="epochs of learning the shared mask of random mode (--random-masks, and "
                        "the table's random-backbone rows; 0 = the seeded backbone as built; "
                        f"default: the preset's, {RunConfig.mask_epochs} for --random-masks)")
    p.add_argument("--diet-steps", type=int, default=None,
                   help="--random-masks: steps of the DIET-style hypernetwork at most (default: "
                        "--hyper-steps)")
    p.add_argument("--mask-lr", type=float, default=RunConfig.mask_lr,
                   help="--random-masks: Adam learning rate of the shared mask's scores")
    p.add_argument("--generator", choices=sorted(GENERATORS), default=DEFAULT_GENERATOR,
                   help="--random-masks: named generator of the seeded weights the masks are "
                        "learned over (chord.masks.GENERATORS)")
    p.add_argument("--mask-balance", choices=BALANCES, default="layer",
                   help="--random-masks: how each layer's kept weights are picked by score: the "
                        "whole layer's top, or the same count from every channel "
                        "(chord.masks.ranks.BALANCES)")
    p.add_argument("--pair-settings", action="store_true",
                   help="--random-masks: each (dataset, backbone) takes its width, mask and step "
                        "settings from benchmarks.random_masks.PAIR_SETTINGS instead of the "
                        "flags (the settings of accuracy_random_modes)")
    p.add_argument("--mask-variant", choices=sorted(random_masks.VARIANTS), default="bits",
                   help="--random-masks: levels choose bits only, or also how much of a channel "
                        "the mask keeps (results go to accuracy_random_nested)")
    return p.parse_args(argv)


def thread_count(requested: int | None, device: str) -> int:
    """Torch CPU threads: as asked, else 1 for CPU runs and half the cores (<= 8) for GPU runs."""
    if requested is not None:
        return max(1, requested)
    if torch.device(device).type == "cpu":
        return 1
    return max(1, min(8, (os.cpu_count() or 2) // 2))


def pair_key(entry: dict[str, Any]) -> tuple[str, str]:
    """(dataset, backbone) of a row or of a meta entry."""
    c = entry.get("config", entry)
    return str(c["dataset"]), str(c["backbone"])


def stamp(metas: list[dict[str, Any]], machine: dict[str, Any]) -> list[dict[str, Any]]:
    """Entries with `measured` (date, commit, cpu of the run that made them) filled in where
    missing, from the machine record of the file they were read from."""
    when = {k: machine.get(k) for k in ("date", "commit", "cpu")}
    return [m if "measured" in m else {**m, "measured": when} for m in metas]


def merged(old: list[dict[str, Any]], new: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Old entries of pairs not in `new`, plus `new`, with pairs kept in the old order (new
    pairs last), so a re-measured pair keeps its place in the table."""
    ours = {pair_key(e) for e in new}
    entries = [e for e in old if pair_key(e) not in ours] + new
    order: dict[tuple[str, str], int] = {}
    for e in [*old, *new]:
        order.setdefault(pair_key(e), len(order))
    return sorted(entries, key=lambda e: order[pair_key(e)])


def vector_key(row: dict[str, Any]) -> VectorKey:
    """Where a row's per-user NDCG@10 is kept: (dataset, backbone, mode, method, row budget)."""
    return (str(row["dataset"]), str(row["backbone"]), str(row["backbone_mode"]),
            str(row["method"]), float(row["budget"]))


def comparison_group(row: dict[str, Any]) -> tuple[str, str, str, float] | None:
    """The rows a row is compared with: same (dataset, backbone, backbone mode, bits).

    Bits are the budget, except for uniform PTQ, which is measured once per pair and counts at
    its own width (ptq-3 joins the budget-3 rows; ptq-8 joins none when 8 is not a budget).
    fp32 is compared with nothing (None).
    """
    method = str(row["method"])
    if method == "fp32":
        return None
    bits = float(method.removeprefix("ptq-")) if method.startswith("ptq-") else float(
        row["budget"])
    return str(row["dataset"]), str(row["backbone"]), str(row["backbone_mode"]), bits


def save_vectors(path: Path, vectors: dict[VectorKey, np.ndarray]) -> None:
    """Write per-user vectors [n_test] (benchmarks.intervals.save_keyed_vectors)."""
    save_keyed_vectors(path, vectors)


def load_vectors(path: Path) -> dict[VectorKey, np.ndarray]:
    """The per-user vectors `save_vectors` wrote; {} when there is no such file."""
    return {
        (d, b, mode, method, float(budget)): v
        for (d, b, mode, method, budget), v in load_keyed_vectors(path)
    }


def import_results(args: argparse.Namespace, store: ResultStore) -> int:
    """Fold result files (e.g. from a GPU run) into the store's NAME.json and Markdown.

    Each FILE's per-user vectors are read from FILE's NAME_per_user.npz when it has one.
    """
    rows: list[dict[str, Any]] = []
    metas: list[dict[str, Any]] = []
    vectors: dict[VectorKey, np.ndarray] = {}
    seconds = 0.0
    machine: dict[str, Any] = {}
    for f in args.import_json:
        data = json.loads(Path(f).read_text())
        machine = machine or dict(data.get("machine", {}))
        rows += data["rows"]
        metas += stamp(data["meta"], dict(data.get("machine", {})))
        vectors.update(load_vectors(vectors_path(Path(f))))
        seconds += sum(float(m.get("seconds", 0.0)) for m in data["meta"])
    ours = {pair_key(r) for r in rows}
    old = store.read(args.name) if args.merge else None
    if old is not None:
        rows = merged(old["rows"], rows)
        metas = merged(stamp(old["meta"], dict(old.get("machine", {}))), metas)
        # Vectors of a replaced pair go with its rows, even where the new file brings none.
        vectors.update({k: v for k, v in load_vectors(vectors_path(store.path(args.name))).items()
                        if (k[0], k[1]) not in ours})
    path = write(store, args.name, rows, metas, seconds, machine=machine, vectors=vectors)
    plot_ndcg_vs_bits(rows, store.path(args.name, "_ndcg_vs_bits.png"))
    print(f"wrote {path} ({len(rows)} rows)")
    return 0


def replot(args: argparse.Namespace, store: ResultStore) -> int:
    """Recompute the intervals of the stored NAME.json from its per-user vectors; rewrite all."""
    data = read_json(store.path(args.name))
    if data is None:
        print(f"--replot: no result at {store.path(args.name)}", file=sys.stderr)
        return 2
    vectors = load_vectors(vectors_path(store.path(args.name)))
    seconds = sum(float(m.get("seconds", 0.0)) for m in data["meta"])
    write(store, args.name, data["rows"], data["meta"], seconds,
          machine=dict(data.get("machine", {})), vectors=vectors)
    plot_ndcg_vs_bits(data["rows"], store.path(args.name, "_ndcg_vs_bits.png"))
    return 0


def plot_ndcg_vs_bits(rows: list[dict[str, Any]], path: Path) -> None:
    """NDCG@10 against measured average bits: columns (dataset, backbone), rows backbone mode."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = sorted({(r["dataset"], r["backbone"]) for r in rows})
    modes = [m for m in ("pretrained", "random") if any(r["backbone_mode"] == m for r in rows)]
    fig, axes = plt.subplots(
        len(modes), len(groups), figsize=(6 * len(groups), 4.2 * len(modes)), squeeze=False
    )
    for j, (ds, bb) in enumerate(groups):
        for i, mode in enumerate(modes):
            ax = axes[i][j]
            sub = [r for r in rows if (r["dataset"], r["backbone"], r["backbone_mode"]) == (
                ds, bb, mode)]
            # Uniform PTQ at 8/4/3/2 bits is one method seen at four precisions.
            label = {r["method"]: "ptq (uniform)" if r["method"].startswith("ptq-") else
                     r["method"] for r in sub}
            for name in sorted(set(label.values())):
                pts = sorted((r["avg_bits"], r["NDCG@10"]) for r in sub
                             if label[r["method"]] == name and r["avg_bits"] < 32)
                if not pts:
                    continue
                xs, ys = zip(*pts, strict=True)
                ax.plot(xs, ys, "-o" if name.startswith("chord") else "--.",
                        lw=2 if name.startswith("chord") else 1, label=name)
            for r in sub:
                if r["method"] == "fp32":
                    ax.axhline(r["NDCG@10"], color="gray", lw=0.8, ls=":", label="fp32")
            ax.set_title(f"{bb} on {ds}, {mode} backbone (test, 100 negatives)", fontsize=9)
            ax.set_xlabel("average bits per weight (measured)")
            ax.set_ylabel("NDCG@10")
            ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_importance(run_path: str, path: Path, n_users: int = 4, seed: int = 0) -> None:
    """Layer-level and channel-level importance of a trained run for a few test users."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from chord.data import pad_sequences
    from chord.hyper import load_run
    from chord.hyper.runs import RunConfig, load_split

    run = load_run(run_path)
    split = load_split(RunConfig(**run.meta["run_config"]))
    users = np.random.default_rng(seed).choice(len(split.test), n_users, replace=False)
    seqs = pad_sequences([split.test.histories[int(u)] for u in users], run.backbone.max_len)
    with torch.no_grad():
        per_layer = run.importance_model.channel_scores(run.profile(seqs))
    names = [layer.name for layer in run.layout.layers]
    fig, (ax1, ax2, ax3) = plt.subplots(1, 3, figsize=(18, 4.5))
    for i, u in enumerate(users):
        ax1.plot(range(len(names)), [float(t[i].mean()) for t in per_layer], "-o", ms=3,
                 label=f"user {int(u)}")
    ax1.set_xticks(range(len(names)))
    ax1.set_xticklabels(names, rotation=75, fontsize=6)
    ax1.set_ylabel("mean channel importance")
    ax1.set_title("importance per layer")
    ax1.legend(fontsize=7)
    inner = next((k for k, n in enumerate(names) if "ffn" in n or n == "fc"), 1)
    for i in range(len(users)):
        ax2.plot(per_layer[inner][i].cpu().numpy(), lw=0.8)
    ax2.set_title(f"channel importance in {names[inner]}")
    ax2.set_xlabel("channel")
    item_scores = per_layer[0].cpu().numpy()
    order = np.argsort(-item_scores[0])
    for i in range(len(users)):
        ax3.plot(item_scores[i][order], lw=0.6)
    ax3.set_title(f"{names[0]} rows (items) sorted by user {int(users[0])}'s importance")
    ax3.set_xlabel("item rank")
    fig.suptitle(f"{run.meta['backbone']} on {run.meta['dataset']}, {run.mode} backbone")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    """Run every (dataset, backbone, budget), rewriting the results after each."""
    args = parse_args(argv)
    if args.random_masks:
        if args.mask_epochs is None:
            args.mask_epochs = RunConfig.mask_epochs
        return random_masks.main(args)
    store = ResultStore.default(args.results_dir)
    if args.replot:
        return replot(args, store)
    if args.import_json:
        return import_results(args, store)
    if torch.device(args.device).type == "cuda" and not torch.cuda.is_available():
        print(f"--device {args.device}: torch {torch.__version__} sees no CUDA device",
              file=sys.stderr)
        return 2
    torch.set_num_threads(thread_count(args.threads, args.device))
    store.folder.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    metas: list[dict[str, Any]] = []
    vectors: dict[VectorKey, np.ndarray] = {}
    old = store.read(args.name) if args.merge else None
    kept_rows: list[dict[str, Any]] = []
    kept_metas: list[dict[str, Any]] = []
    if old is not None:
        kept_rows = old["rows"]
        kept_metas = stamp(old["meta"], dict(old.get("machine", {})))
        vectors = load_vectors(vectors_path(store.path(args.name)))
    clock = Stopwatch()
    log = clock.log
    importance_run: str | None = None
    for dataset in args.datasets:
        for backbone in args.backbones:
            trained = Path(args.trained_backbones) / f"{dataset}-{backbone}" / "backbone.pt"
            for k, budget in enumerate(args.budgets):
                methods = ALL_METHODS if k == 0 else tuple(
                    m for m in ALL_METHODS if m not in BUDGET_FREE
                )
                cfg = EvalConfig(
                    dataset=dataset, backbone=backbone, budget=budget, preset=args.preset,
                    seed=args.seed, methods=methods, max_users=args.max_users,
                    finetune_users=args.finetune_users,
                    duet_steps=args.duet_steps, hyper_steps=args.hyper_steps,
                    hyper_lr=args.hyper_lr, prior=args.prior, fold=args.fold,
                    allocation=args.allocation, mask_epochs=args.mask_epochs,
                    backbone_path=str(trained) if trained.is_file() else None,
                    device=args.device,
                )
                log(f"{dataset} {backbone} budget {budget}")
                result = run_eval(cfg, log)
                for r in result["rows"]:
                    row = {"dataset": dataset, "backbone": backbone, "budget": budget, **r}
                    rows.append(row)
                    vectors[vector_key(row)] = result["per_user"][(r["backbone_mode"],
                                                                   r["method"])]
                metas += stamp([result["meta"]], machine_info())
                if importance_run is None:
                    importance_run = result["meta"]["runs"]["pretrained"]["path"]
                table = merged(kept_rows, rows)
                write(store, args.name, table, merged(kept_metas, metas), clock.seconds,
                      vectors=vectors)
                plot_ndcg_vs_bits(table, store.path(args.name, "_ndcg_vs_bits.png"))
    if importance_run is not None and old is None:
        name = "importance" if args.name == NAME else f"{args.name}_importance"
        plot_importance(importance_run, store.path(name, ".png"))
    log("done")
    return 0


def training_notes(metas: list[dict[str, Any]]) -> str:
    """One line per (dataset, backbone, mode): how its hypernetwork was trained and selected."""
    lines, seen = [], set()
    for m in metas:
        c = m["config"]
        for mode, info in m["runs"].items():
            key = (c["dataset"], c["backbone"], mode)
            if key in seen or not info.get("hyper_train"):
                continue
            seen.add(key)
            h = info["hyper_train"]
            # Runs before hyper_lr was recorded used 2e-3; None means RunConfig's default.
            lr = c.get("hyper_lr") or (RunConfig.hyper_lr if "hyper_lr" in c else 2e-3)
            lines.append(
                f"- {c['backbone']} / {c['dataset']} / {mode}: hypernetwork cap "
                f"{c.get('hyper_steps')} steps, lr {lr:g}; valid NDCG@10 (mid tier, 3 bits) "
                f"{h['initial_valid_ndcg10']:.4f} at step 0 -> {h['best_valid_ndcg10']:.4f} "
                f"at step {h['best_step']} (kept), {h['steps_run']} steps run"
            )
    return "\n".join(lines)


def goal_lines(rows: list[dict[str, Any]]) -> str:
    """Against the goal, per (dataset, backbone, budget): CHORD (pretrained) against the best
    other compressed method at the same bits, with the paired interval where one was computed,
    and CHORD / fp32."""
    pre = [r for r in rows if r["backbone_mode"] == "pretrained"]
    lines = []
    for r in (x for x in pre if x["method"] == "chord-pretrained"):
        pair = (r["dataset"], r["backbone"])
        group = comparison_group(r)
        same = [x for x in pre if x is not r and comparison_group(x) == group]
        fp32 = [x for x in pre if (x["dataset"], x["backbone"]) == pair and x["method"] == "fp32"]
        if not same or not fp32:
            continue
        ratio = r["NDCG@10"] / fp32[0]["NDCG@10"]
        head = f"- {pair[0]} {pair[1]} at {r['budget']:g} bits: CHORD NDCG@10 {r['NDCG@10']:.4f}"
        if "win" in r:
            best = next(x for x in same if x["method"] == r["vs"])
            text = (f"{head} vs {r['vs']} {best['NDCG@10']:.4f}: paired difference "
                    f"{r['diff']:+.4f}, 95% CI {r['ci95']} over {r['ci_users']} users -> "
                    f"{VERDICT_WORDS[r['win']]}")
        else:
            best = max(same, key=lambda x: x["NDCG@10"])
            text = (f"{head}, best other {best['method']} {best['NDCG@10']:.4f} (no per-user "
                    "vectors were kept for this run, so no win is called)")
        lines.append(f"{text}; NDCG@10 = {ratio:.3f} of fp32")
    if not lines:
        return ""
    return ("\n\nAgainst the goal (CHORD, pretrained backbone, vs the best other compressed "
            "method at the same bits: uniform PTQ at the budget's width, mixed-static, "
            "mixed-random, fine-tuning and DUET):\n" + "\n".join(lines))


VERDICT_WORDS = {"yes": "CHORD wins", "loss": "CHORD loses", "no (tie)": "no win (tie)"}


def interval_note(rows: list[dict[str, Any]]) -> str:
    """How the vs / diff / ci95 / win columns were computed, and which rows have none."""
    groups = [comparison_group(r) for r in rows]
    missing = sorted({f"{r['dataset']} {r['backbone']}" for r, g in zip(rows, groups, strict=True)
                      if g is not None and "win" not in r and groups.count(g) > 1})
    text = (
        "vs / diff / ci95 / win: each compressed row's per-user NDCG@10 minus that of the best "
        "other compressed method (highest mean NDCG@10) at the same bits, same dataset, backbone "
        f"and backbone mode; ci95 is the paired bootstrap 95% percentile interval ({BOOTSTRAP:,} "
        "resamples of test users, benchmarks/intervals.py), and win = yes only where it excludes "
        "zero (loss where it lies below zero). Same bits = the same budget; uniform PTQ, "
        "measured once per pair, counts at its own width (ptq-2, ptq-3, ptq-4 with the budget "
        "2, 3, 4 rows; ptq-8 and fp32 are compared with nothing). DUET counts at its budget "
        "although its generated fp32 layer raises its avg_bits, which makes the comparison "
        "stricter for the others. Every method ranks the same seeded negatives per user; "
        "finetune is evaluated on a sample of test users, so its comparisons pair those users "
        "only (ci_users in the JSON). Per-user vectors: NAME_per_user.npz beside the JSON "
        "(`--replot` recomputes the intervals from it)."
    ).replace("NAME", NAME)
    if missing:
        text += (" Rows of " + ", ".join(missing) + " were measured before per-user vectors "
                 "were kept and have no interval (rerun those pairs to get them).")
    return text


def mask_epochs(config: dict[str, Any]) -> int:
    """Mask epochs of an entry's random mode: absent (entries before masks) 0, None the default."""
    if "mask_epochs" not in config:
        return 0
    value = config["mask_epochs"]
    return RunConfig.mask_epochs if value is None else int(value)


def measured_note(metas: list[dict[str, Any]]) -> str:
    """When and at which commit each (dataset, backbone) pair was measured, where recorded."""
    when: dict[tuple[str, str], set[str]] = {}
    for m in metas:
        info = m.get("measured")
        if info:
            when.setdefault(pair_key(m), set()).add(
                f"{str(info.get('date'))[:10]} at commit {info.get('commit')} "
                f"({info.get('cpu')})")
    if len({frozenset(v) for v in when.values()}) <= 1:
        return ""  # one run made every row: the header says when
    return "Pairs were measured by separate runs: " + "; ".join(
        f"{d} {b}: {', '.join(sorted(v))}" for (d, b), v in when.items()) + "."


def random_note(metas: list[dict[str, Any]]) -> str:
    """What the random-backbone rows are: the seeded backbone as built, or a learned mask."""
    epochs = sorted({mask_epochs(m["config"]) for m in metas})
    if epochs == [0]:
        return ("Random-backbone rows measure the seeded backbone as built (no learned mask; "
                "random mode with learned masks is the accuracy_random section).")
    return ("Random-backbone rows: epochs of the shared mask learned first, per entry: "
            + ", ".join(str(e) for e in epochs) + " (0 = the seeded backbone as built; meta "
            "config mask_epochs).")


def rule_note(metas: list[dict[str, Any]]) -> str:
    """How levels were placed and whether backbones were folded, per the entries' configs."""
    rules = sorted({m["config"].get("allocation", "quota") for m in metas})
    folds = sorted({bool(m["config"].get("fold", False)) for m in metas})
    parts = []
    if "rd" in rules:
        parts.append(
            "Level rule `rd` (chord/levels/rd.py): each layer's loss growth at widths 1..8 is "
            "measured on 1,024 training examples, and bits go where they remove the most loss; "
            "mixed-static is that rule with the measured population prior, CHORD adds the "
            "per-user hypernetwork correction, and mixed-random is a random ranking under the "
            "maximum-entropy quotas."
        )
    if "quota" in rules:
        parts.append(
            "Level rule `quota`: maximum-entropy level quotas in importance order (mixed-static "
            "ranks by Fisher sensitivity)."
        )
    if True in folds:
        parts.append(
            "Trained backbones are folded first (Backbone.fold_for_quantization: Caser's mean "
            "output-item row is subtracted, rankings unchanged)."
        )
    return " ".join(parts)


def device_note(metas: list[dict[str, Any]]) -> str:
    """Where the timings were taken: every device named in the meta entries."""
    devices = sorted({f"{m.get('device', 'cpu')} ({m.get('device_name', m.get('device', 'cpu'))})"
                      for m in metas})
    if all(m.get("device", "cpu") == "cpu" for m in metas):
        return ""
    return (
        f" Training, evaluation and timings ran on {', '.join(devices)} (meta `device` per "
        "entry): adapt_ms of such rows is a GPU figure, not a phone or CPU one."
    )


def write(
    store: ResultStore,
    name: str,
    rows: list[dict[str, Any]],
    metas: list[dict[str, Any]],
    seconds: float,
    machine: dict[str, Any] | None = None,
    vectors: dict[VectorKey, np.ndarray] | None = None,
) -> Path:
    """JSON, per-user vectors and Markdown section of everything so far; returns the JSON's path.

    machine: the machine imported results were measured on (named in the notes), None when this
    process measured them. vectors: every row's per-user NDCG@10 by `vector_key`; the intervals
    (`comparison_group`) are recomputed from them, and those of the rows are written to
    NAME_per_user.npz.
    """
    present = {vector_key(r) for r in rows}
    vectors = {k: v for k, v in (vectors or {}).items() if k in present}
    add_intervals(rows, comparison_group, lambda r: vectors.get(vector_key(r)), seed=0)
    for r in rows:  # uniform PTQ is listed at the first budget but compared at its own width
        group = comparison_group(r)
        if "vs" in r and group is not None and group[3] != float(r["budget"]):
            r["vs"] = f"{r['vs']} @{group[3]:g} bits"
    at = COLUMNS.index("NDCG@10") + 1
    columns = ["dataset", "backbone", "budget", *COLUMNS[:at], *INTERVAL_COLUMNS, *COLUMNS[at:]]
    table = markdown_table(rows, columns)
    notes = (
        "Test split, leave-one-out; HR/NDCG of the target against 100 seeded unseen negatives. "
        "budget = requested average bits (tier low for 2, mid otherwise); avg_bits is measured "
        "on the actual assignments (size-weighted, mean over users). fp32/ptq rows do not "
        "depend on the budget and are listed once. bytes_down_per_user: CHORD = 2-bit code + "
        "header, DUET = generated fp32 params; static methods ship one model once (0 per user; "
        "the pretrained backbone's one-time download is not in this column). adapt_ms: CHORD = "
        "cloud strategy + device quantization for one user; finetune = on-device backprop + "
        "quantization; DUET = generation per user (batched). Hypernetworks and DUET were "
        "trained with capped step counts"
        + (" because 2 CPU cores were shared by several jobs; " if not device_note(metas) else "; ")
        + (f"this invocation took {seconds / 60:.0f} min" if machine is None else
           f"the imported runs took {seconds / 60:.0f} min of process time in all (run side by "
           f"side on {machine.get('cpu_count', '?')} cores, {machine.get('cpu', '?')}, torch "
           f"{machine.get('torch', '?')}; the header names the machine that imported them)")
        + " (a run reused from the run cache counts only its loading: meta runs.*.prepare_s)."
        + f"{device_note(metas)} {rule_note(metas)} {random_note(metas)}\n\n"
        + interval_note(rows) + " " + measured_note(metas) + "\n\n"
        + training_notes(metas)
        + goal_lines(rows)
    )
    path = store.write(name, {"rows": rows, "meta": metas}, table, notes)
    save_vectors(vectors_path(path), vectors)
    return path


if __name__ == "__main__":
    sys.exit(main())
