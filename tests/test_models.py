"""Tests of the backbones, their configs and checkpoints."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from chord.checkpoint import CheckpointError, load_backbone, save_backbone, weights_version
from chord.config import (
    BackboneConfig,
    CaserConfig,
    ConfigError,
    SASRecConfig,
    config_from_json,
    config_to_json,
)
from chord.models import (
    PAD_SCORE,
    Backbone,
    Caser,
    LossError,
    SASRec,
    build_backbone,
    fit_length,
)

SAS = SASRecConfig(n_items=30, hidden=16, max_len=8)
CAS = CaserConfig(n_items=30, embed=12, max_len=4, n_h=3, n_v=2)
CONFIGS: list[BackboneConfig] = [SAS, CAS]


def seqs() -> torch.Tensor:
    """Three left-padded sequences of length 8."""
    return torch.tensor(
        [[0, 0, 0, 5, 3, 9, 1, 2], [4, 4, 8, 10, 11, 12, 13, 30], [0, 0, 0, 0, 0, 0, 0, 7]]
    )


@pytest.mark.parametrize("cfg", CONFIGS, ids=["sasrec", "caser"])
def test_build_is_deterministic_and_leaves_global_rng(cfg: SASRecConfig | CaserConfig) -> None:
    state = torch.get_rng_state()
    a, b, c = build_backbone(cfg, 1), build_backbone(cfg, 1), build_backbone(cfg, 2)
    assert torch.equal(state, torch.get_rng_state())
    assert weights_version(a) == weights_version(b) != weights_version(c)
    for (name, x), y in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(x, y), name
    assert torch.count_nonzero(a.item_emb.weight[0]) == 0


@pytest.mark.parametrize("cfg", CONFIGS, ids=["sasrec", "caser"])
def test_shapes_and_scoring_agree(cfg: SASRecConfig | CaserConfig) -> None:
    model = build_backbone(cfg, 0).eval()
    s = seqs()
    state = model.encode(s)
    assert state.shape == (3, model.state_dim)
    full = model.score_all(s)
    assert full.shape == (3, 31)
    assert torch.all(full[:, 0] == PAD_SCORE)
    cands = torch.tensor([[1, 2, 30], [7, 7, 3], [29, 1, 4]])
    torch.testing.assert_close(model.score_candidates(s, cands), full.gather(1, cands))
    assert torch.isfinite(full).all()


@pytest.mark.parametrize("cfg", CONFIGS, ids=["sasrec", "caser"])
def test_length_handling_matches_explicit_padding(cfg: SASRecConfig | CaserConfig) -> None:
    model = build_backbone(cfg, 0).eval()
    short = torch.tensor([[5, 3, 9]])
    padded = fit_length(short, model.max_len)
    long = torch.cat([torch.tensor([[1] * 20]), short], dim=1)
    torch.testing.assert_close(model.encode(short), model.encode(padded))
    torch.testing.assert_close(model.encode(long), model.encode(fit_length(long, model.max_len)))


def test_sasrec_is_causal() -> None:
    model = build_backbone(SAS, 3).eval()
    assert isinstance(model, SASRec)
    s = seqs()
    before = model.states(s)
    changed = s.clone()
    changed[:, 5] = torch.tensor([17, 18, 19])  # position 5 of every row
    after = model.states(changed)
    torch.testing.assert_close(before[:, :5], after[:, :5], rtol=0, atol=0)
    assert not torch.allclose(before[:, 5:], after[:, 5:])  # later positions do see it
    # the user state (last position) depends on earlier items
    assert not torch.allclose(model.encode(s), model.encode(changed))
    # padded positions are exactly zero
    assert torch.count_nonzero(before[2, :7]) == 0


def test_sasrec_uses_explicit_projections() -> None:
    model = build_backbone(SAS, 0)
    assert isinstance(model, SASRec)
    assert not any(isinstance(m, nn.MultiheadAttention) for m in model.modules())
    names = {n for n, m in model.named_modules() if isinstance(m, nn.Linear)}
    assert {
        "blocks.0.attn.q",
        "blocks.0.attn.k",
        "blocks.0.attn.v",
        "blocks.0.attn.out",
        "blocks.1.ffn.fc2",
    } <= names
    assert len(model.blocks) == 2


def test_every_matrix_weight_lives_in_a_quantizable_module() -> None:
    for cfg in CONFIGS:
        model = build_backbone(cfg, 0)
        owners = {
            n
            for n, m in model.named_modules()
            if isinstance(m, nn.Linear | nn.Conv2d | nn.Embedding)
        }
        for name, p in model.named_parameters():
            if p.dim() >= 2:
                assert name.rsplit(".", 1)[0] in owners, name


def test_caser_is_user_agnostic() -> None:
    model = build_backbone(CAS, 0)
    assert isinstance(model, Caser)
    embeddings = {n for n, m in model.named_modules() if isinstance(m, nn.Embedding)}
    assert embeddings == {"item_emb", "out_emb"}
    assert len(model.conv_h) == CAS.max_len
    assert [c.kernel_size for c in model.conv_h] == [(h, CAS.embed) for h in range(1, 5)]


@pytest.mark.parametrize("cfg", CONFIGS, ids=["sasrec", "caser"])
def test_training_losses_backpropagate(cfg: SASRecConfig | CaserConfig) -> None:
    model = build_backbone(cfg, 0).train()
    s = seqs()
    targets = torch.roll(s, -1, dims=1) if cfg.kind == "sasrec" else torch.tensor([3, 0, 30])
    gen = torch.Generator().manual_seed(0)
    for loss_name in ("ce", "bce"):
        loss = model.training_loss(s, targets, loss=loss_name, generator=gen)
        assert loss.dim() == 0 and torch.isfinite(loss)
        model.zero_grad()
        loss.backward()
        assert model.item_emb.weight.grad is not None
    with pytest.raises(LossError, match="ce"):
        model.training_loss(s, targets, loss="hinge")


def test_config_json_round_trip_and_errors() -> None:
    for cfg in CONFIGS:
        assert config_from_json(config_to_json(cfg)) == cfg
    with pytest.raises(ConfigError, match="divisible"):
        SASRecConfig(n_items=5, hidden=10, n_heads=3)
    with pytest.raises(ConfigError, match="n_items"):
        CaserConfig(n_items=0)
    with pytest.raises(ConfigError, match="kind"):
        config_from_json('{"kind": "gru4rec", "n_items": 3}')
    with pytest.raises(ConfigError, match="unknown sasrec config fields"):
        config_from_json('{"kind": "sasrec", "n_items": 3, "width": 2}')
    with pytest.raises(ConfigError, match="JSON"):
        config_from_json("{")


def test_checkpoint_round_trip(tmp_path: Path) -> None:
    model = build_backbone(SAS, 5)
    path = tmp_path / "bb" / "backbone.pt"
    version = save_backbone(path, model, {"dataset": "toy"})
    raw = torch.load(path, weights_only=True)
    assert raw["version"] == version == weights_version(model)
    loaded, meta = load_backbone(path)
    assert isinstance(loaded, Backbone) and not loaded.training
    assert meta["dataset"] == "toy" and meta["version"] == version
    assert meta["config"]["hidden"] == 16
    s = seqs()
    torch.testing.assert_close(loaded.score_all(s), model.eval().score_all(s))
    assert not list(path.parent.glob("*.tmp"))


def test_checkpoint_errors(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="does not exist"):
        load_backbone(tmp_path / "missing.pt")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="is not a chord backbone checkpoint"):
        load_backbone(junk)
    path = tmp_path / "b.pt"
    save_backbone(path, build_backbone(CAS, 0))
    payload = torch.load(path, weights_only=True)
    payload["state_dict"]["fc.bias"] += 1.0  # tampered weights
    torch.save(payload, path)
    with pytest.raises(CheckpointError, match="corrupt"):
        load_backbone(path)
    torch.save({"format": "other"}, path)
    with pytest.raises(CheckpointError, match="chord-backbone/1"):
        load_backbone(path)
    with pytest.raises(CheckpointError, match="JSON-serializable"):
        save_backbone(path, build_backbone(CAS, 0), {"bad": object()})


def test_caser_fold_keeps_every_ranking_and_helps_quantization() -> None:
    import numpy as np

    from chord.quant import channel_layout, quantize_backbone

    model = build_backbone(CAS, seed=3)
    assert isinstance(model, Caser)
    with torch.no_grad():  # a trained output table shares one large direction across items
        common = torch.randn(CAS.embed, generator=torch.Generator().manual_seed(1))
        model.out_emb.weight[1:] += 3.0 * common
    model.eval()
    model.requires_grad_(False)
    x = seqs()[:, -CAS.max_len :]
    cands = torch.tensor([[1, 5, 9, 30], [2, 2, 7, 11], [30, 29, 1, 4]])
    before_all, before_c = model.score_all(x), model.score_candidates(x, cands)
    three = np.full(channel_layout(model).n_channels, 3)
    q_before = quantize_backbone(model, three).score_all(x)[:, 1:]
    assert model.fold_for_quantization()
    after_all, after_c = model.score_all(x), model.score_candidates(x, cands)
    # Every user's scores move by one constant: rankings and the softmax are unchanged.
    shift = (before_all - after_all)[:, 1:]
    assert torch.allclose(shift, shift[:, :1].expand_as(shift), atol=1e-4)
    assert torch.allclose(before_c - after_c, (before_c - after_c)[:, :1].expand_as(after_c),
                          atol=1e-4)
    assert torch.allclose(torch.log_softmax(before_all[:, 1:], 1),
                          torch.log_softmax(after_all[:, 1:], 1), atol=1e-4)
    assert after_all[:, 0].eq(PAD_SCORE).all() and model.out_emb.weight[0].eq(0).all()
    assert not model.fold_for_quantization()  # already folded: nothing changes
    q_after = quantize_backbone(model, three).score_all(x)[:, 1:]

    def rank_noise(q: torch.Tensor, ref: torch.Tensor) -> float:
        err = q - ref
        return float((err - err.mean(1, keepdim=True)).std() / ref.std(1).mean())

    assert rank_noise(q_after, after_all[:, 1:]) < 0.5 * rank_noise(q_before, before_all[:, 1:])


def test_sasrec_fold_changes_nothing() -> None:
    model = build_backbone(SAS, seed=0)
    version = weights_version(model)
    assert not model.fold_for_quantization()
    assert weights_version(model) == version
