"""The ONNX Runtime scoring path agrees with the fake-quantized reference (chord.quant)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from onnx import helper

from chord.config import BackboneConfig, CaserConfig, SASRecConfig
from chord.models import Backbone, build_backbone
from chord.quant import DEVICE_RUNTIME, build_runtime, channel_layout, quantize_backbone
from chord.quant.adapt import DEVICE_GRAPH_OPTIMIZATION, DEVICE_TABLES, DEVICE_WIDTHS
from chord.quant.onnx_runtime import (
    GRAPH_OPTIMIZATIONS,
    OrtScorer,
    build_onnx,
    initializer_bytes,
    to_ort,
)
from chord.quant.quantizer import QuantError

N_ITEMS = 300
CONFIGS: dict[str, BackboneConfig] = {
    "sasrec": SASRecConfig(n_items=N_ITEMS, n_blocks=2, n_heads=2),
    "caser": CaserConfig(n_items=N_ITEMS),
}


def _setup(kind: str, seed: int = 0) -> tuple[Backbone, np.ndarray, torch.Tensor, torch.Tensor]:
    """A model, a mixed 1..8-bit assignment, sequences (with padding) and 101 candidates."""
    model = build_backbone(CONFIGS[kind], seed=seed).eval()
    layout = channel_layout(model)
    bits = np.random.default_rng(seed).choice([1, 2, 3, 4, 5, 8], layout.n_channels)
    g = torch.Generator().manual_seed(seed)
    seqs = torch.randint(1, N_ITEMS + 1, (2, model.max_len + 2), generator=g)
    seqs[1, :4] = 0  # left padding
    cands = torch.randint(1, N_ITEMS + 1, (2, 101), generator=g)
    return model, bits, seqs, cands


@pytest.mark.parametrize("split,tables", [(False, "split"), (True, "split"), (False, "nibbles")])
@pytest.mark.parametrize("kind", ["sasrec", "caser"])
def test_fp32_activations_match_fake_quant_exactly(kind: str, split: bool, tables: str) -> None:
    """accuracy_level 0 (fp32 activations): the n-bit graphs compute the reference's maths."""
    model, bits, seqs, cands = _setup(kind)
    ref = quantize_backbone(model, bits)
    ort_model = to_ort(model, bits, accuracy_level=0, split_layers=split, tables=tables)
    with torch.no_grad():
        ref_all, ref_cand = ref.score_all(seqs), ref.score_candidates(seqs, cands)
    spread = float(ref_all[:, 1:].std())
    got_all, got_cand = ort_model.score_all(seqs), ort_model.score_candidates(seqs, cands)
    assert got_all.shape == (2, N_ITEMS + 1)
    assert torch.all(got_all[:, 0] == ref_all[:, 0])
    assert float((got_all - ref_all).abs().max()) <= 1e-4 * spread + 1e-6
    assert float((got_cand - ref_cand).abs().max()) <= 1e-4 * spread + 1e-6


@pytest.mark.parametrize("kind", ["sasrec", "caser"])
def test_int8_activations_within_tolerance_and_ranking_kept(kind: str) -> None:
    """accuracy_level 4 (int8 activations per block) stays close; top-10 mostly the same."""
    model, bits, seqs, cands = _setup(kind, seed=1)
    ref = quantize_backbone(model, bits)
    ort_model = to_ort(model, bits, accuracy_level=4)
    with torch.no_grad():
        ref_all, ref_cand = ref.score_all(seqs), ref.score_candidates(seqs, cands)
    spread = float(ref_all[:, 1:].std())
    got_all, got_cand = ort_model.score_all(seqs), ort_model.score_candidates(seqs, cands)
    assert float((got_all[:, 1:] - ref_all[:, 1:]).abs().max()) <= 0.15 * spread
    assert float((got_cand - ref_cand).abs().max()) <= 0.15 * spread
    for row in range(2):
        top_ref = set(ref_all[row, 1:].topk(10).indices.tolist())
        top_got = set(got_all[row, 1:].topk(10).indices.tolist())
        assert len(top_ref & top_got) >= 7


@pytest.mark.parametrize("bits", range(1, 9))
@pytest.mark.parametrize("kind", ["sasrec", "caser"])
def test_device_runtime_matches_fake_quant_at_every_width(kind: str, bits: int) -> None:
    """The device default at b bits (all channels; layers stored in 4 or 8 bits, tables in one
    or two 4-bit units a row): exact with fp32
    activations, and with its int8 activations every score within 0.1 score std of the
    fake-quantized reference (measured: at most 0.05) and the top 10 nearly kept."""
    model, _, seqs, cands = _setup(kind, seed=bits)
    assignment = np.full(channel_layout(model).n_channels, bits)
    ref = quantize_backbone(model, assignment)
    with torch.no_grad():
        ref_all, ref_cand = ref.score_all(seqs), ref.score_candidates(seqs, cands)
    spread = float(ref_all[:, 1:].std())
    exact = to_ort(
        model, assignment, widths=DEVICE_WIDTHS, tables=DEVICE_TABLES, accuracy_level=0
    )
    assert float((exact.score_all(seqs) - ref_all).abs().max()) <= 1e-4 * spread + 1e-6
    assert float((exact.score_candidates(seqs, cands) - ref_cand).abs().max()) <= 1e-4 * spread
    device = build_runtime(model, assignment, DEVICE_RUNTIME)
    got_all, got_cand = device.score_all(seqs), device.score_candidates(seqs, cands)
    assert torch.all(got_all[:, 0] == ref_all[:, 0])
    assert float((got_all[:, 1:] - ref_all[:, 1:]).abs().max()) <= 0.1 * spread
    assert float((got_cand - ref_cand).abs().max()) <= 0.1 * spread
    for row in range(2):
        top_ref = set(ref_all[row, 1:].topk(10).indices.tolist())
        top_got = set(got_all[row, 1:].topk(10).indices.tolist())
        assert len(top_ref & top_got) >= 8


@pytest.mark.parametrize("kind", ["sasrec", "caser"])
def test_fp32_graph_matches_model(kind: str) -> None:
    """kind="fp32" runs the unquantized backbone's maths."""
    model, _, seqs, cands = _setup(kind)
    ort_model = to_ort(model, None, kind="fp32")
    with torch.no_grad():
        want_all, want_cand = model.score_all(seqs), model.score_candidates(seqs, cands)
    spread = float(want_all[:, 1:].std())
    assert float((ort_model.score_all(seqs) - want_all).abs().max()) <= 1e-4 * spread
    assert float((ort_model.score_candidates(seqs, cands) - want_cand).abs().max()) <= 1e-4 * spread


def test_weights_are_stored_in_low_precision() -> None:
    """Quantized layers hold uint8 packed codes, well under the fp32 model's bytes."""
    model, bits, _, _ = _setup("sasrec")
    nbits = build_onnx(model, np.minimum(bits, 4))
    fp32 = build_onnx(model, None, kind="fp32")

    def op_types(m: onnx.ModelProto) -> set[str]:
        """Op types of the graph and its If branches."""
        found = set()
        for node in m.graph.node:
            found.add(node.op_type)
            for attr in node.attribute:
                if attr.g.node:
                    found |= {n.op_type for n in attr.g.node}
        return found

    ops = op_types(nbits)
    assert {"MatMulNBits", "GatherBlockQuantized"} <= ops
    assert "MatMulNBits" not in op_types(fp32)

    assert initializer_bytes(nbits) < 0.25 * initializer_bytes(fp32)

    # Item tables in 4-bit units: every table kernel runs on 4-bit codes, 8-bit rows included.
    nibbles = build_onnx(model, bits, widths=(4, 8), tables="nibbles")
    table_nodes = [
        n
        for graph in [nibbles.graph, *(a.g for n in nibbles.graph.node for a in n.attribute)]
        for n in graph.node
        if n.op_type in ("MatMulNBits", "GatherBlockQuantized")
        and any(i.startswith("item_q4") for i in n.input)
    ]
    assert table_nodes
    assert all(helper.get_node_attr_value(n, "bits") == 4 for n in table_nodes)
    # Zero points and 5..8-bit rows' second scale cost little next to splitting by width.
    split = build_onnx(model, bits, widths=(4, 8), tables="split")
    assert initializer_bytes(nibbles) < 1.1 * initializer_bytes(split)


@pytest.mark.parametrize("kind", ["sasrec", "caser"])
def test_graph_optimization_levels_score_alike(kind: str) -> None:
    """Every ORT optimization level opens the same graph and scores it alike (the rewrites
    reorder float sums only); the device runtime opens its session at its level."""
    model, bits, seqs, cands = _setup(kind, seed=2)
    graph = build_onnx(model, bits, widths=DEVICE_WIDTHS, tables=DEVICE_TABLES).SerializeToString()
    scores = {}
    for name, level in GRAPH_OPTIMIZATIONS.items():
        scorer = OrtScorer(graph, model.max_len, N_ITEMS, optimization=name)
        assert scorer.session.get_session_options().graph_optimization_level == level
        scores[name] = (scorer.score_all(seqs), scorer.score_candidates(seqs, cands))
    spread = float(scores["all"][0][:, 1:].std())
    for got_all, got_cand in scores.values():
        assert float((got_all - scores["all"][0]).abs().max()) <= 1e-4 * spread
        assert float((got_cand - scores["all"][1]).abs().max()) <= 1e-4 * spread
    device = build_runtime(model, bits, DEVICE_RUNTIME)
    assert isinstance(device, OrtScorer)
    opened = device.session.get_session_options().graph_optimization_level
    assert opened == GRAPH_OPTIMIZATIONS[DEVICE_GRAPH_OPTIMIZATION]
    with pytest.raises(QuantError, match="graph optimization 'fast'"):
        OrtScorer(graph, model.max_len, N_ITEMS, optimization="fast")


def test_bad_inputs_raise_clear_errors() -> None:
    """Out-of-range ids, wrong ranks and impossible assignments are refused."""
    model, bits, seqs, cands = _setup("caser")
    ort_model = to_ort(model, bits)
    with pytest.raises(ValueError, match="item ids"):
        ort_model.score_all(seqs + N_ITEMS)
    with pytest.raises(ValueError, match=r"\[batch, length\]"):
        ort_model.score_candidates(seqs, cands[0])
    with pytest.raises(QuantError, match="bit assignment"):
        build_onnx(model, None, kind="nbits")
    with pytest.raises(QuantError, match="do not fit"):
        build_onnx(model, bits, widths=(2, 4))
    with pytest.raises(QuantError, match="table layout"):
        build_onnx(model, bits, tables="bytes")
