"""Quantizer, packing, channel layout, fake-quant backbones and the int8 runtime."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from chord.codes import CodeError, encode_levels
from chord.config import CaserConfig, SASRecConfig
from chord.levels import DEFAULT_TIERS, assign_levels
from chord.metrics import target_ranks
from chord.models import build_backbone
from chord.quant import (
    LayoutError,
    QuantError,
    adapt_backbone,
    channel_layout,
    fp32_model_bytes,
    level_weights,
    other_param_bytes,
    pack_weight,
    packed_model_bytes,
    quantize_backbone,
    quantize_int,
    quantize_per_channel,
    to_lowbit,
)
from chord.quant.adapt import RUNTIMES, build_runtime
from chord.quant.packed_table import PackedTable
from chord.quant.packing import (
    PackingError,
    pack_rows,
    pack_signed,
    pack_uint,
    packed_nbytes,
    unpack_rows,
    unpack_signed,
    unpack_uint,
)


def weight_of(model: nn.Module, name: str) -> torch.Tensor:
    """The weight tensor of submodule `name`."""
    w = model.get_submodule(name).weight
    assert isinstance(w, torch.Tensor)
    return w


class Tiny(nn.Module):
    """A small model with one of each quantizable layer kind, plus a norm."""

    def __init__(self) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.emb = nn.Embedding(10, 6)
        self.conv = nn.Conv2d(1, 3, (2, 6))
        self.norm = nn.LayerNorm(3)
        self.fc = nn.Linear(3, 4)
        for p in self.parameters():
            with torch.no_grad():
                p.copy_(torch.randn(p.shape, generator=g))

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        x = self.conv(self.emb(ids).unsqueeze(1)).amax((2, 3))
        return self.fc(self.norm(x))


# ----- packing -----


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 8), st.integers(0, 200), st.integers(0, 2**31 - 1))
def test_pack_uint_round_trip(bits: int, count: int, seed: int) -> None:
    values = np.random.default_rng(seed).integers(0, 1 << bits, count)
    packed = pack_uint(values, bits)
    assert packed.size == packed_nbytes(count, bits)
    np.testing.assert_array_equal(unpack_uint(packed.tobytes(), bits, count), values)


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 8), st.integers(1, 40), st.integers(1, 70), st.integers(0, 2**31 - 1))
def test_pack_signed_and_rows_round_trip(bits: int, k: int, n: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    if bits == 1:
        q = rng.choice([-1, 1], size=(k, n))
    else:
        q = rng.integers(-(1 << (bits - 1)), 1 << (bits - 1), (k, n))
    np.testing.assert_array_equal(unpack_signed(pack_signed(q, bits), bits, k * n).reshape(k, n), q)
    u = rng.integers(0, 1 << bits, (k, n))
    rows = pack_rows(u, bits)
    assert rows.shape == (k, packed_nbytes(n, bits))
    np.testing.assert_array_equal(unpack_rows(rows, bits, n), u)


def test_packing_refuses_out_of_range() -> None:
    with pytest.raises(PackingError):
        pack_uint(np.array([4]), 2)
    with pytest.raises(PackingError):
        pack_signed(np.array([0]), 1)
    with pytest.raises(PackingError):
        pack_uint(np.array([1]), 9)
    with pytest.raises(PackingError):
        unpack_uint(b"\x00", 4, 3)


# ----- quantizer -----


@pytest.mark.parametrize("bits", range(2, 9))
def test_error_bound_and_grid(bits: int) -> None:
    w = torch.randn(32, 5, 3, generator=torch.Generator().manual_seed(bits))
    q, scale = quantize_int(w, bits)
    fq = quantize_per_channel(w, bits)
    qmax = 2 ** (bits - 1) - 1
    assert int(q.abs().max()) <= qmax
    np.testing.assert_allclose(scale.numpy(), w.abs().amax((1, 2)).numpy() / qmax, rtol=1e-6)
    err = (w - fq).abs().reshape(32, -1)
    assert bool((err <= scale[:, None] / 2 * (1 + 1e-5) + 1e-7).all())
    for row in fq.reshape(32, -1):
        assert row.unique().numel() <= 2 * qmax + 1
    # More bits, less error.
    if bits < 8:
        assert (w - quantize_per_channel(w, bits + 1)).abs().mean() < err.mean()


def test_one_bit_is_sign_times_mean_magnitude() -> None:
    w = torch.randn(8, 16, generator=torch.Generator().manual_seed(0))
    fq = quantize_per_channel(w, 1)
    mean = w.abs().mean(1, keepdim=True)
    torch.testing.assert_close(fq, torch.where(w >= 0, mean, -mean))


def test_mixed_bits_per_channel_match_uniform() -> None:
    w = torch.randn(12, 7, generator=torch.Generator().manual_seed(1))
    bits = np.array([1, 2, 3, 4, 5, 6, 7, 8, 32, 3, 2, 1])
    fq = quantize_per_channel(w, bits)
    for i, b in enumerate(bits):
        expect = w[i] if b == 32 else quantize_per_channel(w, int(b))[i]
        torch.testing.assert_close(fq[i], expect)


def test_zero_channels_stay_zero_and_bad_bits_refused() -> None:
    w = torch.zeros(3, 4)
    for b in (1, 2, 8):
        assert bool((quantize_per_channel(w, b) == 0).all())
    with pytest.raises(QuantError):
        quantize_per_channel(w, 9)
    with pytest.raises(QuantError):
        quantize_per_channel(w, np.array([2, 3]))
    with pytest.raises(QuantError, match="clip"):
        quantize_per_channel(w, 2, clip="minmax")


def test_mse_clip_never_worse_than_maxabs() -> None:
    w = torch.randn(64, 64, generator=torch.Generator().manual_seed(2))
    w[:, 0] *= 8  # outliers make clipping worth it
    for b in (2, 3, 4):
        e_max = ((w - quantize_per_channel(w, b)) ** 2).sum(1)
        e_mse = ((w - quantize_per_channel(w, b, clip="mse")) ** 2).sum(1)
        assert bool((e_mse <= e_max + 1e-6).all())
        assert float(e_mse.sum()) < float(e_max.sum())


def test_level_weights_stack_each_width() -> None:
    w = torch.randn(5, 9, requires_grad=True)
    lw = level_weights(w, (4, 6, 8, 8))
    assert lw.shape == (4, 5, 9) and not lw.requires_grad
    for k, b in enumerate((4, 6, 8, 8)):
        torch.testing.assert_close(lw[k], quantize_per_channel(w, b))


# ----- layout, packed storage, fake-quant backbone -----


def test_channel_layout_of_tiny_model() -> None:
    model = Tiny()
    layout = channel_layout(model)
    assert [
        (ly.name, ly.kind, ly.n_channels, ly.channel_size, ly.offset) for ly in layout.layers
    ] == [
        ("emb", "embedding", 10, 6, 0),
        ("conv", "conv2d", 3, 12, 10),
        ("fc", "linear", 4, 3, 13),
    ]
    assert layout.n_channels == 17
    np.testing.assert_array_equal(layout.channel_sizes()[9:12], [6, 12, 12])
    parts = layout.split(np.arange(17))
    np.testing.assert_array_equal(parts["fc"], [13, 14, 15, 16])
    with pytest.raises(LayoutError):
        layout.split(np.arange(16))


def test_quantize_backbone_one_pass_leaves_original() -> None:
    model = Tiny()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    layout = channel_layout(model)
    bits = np.random.default_rng(0).choice([1, 2, 3, 8], layout.n_channels)
    q = quantize_backbone(model, bits)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k])
    assert not any(p.requires_grad for p in q.parameters()) and not q.training
    for name, part in layout.split(bits).items():
        w = weight_of(model, name)
        torch.testing.assert_close(weight_of(q, name), quantize_per_channel(w, part))
    torch.testing.assert_close(q.norm.weight, model.norm.weight)
    torch.testing.assert_close(q.fc.bias, model.fc.bias)
    with pytest.raises(LayoutError, match="channels"):
        quantize_backbone(model, bits[:-1])


def test_packed_weight_round_trip_and_bytes() -> None:
    model = Tiny()
    layout = channel_layout(model)
    bits = np.random.default_rng(3).choice([1, 2, 3, 5, 8], layout.n_channels)
    total = 0
    for name, part in layout.split(bits).items():
        w = weight_of(model, name)
        packed = pack_weight(w, part)
        q, scale = packed.unpack_int()
        q_ref, scale_ref = quantize_int(w, part)
        assert torch.equal(q, q_ref) and torch.equal(scale, scale_ref)
        torch.testing.assert_close(packed.dequantize(), quantize_per_channel(w, part))
        total += packed.nbytes
    assert total == packed_model_bytes(layout, bits)
    full = np.full(layout.n_channels, 32)
    assert packed_model_bytes(layout, full) + other_param_bytes(model, layout) == fp32_model_bytes(
        model
    )


def test_packed_bytes_of_three_bit_sasrec() -> None:
    model = build_backbone(SASRecConfig(n_items=1682), seed=0)
    layout = channel_layout(model)
    bits = np.full(layout.n_channels, 3)
    ratio = (
        packed_model_bytes(layout, bits) + other_param_bytes(model, layout)
    ) / fp32_model_bytes(model)
    # 3/32 of the weights plus a float32 scale per 64-weight row, plus fp32 biases/norms.
    assert 0.09 < ratio < 0.15


# ----- the PyTorch int8 runtime vs fake quant on real backbones -----


@pytest.mark.parametrize(
    "cfg",
    [SASRecConfig(n_items=300, max_len=20), CaserConfig(n_items=300)],
    ids=["sasrec", "caser"],
)
def test_lowbit_agrees_with_fake_quant(cfg: SASRecConfig | CaserConfig) -> None:
    model = build_backbone(cfg, seed=0).eval()
    layout = channel_layout(model)
    bits = np.random.default_rng(0).choice([2, 3, 4, 8], layout.n_channels)
    ref = quantize_backbone(model, bits)
    int8 = to_lowbit(model, bits)
    fp32 = to_lowbit(model, bits, kernel="fp32")
    g = torch.Generator().manual_seed(1)
    seqs = torch.randint(1, cfg.n_items + 1, (6, cfg.max_len), generator=g)
    seqs[0, : cfg.max_len // 2] = 0  # a short, left-padded history
    cands = torch.randint(1, cfg.n_items + 1, (6, 101), generator=g)
    with torch.no_grad():
        expect_all, expect_c = ref.score_all(seqs), ref.score_candidates(seqs, cands)
        # The same maths on float weights: equal up to float rounding.
        torch.testing.assert_close(fp32.score_all(seqs), expect_all, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(
            fp32.score_candidates(seqs, cands), expect_c, rtol=1e-4, atol=1e-5
        )
        # Int8 weights widened per call, fp32 activations: the reference's maths exactly.
        torch.testing.assert_close(int8.score_all(seqs), expect_all, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(
            int8.score_candidates(seqs, cands), expect_c, rtol=1e-4, atol=1e-5
        )
        assert float(int8.score_all(seqs)[0, 0]) == float(expect_all[0, 0])  # padding column
    assert int8.runtime_bytes < fp32.runtime_bytes


def test_lowbit_refuses_full_precision_channels_and_unknown_kernel() -> None:
    model = build_backbone(CaserConfig(n_items=50), seed=0)
    n = channel_layout(model).n_channels
    with pytest.raises(QuantError, match="32"):
        to_lowbit(model, np.full(n, 32))
    with pytest.raises(QuantError, match="kernel"):
        to_lowbit(model, np.full(n, 4), kernel="int4")
    with pytest.raises(LayoutError):
        to_lowbit(Tiny(), np.full(17, 4))


# ----- bit-packed item tables -----


@settings(max_examples=25, deadline=None)
@given(st.integers(1, 70), st.integers(1, 40), st.integers(0, 2**31 - 1))
def test_packed_table_gathers_exact_rows(d: int, n: int, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(n, d, generator=g)
    w[0] = 0.0  # an all-zero (padding) row
    bits = np.random.default_rng(seed).integers(1, 9, n)
    q, scale = quantize_int(w, bits)
    table = PackedTable(q, scale, bits)
    ids = torch.randint(0, n, (3, 7), generator=g)
    expect = quantize_per_channel(w, bits)
    torch.testing.assert_close(table(ids), expect[ids], rtol=0, atol=1e-6)
    torch.testing.assert_close(table.full(), expect, rtol=0, atol=1e-6)
    payload = int(table.planes.numel())
    assert payload == int(bits.sum()) * ((d + 7) // 8)


@pytest.mark.parametrize("kind", ["sasrec", "caser"])
def test_packed_runtime_matches_int8(kind: str) -> None:
    cfg = SASRecConfig(n_items=200, max_len=12) if kind == "sasrec" else CaserConfig(n_items=200)
    model = build_backbone(cfg, seed=3).eval()
    layout = channel_layout(model)
    bits = np.random.default_rng(0).choice([2, 3, 4, 8], layout.n_channels)
    int8 = to_lowbit(model, bits)
    packed = to_lowbit(model, bits, table="packed")
    g = torch.Generator().manual_seed(0)
    seqs = torch.randint(1, 201, (1, cfg.max_len), generator=g)
    cands = torch.randint(1, 201, (1, 101), generator=g)
    with torch.no_grad():
        # Same int8 layers, only the table storage differs: equal up to float rounding.
        name = "item_emb" if kind == "sasrec" else "out_emb"
        part = layout.split(bits)[name]
        table = quantize_per_channel(weight_of(model, name), part)
        expect = int8.encode(seqs) @ table.t()
        if kind == "caser":
            expect = expect + model.get_parameter("out_bias")
        torch.testing.assert_close(packed.score_all(seqs)[:, 1:], expect[:, 1:])
        torch.testing.assert_close(
            packed.score_candidates(seqs, cands), int8.score_candidates(seqs, cands)
        )
    # The table's codes at their own bits (2..8 here) take fewer bytes than int8 rows.
    assert isinstance(packed.table, PackedTable) and not isinstance(int8.table, PackedTable)
    assert packed.table.planes.numel() < 0.75 * int8.table.q.numel()


@pytest.mark.parametrize("runtime", RUNTIMES)
@pytest.mark.parametrize("kind", ["sasrec", "caser"])
def test_runtime_scores_a_batch_as_each_row_alone(kind: str, runtime: str) -> None:
    """A device scores a round's targets in one batch: each row must rank as it would alone."""
    cfg = SASRecConfig(n_items=200, max_len=12) if kind == "sasrec" else CaserConfig(n_items=200)
    model = build_backbone(cfg, seed=4).eval()
    bits = np.random.default_rng(1).choice([2, 3, 4, 8], channel_layout(model).n_channels)
    scorer = build_runtime(model, bits, runtime)
    g = torch.Generator().manual_seed(1)
    seqs = torch.randint(1, 201, (5, cfg.max_len), generator=g)
    seqs[1, : cfg.max_len - 3] = 0  # a short, left-padded history
    cands = torch.randint(1, 201, (5, 101), generator=g)
    with torch.no_grad():
        batch = scorer.score_candidates(seqs, cands)
        alone = torch.cat(
            [scorer.score_candidates(seqs[i : i + 1], cands[i : i + 1]) for i in range(5)]
        )
    torch.testing.assert_close(batch, alone, rtol=1e-5, atol=1e-5)
    assert (target_ranks(batch) == target_ranks(alone)).all()


def test_adapt_backbone_from_code() -> None:
    model = build_backbone(CaserConfig(n_items=120), seed=0).eval()
    layout = channel_layout(model)
    tier = DEFAULT_TIERS["mid"]
    levels = assign_levels(
        np.random.default_rng(0).standard_normal(layout.n_channels),
        layout.channel_sizes(),
        tier,
        3.0,
    )
    code = encode_levels(levels, "v1")
    bits = np.asarray(tier.level_bits)[levels]
    seqs = torch.randint(1, 121, (2, 5), generator=torch.Generator().manual_seed(0))
    fake = adapt_backbone(model, code, tier, "v1", mode="fake")
    with torch.no_grad():
        torch.testing.assert_close(
            fake.score_all(seqs), quantize_backbone(model, bits).score_all(seqs)
        )
        spread = float(fake.score_all(seqs)[:, 1:].std())
        for mode in ("int8", "packed"):  # fp32 activations: the reference up to rounding
            runtime = adapt_backbone(model, code, tier, "v1", mode=mode)
            torch.testing.assert_close(runtime.score_all(seqs), fake.score_all(seqs))
        # The device default (ONNX Runtime, int8 activations per block): close to it.
        ort = adapt_backbone(model, code, tier, "v1")
        diff = (ort.score_all(seqs) - fake.score_all(seqs))[:, 1:].abs().max()
        assert float(diff) < 0.15 * spread
    with pytest.raises(CodeError, match="version"):
        adapt_backbone(model, code, tier, "v2")
    with pytest.raises(QuantError, match="mode"):
        adapt_backbone(model, code, tier, "v1", mode="int4")
