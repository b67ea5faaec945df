"""A pure-PyTorch low-bit runtime: per-channel int8 weights for any 1..8-bit grid, eager.

Every b-bit symmetric per-channel grid (q in [-(2**(b-1) - 1), 2**(b-1) - 1] times a scale) is
exactly an int8 tensor with the same per-channel scale, so each mixed-precision Linear holds int8
codes and one float32 scale per output row and computes (x q^T) * scale with the codes widened
per call (weight-only int8, public PyTorch ops only: PyTorch 2.13 deprecates its quantized
tensors and ops, and the supported int8 matmuls it has left are far slower than fp32 at these
shapes on x86). The catalogue scoring h @ E^T is such a Linear over the item table, and
embedding lookups gather int8 rows and dequantize them. The device's default runtime is ONNX
Runtime on packed 4/8-bit weights (onnx_runtime.py); this one is the in-PyTorch reference and
the source of the quantized weights both runtimes hold. The runtimes below are lean
inference-only rewrites of SASRec and Caser:
SASRec's last block computes only the last position (the only one `encode` returns) and k/v
share one fused projection; Caser's vertical and horizontal convolutions become one Linear over
the flattened window (each filter repeated at every offset: a filter's rows share its scale).
The same runtimes run in fp32 (`kernel="fp32"`) so kernel and rewrite gains can be told apart,
and item tables can stay bit-packed in memory (`table="packed"`, see packed_table.py).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from chord.models.base import PAD_SCORE, fit_length
from chord.models.caser import Caser
from chord.models.sasrec import SASRec, SASRecBlock
from chord.quant.apply import _check_bits_array
from chord.quant.layout import ChannelLayer, ChannelLayout, LayoutError, channel_layout
from chord.quant.packed_table import PackedTable
from chord.quant.quantizer import FULL_PRECISION_BITS, QuantError, quantize_int

KERNELS: tuple[str, ...] = ("int8", "fp32")
TABLES: tuple[str, ...] = ("int8", "packed")  # how item tables are held (int8 follows kernel)


class QWeight:
    """A weight as (int8 q, float32 scale > 0) per output row, or plain fp32 (q is None)."""

    def __init__(
        self,
        q: torch.Tensor | None,
        scale: torch.Tensor | None,
        w: torch.Tensor,
        bits: np.ndarray | None = None,
    ) -> None:
        """Hold the int8 codes and scales, the float weight they stand for, and row bits."""
        self.q, self.scale, self.w, self.bits = q, scale, w, bits

    def rows(self, index: torch.Tensor | list[int]) -> QWeight:
        """Rows of the weight (all three views), flattened to 2-D."""
        idx = torch.as_tensor(index, dtype=torch.long)
        q = None if self.q is None else self.q.reshape(self.q.shape[0], -1)[idx]
        s = None if self.scale is None else self.scale[idx]
        return QWeight(q, s, self.w.reshape(self.w.shape[0], -1)[idx])

    def matrix(self) -> QWeight:
        """The weight flattened to [out, in] (views of the same storage, no copy)."""
        n = self.w.shape[0]
        q = None if self.q is None else self.q.reshape(n, -1)
        return QWeight(q, self.scale, self.w.reshape(n, -1))


def _cat(parts: list[QWeight]) -> QWeight:
    """Stack the rows of several weights with the same input width."""
    q = None if parts[0].q is None else torch.cat([p.q for p in parts])  # type: ignore[misc]
    s = None if parts[0].scale is None else torch.cat([p.scale for p in parts])  # type: ignore[misc]
    return QWeight(q, s, torch.cat([p.w for p in parts]))


class QLinear(nn.Module):
    """y = x W^T + b with W held as int8 codes and row scales (weight-only int8), or fp32."""

    def __init__(self, weight: QWeight, bias: torch.Tensor | None, kernel: str) -> None:
        """Keep the int8 codes [out, in] and scales [out] (kernel "int8") or the fp32 weight."""
        super().__init__()
        self.kernel = kernel
        self.bias = bias
        if kernel == "int8":
            if weight.q is None or weight.scale is None:
                raise QuantError("an int8 linear needs quantized weights")
            # A view of the codes, so a table shared with a QEmbedding is held once.
            self.q = weight.q.reshape(weight.q.shape[0], -1).contiguous()
            self.scale = weight.scale.float().contiguous()
        else:
            self.w = weight.w.contiguous()

    def held(self) -> list[torch.Tensor]:
        """Tensors this layer keeps (shared ones are counted once by the runtime)."""
        held = [] if self.bias is None else [self.bias]
        return [self.q, self.scale, *held] if self.kernel == "int8" else [self.w, *held]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the linear to [..., in] -> [..., out]."""
        if self.kernel == "int8":
            # x (q s)^T = (x q^T) s: the scale applies per output column after the product.
            y = F.linear(x, self.q.to(x.dtype)) * self.scale
            return y if self.bias is None else y + self.bias
        return F.linear(x, self.w, self.bias)


class QEmbedding(nn.Module):
    """An embedding table held as int8 rows plus float32 row scales (or fp32 rows)."""

    def __init__(self, weight: QWeight, kernel: str) -> None:
        """Keep the rows in the kernel's storage type."""
        super().__init__()
        self.kernel = kernel
        if kernel == "int8":
            if weight.q is None or weight.scale is None:
                raise QuantError("an int8 embedding needs quantized weights")
            self.q, self.scale = weight.q.contiguous(), weight.scale.float().contiguous()
        else:
            self.w = weight.w.contiguous()

    def held(self) -> list[torch.Tensor]:
        """Tensors this table keeps."""
        return [self.q, self.scale] if self.kernel == "int8" else [self.w]

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """Gather (and dequantize) rows: ids [...] -> [..., d]."""
        if self.kernel == "int8":
            return self.q[ids].float() * self.scale[ids].unsqueeze(-1)
        return self.w[ids]


class QLayerNorm(nn.Module):
    """A LayerNorm kept in fp32 (norms are never quantized)."""

    def __init__(self, norm: nn.LayerNorm) -> None:
        """Copy the affine parameters and epsilon."""
        super().__init__()
        self.shape = tuple(norm.normalized_shape)
        self.weight = norm.weight.detach().float().clone()
        self.bias = norm.bias.detach().float().clone()
        self.eps = norm.eps

    def held(self) -> list[torch.Tensor]:
        """Scale and shift."""
        return [self.weight, self.bias]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalize the last dimension."""
        return F.layer_norm(x, self.shape, self.weight, self.bias, self.eps)


def _table(weight: QWeight, kernel: str, table: str) -> QEmbedding | PackedTable:
    """An item table: int8 rows, fp32 rows, or bit-packed rows (`table="packed"`)."""
    if table == "packed":
        if weight.q is None or weight.scale is None or weight.bits is None:
            raise QuantError("a packed table needs a bit assignment")
        return PackedTable(weight.q, weight.scale, weight.bits)
    return QEmbedding(weight, kernel)


class LowBitBackbone(nn.Module):
    """Inference-only runtime with the Backbone scoring methods (encode/score_*)."""

    kind: str
    n_items: int
    max_len: int
    state_dim: int
    table: QEmbedding | PackedTable
    scorer: QLinear | None  # None: score_all multiplies by the unpacked table

    def encode(self, seqs: torch.Tensor) -> torch.Tensor:
        """User state after the last position: [B, L] -> [B, d]."""
        raise NotImplementedError

    def extra_tensors(self) -> list[torch.Tensor]:
        """Tensors held outside the Q-modules (position table, item bias)."""
        return []

    def score_candidates(self, seqs: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
        """Scores of the given items: seqs [B, L], candidates [B, C] -> [B, C]."""
        state = self.encode(seqs)
        return torch.bmm(self.table(candidates), state.unsqueeze(-1)).squeeze(-1)

    def score_table(self) -> QEmbedding | PackedTable:
        """The table whose rows score items."""
        return self.table

    def score_bias(self) -> torch.Tensor | None:
        """The per-item score bias, if any."""
        return None

    def score_all(self, seqs: torch.Tensor) -> torch.Tensor:
        """Scores of the whole catalogue: [B, n_items + 1] (column 0 is PAD_SCORE)."""
        state = self.encode(seqs)
        if self.scorer is not None:
            scores = self.scorer(state)
        else:
            table = self.score_table()
            assert isinstance(table, PackedTable)
            scores = state @ table.full().t()
            bias = self.score_bias()
            if bias is not None:
                scores = scores + bias
        scores[:, 0] = PAD_SCORE
        return scores

    def forward(self, seqs: torch.Tensor) -> torch.Tensor:
        """Same as `score_all`."""
        return self.score_all(seqs)

    @property
    def runtime_bytes(self) -> int:
        """Bytes held to run: every distinct tensor once (a table shared by the gather and the
        catalogue scorer counts once)."""
        seen: dict[int, int] = {}
        for module in self.modules():
            if isinstance(module, QLinear | QEmbedding | QLayerNorm | PackedTable):
                for t in module.held():
                    seen[t.data_ptr()] = t.numel() * t.element_size()
        for t in self.extra_tensors():
            seen[t.data_ptr()] = t.numel() * t.element_size()
        return sum(seen.values())


class QSASRecBlock(nn.Module):
    """One SASRec block on QLinear: q from the normalized input, fused k/v from the input."""

    def __init__(
        self, block: SASRecBlock, weights: dict[str, QWeight], prefix: str, kernel: str
    ) -> None:
        """Copy norms and biases, quantized projections, and fuse k and v into one linear."""
        super().__init__()
        attn = block.attn
        self.n_heads = attn.n_heads
        self.attn_norm = QLayerNorm(block.attn_norm)
        self.q = QLinear(weights[f"{prefix}.attn.q"], _bias(attn.q), kernel)
        wk, wv = weights[f"{prefix}.attn.k"], weights[f"{prefix}.attn.v"]
        self.kv = QLinear(_cat([wk, wv]), torch.cat([_bias(attn.k), _bias(attn.v)]), kernel)
        self.out = QLinear(weights[f"{prefix}.attn.out"], _bias(attn.out), kernel)
        self.ffn_norm = QLayerNorm(block.ffn_norm)
        self.fc1 = QLinear(weights[f"{prefix}.ffn.fc1"], _bias(block.ffn.fc1), kernel)
        self.fc2 = QLinear(weights[f"{prefix}.ffn.fc2"], _bias(block.ffn.fc2), kernel)

    def _attend(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, allowed: torch.Tensor
    ) -> torch.Tensor:
        """Scaled dot-product attention; q [B, Lq, d], k/v [B, L, d], allowed [B, Lq, L]."""
        b, lq, d = q.shape
        h = self.n_heads
        hd = d // h
        qh = q.view(b, lq, h, hd).transpose(1, 2)
        kh = k.view(b, -1, h, hd).transpose(1, 2)
        vh = v.view(b, -1, h, hd).transpose(1, 2)
        logits = (qh @ kh.transpose(-1, -2)) / math.sqrt(hd)
        logits = logits.masked_fill(~allowed[:, None], float("-inf"))
        return (torch.softmax(logits, dim=-1) @ vh).transpose(1, 2).reshape(b, lq, d)

    def forward(
        self, x: torch.Tensor, allowed: torch.Tensor, keep: torch.Tensor, last_only: bool
    ) -> torch.Tensor:
        """x [B, L, d] -> [B, L, d], or [B, 1, d] for the last position when `last_only`."""
        if last_only:
            allowed, keep = allowed[:, -1:], keep[:, -1:]
        q = self.attn_norm(x[:, -1:] if last_only else x)
        k, v = self.kv(x).chunk(2, dim=-1)
        h = q + self.out(self._attend(self.q(q), k, v, allowed))
        h = self.ffn_norm(h)
        return (h + self.fc2(F.relu(self.fc1(h)))) * keep


class LowBitSASRec(LowBitBackbone):
    """SASRec inference on QLinear/QEmbedding; the same maths as SASRec.encode in eval mode."""

    def __init__(
        self, model: SASRec, weights: dict[str, QWeight], kernel: str, table: str = "int8"
    ) -> None:
        """Build the blocks, fp32 norms and the item table from a SASRec and its weights."""
        super().__init__()
        self.kind, self.n_items = "sasrec", model.n_items
        self.max_len, self.state_dim = model.max_len, model.state_dim
        self.emb_scale = float(model.emb_scale)
        self.table = _table(weights["item_emb"], kernel, table)
        self.scorer = None if table == "packed" else QLinear(weights["item_emb"], None, kernel)
        # Positions are the same at every call: dequantized once (counted as fp32 bytes).
        self.pos = weights["pos_emb"].w.float().clone()
        self.blocks = nn.ModuleList(
            QSASRecBlock(block, weights, f"blocks.{i}", kernel)
            for i, block in enumerate(model.blocks)
            if isinstance(block, SASRecBlock)
        )
        self.final_norm = QLayerNorm(model.final_norm)
        self.causal = torch.tril(torch.ones(self.max_len, self.max_len, dtype=torch.bool))
        self.diag = torch.eye(self.max_len, dtype=torch.bool)

    def extra_tensors(self) -> list[torch.Tensor]:
        """The dequantized position table."""
        return [self.pos]

    def encode(self, seqs: torch.Tensor) -> torch.Tensor:
        """User state after the last position: [B, L] -> [B, hidden]."""
        seqs = fit_length(seqs, self.max_len)
        return self._encode_rows(seqs, self.table(seqs))

    def score_candidates(self, seqs: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
        """Scores of the given items: [B, C]; history and candidate rows in one gather."""
        seqs = fit_length(seqs, self.max_len)
        rows = self.table(torch.cat([seqs, candidates], 1))
        state = self._encode_rows(seqs, rows[:, : self.max_len])
        return torch.bmm(rows[:, self.max_len :], state.unsqueeze(-1)).squeeze(-1)

    def _encode_rows(self, seqs: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        """User state from fitted sequences [B, max_len] and their embedding rows."""
        real = seqs != 0
        keep = real.unsqueeze(-1).float()
        x = (emb * self.emb_scale + self.pos) * keep
        # As in SASRec: the diagonal stays visible so padded rows never become all -inf.
        allowed = (self.causal & real[:, None, :]) | self.diag
        last = len(self.blocks) - 1
        for i, block in enumerate(self.blocks):
            # The last block computes only the last position, the one `encode` returns.
            x = block(x, allowed, keep, i == last)
        return self.final_norm(x[:, -1]) * keep[:, -1]


class LowBitCaser(LowBitBackbone):
    """Caser inference: all convolutions as one QLinear over the flattened [L * d] window."""

    def __init__(
        self, model: Caser, weights: dict[str, QWeight], kernel: str, table: str = "int8"
    ) -> None:
        """Expand every filter at every offset into rows of one window matrix."""
        super().__init__()
        self.kind, self.n_items = "caser", model.n_items
        self.max_len, self.state_dim = model.max_len, model.state_dim
        length, d = self.max_len, self.state_dim
        self.table = _table(weights["item_emb"], kernel, table)
        self.out_table = _table(weights["out_emb"], kernel, table)
        self.out_bias = model.out_bias.detach().float().clone()
        self.scorer = (
            None if table == "packed" else QLinear(weights["out_emb"], self.out_bias, kernel)
        )
        # Vertical conv: output (v, j) = sum_l Wv[v, l] * e[l, j]: a row with Wv[v] at l*d + j.
        wv = weights["conv_v"].matrix()  # [n_v, L]
        n_v = int(wv.w.shape[0])
        eye = torch.eye(d)
        parts = [
            _expand(
                wv,
                lambda m: torch.einsum("vl,jk->vjlk", m, eye).reshape(-1, length * d),
                torch.arange(n_v).repeat_interleave(d),
            )
        ]
        biases = [_bias(model.conv_v).repeat_interleave(d)]
        self.n_v_out = n_v * d
        self.heights: list[tuple[int, int]] = []  # (n_h, windows) per filter height
        for height, conv in enumerate(model.conv_h, start=1):
            if not isinstance(conv, nn.Conv2d):
                raise LayoutError("Caser.conv_h must hold Conv2d layers")
            wh = weights[f"conv_h.{height - 1}"].matrix()  # [n_h, height * d]
            n_h, windows = int(wh.w.shape[0]), length - height + 1
            # Row (t, f): filter f over window rows t .. t + height - 1.
            parts.append(
                _expand(
                    wh,
                    functools.partial(
                        _shift_rows, height=height, windows=windows, length=length, d=d
                    ),
                    torch.arange(n_h).repeat(windows),
                )
            )
            biases.append(_bias(conv).repeat(windows))
            self.heights.append((n_h, windows))
        self.window = QLinear(_cat(parts), torch.cat(biases), kernel)
        self.fc = QLinear(weights["fc"], _bias(model.fc), kernel)

    def score_candidates(self, seqs: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
        """Output-embedding dot products plus the fp32 item bias: [B, C]."""
        state = self.encode(seqs)
        scores = torch.bmm(self.out_table(candidates), state.unsqueeze(-1)).squeeze(-1)
        return scores + self.out_bias[candidates]

    def extra_tensors(self) -> list[torch.Tensor]:
        """The fp32 item bias."""
        return [self.out_bias]

    def score_table(self) -> QEmbedding | PackedTable:
        """The output embedding scores items."""
        return self.out_table

    def score_bias(self) -> torch.Tensor | None:
        """The fp32 item bias."""
        return self.out_bias

    def encode(self, seqs: torch.Tensor) -> torch.Tensor:
        """User state from the last L items: [B, L'] -> [B, embed]."""
        seqs = fit_length(seqs, self.max_len)
        out = self.window(self.table(seqs).reshape(seqs.shape[0], -1))
        feats = [out[:, : self.n_v_out]]
        start = self.n_v_out
        for n_h, windows in self.heights:
            block = out[:, start : start + n_h * windows].reshape(-1, windows, n_h)
            feats.append(F.relu(block).amax(1))
            start += n_h * windows
        return F.relu(self.fc(torch.cat(feats, 1)))


def _bias(module: nn.Module) -> torch.Tensor:
    """A fresh fp32 copy of a layer's bias."""
    bias = getattr(module, "bias", None)
    if not isinstance(bias, torch.Tensor):
        raise LayoutError(f"{type(module).__name__} has no bias")
    return bias.detach().float().clone()


def _shift_rows(m: torch.Tensor, height: int, windows: int, length: int, d: int) -> torch.Tensor:
    """Filters [n_h, height * d] -> [windows * n_h, length * d]: filter f at offset t."""
    n_h = m.shape[0]
    out = torch.zeros(windows, n_h, length * d, dtype=m.dtype)
    for t in range(windows):
        out[t, :, t * d : (t + height) * d] = m
    return out.reshape(windows * n_h, length * d)


def _expand(
    w: QWeight, place: Callable[[torch.Tensor], torch.Tensor], source: torch.Tensor
) -> QWeight:
    """Lay filters out as rows of a bigger matrix; row r keeps the scale of filter source[r]."""
    q = None if w.q is None else place(w.q.float()).round().to(torch.int8)
    scale = None if w.scale is None else w.scale[source]
    return QWeight(q, scale, place(w.w.float()))


def _quantized_weights(
    model: nn.Module, layout: ChannelLayout, bits: np.ndarray | None, clip: str, kernel: str
) -> dict[str, QWeight]:
    """Per layer: int8 codes and scales (zero channels get q = 0, scale 1) and the float view.

    Channels are quantized row by row, so the layers whose rows have one length are stacked
    and quantized in one `quantize_int` call (a handful of tensor ops instead of a handful per
    layer: the per-op overhead, not the arithmetic, dominates at these sizes); each layer
    gets views of its rows back.
    """
    modules = dict(model.named_modules())
    weights = {
        layer.name: modules[layer.name].weight.detach().float()  # type: ignore[union-attr, operator]
        for layer in layout.layers
    }
    if bits is None:
        if kernel == "int8":
            raise QuantError("the int8 kernel needs a bit assignment (1..8 bits a channel)")
        return {name: QWeight(None, None, w.clone()) for name, w in weights.items()}
    if (bits == FULL_PRECISION_BITS).any():
        raise QuantError("low-bit runtimes need 1..8 bits for every channel, not 32")
    split = layout.split(bits)
    by_size: dict[int, list[ChannelLayer]] = {}
    for layer in layout.layers:
        by_size.setdefault(layer.channel_size, []).append(layer)
    out: dict[str, QWeight] = {}
    for layers in by_size.values():
        flat = torch.cat([weights[layer.name].reshape(layer.n_channels, -1) for layer in layers])
        q, scale = quantize_int(flat, np.concatenate([split[layer.name] for layer in layers]), clip)
        zero = scale <= 0
        if bool(zero.any()):
            q[zero] = 0  # q is a fresh tensor of this call
            scale = torch.where(zero, torch.ones_like(scale), scale)
        fq = q.float() * scale[:, None]
        start = 0
        for layer in layers:
            rows, shape = slice(start, start + layer.n_channels), weights[layer.name].shape
            start += layer.n_channels
            out[layer.name] = QWeight(
                q[rows].reshape(shape), scale[rows], fq[rows].reshape(shape), split[layer.name]
            )
    return {layer.name: out[layer.name] for layer in layout.layers}


@torch.no_grad()
def to_lowbit(
    model: nn.Module,
    bits_per_channel: np.ndarray | None,
    clip: str = "maxabs",
    kernel: str = "int8",
    layout: ChannelLayout | None = None,
    table: str = "int8",
) -> LowBitBackbone:
    """An eager PyTorch runtime of a SASRec/Caser backbone holding int8 weights for given bits.

    Weights equal `quantize_backbone(model, bits)` exactly (same grids and scales) and
    activations stay fp32, so outputs equal it up to float rounding. `kernel="fp32"`
    runs the same rewrite on float weights (`bits_per_channel=None`: unquantized).
    `table="packed"` keeps item tables bit-packed (memory close to the bits sent) and
    unpacks gathered rows per call; full-catalogue scoring then unpacks the whole table.
    The model is left untouched.
    """
    if kernel not in KERNELS:
        raise QuantError(f"unknown kernel {kernel!r}; use one of {KERNELS}")
    if table not in TABLES:
        raise QuantError(f"unknown table storage {table!r}; use one of {TABLES}")
    if table == "packed" and bits_per_channel is None:
        raise QuantError("a packed table needs a bit assignment (1..8 bits a channel)")
    if not isinstance(model, SASRec | Caser):
        raise LayoutError(f"to_lowbit knows SASRec and Caser backbones, got {type(model).__name__}")
    layout = layout or channel_layout(model)
    bits = None if bits_per_channel is None else _check_bits_array(layout, bits_per_channel)
    weights = _quantized_weights(model, layout, bits, clip, kernel)
    runtime: LowBitBackbone
    if isinstance(model, SASRec):
        runtime = LowBitSASRec(model, weights, kernel, table)
    elif isinstance(model, Caser):
        runtime = LowBitCaser(model, weights, kernel, table)
    else:
        raise LayoutError(f"to_lowbit knows SASRec and Caser backbones, got {type(model).__name__}")
    return runtime.eval()


__all__ = [
    "KERNELS",
    "TABLES",
    "LowBitBackbone",
    "LowBitCaser",
    "LowBitSASRec",
    "QEmbedding",
    "QLayerNorm",
    "QLinear",
    "QSASRecBlock",
    "to_lowbit",
]
