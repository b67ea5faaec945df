"""ONNX Runtime execution of a mixed-precision backbone: n-bit weights on ORT's contrib kernels.

A backbone's batch scoring is one small ONNX graph built with `onnx.helper` (an If node scores
the given candidates, or the whole catalogue when none are given), so every weight is held once
and every initializer keeps its storage type. A b-bit channel is stored at the smallest width of
`widths` (2, 4, 8) holding b bits, exact because a symmetric b-bit grid fits any wider one; each
width group is one `MatMulNBits` (com.microsoft: block-quantized uint8 codes, the channel's
scale repeated per block). Item tables are either split by width (catalogue scores
concatenated and put back in item order by an int16 row map; rows gathered per width with
`GatherBlockQuantized` from the same bytes and merged with Where) or held in 4-bit units with
zero points (`tables="nibbles"`, the device default: a 5..8-bit row is two units that add up
exactly, so one kernel serves every width; see `_Nibbles`); other layers are stored at
their widest row's width unless `split_layers` (then Concat + Gather restore channel order).
Norms, biases, SASRec's position table and Caser's item bias stay fp32. The graphs follow the
lean rewrites of lowbit.py (SASRec's last block computes only the last position); Caser's
horizontal convolutions are one matrix over the [L, d] rows plus shifted sums, so no weight is
expanded. `kind="fp32"` builds the same graph with fp32 MatMul/Gemm/Gather for comparison.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn

from chord.models.base import PAD_SCORE
from chord.models.caser import Caser
from chord.models.sasrec import SASRec, SASRecBlock
from chord.quant.apply import _check_bits_array
from chord.quant.layout import ChannelLayout, LayoutError, channel_layout
from chord.quant.lowbit import QWeight, _quantized_weights
from chord.quant.quantizer import QuantError, quantize_int

ORT_KINDS: tuple[str, ...] = ("nbits", "fp32")
TABLE_LAYOUTS: tuple[str, ...] = ("split", "nibbles")  # how n-bit item tables are stored
DEFAULT_WIDTHS: tuple[int, ...] = (2, 4, 8)  # storage widths MatMulNBits runs on the CPU
BLOCK_SIZES: tuple[int, ...] = (16, 32, 64, 128, 256)  # MatMulNBits needs 2^k >= 16
OPSET = 21
# ORT's graph optimization levels by name (onnxruntime.GraphOptimizationLevel).
GRAPH_OPTIMIZATIONS: dict[str, ort.GraphOptimizationLevel] = {
    "none": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}


@dataclass
class _Group:
    """Rows of one layer stored at one width: original row ids, packed codes, scales."""

    width: int
    rows: np.ndarray  # original row indices, ascending
    packed: np.ndarray  # uint8 [n, k_blocks, block * width / 8]
    scales: np.ndarray  # float32 [n, k_blocks] (the row's scale repeated)
    block: int


def _block_size(k: int, width: int) -> int:
    """The MatMulNBits block size that stores a row of k codes in the fewest bytes."""
    cost = {b: -(-k // b) * (b * width // 8 + 4) for b in BLOCK_SIZES}
    return min(cost, key=lambda b: (cost[b], -b))


def _pack(q: np.ndarray, width: int, block: int) -> np.ndarray:
    """Signed codes [n, k] -> uint8 [n, k_blocks, block * width / 8], offset 2^(width-1)."""
    n, k = q.shape
    kb = -(-k // block)
    u = np.full((n, kb * block), 1 << (width - 1), dtype=np.uint8)  # padding decodes to 0
    u[:, :k] = (q.astype(np.int16) + (1 << (width - 1))).astype(np.uint8)
    per = 8 // width
    v = u.reshape(n, -1, per)
    out = np.zeros(v.shape[:2], dtype=np.uint8)
    for i in range(per):
        out |= (v[:, :, i] << (i * width)).astype(np.uint8)
    return out.reshape(n, kb, block * width // 8)


def _groups(weight: QWeight, widths: tuple[int, ...]) -> list[_Group]:
    """Split a quantized weight's rows by storage width (smallest width >= the row's bits)."""
    if weight.q is None or weight.scale is None or weight.bits is None:
        raise QuantError("an n-bit ORT layer needs quantized weights and their bits")
    q = weight.q.reshape(weight.q.shape[0], -1).numpy()
    scale = weight.scale.float().numpy()
    bits = np.asarray(weight.bits).reshape(-1)
    ws = np.asarray(sorted(widths))
    if bits.max() > ws.max():
        raise QuantError(f"{int(bits.max())}-bit channels do not fit storage widths {widths}")
    store = ws[np.searchsorted(ws, bits)]
    out = []
    for width in np.unique(store):
        rows = np.flatnonzero(store == width)
        block = _block_size(q.shape[1], int(width))
        packed = _pack(q[rows], int(width), block)
        scales = np.repeat(scale[rows, None], packed.shape[1], axis=1).astype(np.float32)
        out.append(_Group(int(width), rows, packed, scales, block))
    return out


@dataclass
class _Nibbles:
    """An item table in 4-bit units: rows of 1..4 bits are one unit, rows of 5..8 bits two.

    A b-bit row (b <= 4) is stored as codes q + 8 with zero point 8 and its scale s. A 5..8-bit
    row's offset codes u = q + 128 in [1, 255] split into a high unit (u >> 4, zero point 8,
    scale 16 s) and a low unit (u & 15, zero point 0, scale s); the two dequantized units add up
    to (16 (u >> 4) - 128 + (u & 15)) s = q s exactly. Unit i is row i's first unit; `second[i]`
    is its low unit, or the all-zero unit at the end for rows that have none.
    """

    packed: np.ndarray  # uint8 [units, k_blocks, block / 2]
    scales: np.ndarray  # float32 [units, k_blocks]
    zero_mm: np.ndarray  # uint8 [units, ceil(k_blocks / 2)]: MatMulNBits' packed zero points
    zero_gather: np.ndarray  # uint8 [units, k_blocks, 1]: GatherBlockQuantized's zero points
    second: np.ndarray  # int16/int32 [n]: the unit added to row i's first unit
    block: int
    wide: int  # rows stored as two units


def _nibbles(weight: QWeight) -> _Nibbles:
    """Lay a quantized table out in 4-bit units (see `_Nibbles`)."""
    if weight.q is None or weight.scale is None or weight.bits is None:
        raise QuantError("an n-bit ORT table needs quantized weights and their bits")
    q = weight.q.reshape(weight.q.shape[0], -1).numpy().astype(np.int16)
    n, k = q.shape
    scale = weight.scale.float().numpy()
    wide = np.asarray(weight.bits).reshape(-1) > 4
    u8 = q + 128
    first = np.where(wide[:, None], u8 >> 4, q + 8)
    low = u8[wide] & 15
    codes = np.concatenate([first, low, np.full((1, k), 8)]).astype(np.uint8)
    zero = np.concatenate([np.full(n, 8), np.zeros(int(wide.sum())), [8]]).astype(np.uint8)
    unit_scale = np.concatenate([np.where(wide, 16 * scale, scale), scale[wide], [0.0]])
    block = _block_size(k, 4)
    kb = -(-k // block)
    padded = np.repeat(zero[:, None], kb * block, axis=1)  # padding decodes to 0
    padded[:, :k] = codes
    packed = (padded[:, 0::2] | (padded[:, 1::2] << 4)).astype(np.uint8)
    zero_blocks = np.repeat(zero[:, None], 2 * (-(-kb // 2)), axis=1)
    zero_mm = (zero_blocks[:, 0::2] | (zero_blocks[:, 1::2] << 4)).astype(np.uint8)
    second = np.full(n, len(codes) - 1, dtype=np.int64)
    second[wide] = n + np.arange(int(wide.sum()))
    return _Nibbles(
        packed=packed.reshape(len(codes), kb, block // 2),
        scales=np.repeat(unit_scale[:, None], kb, axis=1).astype(np.float32),
        zero_mm=zero_mm,
        zero_gather=np.repeat(zero[:, None, None], kb, axis=1),
        second=second.astype(np.int16 if len(codes) < 2**15 else np.int32),
        block=block,
        wide=int(wide.sum()),
    )


@dataclass
class _Graph:
    """Nodes and initializers of one ONNX graph under construction."""

    nodes: list[onnx.NodeProto] = field(default_factory=list)
    inits: dict[str, np.ndarray] = field(default_factory=dict)
    count: int = 0

    def name(self, hint: str) -> str:
        """A fresh value name."""
        self.count += 1
        return f"{hint}_{self.count}"

    def const(self, hint: str, value: Any) -> str:
        """An initializer (name made unique)."""
        name = self.name(hint)
        self.inits[name] = np.asarray(value)
        return name

    def op(self, op_type: str, inputs: list[str], hint: str = "", **attrs: Any) -> str:
        """Append a node with one output; returns the output name."""
        out = self.name(hint or op_type.lower())
        domain = "com.microsoft" if op_type in ("MatMulNBits", "GatherBlockQuantized") else ""
        self.nodes.append(helper.make_node(op_type, inputs, [out], domain=domain, **attrs))
        return out

    def ints(self, hint: str, values: list[int]) -> str:
        """An int64 vector initializer (shapes, axes, slice bounds)."""
        return self.const(hint, np.asarray(values, dtype=np.int64))

    def if_candidates(self, then: Callable[[], str], otherwise: Callable[[], str]) -> str:
        """`then()` when the input `cands` has columns, else `otherwise()` (If subgraphs)."""
        branches = {}
        for key, build in (("then_branch", then), ("else_branch", otherwise)):
            saved, self.nodes = self.nodes, []
            result = build()
            out = self.op("Identity", [result], key)
            branches[key] = helper.make_graph(
                self.nodes, key, [], [helper.make_tensor_value_info(out, TensorProto.FLOAT, None)]
            )
            self.nodes = saved
        has = self.op("Greater", [self.op("Size", ["cands"]), self.const("zero", np.int64(0))])
        return self.op("If", [has], "scores", **branches)

    def slice(self, x: str, starts: list[int], ends: list[int], axes: list[int]) -> str:
        """x[start:end] along the given axes."""
        return self.op(
            "Slice",
            [x, self.ints("st", starts), self.ints("en", ends), self.ints("ax", axes)],
        )


class _Builder:
    """Emits layers of one backbone into a graph, in fp32 or on n-bit contrib kernels."""

    def __init__(
        self,
        kind: str,
        widths: tuple[int, ...],
        accuracy_level: int,
        split_layers: bool,
        tables: str = "split",
    ) -> None:
        """Pick the kernels and the item-table layout; the graph starts empty."""
        self.kind, self.widths, self.accuracy = kind, widths, accuracy_level
        self.split_layers, self.tables = split_layers, tables
        self.g = _Graph()

    def linear(
        self, x: str, weight: QWeight, bias: torch.Tensor | None, hint: str, k_pad: bool = False
    ) -> str:
        """y = x W^T + b over the last axis of x (W flattened to [out, in])."""
        w2 = weight.matrix()
        k = int(w2.w.shape[1])
        b = None if bias is None else bias.detach().float().numpy()
        if self.kind == "fp32":
            y = self.g.op("MatMul", [x, self.g.const(f"{hint}_wt", w2.w.t().contiguous().numpy())])
            return y if b is None else self.g.op("Add", [y, self.g.const(f"{hint}_b", b)])
        w2.bits = weight.bits
        return self.matmul_groups(x, self.groups(w2, hint, self.split_layers), k, b, hint)

    def groups(self, weight: QWeight, hint: str, split: bool) -> list[tuple[_Group, str, str]]:
        """A weight's storage groups with the names of their packed codes and scales.

        Without `split` every row is stored at the width of the layer's widest row: one
        kernel call, no concatenation or reordering of outputs.
        """
        widths = self.widths
        if not split and weight.bits is not None:
            widest = max(int(np.max(weight.bits)), min(self.widths))
            widths = (
                (min(w for w in self.widths if w >= widest),) if widest <= max(widths) else widths
            )
        return [
            (
                grp,
                self.g.const(f"{hint}_q{grp.width}", grp.packed),
                self.g.const(f"{hint}_s{grp.width}", grp.scales),
            )
            for grp in _groups(weight, widths)
        ]

    def matmul_groups(
        self,
        x: str,
        groups: list[tuple[_Group, str, str]],
        k: int,
        b: np.ndarray | None,
        hint: str,
        pos: str = "",
    ) -> str:
        """One MatMulNBits per group, outputs concatenated and put back in row order."""
        outs = []
        for grp, packed, scales in groups:
            ins = [x, packed, scales]
            if b is not None:
                ins += ["", "", self.g.const(f"{hint}_b{grp.width}", b[grp.rows])]
            outs.append(
                self.g.op(
                    "MatMulNBits",
                    ins,
                    f"{hint}_mm",
                    K=k,
                    N=len(grp.rows),
                    bits=grp.width,
                    block_size=grp.block,
                    accuracy_level=self.accuracy,
                )
            )
        if len(outs) == 1:
            return outs[0]
        cat = self.g.op("Concat", outs, axis=-1)
        if pos:  # a stored row -> position map (int16 or int32)
            index = self.g.op("Cast", [pos], to=TensorProto.INT32)
        else:
            order = np.concatenate([grp.rows for grp, _, _ in groups])
            index = self.g.const(f"{hint}_perm", np.argsort(order).astype(np.int32))
        return self.g.op("Gather", [cat, index], axis=-1)


class OrtTable:
    """An item table in the graph: gathers rows and scores the catalogue (x E^T)."""

    def __init__(self, builder: _Builder, weight: QWeight, hint: str) -> None:
        """Add the table's initializers (packed groups or fp32 rows) to the graph."""
        self.b, self.weight, self.hint = builder, weight, hint
        self.n, self.d = int(weight.w.shape[0]), int(weight.w.shape[1])
        g = builder.g
        if builder.kind == "fp32":
            self.rows = g.const(f"{hint}_w", weight.w.float().contiguous().numpy())
            return
        self.nib: _Nibbles | None = None
        if builder.tables == "nibbles":
            self.nib = nib = _nibbles(weight)
            self.nib_names = {
                "packed": g.const(f"{hint}_q4", nib.packed),
                "scales": g.const(f"{hint}_s4", nib.scales),
                "zero_mm": g.const(f"{hint}_z4", nib.zero_mm),
                "zero_gather": g.const(f"{hint}_zg4", nib.zero_gather),
                "second": g.const(f"{hint}_second", nib.second),
            }
            return
        self.groups = builder.groups(weight, hint, split=True)
        self.pos = ""
        if len(self.groups) > 1:
            order = np.concatenate([grp.rows for grp, _, _ in self.groups])
            pos = np.argsort(order)
            dtype = np.int16 if pos.max() < 2**15 else np.int32
            self.pos = g.const(f"{hint}_pos", pos.astype(dtype))

    def gather(self, ids: str) -> str:
        """Rows of the given ids (int64 tensor [...]) -> [..., d] float32."""
        g = self.b.g
        if self.b.kind == "fp32":
            return g.op("Gather", [self.rows, ids], axis=0)
        if self.nib is not None:
            return self._gather_nibbles(ids)
        where = ids
        if self.pos:
            where = g.op("Cast", [g.op("Gather", [self.pos, ids], axis=0)], to=TensorProto.INT64)
        parts: list[tuple[str, int]] = []
        start = 0
        for grp, packed, scales in self.groups:
            end = start + len(grp.rows)
            local = where
            if self.pos:
                if start:
                    local = g.op("Sub", [where, g.const("off", np.int64(start))])
                lo, hi = g.const("lo", np.int64(0)), g.const("hi", np.int64(end - start - 1))
                local = g.op("Clip", [local, lo, hi])
            scale3 = g.op("Unsqueeze", [scales, g.ints("ax", [-1])])
            rows = g.op(
                "GatherBlockQuantized",
                [packed, local, scale3],
                f"{self.hint}_gather",
                gather_axis=0,
                quantize_axis=2,
                block_size=grp.block,
                bits=grp.width,
            )
            flat = g.op("Reshape", [rows, g.ints("rows", [-1, grp.packed.shape[1] * grp.block])])
            if grp.packed.shape[1] * grp.block != self.d:
                flat = g.slice(flat, [0], [self.d], [-1])
            parts.append((flat, end))
            start = end
        out = parts[-1][0]
        for rows, end in reversed(parts[:-1]):
            less = g.op("Less", [where, g.const("end", np.int64(end))])
            out = g.op("Where", [g.op("Reshape", [less, g.ints("col", [-1, 1])]), rows, out])
        shape = g.op("Concat", [g.op("Shape", [ids]), g.ints("d", [self.d])], axis=0)
        return g.op("Reshape", [out, shape])

    def _gather_nibbles(self, ids: str) -> str:
        """Rows of the given ids from a table in 4-bit units: first unit plus second unit."""
        g, nib, names = self.b.g, self.nib, self.nib_names
        assert nib is not None
        scale3 = g.op("Unsqueeze", [names["scales"], g.ints("ax", [-1])])

        def units(which: str) -> str:
            """Dequantized units [..., k_blocks, block] of the given unit ids."""
            return g.op(
                "GatherBlockQuantized",
                [names["packed"], which, scale3, names["zero_gather"]],
                f"{self.hint}_gather",
                gather_axis=0,
                quantize_axis=2,
                block_size=nib.block,
                bits=4,
            )

        rows = units(ids)
        if nib.wide:
            second = g.op("Gather", [names["second"], ids], axis=0)
            rows = g.op("Add", [rows, units(g.op("Cast", [second], to=TensorProto.INT64))])
        width = nib.packed.shape[1] * nib.block
        flat = g.op("Reshape", [rows, g.ints("rows", [-1, width])])
        if width != self.d:
            flat = g.slice(flat, [0], [self.d], [-1])
        shape = g.op("Concat", [g.op("Shape", [ids]), g.ints("d", [self.d])], axis=0)
        return g.op("Reshape", [flat, shape])

    def _score_nibbles(self, state: str) -> str:
        """state [B, d] -> x E^T [B, n]: one MatMulNBits over all units, second units added."""
        g, nib, names = self.b.g, self.nib, self.nib_names
        assert nib is not None
        out = g.op(
            "MatMulNBits",
            [state, names["packed"], names["scales"], names["zero_mm"]],
            f"{self.hint}_score_mm",
            K=self.d,
            N=int(nib.packed.shape[0]),
            bits=4,
            block_size=nib.block,
            accuracy_level=self.b.accuracy,
        )
        first = g.slice(out, [0], [self.n], [-1])
        if not nib.wide:
            return first
        index = g.op("Cast", [names["second"]], to=TensorProto.INT32)
        return g.op("Add", [first, g.op("Gather", [out, index], axis=-1)])

    def score_all(self, state: str, bias: str | None) -> str:
        """state [B, d] -> scores [B, n_items + 1] (+ bias, an fp32 initializer), column 0 set to
        PAD_SCORE."""
        g = self.b.g
        if self.b.kind == "fp32":
            scores = g.op("Gemm", [state, self.rows], transB=1)
        elif self.nib is not None:
            scores = self._score_nibbles(state)
        else:
            scores = self.b.matmul_groups(
                state, self.groups, self.d, None, f"{self.hint}_score", self.pos
            )
        if bias is not None:
            scores = g.op("Add", [scores, bias])
        first = np.zeros(self.n, dtype=bool)
        first[0] = True
        pad = g.const("pad", np.float32(PAD_SCORE))
        return g.op("Where", [g.const("pad_col", first), pad, scores])


def _layer_norm(g: _Graph, x: str, norm: nn.LayerNorm, hint: str) -> str:
    """LayerNormalization over the last axis (fp32 affine parameters)."""
    w = g.const(f"{hint}_g", norm.weight.detach().float().numpy())
    b = g.const(f"{hint}_b", norm.bias.detach().float().numpy())
    return g.op("LayerNormalization", [x, w, b], hint, axis=-1, epsilon=float(norm.eps))


def _bias(module: nn.Module) -> torch.Tensor:
    """A layer's fp32 bias."""
    bias = getattr(module, "bias", None)
    if not isinstance(bias, torch.Tensor):
        raise LayoutError(f"{type(module).__name__} has no bias")
    return bias.detach().float()


def _sasrec_graph(bld: _Builder, model: SASRec, weights: dict[str, QWeight]) -> str:
    """SASRec scoring graph; returns the output name."""
    g, length, d = bld.g, model.max_len, model.state_dim
    table = OrtTable(bld, weights["item_emb"], "item")
    rows = table.gather(g.op("Concat", ["seqs", "cands"], axis=1))  # history and candidates
    emb = g.slice(rows, [0], [length], [1])
    real = g.op("Not", [g.op("Equal", ["seqs", g.const("zero", np.int64(0))])])
    keep = g.op("Unsqueeze", [g.op("Cast", [real], to=TensorProto.FLOAT), g.ints("ax", [-1])])
    pos = weights["pos_emb"].w.float().numpy()
    x = g.op(
        "Add",
        [
            g.op("Mul", [emb, g.const("emb_scale", np.float32(model.emb_scale))]),
            g.const("pos", pos),
        ],
    )
    x = g.op("Mul", [x, keep])
    causal = np.tril(np.ones((length, length), dtype=bool))
    allowed = g.op("And", [g.const("causal", causal), g.op("Unsqueeze", [real, g.ints("ax", [1])])])
    allowed = g.op("Or", [allowed, g.const("diag", np.eye(length, dtype=bool))])
    neg = g.op(
        "Where", [allowed, g.const("z", np.float32(0)), g.const("ninf", np.float32(-np.inf))]
    )
    blocks = [b for b in model.blocks if isinstance(b, SASRecBlock)]
    for i, block in enumerate(blocks):
        p = f"blocks.{i}"
        last = i == len(blocks) - 1
        mask, kp = neg, keep
        xin = x
        if last:
            mask = g.slice(neg, [length - 1], [length], [1])
            kp = g.slice(keep, [length - 1], [length], [1])
            xin = g.slice(x, [length - 1], [length], [1])
        attn = block.attn
        q_in = _layer_norm(g, xin, block.attn_norm, f"b{i}_ln1")
        kv_w = _cat_rows(weights[f"{p}.attn.k"], weights[f"{p}.attn.v"])
        kv = bld.linear(x, kv_w, torch.cat([_bias(attn.k), _bias(attn.v)]), f"b{i}_kv")
        k = g.slice(kv, [0], [d], [-1])
        v = g.slice(kv, [d], [2 * d], [-1])
        inv = 1.0 / math.sqrt(d // attn.n_heads)
        qw = weights[f"{p}.attn.q"]
        q_scaled = QWeight(qw.q, None if qw.scale is None else qw.scale * inv, qw.w * inv, qw.bits)
        qq = bld.linear(q_in, q_scaled, _bias(attn.q) * inv, f"b{i}_q")
        mixed = _attend(g, qq, k, v, mask, attn.n_heads, d)
        h = g.op(
            "Add", [q_in, bld.linear(mixed, weights[f"{p}.attn.out"], _bias(attn.out), f"b{i}_o")]
        )
        h = _layer_norm(g, h, block.ffn_norm, f"b{i}_ln2")
        f1 = g.op(
            "Relu", [bld.linear(h, weights[f"{p}.ffn.fc1"], _bias(block.ffn.fc1), f"b{i}_f1")]
        )
        f2 = bld.linear(f1, weights[f"{p}.ffn.fc2"], _bias(block.ffn.fc2), f"b{i}_f2")
        x = g.op("Mul", [g.op("Add", [h, f2]), kp])
    state = g.op(
        "Mul",
        [_layer_norm(g, x, model.final_norm, "ln_f"), g.slice(keep, [length - 1], [length], [1])],
    )  # [B, 1, d]

    def candidates() -> str:
        """Dot products with the candidates' rows (gathered with the history)."""
        cand_rows = g.slice(rows, [length], [2**62], [1])
        scores = g.op("MatMul", [cand_rows, g.op("Transpose", [state], perm=[0, 2, 1])])
        return g.op("Squeeze", [scores, g.ints("ax", [-1])])

    def catalogue() -> str:
        """Scores of every item."""
        return table.score_all(g.op("Squeeze", [state, g.ints("ax", [1])]), None)

    return g.if_candidates(candidates, catalogue)


def _cat_rows(a: QWeight, b: QWeight) -> QWeight:
    """Rows of a then b (codes, scales, float view, bits)."""
    bits = None if a.bits is None or b.bits is None else np.concatenate([a.bits, b.bits])
    q = None if a.q is None or b.q is None else torch.cat([a.q, b.q])
    s = None if a.scale is None or b.scale is None else torch.cat([a.scale, b.scale])
    return QWeight(q, s, torch.cat([a.w, b.w]), bits)


def _attend(g: _Graph, q: str, k: str, v: str, mask: str, heads: int, d: int) -> str:
    """softmax(q k^T + mask) v per head; q [B, Lq, d] (already scaled), k/v [B, L, d]."""
    if heads == 1:
        logits = g.op("Add", [g.op("MatMul", [q, g.op("Transpose", [k], perm=[0, 2, 1])]), mask])
        return g.op("MatMul", [g.op("Softmax", [logits], axis=-1), v])
    shape = g.ints("heads", [0, -1, heads, d // heads])
    qh = g.op("Transpose", [g.op("Reshape", [q, shape])], perm=[0, 2, 1, 3])
    kh = g.op("Transpose", [g.op("Reshape", [k, shape])], perm=[0, 2, 3, 1])
    vh = g.op("Transpose", [g.op("Reshape", [v, shape])], perm=[0, 2, 1, 3])
    m4 = g.op("Unsqueeze", [mask, g.ints("ax", [1])])
    logits = g.op("Add", [g.op("MatMul", [qh, kh]), m4])
    mixed = g.op("MatMul", [g.op("Softmax", [logits], axis=-1), vh])
    merged = g.op("Transpose", [mixed], perm=[0, 2, 1, 3])
    return g.op("Reshape", [merged, g.ints("merge", [0, -1, d])])


def _caser_graph(bld: _Builder, model: Caser, weights: dict[str, QWeight]) -> str:
    """Caser scoring graph; returns the output name."""
    g, length, d = bld.g, model.max_len, model.state_dim
    e = OrtTable(bld, weights["item_emb"], "item").gather("seqs")  # [B, L, d]
    # Vertical conv: a linear over the L axis of every embedding column.
    wv = weights["conv_v"].matrix()
    wv.bits = weights["conv_v"].bits
    et = g.op("Transpose", [e], perm=[0, 2, 1])
    out_v = g.op("Transpose", [bld.linear(et, wv, _bias(model.conv_v), "conv_v")], perm=[0, 2, 1])
    feats = [g.op("Reshape", [out_v, g.ints("flat", [0, -1])])]
    # Horizontal convs: one linear over each row gives every filter slice's response;
    # filter f of height h at offset t sums slice j's response at row t + j.
    parts, biases, n_h = [], [], 0
    for height, conv in enumerate(model.conv_h, start=1):
        wh = weights[f"conv_h.{height - 1}"].matrix()  # [n_h, height * d]
        n_h = int(wh.w.shape[0])
        bits = weights[f"conv_h.{height - 1}"].bits
        for j in range(height):
            cols = slice(j * d, (j + 1) * d)
            parts.append(
                QWeight(
                    None if wh.q is None else wh.q[:, cols],
                    wh.scale,
                    wh.w[:, cols],
                    bits,
                )
            )
            biases.append(_bias(conv) if j == 0 else torch.zeros(n_h))
    stacked = _cat_many(parts)
    resp = bld.linear(e, stacked, torch.cat(biases), "conv_h")  # [B, L, sum h * n_h]
    base = 0
    for height in range(1, length + 1):
        windows = length - height + 1
        terms = [
            g.slice(resp, [j, base + j * n_h], [j + windows, base + (j + 1) * n_h], [1, 2])
            for j in range(height)
        ]
        summed = terms[0] if height == 1 else g.op("Sum", terms)
        feats.append(g.op("ReduceMax", [g.op("Relu", [summed]), g.ints("ax", [1])], keepdims=0))
        base += height * n_h
    state = g.op(
        "Relu", [bld.linear(g.op("Concat", feats, axis=1), weights["fc"], _bias(model.fc), "fc")]
    )
    out = OrtTable(bld, weights["out_emb"], "out")
    bias = model.out_bias.detach().float()
    item_bias = g.const("out_bias", bias.numpy())

    def candidates() -> str:
        """Output-embedding dot products plus the item bias."""
        rows = out.gather("cands")  # [B, C, d]
        dots = g.op("MatMul", [rows, g.op("Unsqueeze", [state, g.ints("ax", [-1])])])
        dots = g.op("Squeeze", [dots, g.ints("ax", [-1])])
        return g.op("Add", [dots, g.op("Gather", [item_bias, "cands"], axis=0)])

    return g.if_candidates(candidates, lambda: out.score_all(state, item_bias))


def _cat_many(parts: list[QWeight]) -> QWeight:
    """Stack rows of several weights of one input width."""
    out = parts[0]
    for p in parts[1:]:
        out = _cat_rows(out, p)
    return out


def _model(bld: _Builder, output: str) -> onnx.ModelProto:
    """Wrap the graph into a model: int64 inputs seqs [B, L], cands [B, C]; one float output."""
    infos = [
        helper.make_tensor_value_info(n, TensorProto.INT64, ["batch", n + "_len"])
        for n in ("seqs", "cands")
    ]
    return _graph_model(bld, "chord_scoring", infos, output)


def _graph_model(bld: _Builder, name: str, inputs: list[Any], output: str) -> onnx.ModelProto:
    """The builder's nodes and initializers as a model with one float output."""
    graph = helper.make_graph(
        bld.g.nodes,
        name,
        inputs,
        [helper.make_tensor_value_info(output, TensorProto.FLOAT, None)],
        [numpy_helper.from_array(v, k) for k, v in bld.g.inits.items()],
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET), helper.make_opsetid("com.microsoft", 1)],
    )
    model.ir_version = 10
    return model


def linear_model(
    w: torch.Tensor, bits: int | None, m: int, accuracy_level: int = 4
) -> onnx.ModelProto:
    """One Linear x [m, in] -> [m, out] as a graph: fp32 MatMul (`bits=None`) or MatMulNBits
    at `bits` (2, 4 or 8) with per-row max-abs scales (for kernel micro-benchmarks)."""
    if bits is None:
        bld, weight = (
            _Builder("fp32", DEFAULT_WIDTHS, accuracy_level, False),
            QWeight(None, None, w),
        )
    else:
        q, scale = quantize_int(w, bits)
        bld = _Builder("nbits", (bits,), accuracy_level, False)
        weight = QWeight(q, scale, w, np.full(w.shape[0], bits))
    y = bld.linear("x", weight, None, "w")
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [m, int(w.shape[1])])
    return _graph_model(bld, "linear", [x], y)


def node_count(model: onnx.ModelProto) -> int:
    """Nodes of a graph, those inside If branches included."""

    def count(graph: onnx.GraphProto) -> int:
        """Nodes of one (sub)graph."""
        return sum(1 + sum(count(a.g) for a in n.attribute if a.g.node) for n in graph.node)

    return count(model.graph)


def session_options(
    threads: int = 1, profile: str = "", optimization: str = "all"
) -> ort.SessionOptions:
    """CPU session options: `threads` intra-op threads, sequential; `profile`: trace prefix;
    `optimization`: ORT's graph optimization level, one of GRAPH_OPTIMIZATIONS ("none" skips
    the graph rewrites at session creation). Raises QuantError for an unknown level."""
    level = GRAPH_OPTIMIZATIONS.get(optimization)
    if level is None:
        raise QuantError(
            f"unknown graph optimization {optimization!r}; use one of {tuple(GRAPH_OPTIMIZATIONS)}"
        )
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = level
    so.log_severity_level = 3
    if profile:
        so.enable_profiling = True
        so.profile_file_prefix = profile
    return so


def initializer_bytes(model: onnx.ModelProto) -> int:
    """Bytes of a graph's initializers (packed codes, scales, fp32 extras)."""
    return sum(len(t.raw_data) for t in model.graph.initializer)


class OrtScorer:
    """A backbone's batch scoring on one ONNX Runtime session: `score_candidates`, `score_all`.

    The graph scores `cands` when it has columns and the whole catalogue when it is empty
    (an If node), so every weight is held once; the model proto is not kept.
    """

    def __init__(
        self,
        model: bytes | str,
        max_len: int,
        n_items: int,
        threads: int = 1,
        profile: str = "",
        optimization: str = "all",
    ) -> None:
        """Open the serialized graph (bytes or a file path) on the CPU provider, with ORT's
        graph optimization level `optimization` (see session_options)."""
        self.max_len, self.n_items = max_len, n_items
        self.session = ort.InferenceSession(
            model,
            session_options(threads, profile, optimization),
            providers=["CPUExecutionProvider"],
            # Folding would copy constant expressions of packed weights (scale views).
            disabled_optimizers=["ConstantFolding"],
        )
        self._none = np.zeros((1, 0), dtype=np.int64)

    def _ids(self, x: torch.Tensor | np.ndarray, what: str) -> np.ndarray:
        """Validated int64 ids [B, n] within 0..n_items."""
        arr = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
        if arr.ndim != 2 or arr.dtype.kind not in "iu":
            raise ValueError(f"{what} must be an integer [batch, length] array, got {arr.shape}")
        arr = np.ascontiguousarray(arr, dtype=np.int64)
        # One pass: negative ids read as uint64 are larger than any item id.
        if (arr.view(np.uint64) > self.n_items).any():
            raise ValueError(f"{what} must hold item ids in 0..{self.n_items}")
        return arr

    def _seqs(self, seqs: torch.Tensor | np.ndarray) -> np.ndarray:
        """Sequences fitted to max_len (last items kept, left-padded)."""
        arr = self._ids(seqs, "seqs")
        if arr.shape[1] >= self.max_len:  # as models.base.fit_length
            return np.ascontiguousarray(arr[:, arr.shape[1] - self.max_len :])
        return np.pad(arr, ((0, 0), (self.max_len - arr.shape[1], 0)))

    def score_candidates_np(self, seqs: np.ndarray, candidates: np.ndarray) -> np.ndarray:
        """Scores [B, C] as numpy (inputs already int64; no validation)."""
        return np.asarray(self.session.run(None, {"seqs": seqs, "cands": candidates})[0])

    def score_all_np(self, seqs: np.ndarray) -> np.ndarray:
        """Catalogue scores [B, n_items + 1] as numpy (input already fitted int64)."""
        none = self._none if seqs.shape[0] == 1 else np.zeros((seqs.shape[0], 0), np.int64)
        return np.asarray(self.session.run(None, {"seqs": seqs, "cands": none})[0])

    def score_candidates(
        self, seqs: torch.Tensor | np.ndarray, candidates: torch.Tensor | np.ndarray
    ) -> torch.Tensor:
        """Scores of the given items: [B, C]."""
        seq = self._seqs(seqs)
        cands = self._ids(candidates, "candidates")
        if cands.shape[0] != seq.shape[0]:
            raise ValueError("seqs and candidates need the same batch size")
        return torch.from_numpy(self.score_candidates_np(seq, cands))

    def score_all(self, seqs: torch.Tensor | np.ndarray) -> torch.Tensor:
        """Scores of the whole catalogue: [B, n_items + 1] (column 0 is PAD_SCORE)."""
        return torch.from_numpy(self.score_all_np(self._seqs(seqs)))

    def end_profiling(self) -> str:
        """Stop profiling; the JSON trace file."""
        return str(self.session.end_profiling())


def build_onnx(
    model: nn.Module,
    bits_per_channel: np.ndarray | None,
    kind: str = "nbits",
    clip: str = "maxabs",
    layout: ChannelLayout | None = None,
    widths: tuple[int, ...] = DEFAULT_WIDTHS,
    accuracy_level: int = 4,
    split_layers: bool = False,
    tables: str = "split",
) -> onnx.ModelProto:
    """The scoring graph of a SASRec/Caser backbone (candidates, or the catalogue if none).

    `kind="nbits"` stores each channel at the smallest of `widths` holding its bits (codes and
    scales exactly those of `quantize_backbone`); `accuracy_level=4` lets MatMulNBits quantize
    activations to int8 per block (dynamic activation quantization), 0 computes in fp32.
    `kind="fp32"` keeps float weights (`bits_per_channel=None`: unquantized). With
    `tables="split"` item tables are split by width; other layers only with `split_layers`
    (else each is stored at its widest row's width: fewer kernel calls, a few more bytes).
    `tables="nibbles"` stores item tables in 4-bit units instead (1..4-bit rows one unit,
    5..8-bit rows two that add up exactly, see `_Nibbles`): one gather or catalogue kernel per
    unit column, no row map and no merging by width. Raises QuantError on an unknown kind,
    layout or width, and LayoutError for a backbone other than SASRec and Caser.
    """
    if kind not in ORT_KINDS:
        raise QuantError(f"unknown ORT kind {kind!r}; use one of {ORT_KINDS}")
    if kind == "nbits" and bits_per_channel is None:
        raise QuantError("the n-bit ORT runtime needs a bit assignment (1..8 bits a channel)")
    if not set(widths) <= {2, 4, 8}:
        raise QuantError(f"storage widths must be among 2, 4, 8; got {widths}")
    if tables not in TABLE_LAYOUTS:
        raise QuantError(f"unknown table layout {tables!r}; use one of {TABLE_LAYOUTS}")
    if not isinstance(model, SASRec | Caser):
        raise LayoutError(
            f"build_onnx knows SASRec and Caser backbones, got {type(model).__name__}"
        )
    layout = layout or channel_layout(model)
    bits = None if bits_per_channel is None else _check_bits_array(layout, bits_per_channel)
    weights = _quantized_weights(model, layout, bits, clip, "int8" if kind == "nbits" else "fp32")
    bld = _Builder(kind, tuple(widths), accuracy_level, split_layers, tables)
    if isinstance(model, SASRec):
        output = _sasrec_graph(bld, model, weights)
    else:
        output = _caser_graph(bld, model, weights)
    return _model(bld, output)


@torch.no_grad()
def to_ort(
    model: nn.Module,
    bits_per_channel: np.ndarray | None,
    kind: str = "nbits",
    clip: str = "maxabs",
    layout: ChannelLayout | None = None,
    widths: tuple[int, ...] = DEFAULT_WIDTHS,
    accuracy_level: int = 4,
    split_layers: bool = False,
    threads: int = 1,
    profile: str = "",
    tables: str = "split",
    optimization: str = "all",
) -> OrtScorer:
    """Build the scoring graphs of a backbone (see `build_onnx`) and open them on ORT's CPU
    provider with `threads` intra-op threads (`profile`: a trace file prefix) and graph
    optimization level `optimization` (see session_options)."""
    onnx_model = build_onnx(
        model, bits_per_channel, kind, clip, layout, widths, accuracy_level, split_layers, tables
    )
    return OrtScorer(
        onnx_model.SerializeToString(),
        int(model.max_len),  # type: ignore[arg-type]
        int(model.n_items),  # type: ignore[arg-type]
        threads,
        profile,
        optimization,
    )


__all__ = [
    "DEFAULT_WIDTHS",
    "GRAPH_OPTIMIZATIONS",
    "ORT_KINDS",
    "TABLE_LAYOUTS",
    "OrtScorer",
    "OrtTable",
    "build_onnx",
    "initializer_bytes",
    "linear_model",
    "node_count",
    "session_options",
    "to_ort",
]
