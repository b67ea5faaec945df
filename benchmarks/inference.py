"""On-device inference at batch 1: latency, model bytes and adaptation time per precision path.

Run as `python -m benchmarks.inference` (see `--help`). Latency is the median over many
repeats after a warm-up, with torch limited to one thread to model one phone core. Weights are
random (speed and size do not depend on training); catalogue sizes are ML-100K's and ML-1M's.
`--before results/inference_<commit>.json` adds the device runtimes of an earlier run side by
side with this run's.
"""

from __future__ import annotations

import argparse
import functools
import json
import statistics
import subprocess
import sys
import tempfile
from collections import defaultdict
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch

from benchmarks.harness import (
    RESULTS_DIR,
    ResultStore,
    Stats,
    Stopwatch,
    add_output_arguments,
    load_average,
    machine_info,
    markdown_table,
    repo_env,
    time_calls,
    time_interleaved,
)
from chord.codes import decode_levels, encode_levels
from chord.config import BackboneConfig, CaserConfig, SASRecConfig
from chord.levels import DEFAULT_TIERS, assign_levels, average_bits, levels_to_bits
from chord.models import build_backbone
from chord.quant import (
    channel_layout,
    fp32_model_bytes,
    other_param_bytes,
    packed_model_bytes,
    quantize_backbone,
    quantize_int,
    to_lowbit,
)
from chord.quant.adapt import DEVICE_TABLES, DEVICE_WIDTHS
from chord.quant.lowbit import LowBitBackbone, QLinear, QWeight
from chord.quant.onnx_runtime import (
    build_onnx,
    initializer_bytes,
    linear_model,
    node_count,
    session_options,
    to_ort,
)
from chord.startcheck import thread_count

CATALOGUES = {"ml-100k": 1682, "ml-1m": 3706}  # item counts of the two MovieLens sets
N_CANDIDATES = 101  # the target plus 100 sampled negatives
VERSION = "benchmark0000000"
DEVICE_PATH = "CHORD ORT nibbles"  # what chord.quant.build_runtime gives the device by default
# The runtimes measured at commit b6ba73f, before the move off TorchScript and quantized ops.
BEFORE_JSON = RESULTS_DIR / "inference_b6ba73f.json"


@dataclass(frozen=True)
class InferenceBenchConfig:
    """What to measure and how often."""

    repeats: int = 400  # timed calls per latency figure
    warmup: int = 40  # untimed calls before timing
    adapt_repeats: int = 15  # adaptations timed for the p50
    threads: int = 1  # torch intra-op threads (one phone core)
    tier: str = "mid"  # tier of the CHORD assignment
    budget_bits: float = 3.0  # average bits of the CHORD assignment
    seed: int = 0
    datasets: tuple[str, ...] = ("ml-100k", "ml-1m")
    backbones: tuple[str, ...] = ("sasrec", "caser")
    ort: bool = True  # also measure the ONNX Runtime paths
    profile_calls: int = 200  # calls per graph in the ORT per-op profile
    compile: bool = False  # also measure torch.compile of the PyTorch runtime (slow to build)


class CompiledScorer:
    """A PyTorch runtime's scoring methods through torch.compile, built on the example shapes.

    Inductor compiles each method once for the shapes of `seqs` [1, L] and `cands` [1, C]
    (fullgraph, static shapes); the constructor runs both once so compile time is paid there.
    """

    def __init__(self, runtime: LowBitBackbone, seqs: torch.Tensor, cands: torch.Tensor) -> None:
        """Compile `score_candidates` and `score_all` of `runtime` and run each once."""
        self._cand = torch.compile(runtime.score_candidates, fullgraph=True, dynamic=False)
        self._all = torch.compile(runtime.score_all, fullgraph=True, dynamic=False)
        with torch.inference_mode():
            self._cand(seqs, cands)
            self._all(seqs)

    def score_candidates(self, seqs: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
        """Scores of the given items: [B, C]."""
        return self._cand(seqs, candidates)  # type: ignore[no-any-return]

    def score_all(self, seqs: torch.Tensor) -> torch.Tensor:
        """Scores of the catalogue: [B, n_items + 1]."""
        return self._all(seqs)  # type: ignore[no-any-return]


def _interleaved_us(
    fns: dict[str, Callable[[], Any]], repeats: int, warmup: int, seed: int = 0
) -> dict[str, tuple[float, float]]:
    """Median and p90 wall time (microseconds) of each function, timed in shuffled rounds
    (`harness.time_interleaved`: warm latency, background load spread over all paths)."""
    out = {}
    for name, samples in time_interleaved(fns, repeats, warmup, seed).items():
        stats = Stats.of(np.asarray(samples) * 1e6)
        out[name] = (stats.median, stats.p90)
    return out


def _config(backbone: str, n_items: int) -> BackboneConfig:
    """Default architecture of a backbone for a catalogue size."""
    return SASRecConfig(n_items=n_items) if backbone == "sasrec" else CaserConfig(n_items=n_items)


def _chord_levels(n: int, sizes: np.ndarray, cfg: InferenceBenchConfig) -> np.ndarray:
    """A realistic CHORD assignment: random importance, levels meeting the tier's budget."""
    importance = np.random.default_rng(cfg.seed).standard_normal(n)
    return assign_levels(importance, sizes, DEFAULT_TIERS[cfg.tier], cfg.budget_bits)


# Runs in a fresh interpreter: RSS growth from opening a scorer's session and running both
# modes once, after a throwaway session has paid ORT's one-time start-up.
_RSS_SCRIPT = """
import json, os, sys
import numpy as np
import onnxruntime
from chord.quant.onnx_runtime import OrtScorer
def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
spec = json.loads(sys.argv[1])
warm = OrtScorer(spec["warm"], spec["max_len"], spec["n_items"], spec["threads"])
seqs = np.ones((1, spec["max_len"]), dtype=np.int64)
cands = np.ones((1, spec["n_cands"]), dtype=np.int64)
warm.score_all_np(seqs); warm.score_candidates_np(seqs, cands)
before = rss()
scorer = OrtScorer(spec["model"], spec["max_len"], spec["n_items"], spec["threads"])
built = rss()
scorer.score_all_np(seqs); scorer.score_candidates_np(seqs, cands)
print(json.dumps({"sessions": built - before, "running": rss() - before}))
"""


def ort_rss_bytes(
    model: onnx.ModelProto, warm: onnx.ModelProto, max_len: int, n_items: int, threads: int
) -> dict[str, int]:
    """Measured RSS growth (bytes) of opening `model` and scoring in both modes once."""
    with tempfile.TemporaryDirectory() as tmp:
        paths = {}
        for tag, m in (("model", model), ("warm", warm)):
            paths[tag] = f"{tmp}/{tag}.onnx"
            with open(paths[tag], "wb") as f:
                f.write(m.SerializeToString())
        spec = {
            **paths,
            "max_len": max_len,
            "n_items": n_items,
            "threads": threads,
            "n_cands": N_CANDIDATES,
        }
        out = subprocess.run(
            [sys.executable, "-c", _RSS_SCRIPT, json.dumps(spec)],
            capture_output=True,
            text=True,
            check=True,
            env=repo_env(),
        )
    return json.loads(out.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def ort_profile(
    model: torch.nn.Module,
    bits: np.ndarray | None,
    seqs: torch.Tensor,
    cands: torch.Tensor,
    cfg: InferenceBenchConfig,
    **kwargs: Any,
) -> dict[str, dict[str, float]]:
    """Per-op-type kernel time (us per call) of each ORT graph, from ORT's own profiler."""
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        for mode in ("candidates", "all"):
            scorer = to_ort(model, bits, threads=cfg.threads, profile=f"{tmp}/{mode}", **kwargs)
            s, c = scorer._seqs(seqs), scorer._ids(cands, "candidates")
            for _ in range(cfg.profile_calls):
                if mode == "candidates":
                    scorer.score_candidates_np(s, c)
                else:
                    scorer.score_all_np(s)
            with open(scorer.end_profiling()) as f:
                events = json.load(f)
            per_op: dict[str, float] = defaultdict(float)
            runs = 0
            for ev in events:
                if ev.get("cat") == "Session" and ev.get("name") == "model_run":
                    runs += 1
                    per_op["(whole run)"] += ev["dur"]
                elif ev.get("cat") == "Node" and ev["name"].endswith("_kernel_time"):
                    per_op[ev["args"]["op_name"]] += ev["dur"]
            top = sorted(per_op.items(), key=lambda kv: -kv[1])[:8]
            out[mode] = {op: round(us / max(runs, 1), 2) for op, us in top}
    return out


def _bench_one(dataset: str, backbone: str, cfg: InferenceBenchConfig) -> list[dict[str, Any]]:
    """All precision paths of one backbone on one catalogue."""
    n_items = CATALOGUES[dataset]
    model = build_backbone(_config(backbone, n_items), seed=cfg.seed).eval()
    layout = channel_layout(model)
    sizes = layout.channel_sizes()
    tier = DEFAULT_TIERS[cfg.tier]
    levels = _chord_levels(layout.n_channels, sizes, cfg)
    chord_bits = levels_to_bits(levels, tier).astype(np.int64)
    code = encode_levels(levels, VERSION)
    uniform8 = np.full(layout.n_channels, 8)
    g = torch.Generator().manual_seed(cfg.seed)
    seqs = torch.randint(1, n_items + 1, (1, model.max_len), generator=g)
    cands = torch.randint(1, n_items + 1, (1, N_CANDIDATES), generator=g)
    fp32_bytes = fp32_model_bytes(model)
    others = other_param_bytes(model, layout)

    def adapt_chord() -> Any:
        lv = decode_levels(code, VERSION, layout.n_channels)
        return to_lowbit(model, levels_to_bits(lv, tier), layout=layout)

    def adapt_packed() -> Any:
        lv = decode_levels(code, VERSION, layout.n_channels)
        return to_lowbit(model, levels_to_bits(lv, tier), layout=layout, table="packed")

    def adapt_uniform() -> Any:
        return to_lowbit(model, uniform8, layout=layout)

    def p50_ms(fn: Callable[[], Any], n: int) -> float:
        return Stats.of(time_calls(fn, n, warmup=0)).median * 1e3

    reference = quantize_backbone(model, chord_bits, layout=layout)
    runtimes: dict[str, tuple[Any, str, int, float | None]] = {
        # name -> (scorer, kernel description, bytes in memory, adaptation ms)
        "fp32 eager": (model, "fp32 eager PyTorch (the Backbone)", fp32_bytes, None),
        "fp32 lean": (
            to_lowbit(model, None, kernel="fp32", layout=layout),
            "fp32, the lean inference graph, eager PyTorch",
            fp32_bytes,
            None,
        ),
        "uniform int8": (
            adapt_uniform(),
            "8-bit weights held int8, widened per call (weight-only), eager PyTorch",
            packed_model_bytes(layout, uniform8) + others,
            p50_ms(adapt_uniform, cfg.adapt_repeats),
        ),
        "CHORD int8": (
            adapt_chord(),
            "CHORD bits held int8, widened per call (weight-only), eager PyTorch",
            packed_model_bytes(layout, chord_bits) + others,
            p50_ms(adapt_chord, cfg.adapt_repeats),
        ),
        "CHORD packed": (
            adapt_packed(),
            "CHORD bits: bit-packed item tables + int8 weight-only layers, eager PyTorch",
            packed_model_bytes(layout, chord_bits) + others,
            p50_ms(adapt_packed, cfg.adapt_repeats),
        ),
    }
    compile_ms: dict[str, float] = {}
    if cfg.compile:
        with Stopwatch() as watch:
            compiled = CompiledScorer(adapt_chord(), seqs, cands)
        compile_ms["CHORD int8 compiled"] = watch.seconds * 1e3
        runtimes["CHORD int8 compiled"] = (
            compiled,
            "CHORD int8 (PyTorch) through torch.compile (inductor, fullgraph, static shapes); "
            "adapt_ms is one adaptation plus compiling both scoring methods",
            packed_model_bytes(layout, chord_bits) + others,
            compile_ms["CHORD int8 compiled"],
        )
    ort_extra: dict[str, dict[str, Any]] = {}  # per ORT path: initializer and RSS bytes
    if cfg.ort:
        fp32_onnx = build_onnx(model, None, kind="fp32", layout=layout)
        ort_paths: dict[str, tuple[np.ndarray | None, dict[str, Any], str, int]] = {
            "fp32 ORT": (None, {"kind": "fp32"}, "fp32 MatMul/Gemm/Gather, ORT CPU", fp32_bytes),
            "uniform int8 ORT": (
                uniform8,
                {},
                "8-bit MatMulNBits + GatherBlockQuantized, ORT CPU",
                packed_model_bytes(layout, uniform8) + others,
            ),
            "CHORD ORT": (
                chord_bits,
                {"widths": (2, 4, 8)},
                "CHORD bits: tables split by width (2/4/8-bit MatMulNBits + "
                "GatherBlockQuantized), other layers at their widest row's width, ORT CPU",
                packed_model_bytes(layout, chord_bits) + others,
            ),
            "CHORD ORT 4/8": (
                chord_bits,
                {"widths": (4, 8)},
                "as CHORD ORT with 4/8-bit storage only (1..4-bit rows held in 4 bits), ORT CPU",
                packed_model_bytes(layout, chord_bits) + others,
            ),
            DEVICE_PATH: (
                chord_bits,
                {"widths": DEVICE_WIDTHS, "tables": DEVICE_TABLES},
                "device default (chord.quant.build_runtime): layers as CHORD ORT 4/8, item "
                "tables in 4-bit units (5..8-bit rows as two), ORT CPU",
                packed_model_bytes(layout, chord_bits) + others,
            ),
            "CHORD ORT split": (
                chord_bits,
                {"widths": (2, 4, 8), "split_layers": True},
                "CHORD bits: every layer split by width (one MatMulNBits per width, then "
                "Concat + Gather back to channel order), ORT CPU",
                packed_model_bytes(layout, chord_bits) + others,
            ),
        }
        for name, (bits_or_none, kw, kernel, nbytes) in ort_paths.items():

            def adapt_ort(
                kw: dict[str, Any] = kw,
                quantized: bool = bits_or_none is not None,
                chord: bool = "CHORD" in name,
            ) -> Any:
                if not quantized:
                    return to_ort(model, None, layout=layout, threads=cfg.threads, **kw)
                lv = decode_levels(code, VERSION, layout.n_channels)
                bits = levels_to_bits(lv, tier) if chord else uniform8
                return to_ort(model, bits, layout=layout, threads=cfg.threads, **kw)

            onnx_model = build_onnx(model, bits_or_none, layout=layout, **kw)
            rss = ort_rss_bytes(onnx_model, fp32_onnx, model.max_len, n_items, cfg.threads)
            init_bytes = initializer_bytes(onnx_model)
            ort_extra[name] = {
                "ort_initializer_bytes": init_bytes,
                "ort_initializer_ratio_vs_fp32": init_bytes / fp32_bytes,
                "ort_nodes": node_count(onnx_model),
                "ort_rss_sessions_bytes": rss["sessions"],
                "ort_rss_running_bytes": rss["running"],
            }
            runtimes[name] = (
                adapt_ort(),
                kernel,
                nbytes,
                None if bits_or_none is None else p50_ms(adapt_ort, max(3, cfg.adapt_repeats // 3)),
            )
        profiled: dict[str, tuple[np.ndarray | None, dict[str, Any]]] = {
            "fp32 ORT": (None, {"kind": "fp32"}),
            "CHORD ORT": (chord_bits, {}),
            "CHORD ORT split": (chord_bits, {"split_layers": True}),
            DEVICE_PATH: (chord_bits, {"widths": DEVICE_WIDTHS, "tables": DEVICE_TABLES}),
        }
        for name, (bits_or_none, kw) in profiled.items():
            ort_extra[name]["ort_profile_us_per_call"] = ort_profile(
                model, bits_or_none, seqs, cands, cfg, **kw
            )
    runtime_bytes = {
        "fp32 eager": fp32_bytes,
        "fp32 lean": fp32_bytes,
        "uniform int8": to_lowbit(model, uniform8, layout=layout).runtime_bytes,
        "CHORD int8": to_lowbit(model, chord_bits, layout=layout).runtime_bytes,
        "CHORD packed": to_lowbit(model, chord_bits, layout=layout, table="packed").runtime_bytes,
    }
    if cfg.compile:
        runtime_bytes["CHORD int8 compiled"] = runtime_bytes["CHORD int8"]
    for name, extra in ort_extra.items():
        runtime_bytes[name] = extra["ort_rss_running_bytes"]
    rows: list[dict[str, Any]] = []
    with torch.inference_mode():
        ref_all = reference.score_all(seqs)[:, 1:]
        fns: dict[str, Callable[[], Any]] = {}
        for name, (scorer, *_rest) in runtimes.items():
            fns[f"{name}|101"] = functools.partial(scorer.score_candidates, seqs, cands)
            fns[f"{name}|full"] = functools.partial(scorer.score_all, seqs)
        timed = _interleaved_us(fns, cfg.repeats, cfg.warmup, cfg.seed)
        base_cand, base_all = timed["fp32 eager|101"][0], timed["fp32 eager|full"][0]
        for name, (scorer, kernel, nbytes, adapt_ms) in runtimes.items():
            (cand_us, cand_p90), (all_us, all_p90) = timed[f"{name}|101"], timed[f"{name}|full"]
            got = scorer.score_all(seqs)[:, 1:]
            err = None if "CHORD" not in name else float((got - ref_all).abs().max())
            rows.append(
                {
                    "dataset": dataset,
                    "backbone": backbone,
                    "path": name,
                    "kernel": kernel,
                    "n_items": n_items,
                    "avg_bits": 32.0
                    if "fp32" in name
                    else (8.0 if "uniform" in name else average_bits(levels, sizes, tier)),
                    "latency_101_us": cand_us,
                    "latency_101_p90_us": cand_p90,
                    "latency_full_us": all_us,
                    "latency_full_p90_us": all_p90,
                    "speedup_vs_fp32": base_cand / cand_us,
                    "speedup_full_vs_fp32": base_all / all_us,
                    "model_bytes": nbytes,
                    "size_ratio_vs_fp32": nbytes / fp32_bytes,
                    "runtime_bytes": runtime_bytes[name],
                    "runtime_size_ratio_vs_fp32": runtime_bytes[name] / fp32_bytes,
                    "adapt_ms_p50": adapt_ms,
                    "max_abs_diff_vs_fake_quant": err,
                    "score_spread": float(ref_all.std()),
                    "code_bytes": len(code.payload),
                    **ort_extra.get(name, {}),
                }
            )
    return rows


def _ort_linear_us(w: torch.Tensor, x: torch.Tensor, cfg: InferenceBenchConfig) -> dict[str, float]:
    """Median session.run time of one Linear on ORT: fp32 MatMul vs MatMulNBits at 2/4/8 bits."""
    import onnxruntime

    xs = x.numpy()
    fns: dict[str, Callable[[], Any]] = {}
    for name, bits in (
        ("ort_fp32_us", None),
        ("ort_nbits2_us", 2),
        ("ort_nbits4_us", 4),
        ("ort_nbits8_us", 8),
    ):
        model = linear_model(w, bits, int(x.shape[0]))
        sess = onnxruntime.InferenceSession(
            model.SerializeToString(),
            session_options(cfg.threads),
            providers=["CPUExecutionProvider"],
        )
        fns[name] = functools.partial(sess.run, None, {"x": xs})
    return {k: v[0] for k, v in _interleaved_us(fns, cfg.repeats, cfg.warmup).items()}


def kernel_microbench(cfg: InferenceBenchConfig) -> list[dict[str, Any]]:
    """One Linear at the shapes these models use: fp32 F.linear vs the PyTorch runtime's
    weight-only int8 linear, and (with `cfg.ort`) ORT's fp32 MatMul vs MatMulNBits (one
    session.run each)."""
    torch.set_num_threads(cfg.threads)
    shapes = [(1, 64, 3707), (1, 50, 3707), (50, 64, 64), (50, 64, 128), (1, 250, 440)]
    rows = []
    g = torch.Generator().manual_seed(cfg.seed)
    for m, k, n in shapes:
        x, w = torch.randn(m, k, generator=g), torch.randn(n, k, generator=g)
        q, scale = quantize_int(w, 8)
        int8 = QLinear(QWeight(q, scale, w), None, "int8")
        fns: dict[str, Callable[[], Any]] = {
            "fp32": functools.partial(torch.nn.functional.linear, x, w),
            "int8": functools.partial(int8.forward, x),
        }
        with torch.inference_mode():
            timed = _interleaved_us(fns, cfg.repeats, cfg.warmup)
        row = {
            "shape": f"[{m}x{k}] @ [{k}x{n}]",
            "fp32_us": timed["fp32"][0],
            "int8_weight_only_us": timed["int8"][0],
            "int8_over_fp32": timed["int8"][0] / timed["fp32"][0],
        }
        if cfg.ort:
            row.update(_ort_linear_us(w, x, cfg))
        rows.append(row)
    return rows


def run_benchmark(cfg: InferenceBenchConfig) -> list[dict[str, Any]]:
    """Measure every dataset x backbone x path; returns one row each."""
    torch.set_num_threads(cfg.threads)
    rows = []
    for dataset in cfg.datasets:
        for backbone in cfg.backbones:
            rows.extend(_bench_one(dataset, backbone, cfg))
    return rows


NOTES = """\
Batch 1, torch limited to {threads} thread(s) to model one phone core; latency is the median of
{repeats} calls after {warmup} warm-up rounds (p90 in the JSON); paths are timed in rounds of a
fresh random order, each timed call right after an untimed call of the same path (warm latency).
`latency_101_us` scores 101 candidates, `latency_full_us` the whole catalogue; `speedup_vs_fp32`
is against fp32 eager on 101 candidates (`speedup_full_vs_fp32` on the catalogue). No path uses
TorchScript or PyTorch's quantized tensors and ops (deprecated in PyTorch 2.13). PyTorch paths
(chord/quant/lowbit.py, eager): **fp32 eager** is the Backbone as written; **fp32 lean** is the
lean inference graph the low-bit paths use (SASRec's last block computes only the last position;
Caser's convolutions are one matrix) on fp32 weights: it separates the gain of the rewrite from
that of low-bit weights; **CHORD int8** runs a {tier}-tier, {budget}-bit assignment (random
importance through `assign_levels`) with every weight held as int8 codes (every 1..8-bit grid is
exact in int8) and a float32 scale per channel, widened to fp32 per call (weight-only int8:
public ops, exact against the fake-quantized reference); **uniform int8** is every channel at 8
bits the same way; **CHORD packed** keeps the item tables bit-packed in memory (bit-planes, one
fp32 scale per row) and unpacks only the rows it gathers; its catalogue scoring unpacks the whole
table per call. **CHORD int8 compiled** (only with `--compile`) is CHORD int8 through
`torch.compile` (inductor, fullgraph, static shapes); its `adapt_ms_p50` is one adaptation plus
the compilation of both scoring methods, paid again for every new strategy (less when
inductor's on-disk cache holds graphs from earlier runs on the machine). `model_bytes` is the
model at rest: packed sub-byte payload plus one fp32 scale per channel plus fp32 biases and
norms. `runtime_bytes` for PyTorch rows is what the runtime holds to execute: int8 codes (each
table once) or the bit-packed tables with their metadata, plus scales and fp32 extras.
`adapt_ms_p50` is decode + quantize + build the runtime. `max_abs_diff_vs_fake_quant` compares
catalogue scores with the fake-quantized reference. Weights are random; fidelity is tested in
tests/test_quant.py and tests/test_onnx_runtime.py (every width 1..8, SASRec and Caser).

ONNX Runtime paths (chord/quant/onnx_runtime.py; onnxruntime {ort_version}, CPUExecutionProvider,
intra-op threads {threads}, sequential; one graph built with `onnx.helper` and one session per
model: an If node scores the candidates, or the catalogue when none are given, so weights are
held once): **fp32 ORT** is the lean graph with fp32 MatMul/Gemm/Gather; **uniform int8 ORT**
stores every channel in 8-bit `MatMulNBits`
(com.microsoft, block-quantized uint8, the channel scale repeated per block) and gathers rows
with `GatherBlockQuantized` from the same bytes; **CHORD ORT** stores each item-table row at the
smallest of 2/4/8 bits holding its CHORD bits (one MatMulNBits per width for the catalogue, an
int16 row map, per-width GatherBlockQuantized + Where for gathers) and every other layer at its
widest row's width (one MatMulNBits each); **CHORD ORT 4/8** is the same without 2-bit storage
(1..4-bit rows in 4 bits); **CHORD ORT nibbles**, the device's default runtime
(`chord.quant.build_runtime`), stores layers as CHORD ORT 4/8 and item tables in 4-bit units
with zero points: a 1..4-bit row is one unit, a 5..8-bit row two (high nibble at 16x the scale
plus low nibble, exact), so one GatherBlockQuantized per unit column gathers any mix of widths
and one MatMulNBits scores the catalogue, with no row map and no merging by width;
**CHORD ORT split** splits every layer by width (Concat + Gather back to channel order after
each). MatMulNBits runs with accuracy_level 4
(activations quantized to int8 per block; accuracy_level 0 is
exact against the fake-quantized reference, see tests/test_onnx_runtime.py). For ORT rows
`runtime_bytes` is **measured**: RSS growth of a fresh process (after a throwaway fp32 session
paid ORT's one-time start-up) from opening the session and scoring in both modes once; it
includes ORT's fixed per-session overhead (graph, kernels, arena), so at these model sizes it is
dominated by that overhead, not by the weights. `ort_initializer_ratio_vs_fp32` is the bytes
of the graph's initializers (packed codes, scales, maps, fp32 norms/biases, padding of rows
to a block) over the fp32 parameter bytes. `adapt_ms_p50` for ORT rows is decode + quantize +
build the graph + open the session. `ort_profile_us_per_call` in the JSON is ORT's own
profiler (enable_profiling; top op types, us per call, profiler overhead included; nodes inside
the If branch are also counted in the If node's own time).
"""


def findings(rows: list[dict[str, Any]], kernels: list[dict[str, Any]]) -> str:
    """Plain-language reading of the measurements: fastest paths, fastest low-bit path, and
    what the low-bit kernels add over fp32 at these shapes."""
    lines = []
    for key in sorted({(r["dataset"], r["backbone"]) for r in rows}):
        group = {r["path"]: r for r in rows if (r["dataset"], r["backbone"]) == key}
        fast_c = min(group.values(), key=lambda r: r["latency_101_us"])
        fast_a = min(group.values(), key=lambda r: r["latency_full_us"])
        low = [r for r in group.values() if "CHORD" in r["path"]]
        fast_low = min(low, key=lambda r: r["latency_101_us"]) if low else None
        device, torch_rt = group.get(DEVICE_PATH), group.get("CHORD int8")
        versus = (
            f"; the device default ({DEVICE_PATH}) runs 101 candidates in "
            f"{device['latency_101_us']:.0f} us, "
            f"{torch_rt['latency_101_us'] / device['latency_101_us']:.2f}x "
            f"faster than CHORD int8 in eager PyTorch"
            if device and torch_rt
            else ""
        )
        lines.append(
            f"- {key[0]} {key[1]}: fastest on 101 candidates is {fast_c['path']} "
            f"({fast_c['speedup_vs_fp32']:.2f}x fp32 eager), on the catalogue {fast_a['path']} "
            f"({fast_a['speedup_full_vs_fp32']:.2f}x); fastest with CHORD's bits: "
            f"{fast_low['path'] if fast_low else 'none measured'}{versus}."
        )
    lines.extend(ort_findings(rows))
    if kernels and "ort_fp32_us" in kernels[0]:
        ratios = {b: [k[f"ort_nbits{b}_us"] / k["ort_fp32_us"] for k in kernels] for b in (2, 4, 8)}
        spans = ", ".join(f"{b}-bit {min(r):.2f}-{max(r):.2f}x" for b, r in ratios.items())
        typical = statistics.median(ratios[4] + ratios[8])
        lines.append(
            f"- One ORT MatMulNBits call (int8 activations per block) against one fp32 MatMul call "
            f"at the same shapes (session.run included): {spans} the fp32 time (4/8-bit median "
            f"{typical:.2f}x), so on this CPU the 4/8-bit kernels "
            + ("save memory at about fp32 speed" if typical < 1.25 else "save memory, not time")
            + "; 2-bit storage is slower, and splitting layers or tables by width adds nodes."
        )
    slower = [k for k in kernels if k["int8_over_fp32"] > 1]
    lines.append(
        f"- PyTorch's weight-only int8 Linear (codes widened per call) is slower than fp32 at "
        f"{len(slower)} of {len(kernels)} shapes measured: without TorchScript and quantized "
        f"ops, PyTorch has no fast low-bit CPU path here, so the low-bit device runtime is ORT."
    )
    return "\n".join(lines)


BEFORE_PATHS = {
    # path in the earlier run -> what it was
    "CHORD int8 (eager)": "device runtime then: fbgemm int8 dynamic linears, eager (to_lowbit)",
    "CHORD int8": "fbgemm int8 + TorchScript trace/freeze (benchmark-only deployment form)",
}
AFTER_PATHS = {
    DEVICE_PATH: "device runtime now: ORT MatMulNBits + GatherBlockQuantized, 4-bit units",
    "CHORD int8": "PyTorch weight-only int8, eager (to_lowbit)",
    "CHORD int8 compiled": "PyTorch weight-only int8 through torch.compile",
}
SIDE_BY_SIDE_COLUMNS = [
    "dataset",
    "backbone",
    "run",
    "path",
    "latency_101_us",
    "latency_full_us",
    "speedup_vs_fp32",
    "fp32_eager_101_us",
    "device_101_ratio",
    "adapt_ms_p50",
    "runtime_bytes",
]


def side_by_side(before: dict[str, Any], rows: list[dict[str, Any]], commit: str) -> list[dict]:
    """The device runtimes of an earlier run (`before`, its JSON) next to this run's rows.

    Each run's `speedup_vs_fp32` is against fp32 eager timed in the same run (the machine is
    shared, so absolute medians drift between runs; ratios inside a run do not).
    `device_101_ratio` is the old device runtime's speedup over this path's (both against
    their own run's fp32 eager): above 1, this path is faster than the old device runtime.
    """
    out: list[dict[str, Any]] = []
    old_commit = str(before.get("machine", {}).get("commit", "before"))
    keys = sorted({(r["dataset"], r["backbone"]) for r in rows})
    for key in keys:
        old = {r["path"]: r for r in before["rows"] if (r["dataset"], r["backbone"]) == key}
        new = {r["path"]: r for r in rows if (r["dataset"], r["backbone"]) == key}
        if "CHORD int8 (eager)" not in old:
            continue
        old_device = old["CHORD int8 (eager)"]["speedup_vs_fp32"]
        for run, group, paths, label in (
            ("before", old, BEFORE_PATHS, old_commit),
            ("after", new, AFTER_PATHS, commit),
        ):
            for path, what in paths.items():
                if path not in group:
                    continue
                r = group[path]
                out.append(
                    {
                        "dataset": key[0],
                        "backbone": key[1],
                        "run": f"{run} ({label})",
                        "path": f"{path}: {what}",
                        "latency_101_us": r["latency_101_us"],
                        "latency_full_us": r["latency_full_us"],
                        "speedup_vs_fp32": r["speedup_vs_fp32"],
                        "fp32_eager_101_us": group["fp32 eager"]["latency_101_us"],
                        "device_101_ratio": r["speedup_vs_fp32"] / old_device,
                        "adapt_ms_p50": r["adapt_ms_p50"],
                        "runtime_bytes": r["runtime_bytes"],
                    }
                )
    return out


REORDER_OPS = ("Concat", "Gather", "Where", "Cast", "Clip", "Less", "Sub")


def _share(profile: dict[str, float], ops: tuple[str, ...]) -> float:
    """Fraction of a profiled run's time spent in the given op types (top-8 ops only)."""
    whole = profile.get("(whole run)", 0.0)
    return sum(v for k, v in profile.items() if k in ops) / whole if whole else 0.0


def ort_findings(rows: list[dict[str, Any]]) -> list[str]:
    """What the ORT rows and their per-op profiles say."""
    lines = []
    for key in sorted({(r["dataset"], r["backbone"]) for r in rows}):
        group = {r["path"]: r for r in rows if (r["dataset"], r["backbone"]) == key}
        chord, split, fp32 = (group.get(n) for n in ("CHORD ORT", "CHORD ORT split", "fp32 ORT"))
        if not (chord and split and fp32):
            continue
        prof = chord.get("ort_profile_us_per_call", {}).get("candidates", {})
        sprof = split.get("ort_profile_us_per_call", {}).get("candidates", {})
        lines.append(
            f"- {key[0]} {key[1]} on ORT: CHORD ORT {chord['speedup_vs_fp32']:.2f}x fp32 eager "
            f"on 101 candidates ({fp32['latency_101_us'] / chord['latency_101_us']:.2f}x fp32 "
            f"ORT), initializers {chord['ort_initializer_ratio_vs_fp32']:.3f} of fp32, "
            f"{chord['ort_nodes']} graph nodes (fp32 ORT {fp32['ort_nodes']}); "
            f"split layers {split['speedup_vs_fp32']:.2f}x. Profile (candidates graph): "
            f"MatMulNBits {_share(prof, ('MatMulNBits',)):.0%} of the run, reordering ops "
            f"(Concat/Gather/Where/...) {_share(prof, REORDER_OPS):.0%}; split: MatMulNBits "
            f"{_share(sprof, ('MatMulNBits',)):.0%}, reordering {_share(sprof, REORDER_OPS):.0%}."
        )
        device = group.get(DEVICE_PATH)
        if device:
            lines.append(
                f"- {key[0]} {key[1]}, device default ({DEVICE_PATH}): "
                f"{device['speedup_vs_fp32']:.2f}x fp32 eager on 101 candidates "
                f"({fp32['latency_101_us'] / device['latency_101_us']:.2f}x fp32 ORT, "
                f"{chord['latency_101_us'] / device['latency_101_us']:.2f}x CHORD ORT), "
                f"initializers {device['ort_initializer_ratio_vs_fp32']:.3f} of fp32, "
                f"{device['ort_nodes']} graph nodes."
            )
    return lines


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of the inference benchmark."""
    d = InferenceBenchConfig()
    parser.add_argument("--repeats", type=int, default=d.repeats, help="timed calls per figure")
    parser.add_argument("--warmup", type=int, default=d.warmup, help="untimed calls first")
    parser.add_argument("--adapt-repeats", type=int, default=d.adapt_repeats)
    parser.add_argument("--threads", type=thread_count, default=d.threads, help="torch threads")
    parser.add_argument("--tier", default=d.tier, choices=sorted(DEFAULT_TIERS))
    parser.add_argument("--budget-bits", type=float, default=d.budget_bits)
    parser.add_argument("--seed", type=int, default=d.seed)
    parser.add_argument("--datasets", nargs="+", default=list(d.datasets), choices=CATALOGUES)
    parser.add_argument("--backbones", nargs="+", default=list(d.backbones))
    parser.add_argument("--no-ort", action="store_true", help="skip the ONNX Runtime paths")
    parser.add_argument(
        "--compile", action="store_true", help="also time torch.compile (minutes to build)"
    )
    parser.add_argument(
        "--before",
        default=str(BEFORE_JSON) if BEFORE_JSON.exists() else "",
        help="an earlier run's JSON whose device runtimes are shown beside this run's",
    )
    parser.add_argument("--note", default="", help="what else ran on the machine (for RESULTS)")
    parser.add_argument("--no-write", action="store_true", help="print only")
    add_output_arguments(parser)


def config_from_args(args: argparse.Namespace) -> InferenceBenchConfig:
    """Turn flags into a config."""
    return InferenceBenchConfig(
        repeats=args.repeats,
        warmup=args.warmup,
        adapt_repeats=args.adapt_repeats,
        threads=args.threads,
        tier=args.tier,
        budget_bits=args.budget_bits,
        seed=args.seed,
        datasets=tuple(args.datasets),
        backbones=tuple(args.backbones),
        ort=not args.no_ort,
        compile=args.compile,
    )


COLUMNS = [
    "dataset",
    "backbone",
    "path",
    "avg_bits",
    "latency_101_us",
    "latency_full_us",
    "speedup_vs_fp32",
    "speedup_full_vs_fp32",
    "size_ratio_vs_fp32",
    "runtime_size_ratio_vs_fp32",
    "ort_initializer_ratio_vs_fp32",
    "adapt_ms_p50",
]


def ort_version() -> str:
    """Installed onnxruntime version."""
    import onnxruntime

    return str(onnxruntime.__version__)


def run(args: argparse.Namespace) -> int:
    """Run the benchmark, print the table and write results/inference.json."""
    cfg = config_from_args(args)
    load_before = load_average()
    rows = run_benchmark(cfg)
    kernels = kernel_microbench(cfg)
    load_after = load_average()
    compared: list[dict[str, Any]] = []
    before_note = ""
    if args.before:
        with open(args.before) as f:
            before = json.load(f)
        compared = side_by_side(before, rows, machine_info()["commit"])
        bm = before.get("machine", {})
        before_note = (
            f"Device runtimes before and after (before: `results/{Path(args.before).name}`, "
            f"measured "
            f"{bm.get('date', '?')} at commit {bm.get('commit', '?')} on {bm.get('cpu', '?')}, "
            f"{bm.get('cpu_count', '?')} cores, with {before['config']['repeats']} repeats; "
            f"after: this run). Medians of one run each; `speedup_vs_fp32` and "
            f"`device_101_ratio` are ratios against fp32 eager timed in the same run, so they "
            f"compare across the two runs even where background load moved the medians. "
            f"`runtime_bytes`: tensors held for PyTorch paths, measured RSS growth (session "
            f"overhead included) for ORT paths:\n\n"
            + markdown_table(compared, SIDE_BY_SIDE_COLUMNS)
            + "\n\nAll paths of this run:\n\n"
        )
    table = before_note + (
        markdown_table(rows, COLUMNS)
        + "\n\nOne Linear alone (median us, same thread setting):\n\n"
        + markdown_table(
            kernels,
            ["shape", "fp32_us", "int8_weight_only_us", "int8_over_fp32"]
            + (
                ["ort_fp32_us", "ort_nbits2_us", "ort_nbits4_us", "ort_nbits8_us"]
                if cfg.ort
                else []
            ),
        )
    )
    print(table)
    print(findings(rows, kernels))
    if not args.no_write:
        notes = NOTES.format(
            threads=cfg.threads,
            repeats=cfg.repeats,
            warmup=cfg.warmup,
            tier=cfg.tier,
            budget=cfg.budget_bits,
            ort_version=ort_version(),
        )
        notes += (
            f"\nLoad average (1/5/15 min) of this shared machine: {load_before} at the start, "
            f"{load_after} at the end of the run"
            + (f"; {args.note}" if args.note else "")
            + ".\n\nReading:\n\n"
            + findings(rows, kernels)
        )
        payload = {
            "config": asdict(cfg),
            "rows": rows,
            "kernels": kernels,
            "load_avg": [load_before, load_after],
            "before_after": compared,
        }
        path = ResultStore.default(args.results_dir).write("inference", payload, table, notes)
        print(f"wrote {path}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of `python -m benchmarks.inference`."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
