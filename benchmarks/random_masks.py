"""Random-mode accuracy: learned masks over a seeded backbone, against the shared mask and DIET.

Run: `python -m benchmarks.accuracy --random-masks [--datasets ml-100k] [--backbones sasrec]
[--widths 64 128 256] [--budgets 2 3 4]`. Per (dataset, backbone, width) it prepares (or
reuses) a random-mode run (chord.hyper.runs: the shared mask is learned first, then CHORD's
hypernetwork over it), trains a DIET-style hypernetwork (a keep/prune bit per channel over the
same shared mask), and measures on the test split:

- random-fp32: the seeded backbone as built (chance);
- shared-mask: the shared mask alone, fp32 and uniformly quantized at each budget;
- diet: per-user channel pruning (the lowest quarter of each user's channel mass by the DIET
  hypernetwork's importance) over the shared mask, kept weights at the budget's bits;
- chord: per-user levels over the shared mask (the run's hypernetwork and level rule).

Every compressed row carries a paired bootstrap 95% interval over test users of its NDCG@10
minus that of the best other compressed method at the same bits. Writes
results/NAME.json, NAME_per_user.npz (per-user NDCG@10 of every row), its RESULTS.md section
and results/NAME_bytes.png (NDCG@10 against the bytes a device receives, pretrained points
from results/accuracy.json). NAME: --name, else accuracy_random[_VARIANT].

The consolidated table of both datasets and backbones (accuracy_random_modes) comes from one
command, MODES_COMMAND: --pair-settings gives each (dataset, backbone) its PAIR_SETTINGS (the
settings each pair was measured with) and reuses the cached runs; --merge keeps the rows of
the stored NAME.json that an invocation does not measure again (same dataset, backbone,
width, method and budget), and --import-json folds result files written elsewhere
(--results-dir) into it.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks.harness import RESULTS_DIR, ResultStore, markdown_table, write_result
from benchmarks.intervals import add_intervals, load_keyed_vectors, save_keyed_vectors, vectors_path
from chord.baselines.suite import code_bytes
from chord.config import BackboneConfig, SASRecConfig
from chord.data import Split, pad_sequences
from chord.evaluation import stage_ranks
from chord.hyper import HyperNetwork, HyperTrainConfig, PersonalScorer, train_hypernet
from chord.hyper.runs import ChordRun, RunConfig, load_run, load_split, prepare_run
from chord.levels import DEFAULT_TIERS, Tier
from chord.masks import TORCH_XAVIER, MaskArtifact, MaskedSource, personal_model, stored_bytes
from chord.metrics import user_ndcg
from chord.models import build_backbone

NAME = "accuracy_random"
# Mask variants: (keep fractions, level -> lowest class kept, shared class). "bits": every level
# keeps the shared 50% mask and levels differ in bits only (RunConfig's default); "nested":
# levels also choose how much of a channel survives (40%, 50%, 50%, 60% of its layer's ranks);
# "sparse": one class of the top 20%, which the artifact Rice-codes (format version 2) in about
# 0.74 bits per weight, so a hidden-128 mask fits 1/16 of the fp32 hidden-64 backbone;
# "sparse5" / "sparse4": the top 5% / 4% (about 0.29 / 0.25 bits per weight coded), the
# densities around which a hidden-256 mask fits that budget.
VARIANTS: dict[str, tuple[tuple[float, ...], tuple[int, int, int, int], int]] = {
    "bits": ((0.5,), (1, 1, 1, 1), 1),
    "nested": ((0.6, 0.5, 0.4), (3, 2, 2, 1), 2),
    "sparse": ((0.2,), (1, 1, 1, 1), 1),
    "sparse5": ((0.05,), (1, 1, 1, 1), 1),
    "sparse4": ((0.04,), (1, 1, 1, 1), 1),
}
PRETRAINED_CHORD_3 = ("ml-100k", "sasrec", 3.0)  # the comparison the lead asked for
LOG = Callable[[str], None]

# The settings of the consolidated random-mode table (accuracy_random_modes), per (dataset,
# backbone): what `--pair-settings` gives each pair instead of the width / mask flags, so one
# command reproduces every row from the run cache (~/.cache/chord/runs, keyed by the config).
# SASRec: the ML-100K headline setting (accuracy_random_h256_sparse4); on ML-1M the mask is
# capped at 10 epochs (an epoch took about 150 s of one core). Caser: h64, keep 20%, the
# channel-balanced keep rule; one epoch on ML-1M is as many steps as ten on ML-100K (see the
# section's Ideas table).
_BOTH = {"hyper_steps": 20, "diet_steps": 20, "generator": "torch-mt19937-xavier-signed/1"}
_SASREC = {**_BOTH, "widths": [256], "mask_variant": "sparse4", "mask_lr": 0.01,
           "mask_balance": "layer"}
_CASER = {**_BOTH, "widths": [64], "mask_variant": "sparse", "mask_lr": 0.05,
          "mask_balance": "channel"}
PAIR_SETTINGS: dict[tuple[str, str], dict[str, Any]] = {
    ("ml-100k", "sasrec"): {**_SASREC, "mask_epochs": 40},
    ("ml-1m", "sasrec"): {**_SASREC, "mask_epochs": 10},
    ("ml-100k", "caser"): {**_CASER, "mask_epochs": 10},
    ("ml-1m", "caser"): {**_CASER, "mask_epochs": 1},
}


# The one command of the consolidated table (the section says it where every run used
# PAIR_SETTINGS).
MODES_COMMAND = (
    "python -m benchmarks.accuracy --random-masks --pair-settings --datasets ml-100k ml-1m "
    "--backbones sasrec caser --budgets 2 3 4 --threads 1 --name accuracy_random_modes"
)


def uses_pair_settings(meta: dict[str, Any]) -> bool:
    """Whether a meta entry's run used its pair's PAIR_SETTINGS."""
    c = meta["config"]
    setting = PAIR_SETTINGS.get((c["dataset"], c["backbone"]))
    if setting is None:
        return False
    fractions = list(VARIANTS[setting["mask_variant"]][0])
    return (c["width"] in setting["widths"] and c["mask_lr"] == setting["mask_lr"]
            and c["mask_epochs"] == setting["mask_epochs"]
            and c["hyper_steps"] == setting["hyper_steps"]
            and c["generator"] == setting["generator"]
            and c.get("mask_balance", "layer") == setting["mask_balance"]
            and list(c["mask_fractions"]) == fractions)


def settings_text(metas: list[dict[str, Any]]) -> str:
    """The one command and per-pair settings, where every run used PAIR_SETTINGS; else ''."""
    if not metas or not all(uses_pair_settings(m) for m in metas):
        return ""
    pairs = []
    for m in metas:
        c = m["config"]
        pairs.append(
            f"{c['dataset']} {c['backbone']}: width {c['width']}, keep "
            f"{', '.join(f'{f:.0%}' for f in c['mask_fractions'])}, mask lr {c['mask_lr']}, at "
            f"most {c['mask_epochs']} mask epochs, balance {c.get('mask_balance', 'layer')}, "
            f"hypernetwork and DIET at most {c['hyper_steps']} / "
            f"{m.get('diet_steps', c['hyper_steps'])} steps")
    return (f"One command reproduces every row from the run cache (~/.cache/chord/runs, keyed "
            f"by the run config; a missing run is trained first): `{MODES_COMMAND}`. Settings "
            f"per pair (benchmarks.random_masks.PAIR_SETTINGS): {'; '.join(pairs)}. Balance "
            "layer: a layer keeps its top weights by score; channel: the same count in every "
            "channel (chord.masks.ranks.BALANCES; Ideas 7b-7c). ")


def meta_notes(metas: list[dict[str, Any]]) -> str:
    """What the JSON's meta entries say about how their own run was measured (a meta entry's
    "note": a cap chosen for the clock, pauses by other work); a re-measured pair replaces its
    entry, and with it the note."""
    notes = [f"{m['config']['dataset']} {m['config']['backbone']} h{m['config']['width']}: "
             f"{m['note']}" for m in metas if m.get("note")]
    return " ".join(notes) + (" " if notes else "")


def pair_args(args: Any, dataset: str, backbone: str) -> Any:
    """`args` with the pair's PAIR_SETTINGS applied where --pair-settings was given.

    Raises ValueError for a pair the table does not hold (name one it does, or drop the flag).
    """
    if not getattr(args, "pair_settings", False):
        return args
    setting = PAIR_SETTINGS.get((dataset, backbone))
    if setting is None:
        raise ValueError(
            f"--pair-settings: no setting for ({dataset}, {backbone}); the table holds "
            f"{sorted(PAIR_SETTINGS)} (drop --pair-settings to use the flags)")
    out = copy.copy(args)
    for key, value in setting.items():
        setattr(out, key, value)
    return out


def uniform_tier(bits: int) -> Tier:
    """Every level at `bits`: a uniform-width model (the same level everywhere)."""
    return Tier(f"uniform-{bits}", (bits, bits, bits, bits), float(bits))


def tier_for(budget: float) -> Tier:
    """The accuracy table's rule: tier low for budgets <= 2.5, mid otherwise."""
    return DEFAULT_TIERS["low" if budget <= 2.5 else "mid"]


def with_levels(run: ChordRun, level_min_class: tuple[int, int, int, int]) -> MaskArtifact:
    """The run's mask artifact with another level -> lowest-class map (same classes)."""
    assert run.mask is not None
    art = run.mask.artifact
    return MaskArtifact(dataclasses.replace(art.header, level_min_class=level_min_class),
                        art.classes)


def shared_artifact(run: ChordRun) -> MaskArtifact:
    """Every level keeps the shared mask: the shared-mask rows at any bits.

    (Level 0's class would be a sparser mask wherever levels prune, as in the nested variant.)
    """
    assert run.mask is not None
    shared = run.mask.artifact.header.shared_min_class
    return with_levels(run, (shared, shared, shared, shared))


def diet_source(run: ChordRun) -> MaskedSource:
    """The run's mask with level 0 pruning the channel and levels 1-3 keeping the shared mask."""
    assert run.mask is not None
    k = len(run.mask.artifact.header.keep_fractions)
    shared = run.mask.artifact.header.shared_min_class
    return MaskedSource(run.mask.raw, with_levels(run, (k + 1, shared, shared, shared)))


def train_diet(run: ChordRun, split: Split, steps: int, seed: int, log: LOG) -> HyperNetwork:
    """A DIET-style hypernetwork: per user, which quarter of the channel mass to prune."""
    source = diet_source(run)
    tier = uniform_tier(3)
    net = HyperNetwork(run.layout, run.backbone.state_dim, dict(run.backbone.state_dict()),
                       seed=seed)
    cfg = HyperTrainConfig(
        steps=steps, eval_every=max(1, steps // 6), budget_sampling=((tier.name, 3.0, 3.0),),
        valid_tier=tier.name, valid_budget=3.0, seed=seed,
    )
    report = train_hypernet(run.backbone, run.layout, net, split, cfg, {tier.name: tier},
                            log, None, source)
    log(f"diet hypernetwork: valid NDCG@10 {report.initial_ndcg10:.4f} -> "
        f"{report.best_ndcg10:.4f} at step {report.best_step}")
    return net


def run_config(args: Any, dataset: str, backbone: str, width: int) -> RunConfig:
    """The random-mode run of one (dataset, backbone, width)."""
    fractions, levels, shared = VARIANTS[args.mask_variant]
    return RunConfig(
        dataset=dataset, backbone=backbone, mode="random", seed=args.seed, width=width,
        hyper_steps=args.hyper_steps, mask_epochs=args.mask_epochs, max_users=args.max_users,
        mask_fractions=fractions, mask_levels=levels, mask_shared=shared,
        generator=args.generator, mask_lr=args.mask_lr, allocation=args.allocation,
        mask_balance=getattr(args, "mask_balance", "layer"),
    )


def mask_bytes(run: ChordRun) -> int:
    """Bytes of the run's mask artifact: the one-time download in random mode."""
    return int(run.meta["mask"]["bytes"])


def fp32_bytes(run: ChordRun) -> int:
    """Every parameter of the backbone at 4 bytes (what shipping trained weights would cost)."""
    return int(sum(p.numel() for p in run.backbone.parameters()) * 4)


@torch.no_grad()
def latency_ms(model: torch.nn.Module, split: Split, max_len: int, reps: int = 30) -> float:
    """Median wall time of scoring 101 candidates for one user (1 CPU thread)."""
    seqs = pad_sequences(split.test.histories[:1], max_len)
    cands = torch.arange(1, 102).unsqueeze(0)
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        model.score_candidates(seqs, cands)  # type: ignore[operator]
        times.append((time.perf_counter() - t0) * 1e3)
    return float(np.median(times))


def measure_pair(
    args: Any, dataset: str, backbone: str, width: int, log: LOG, full_table: bool
) -> tuple[list[dict[str, Any]], dict[str, Any], dict[str, np.ndarray]]:
    """Rows (and per-user NDCG@10 by method) of one (dataset, backbone, width)."""
    cfg = run_config(args, dataset, backbone, width)
    path = prepare_run(cfg, log=log)
    run = load_run(path)
    assert run.mask is not None
    split = load_split(cfg)
    seed = args.seed
    base = {"dataset": dataset, "backbone": backbone, "width": width,
            "variant": args.mask_variant}
    one_time = mask_bytes(run)
    per_user: dict[str, np.ndarray] = {}
    rows: list[dict[str, Any]] = []

    def add(method: str, budget: float | None, bits: float, scorer: Any, per_adapt: float,
            extra: dict[str, Any] | None = None) -> None:
        ranks = stage_ranks(scorer, split, "test", seed=seed)
        nd = user_ndcg(ranks)
        key = f"{method}@{budget:g}" if budget is not None else method
        per_user[key] = nd
        rows.append({
            **base, "budget": budget if budget is not None else "-", "method": method,
            "avg_bits": round(bits, 3), "HR@10": float(np.mean(ranks < 10)),
            "NDCG@10": float(nd.mean()), "one_time_bytes": one_time if method != "random-fp32"
            else 0, "bytes_per_adaptation": round(per_adapt, 1), **(extra or {}),
        })
        log(f"{dataset} {backbone} h{width} {key}: NDCG@10 {nd.mean():.4f}")

    raw = run.mask.raw  # the seeded weights as the generator built them, unmasked
    add("random-fp32", None, 32.0, raw, 0.0)
    add("shared-mask-fp32", None, 32.0, run.backbone, 0.0)
    budgets = args.budgets if full_table else [3.0]
    zero_levels = np.zeros(run.n_channels, dtype=np.uint8)
    diet_steps = args.diet_steps or args.hyper_steps
    diet = train_diet(run, split, diet_steps, seed, log) if full_table else None
    source = diet_source(run)
    shared_art = shared_artifact(run)
    for budget in budgets:
        b = round(budget)
        uniform = personal_model(run.mask.raw, shared_art, zero_levels, uniform_tier(b))
        add("shared-mask", budget, float(b), uniform, 0.0)
        if diet is not None:
            scorer = PersonalScorer(run.backbone, run.layout, diet.importance, uniform_tier(b),
                                    float(b), mask=source)
            add("diet", budget, float(b), scorer, (run.n_channels + 7) // 8 + 17)
        tier = tier_for(budget)
        scorer = PersonalScorer(run.backbone, run.layout, run.importance_model.importance, tier,
                                budget, cost=run.level_cost, mask=run.mask)
        levels = np.concatenate(scorer.level_rows) if scorer.level_rows else None
        ranks_rows_before = len(rows)
        add("chord", budget, 0.0, scorer, 0.0)
        levels = np.concatenate(scorer.level_rows)
        r = rows[ranks_rows_before]
        r["avg_bits"] = round(scorer.mean_avg_bits(), 3)
        r["bytes_per_adaptation"] = round(float(np.mean(
            [code_bytes(row, run.version) for row in levels[:200]])), 1)
        if budget == 3.0:
            other = sum(p.numel() * 4 for n, p in run.backbone.named_parameters()
                        if not n.endswith(".weight") or n[: -len(".weight")]
                        not in {x.name for x in run.layout.layers})
            mem = [stored_bytes(run.mask.artifact, row, tier) + other for row in levels[:50]]
            model = personal_model(run.mask.raw, run.mask.artifact, levels[0], tier)
            r["device_bytes"] = int(np.mean(mem))
            r["fp32_backbone_bytes"] = fp32_bytes(run)
            r["infer_ms"] = round(latency_ms(model, split, run.backbone.max_len), 3)
    meta = {
        "config": dataclasses.asdict(cfg), "run": str(path),
        **({"diet_steps": diet_steps} if full_table else {}),
        "mask": {k: v for k, v in run.meta["mask"].items() if k != "train"},
        "mask_train": run.meta["mask"]["train"], "hyper_train": run.meta["hyper_train"],
        "prepare_seconds": run.meta.get("prepare_seconds"),
    }
    return rows, meta, per_user


def pretrained_points(dataset: str, backbone: str) -> list[dict[str, Any]]:
    """Pretrained-mode NDCG@10 of results/accuracy.json with their bytes (plot references)."""
    path = RESULTS_DIR / "accuracy.json"
    if not path.is_file():
        return []
    data = json.loads(path.read_text())
    return [r for r in data["rows"] if r["dataset"] == dataset and r["backbone"] == backbone
            and r["backbone_mode"] == "pretrained"
            and r["method"] in ("fp32", "ptq-3", "chord-pretrained")]


def plot_bytes(
    rows: list[dict[str, Any]], fp32_h64: dict[tuple[str, str], int], path: Path
) -> None:
    """NDCG@10 against total bytes a device receives (one-time + one adaptation), log x."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pairs = sorted({(r["dataset"], r["backbone"]) for r in rows})
    fig, axes = plt.subplots(1, len(pairs), figsize=(7 * len(pairs), 4.8), squeeze=False)
    for ax, (ds, bb) in zip(axes[0], pairs, strict=True):
        for r in (x for x in rows if (x["dataset"], x["backbone"]) == (ds, bb)):
            total = r["one_time_bytes"] + r["bytes_per_adaptation"]
            label = f"random h{r['width']} {r['method']}" + (
                f"@{r['budget']:g}" if r["budget"] != "-" else "")
            ax.scatter(max(total, 1), r["NDCG@10"], s=18,
                       marker="o" if r["method"] == "chord" else ".")
            ax.annotate(label, (max(total, 1), r["NDCG@10"]), fontsize=5)
        ship = fp32_h64.get((ds, bb))
        for r in pretrained_points(ds, bb):
            if ship is None:
                continue
            total = ship + float(r.get("bytes_down_per_user", 0))
            ax.scatter(total, r["NDCG@10"], marker="s", s=18, color="black")
            ax.annotate(f"pretrained {r['method']}@{r['budget']:g}", (total, r["NDCG@10"]),
                        fontsize=5)
        ax.set_xscale("log")
        ax.set_xlim(0.5, 1e7)  # room for the labels right of the pretrained points
        ax.set_xlabel("bytes a device receives (one-time + one adaptation; 0 drawn at 1)")
        ax.set_ylabel("NDCG@10 (test, 100 negatives)")
        ax.set_title(f"{bb} on {ds}: random mode (dots) vs pretrained (squares)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def goal_lines(rows: list[dict[str, Any]], fp32_h64: dict[tuple[str, str], int]) -> str:
    """What the issue's goals say about these rows, one line per CHORD row at 3 bits."""
    lines = []
    for r in rows:
        if r["method"] != "chord" or r["budget"] != 3.0:
            continue
        pair = (r["dataset"], r["backbone"])
        pre = [x for x in pretrained_points(*pair) if x["method"] == "chord-pretrained"
               and x["budget"] == 3.0]
        fp = [x for x in pretrained_points(*pair) if x["method"] == "fp32"]
        text = f"- {pair[0]} {pair[1]} h{r['width']}: random CHORD at 3 bits NDCG@10 " \
               f"{r['NDCG@10']:.4f}"
        if fp and pair[1] == "caser":
            text += f" ({r['NDCG@10'] / fp[0]['NDCG@10']:.3f} x pretrained fp32; as measured)"
        elif fp:
            goal = GOAL_FRACTION[pair[0]] * fp[0]["NDCG@10"]
            text += (f" ({'meets' if r['NDCG@10'] >= goal else 'misses'} the goal >= "
                     f"{goal:.3f}, {r['NDCG@10'] / fp[0]['NDCG@10']:.3f} x pretrained fp32)")
        if pre:
            ratio = r["NDCG@10"] / pre[0]["NDCG@10"]
            text += (f"; {ratio:.3f} x pretrained CHORD at 3 bits ({pre[0]['NDCG@10']:.4f}): "
                     f"{'within' if ratio >= 0.95 else 'not within'} 5%")
        ship = fp32_h64.get(pair)
        if ship:
            text += (f"; one-time download {r['one_time_bytes']:,} B = 1/"
                     f"{ship / r['one_time_bytes']:.1f} of the fp32 hidden-64 backbone "
                     f"({ship:,} B; goal <= 1/16)")
        if "win" in r:
            text += f"; vs {r['vs']}: {r['diff']:+.4f} {r['ci95']} (win: {r['win']})"
        lines.append(text)
    return "\n".join(lines)


# The issue's accuracy goal for random SASRec at 3 bits, as a fraction of pretrained fp32.
GOAL_FRACTION = {"ml-100k": 0.95, "ml-1m": 0.9}


@functools.lru_cache(maxsize=8)
def popularity_ndcg(dataset: str, seed: int = 0) -> float:
    """Test NDCG@10 of ranking candidates by training-set count (the benchmark protocol).

    A reference, not a method: a model that learned only which items are popular lands here.
    Ties are broken by a seeded jitter far below one count.
    """
    split = load_split(RunConfig(dataset=dataset, mode="random"))
    counts = np.zeros(split.n_items + 1)
    for seq in split.train:
        np.add.at(counts, seq, 1.0)
    jitter = np.random.default_rng(seed).random(split.n_items + 1) * 1e-3
    table = torch.from_numpy(counts + jitter)

    def score(seqs: torch.Tensor, cands: torch.Tensor | None, users: torch.Tensor) -> torch.Tensor:
        return table[cands] if cands is not None else table.expand(len(seqs), -1)

    return float(user_ndcg(stage_ranks(score, split, "test", seed=seed)).mean())


def goal_summary(rows: list[dict[str, Any]], fp32_h64: dict[tuple[str, str], int]) -> str:
    """The issue's goals one by one: met or not, with the figures of these rows."""
    def chord3(ds: str, bb: str) -> dict[str, Any] | None:
        return next((r for r in rows if (r["dataset"], r["backbone"]) == (ds, bb)
                     and r["method"] == "chord" and r["budget"] == 3.0), None)

    out = ["Goals (issue 13), one by one:"]
    for ds in ("ml-100k", "ml-1m"):
        r = chord3(ds, "sasrec")
        fp = [x for x in pretrained_points(ds, "sasrec") if x["method"] == "fp32"]
        if r is None or not fp:
            out.append(f"- {ds} SASRec >= {GOAL_FRACTION[ds]} x pretrained fp32: not measured "
                       "in this table")
            continue
        goal = GOAL_FRACTION[ds] * fp[0]["NDCG@10"]
        out.append(f"- {ds} SASRec, random CHORD at 3 bits >= {goal:.3f} "
                   f"({GOAL_FRACTION[ds]} x {fp[0]['NDCG@10']:.4f}): "
                   f"{'met' if r['NDCG@10'] >= goal else 'not met'}, {r['NDCG@10']:.4f}")
    for ds in ("ml-100k", "ml-1m"):
        r = chord3(ds, "caser")
        if r is None:
            out.append(f"- {ds} Caser, as measured: not measured in this table")
            continue
        shared = next((x for x in rows if (x["dataset"], x["backbone"]) == (ds, "caser")
                       and x["method"] == "shared-mask-fp32"), None)
        fp = [x for x in pretrained_points(ds, "caser") if x["method"] == "fp32"]
        out.append(
            f"- {ds} Caser, as measured: random CHORD at 3 bits {r['NDCG@10']:.4f}"
            + (f", shared mask fp32 {shared['NDCG@10']:.4f}" if shared else "")
            + f"; most-popular reference {popularity_ndcg(ds):.4f}"
            + (f"; pretrained fp32 {fp[0]['NDCG@10']:.4f}" if fp else ""))
    chord_rows = [r for r in rows if r["method"] == "chord" and "win" in r]
    wins = [r for r in chord_rows if r["win"] == "yes"]
    out.append(
        "- CHORD beats the shared mask and DIET at the same bits, interval excluding zero: "
        + ("met" if chord_rows and len(wins) == len(chord_rows) else "not met")
        + f" ({len(wins)} of {len(chord_rows)} CHORD rows win; "
        + "; ".join(f"{r['dataset']} {r['backbone']} @{r['budget']:g}: {r['diff']:+.4f} "
                    f"{r['ci95']} vs {r['vs']}" for r in chord_rows) + ")")
    sizes = []
    for (ds, bb), ship in sorted(fp32_h64.items()):
        one = next((r["one_time_bytes"] for r in rows if (r["dataset"], r["backbone"]) == (ds, bb)
                    and r["method"] == "chord"), None)
        if one:
            sizes.append((ds, bb, one, ship))
    out.append(
        "- One-time download <= 1/16 of the fp32 hidden-64 backbone: "
        + ("met" if sizes and all(one * 16 <= ship for _, _, one, ship in sizes) else "not met")
        + " (" + "; ".join(f"{ds} {bb} {one:,} B = 1/{ship / one:.1f} of {ship:,} B"
                           for ds, bb, one, ship in sizes) + ")")
    return "\n".join(out)


def h64_bytes(config: BackboneConfig) -> int:
    """fp32 bytes of the width-64 model of `config`'s architecture (the download goal's unit)."""
    width = {"hidden": 64} if isinstance(config, SASRecConfig) else {"embed": 64}
    model = build_backbone(dataclasses.replace(config, **width), 0)  # type: ignore[arg-type]
    return int(sum(p.numel() for p in model.parameters()) * 4)


def rewrite(name: str, store: ResultStore, seed: int = 0) -> int:
    """Redraw the plot and rewrite the Markdown section of the store's NAME.json (no measuring);
    intervals are recomputed where NAME_per_user.npz holds the pair's vectors."""
    data = json.loads(store.path(name).read_text())
    for r in data["rows"]:
        r.setdefault("variant", "bits")
    vectors = load_vectors(vectors_path(store.path(name)))
    refresh_intervals(data["rows"], vectors, seed)
    write(data["rows"], data["meta"], h64_table(data["meta"]), 0.0, name, store,
          machine=data.get("machine"), vectors=vectors)
    return 0


def h64_table(metas: list[dict[str, Any]]) -> dict[tuple[str, str], int]:
    """fp32 hidden-64 backbone bytes of every (dataset, backbone) of the meta entries."""
    out: dict[tuple[str, str], int] = {}
    for m in metas:
        c = m["config"]
        out[(c["dataset"], c["backbone"])] = h64_bytes(load_run(m["run"]).backbone_config)
    return out


VectorKey = tuple[str, str, int, str]  # (dataset, backbone, width, method[@budget])


def save_vectors(path: Path, vectors: dict[VectorKey, np.ndarray]) -> None:
    """Per-user NDCG@10 vectors [n_test users] (benchmarks.intervals.save_keyed_vectors)."""
    save_keyed_vectors(path, vectors)


def load_vectors(path: Path) -> dict[VectorKey, np.ndarray]:
    """The vectors save_vectors wrote; {} where there is no such file."""
    return {(str(d), str(b), int(w), str(key)): v for (d, b, w, key), v in load_keyed_vectors(path)}


def refresh_intervals(rows: list[dict[str, Any]], vectors: dict[VectorKey, np.ndarray],
                      seed: int) -> None:
    """Recompute the intervals of every row whose (dataset, backbone) has per-user vectors.

    Rows of pairs without vectors (imported from a result written before the vectors were
    kept) keep the vs / diff / ci95 / win their own run computed.
    """
    with_vectors = {(k[0], k[1]) for k in vectors}
    mine = [r for r in rows if (r["dataset"], r["backbone"]) in with_vectors]
    add_intervals(mine, same_bits, lambda r: vectors.get(vector_key(r)), seed)


def pair_of(entry: dict[str, Any]) -> tuple[str, str]:
    """(dataset, backbone) of a row or of a meta entry."""
    c = entry.get("config", entry)
    return str(c["dataset"]), str(c["backbone"])


def entry_key(entry: dict[str, Any]) -> tuple[Any, ...]:
    """What a newer entry replaces: a row's (dataset, backbone, width, method, budget), a meta
    entry's (dataset, backbone, width)."""
    if "config" in entry:
        return (*pair_of(entry), entry["config"]["width"])
    return (*pair_of(entry), entry["width"], entry["method"], str(entry["budget"]))


def merged(old: list[dict[str, Any]], new: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """`old` with each entry of `new` in the place of the old entry of its entry_key (appended
    where there is none); pairs keep the place they first had.

    So the budgets of one run measured by two invocations (--budgets 2 3 and --budgets 4)
    fold into one table.
    """
    out = list(old)
    at = {entry_key(e): i for i, e in enumerate(out)}
    for e in new:
        if entry_key(e) in at:
            out[at[entry_key(e)]] = e
        else:
            at[entry_key(e)] = len(out)
            out.append(e)
    order: dict[tuple[str, str], int] = {}
    for e in out:
        order.setdefault(pair_of(e), len(order))
    return sorted(out, key=lambda e: order[pair_of(e)])


def import_results(args: Any, store: ResultStore, name: str) -> int:
    """Fold random-mode result files into the store's NAME.json, npz, section and plot.

    Each FILE's per-user vectors come from its NAME_per_user.npz where it has one; with
    --merge, pairs of the stored NAME.json that the files do not bring are kept.
    """
    rows: list[dict[str, Any]] = []
    metas: list[dict[str, Any]] = []
    vectors: dict[VectorKey, np.ndarray] = {}
    machine: dict[str, Any] | None = None
    for f in args.import_json:
        data = json.loads(Path(f).read_text())
        machine = machine or data.get("machine")
        rows, metas = merged(rows, data["rows"]), merged(metas, data["meta"])
        vectors.update(load_vectors(vectors_path(Path(f))))
    rows, metas, vectors = with_stored(args, store, name, rows, metas, vectors)
    refresh_intervals(rows, vectors, args.seed)
    sources = ", ".join(Path(f).parent.name + "/" + Path(f).name for f in args.import_json)
    write(rows, metas, h64_table(metas), 0.0, name, store, machine=machine, vectors=vectors,
          origin=f"Folded from result files measured apart (--import-json: {sources}); "
                 "per-run times are in the JSON meta.")
    print(f"wrote {store.path(name)} ({len(rows)} rows)")
    return 0


def with_stored(
    args: Any, store: ResultStore, name: str, rows: list[dict[str, Any]],
    metas: list[dict[str, Any]], vectors: dict[VectorKey, np.ndarray],
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], dict[VectorKey, np.ndarray]]:
    """With --merge: the stored NAME.json's rows (and their vectors) that these rows do not
    replace (see merged), added."""
    old = store.read(name) if getattr(args, "merge", False) else None
    if old is None:
        return rows, metas, vectors
    kept = load_vectors(vectors_path(store.path(name)))
    return merged(old["rows"], rows), merged(old["meta"], metas), {**kept, **vectors}


def same_bits(row: dict[str, Any]) -> tuple[Any, ...] | None:
    """A compressed row's comparison group: (dataset, backbone, width, budget); None for fp32."""
    if row["budget"] == "-":
        return None
    return row["dataset"], row["backbone"], row["width"], row["budget"]


def vector_key(row: dict[str, Any]) -> VectorKey:
    """Where a row's per-user NDCG@10 is kept (main's vectors, NAME_per_user.npz)."""
    budget = row["budget"]
    key = f"{row['method']}@{budget:g}" if budget != "-" else str(row["method"])
    return str(row["dataset"]), str(row["backbone"]), int(row["width"]), key


def result_name(args: Any) -> str:
    """The result's name: --name where it is not the accuracy table's own, else accuracy_random
    (bits variant) or accuracy_random_VARIANT."""
    given = getattr(args, "name", None)
    if given and given != "accuracy":  # benchmarks.accuracy's default --name
        return str(given)
    return NAME if args.mask_variant == "bits" else f"{NAME}_{args.mask_variant}"


def main(args: Any) -> int:
    """Measure every (dataset, backbone, width); rewrite the results after each.

    Results go to `ResultStore.default(args.results_dir)` (--results-dir of benchmarks.accuracy)
    under result_name(args), with the per-user vectors in NAME_per_user.npz. --merge keeps
    the stored rows that this invocation does not measure again (merged); --pair-settings
    takes each pair's width and mask settings from PAIR_SETTINGS; --import-json folds files
    instead of measuring.
    """
    store = ResultStore.default(args.results_dir)
    name = result_name(args)
    if args.replot:
        return rewrite(name, store, args.seed)
    if getattr(args, "import_json", None):
        return import_results(args, store, name)
    torch.set_num_threads(1)
    start = time.perf_counter()

    def log(msg: str) -> None:
        print(f"[{time.perf_counter() - start:7.0f}s] {msg}", flush=True)

    pairs = [(d, b, pair_args(args, d, b)) for d in args.datasets for b in args.backbones]
    rows: list[dict[str, Any]] = []
    metas: list[dict[str, Any]] = []
    vectors: dict[VectorKey, np.ndarray] = {}
    for dataset, backbone, pargs in pairs:
        for k, width in enumerate(pargs.widths):
            r, m, pu = measure_pair(pargs, dataset, backbone, width, log, full_table=k == 0)
            rows += r
            metas.append(m)
            vectors.update({(dataset, backbone, width, key): v for key, v in pu.items()})
            all_rows, all_metas, all_vectors = with_stored(args, store, name, rows, metas,
                                                           vectors)
            refresh_intervals(all_rows, all_vectors, args.seed)
            write(all_rows, all_metas, h64_table(all_metas), time.perf_counter() - start, name,
                  store, vectors=all_vectors)
    log("done")
    return 0


def variant_text(rows: list[dict[str, Any]]) -> str:
    """The mask variants of the rows: name, keep fractions of its classes and the shared one."""
    out = []
    for name in sorted({str(r.get("variant", "bits")) for r in rows}):
        fractions, levels, shared = VARIANTS[name]
        out.append(f"{name}: classes keep the top {', '.join(f'{f:.0%}' for f in fractions)} of "
                   f"each layer by score, levels 0-3 keep class >= {list(levels)}, the shared "
                   f"mask class >= {shared}")
    return "; ".join(out)


def training_text(metas: list[dict[str, Any]]) -> str:
    """Per run: how long its mask and hypernetwork trained, and where each stopped."""
    out = []
    for m in metas:
        c, mt, ht = m["config"], m["mask_train"], m["hyper_train"]
        last = mt["curve"][-1][0] if mt.get("curve") else c["mask_epochs"]
        early = (" (stopped early: no validation gain in 4 checks)"
                 if last < c["mask_epochs"] else "")
        out.append(
            f"{c['backbone']} h{c['width']}: mask {last} of at most {c['mask_epochs']} "
            f"epochs{early}, kept epoch {mt['best_epoch']} "
            f"(valid NDCG@10 {mt['best_valid_ndcg10']:.4f}); "
            f"hypernetwork {ht['steps_run']} of at most {c['hyper_steps']} steps, kept step "
            f"{ht['best_step']}")
    return "; ".join(out)


def diet_steps_text(metas: list[dict[str, Any]]) -> str:
    """Step caps of the DIET-style hypernetworks (the run's hyper_steps where not recorded)."""
    return ", ".join(sorted({str(m.get("diet_steps", m["config"]["hyper_steps"]))
                             for m in metas}))


def _meta_values(metas: list[dict[str, Any]], key: str, default: Any) -> list[str]:
    """The distinct values of a RunConfig field over the entries (`default` where a run
    predates the field), as text."""
    return sorted({str(m["config"].get(key, default)) for m in metas})


# Ideas tried to make random mode rank (issue 13), each first as a probe: ML-100K SASRec, seed 0,
# test NDCG@10 of the shared mask after the last epoch (no model selection), 1 CPU thread.
# "a / b / c / d": the shared mask in fp32 and quantized per channel at 2, 3 and 4 bits.
IDEAS: list[tuple[str, str, str, str]] = [
    ("before (full run, model selection)", "Xavier-normal weights, lr 0.01, 60 epochs: h64; h128",
     "h64 0.333 / 0.265 / 0.327 / 0.335, CHORD 0.335 at 3 bits; h128 0.398, CHORD 0.386",
     "the table this section replaced"),
    ("baseline", "Xavier-normal weights, h64, 20 epochs, lr 0.01, keep 0.5",
     "0.298 / 0.237 / 0.291 / 0.300", "2 bits cost 0.06"),
    ("1. quantization-aware mask learning",
     "normal weights, bits drawn per step from {2, 3, 4}, straight-through through "
     "chord.quant's per-channel quantizer, h64, 20 epochs", "0.262 / 0.239 / 0.265 / 0.264",
     "no gain at 2 bits, slower learning: dropped"),
    ("2. signed constants (torch-mt19937-xavier-signed/1)", "h64, 20 epochs, lr 0.01",
     "0.355 at every width", "+0.057 in fp32, +0.118 at 2 bits: the default generator now"),
    ("4a. learning rate", "signed, h64, 20 epochs, lr 0.05", "0.363",
     "adopted (RunConfig.mask_lr)"),
    ("4b. more epochs", "signed, h64, 60 epochs, lr 0.01", "0.368",
     "the run's 60-epoch cap, with model selection"),
    ("4c. keep fraction", "signed, h64, 20 epochs, lr 0.05, keep 0.3", "0.357",
     "no gain over keep 0.5"),
    ("4d. no dropout while learning", "signed, h64, 20 epochs, lr 0.05", "0.354", "worse"),
    ("4e. depth", "signed, h64, 4 blocks, lr 0.05", "0.279 at 10 epochs (2 blocks: 0.355)",
     "stopped"),
    ("3. width", "signed, h96, lr 0.05", "0.394 at 20 epochs, 0.391 at 40",
     "a 1-bit mask of about 35 KB fits 1/16"),
    ("3. width", "signed, h128, lr 0.05", "0.393 / 0.399 / 0.417 at 10 / 20 / 30 epochs",
     "closest to 0.419; its 1-bit mask is 1/12 of the fp32 h64 backbone"),
    ("3. width", "signed, h128, keep 0.5, the full run (--widths 64 128)",
     "valid 0.458 at mask epoch 40", "stopped there for lack of time (2 shared cores); h128 "
     "is measured in accuracy_random_sparse"),
    ("4f. sparse mask, Rice-coded (mask format version 2)", "signed, h128, keep 0.2, lr 0.05",
     "0.371 / 0.408 at 10 / 30 epochs", "about 0.74 bits per weight: fits 1/16 (the "
     "sparse variant)"),
    # Per-user structure under signed constants (full runs with model selection, h64 unless
    # said; 'shared' = the shared 50% mask, the best other compressed method at every budget).
    ("5a. nested levels, signed constants (full run)",
     "classes 60 / 50 / 40%, levels 0-3 keep 40 / 50 / 50 / 60%, rd rule, DIET 60 steps",
     "shared 0.358; CHORD 0.363 / 0.364 / 0.363 at 2 / 3 / 4 bits, +0.005 / +0.006 / +0.005, "
     "every interval holds 0; DIET 0.334",
     "tie (accuracy_random_nested_signed); the hypernetwork kept step 0"),
    ("5b. per-user density, whole model (probe on 5a's mask)",
     "every channel at one class: 60 / 50 / 40%; then per user the class with the best "
     "validation NDCG@10, scored on test",
     "0.365 / 0.358 / 0.363; per-user pick 0.361, +0.003 [-0.005, +0.011] over 50%",
     "no per-user signal in density: nested training makes the three densities equally good"),
    ("5c. where 5a's levels go (probe)",
     "levels of 200 test users; the rd table's price of each width",
     "3 bits: 77% of channels at level 0 (40%), 7% level 1, 16% level 3 (60%); measured "
     "loss growth 40% vs 50%: 0.0004 nats",
     "CHORD mixes densities that cost the same; the table also misprices widths 4 and 8 "
     "(see below)"),
    ("5d. quota level rule (full run)",
     "5a with maximum-entropy quotas in importance order instead of rd (no cost table)",
     "CHORD 0.363 / 0.362 / 0.367 at 2 / 3 / 4 bits: +0.006 / +0.005 / +0.010 [+0.001, "
     "+0.019]",
     "interval excludes 0 at 4 bits only, with the hypernetwork at its step 0 (no step "
     "improved validation): density mixing, not learned per-user structure "
     "(accuracy_random_nested_quota)"),
    ("6a. width 256 (full run, sparse keep 20%)",
     "signed, lr 0.05, mask capped at 40 epochs (stopped early at 35), hypernetwork 50 steps",
     "valid 0.342 at epoch 15; test 0.292; mask 114,574 B = 1/5.6 of the fp32 h64 backbone",
     "below h128 (0.416): the learning rate, see 6b"),
    ("6b. width 256, mask lr 0.01 (full run, sparse keep 20%)",
     "signed, mask capped at 40 epochs (still improving), hypernetwork 20 steps",
     "valid 0.494 at epoch 40; test 0.453 = 1.03 x pretrained fp32; mask 114,473 B = 1/5.6 of "
     "the fp32 h64 backbone; device 288,406 B (modeled), 1.45 ms per query",
     "meets >= 0.419 but not the 1/16 download (accuracy_random_h256)"),
    ("6c. width 128, mask lr 0.01 (full run, sparse keep 20%)",
     "signed, 60 epochs, hypernetwork 50 steps",
     "valid 0.467 at epoch 45 (lr 0.05: 0.458); test 0.410 (lr 0.05: 0.416); mask 39,519 B",
     "no gain on test: h128 stays below 0.419 (accuracy_random_sparse_lr01)"),
    ("6d. width 256, keep 5% (full run, variant sparse5)",
     "signed, mask lr 0.01, capped at 40 epochs, hypernetwork 20 steps",
     "valid 0.474 at epoch 35; test 0.433 = 0.98 x pretrained fp32; mask 45,386 B = 1/14.2; "
     "device 219,880 B (modeled), 1.47 ms per query",
     "meets >= 0.419; the download misses 1/16 by 5 KB (accuracy_random_h256_sparse5)"),
    ("6e. width 256, keep 4% (full run, variant sparse4)",
     "as 6d",
     "valid 0.471 at epoch 35; test 0.428 = 0.97 x pretrained fp32; mask 38,286 B = 1/16.9; "
     "device 215,451 B (modeled), 1.45 ms per query",
     "meets >= 0.419 and <= 1/16 together, one seed, chosen after 6a-6d "
     "(accuracy_random_h256_sparse4)"),
    # Caser (probes: ML-100K Caser, seed 0, signed constants, validation NDCG@10 of 300 users
    # with the shared mask after N steps of 32 windows; an epoch is about 3,100 such steps).
    ("7a. Caser at the SASRec headline setting (full run, earlier session)",
     "h256, keep 4%, lr 0.01, 5 epochs",
     "valid 0.0000, training loss 7.39 (ln of the catalogue: 7.43)",
     "every candidate of a user tied: see 7b"),
    ("7b. why Caser ties (probe, 400 steps of 7a)",
     "kept weights of the output item table per row, the 100 most frequent targets vs the 300 "
     "rarest items",
     "popular rows 0 of 256 kept, rare rows 31.8, all of negative sign; popular candidates "
     "score exactly 0 (a tied target ranks last): valid 0.0000",
     "the layer-wide top 4% buys lower logits for rare items, the only loss a near-uniform "
     "softmax rewards; SASRec ties its input and output tables and normalizes, Caser does not"),
    ("7c. channel-balanced keep rule (probe; mask_balance channel)",
     "7a with the same count kept in every channel (item rows, output units), 800 steps; "
     "item tables only or every layer",
     "valid 0.21 / 0.23 / 0.22 / 0.21 at 200 / 400 / 600 / 800 steps (every layer: 0.215 at "
     "800); most-popular reference: test 0.228",
     "no more ties, but ranks at the popularity level: adopted for Caser (PAIR_SETTINGS)"),
    ("7d. training-only logit scale (probe)",
     "7c with the output table x 30 / x 100 / x 300 inside the training loss (rankings "
     "unchanged; a device needs nothing), 800 or 2,400 steps",
     "valid 0.234 / 0.236 (2,400 steps) / 0.237; loss 7.10 / 6.58 / 6.96",
     "a sharper softmax, no ranking gain over popularity: not adopted"),
    ("7e. Caser full run (ML-100K, this table)",
     "h64 (4x cheaper a step than h256), keep 20% (variant sparse), lr 0.05, channel balance, "
     "10 epochs (31k steps), hypernetwork and DIET 20 steps",
     "valid 0.190 / 0.196 at epochs 5 / 10; test shared mask 0.178, CHORD 0.178 at 2 / 3 / 4 "
     "bits, DIET 0.180; most-popular 0.228",
     "ranks above chance (0.047) but below popularity; h256 keep 4% (7c) did better on "
     "validation in 800 steps, untried as a full run for lack of CPU"),
    ("7f. Caser full run (ML-1M, this table)",
     "7e's setting, 1 epoch (31k steps, as many as 7e's 10)",
     "valid 0.232; test shared mask and CHORD 0.206 at 2 / 3 / 4 bits, DIET 0.203; "
     "most-popular 0.250",
     "as on ML-100K: above chance (0.045), below popularity"),
    ("8. ML-1M SASRec (full run, this table)",
     "the ML-100K headline setting (6e), mask capped at 10 epochs (1,890 steps) by the "
     "session's clock",
     "valid 0.454 / 0.513 at epochs 5 / 10 (still rising); test shared mask 0.475 = 0.79 x "
     "pretrained fp32 (0.602)",
     "misses >= 0.542; more epochs are the first thing to try (about 2.5 min of one core each)"),
    ("8b. ML-1M SASRec, 30 epochs (full run, stopped after its mask phase)",
     "8's setting with the mask capped at 30 epochs (5,670 steps), about 4 min of one core "
     "an epoch",
     "valid 0.455 / 0.500 / 0.509 / 0.509 / 0.512 / 0.516 at epochs 5 / 10 / 15 / 20 / 25 / 30; "
     "no test figure (stopped before the budget rows)",
     "a plateau: at 8's test / valid ratio (0.925) test would be about 0.48, so more epochs of "
     "this setting do not reach 0.542"),
]
IDEAS_NOTE = (
    "With signed constants every kept weight of a channel has the same magnitude, so "
    "per-channel quantization at 1 to 8 bits is exact: the shared mask loses nothing at 2 bits, "
    "and a CHORD code whose levels differ only in bits (the `bits` variant) gives every user "
    "the shared-mask model (chord rows equal shared-mask rows up to float rounding). Per-user "
    "structure then has to come from how much of a channel a level keeps (the `nested` "
    "variant). The rate-distortion table of a masked run now prices each width with the "
    "sparsest class a level of that width keeps (chord.masks.MaskedSource.width_weights): "
    "measured against bits alone, signed weights made a pruning level look free. That price "
    "is keyed by width while a mask level is keyed by level index, and one width is a "
    "different level in each tier: with the nested map the table priced width 4 (mid tier "
    "level 2, which keeps 50%) with 40% (the high tier's level 0) and width 8 (mid level 3, "
    "60%) with 50%, so the mid tier's two upper levels were mispriced. A class map keyed by "
    "width in the mask header (a channel stored at b bits keeps class >= m[b]) would make the "
    "table exact; it changes the mask format and was not done, since 5b measured the three "
    "classes as equally good, which no pricing can turn into a per-user gain."
)


def ideas_log() -> str:
    """The ideas tried, as a Markdown table and what they imply."""
    rows = [dict(zip(("idea", "setting", "NDCG@10", "verdict"), x, strict=True)) for x in IDEAS]
    return ("Ideas tried (probes: ML-100K SASRec, seed 0, test NDCG@10 of the shared mask after "
            "its last epoch, no model selection; a / b / c / d = fp32 / 2 / 3 / 4 bits):\n\n"
            + markdown_table(rows, ["idea", "setting", "NDCG@10", "verdict"]) + "\n\n"
            + IDEAS_NOTE)


COLUMNS = ["dataset", "backbone", "width", "variant", "budget", "method", "avg_bits", "HR@10",
           "NDCG@10", "vs", "diff", "ci95", "win", "one_time_bytes", "bytes_per_adaptation",
           "device_bytes", "infer_ms"]


def write(rows: list[dict[str, Any]], metas: list[dict[str, Any]],
          fp32_h64: dict[tuple[str, str], int], seconds: float, name: str = NAME,
          store: ResultStore | None = None, machine: dict[str, Any] | None = None,
          vectors: dict[VectorKey, np.ndarray] | None = None, origin: str = "") -> None:
    """JSON, the Markdown section, the bytes plot and the per-user vectors (NAME_per_user.npz,
    where `vectors` is given) of everything measured so far.

    `machine`: where the figures were measured (a re-render passes the JSON's; default: here).
    `origin`: how a table that measured nothing now was made (default: the --replot line).
    """
    store = store or ResultStore.default()
    store.folder.mkdir(parents=True, exist_ok=True)
    if vectors:
        save_vectors(vectors_path(store.path(name)), vectors)
    plot_bytes(rows, fp32_h64, store.path(f"{name}_bytes", ".png"))
    table = markdown_table(rows, COLUMNS)
    notes = (
        f"Random mode: the backbone is rebuilt on the device from a named generator "
        f"({', '.join(_meta_values(metas, 'generator', TORCH_XAVIER))}), seed and config, never "
        "shipped; a shared element mask learned over it (edge-popup; variant "
        f"{variant_text(rows)}; kept weights x 1/sqrt(keep fraction)) is the one-time download "
        "(one_time_bytes: the mask artifact, header and SHA-256 included; the reference-data "
        "artifact, 2 bytes per channel in either mode, is left out here and in the plot's "
        "pretrained points, whose one-time bytes are the fp32 parameters x 4). Mask learning: "
        "Adam lr "
        f"{', '.join(_meta_values(metas, 'mask_lr', 0.01))}, 32 sequences a step, model "
        "selection on validation NDCG@10 every 5 epochs ("
        f"{training_text(metas)}). Test split, leave-one-out, target vs "
        "100 seeded unseen negatives. "
        "budget 2 uses tier low (1,2,3,4 bits), 3 and 4 tier mid (2,3,4,8). shared-mask rows "
        "keep the shared class in every channel and quantize every kept weight at the budget's "
        "bits (pruned weights stay 0); diet prunes, "
        "per user, the quarter of the channel mass its hypernetwork ranks lowest (trained once "
        f"at 3 bits for at most {diet_steps_text(metas)} steps, applied at each budget's "
        "bits); chord: per-user levels over the shared mask "
        "(the run's hypernetwork and level rule "
        f"{', '.join(_meta_values(metas, 'allocation', 'rd'))}: rd = rate-distortion, "
        "calibrated on the masked model; quota = maximum-entropy quotas in importance order). "
        "vs / diff / ci95: mean per-user NDCG@10 difference to the best other compressed method "
        "at the same budget and its paired bootstrap 95% interval (2,000 resamples of test "
        "users); win = yes only where the interval excludes zero. bytes_per_adaptation: the "
        "2-bit code + header (diet: one bit per channel + header). device_bytes (3-bit rows): "
        "modeled storage of one user's model: kept weights packed at their bits, a 1-bit keep "
        "map per weight, an fp32 scale per channel, other parameters fp32. infer_ms: measured "
        "median time to score 101 candidates for one user on one CPU thread of this machine "
        "with fake-quantized fp32 weights (no low-bit kernel for masked weights yet). "
        "Only the first width gets the full table; other widths: shared mask and CHORD at 3 "
        "bits. " + settings_text(metas) + meta_notes(metas)
        + (f"This invocation took {seconds / 60:.0f} min on a 2-core machine shared with other "
           "jobs." if seconds else (origin or "Rewritten from the JSON (--replot)."))
        + "\n\n" + goal_summary(rows, fp32_h64) + "\n\n" + goal_lines(rows, fp32_h64)
        + "\n\n" + ideas_log()
    )
    payload = {"rows": rows, "meta": metas, **({"machine": machine} if machine else {})}
    write_result(name, payload, table, notes, store=store)


__all__ = ["main"]
