"""Random-init masks: generator checksums, the artifact format, and device-side rebuilding."""

from __future__ import annotations

import dataclasses
import subprocess
import sys

import numpy as np
import pytest
import torch

from chord.checkpoint import weights_version
from chord.config import CaserConfig, SASRecConfig, config_to_json
from chord.hyper.personal import LevelBank
from chord.levels import DEFAULT_TIERS
from chord.levels.relaxed import one_hot_levels
from chord.masks import (
    GENERATORS,
    TORCH_XAVIER,
    TORCH_XAVIER_SIGNED,
    MaskedSource,
    MaskError,
    WeightsMismatchError,
    check_weights,
    decode_mask,
    encode_mask,
    personal_weights,
    quantize_keep_zeros,
    rebuild_backbone,
    stored_bytes,
)
from chord.masks.artifact import (
    RICE_VERSION,
    decode_classes,
    decode_rice,
    encode_classes,
    encode_rice,
    payload_bits,
)
from chord.masks.build import build_artifact
from chord.masks.ranks import rank_classes, top_fraction_mask
from chord.quant import channel_layout

CFG = SASRecConfig(n_items=30, hidden=8, max_len=6)


def _artifact(seed: int = 0, level_min_class: tuple[int, int, int, int] = (3, 2, 1, 1),
              generator: str = TORCH_XAVIER,
              fractions: tuple[float, ...] = (0.6, 0.5, 0.4), balance: str = "layer"):
    raw = rebuild_backbone(generator, CFG, seed)
    layout = channel_layout(raw)
    gen = torch.Generator().manual_seed(5)
    scores = [torch.rand(dict(raw.named_parameters())[x.weight_name].shape, generator=gen)
              for x in layout.layers]
    art = build_artifact(raw, layout, scores, generator=generator, seed=seed,
                         keep_fractions=fractions, level_min_class=level_min_class,
                         shared_min_class=2, balance=balance)
    return raw, layout, art


@pytest.mark.parametrize("generator", sorted(GENERATORS))
def test_rebuilt_weights_match_across_processes_and_differ_for_another_seed(
    generator: str,
) -> None:
    code = (
        "from chord.masks import rebuild_backbone\n"
        "from chord.checkpoint import weights_version\n"
        "from chord.config import config_from_json\n"
        f"m = rebuild_backbone({generator!r}, config_from_json({config_to_json(CFG)!r}), 3)\n"
        "print(weights_version(m))\n"
    )
    other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                           check=True, timeout=120).stdout.strip()
    assert other == weights_version(rebuild_backbone(generator, CFG, 3))
    assert other != weights_version(rebuild_backbone(generator, CFG, 4))


def test_generators_draw_different_weights_from_one_seed() -> None:
    versions = {weights_version(rebuild_backbone(g, CFG, 3)) for g in GENERATORS}
    assert len(versions) == len(GENERATORS)


@pytest.mark.parametrize("config", [CFG, CaserConfig(n_items=30, embed=8, max_len=4, n_h=2,
                                                      n_v=2)], ids=["sasrec", "caser"])
def test_signed_weights_are_one_magnitude_per_layer_and_quantize_exactly(
    config: SASRecConfig | CaserConfig,
) -> None:
    normal = rebuild_backbone(TORCH_XAVIER, config, 3).state_dict()
    signed = rebuild_backbone(TORCH_XAVIER_SIGNED, config, 3)
    params = dict(signed.named_parameters())
    masked_names = {x.weight_name for x in channel_layout(signed).layers}
    for name, value in signed.state_dict().items():  # norms and biases are TORCH_XAVIER's
        if name not in masked_names:
            assert torch.equal(value, normal[name]), name
    for layer in channel_layout(signed).layers:
        w, drawn = params[layer.weight_name], normal[layer.weight_name]
        sigma = float(drawn[drawn != 0].double().square().mean().sqrt())
        assert torch.equal(torch.sign(w), torch.sign(drawn)), layer.name
        assert torch.allclose(w.abs()[w != 0], torch.tensor(sigma)), layer.name
        keep = torch.rand(w.shape, generator=torch.Generator().manual_seed(1)) < 0.5
        masked = w * keep * 1.41
        for bits in (1, 2, 3, 8):  # every kept weight of a channel has one magnitude
            assert torch.allclose(quantize_keep_zeros(masked, bits), masked), (layer.name, bits)


def test_a_device_that_builds_other_weights_refuses() -> None:
    model = rebuild_backbone(TORCH_XAVIER, CFG, 3)
    check_weights(model, weights_version(model))
    with pytest.raises(WeightsMismatchError, match="must not run"):
        check_weights(model, weights_version(rebuild_backbone(TORCH_XAVIER, CFG, 4)))
    with pytest.raises(MaskError, match="unknown weight generator"):
        rebuild_backbone("numpy/1", CFG, 0)


def test_class_planes_round_trip_and_cost_what_they_cover() -> None:
    rng = np.random.default_rng(0)
    classes = rng.integers(0, 4, 1001).astype(np.uint8)
    data = encode_classes(classes, 3)
    assert len(data) == (payload_bits(classes, 3) + 7) // 8
    assert np.array_equal(decode_classes(data, classes.size, 3), classes)
    with pytest.raises(MaskError, match="ends before"):
        decode_classes(data[:-20], classes.size, 3)
    with pytest.raises(MaskError, match="beyond"):
        decode_classes(data + b"\x01", classes.size, 3)


def test_mask_artifact_round_trips_and_refuses_tampered_truncated_or_foreign_bytes() -> None:
    _, _, art = _artifact()
    data = encode_mask(art)
    back = decode_mask(data)
    assert back.header == art.header and np.array_equal(back.classes, art.classes)
    tampered = bytearray(data)
    tampered[len(data) // 2] ^= 0x10
    with pytest.raises(MaskError, match="SHA-256"):
        decode_mask(bytes(tampered))
    with pytest.raises(MaskError, match="truncated"):
        decode_mask(data[:-5])
    wrong = bytearray(data)
    wrong[4] = 9
    with pytest.raises(MaskError, match="version 9 is not supported"):
        decode_mask(bytes(wrong))


def test_a_sparse_mask_travels_rice_coded_shorter_and_round_trips() -> None:
    _, _, dense = _artifact()
    assert encode_mask(dense)[4] == 1  # half the weights kept: plain planes are shortest
    _, _, art = _artifact(fractions=(0.2, 0.1), level_min_class=(2, 1, 1, 1))
    data = encode_mask(art)
    assert data[4] == RICE_VERSION
    plain = payload_bits(art.classes, 2)
    assert len(data) < len(encode_mask(dense)) and len(encode_rice(art.classes, 2)) * 8 < plain
    back = decode_mask(data)
    assert back.header == art.header and np.array_equal(back.classes, art.classes)
    payload = encode_rice(art.classes, 2)
    assert np.array_equal(decode_rice(payload, art.header), art.classes)
    with pytest.raises(MaskError, match="ends"):
        decode_rice(payload[: len(payload) // 2], art.header)
    with pytest.raises(MaskError, match="beyond"):
        decode_rice(payload + b"\x01", art.header)
    with pytest.raises(MaskError, match="truncated"):
        decode_mask(data[:-3])


def test_rank_classes_are_nested_top_fractions() -> None:
    _, layout, art = _artifact()
    for layer, cls in zip(layout.layers, art.layer_classes().values(), strict=True):
        n = layer.n_weights
        for j, f in enumerate((0.6, 0.5, 0.4), start=1):
            assert int((cls >= j).sum()) == int(np.floor(f * n + 0.5))


def _skewed_scores() -> torch.Tensor:
    """[37, 11] scores where the first 5 channels outscore every other channel."""
    scores = torch.rand(37, 11, generator=torch.Generator().manual_seed(2))
    scores[:5] += 10.0
    return scores


@pytest.mark.parametrize("fraction", [0.02, 0.1, 0.3, 0.55, 1.0])
def test_channel_balance_keeps_the_layer_count_spread_evenly_over_channels(
    fraction: float,
) -> None:
    scores = _skewed_scores()
    k = int(np.floor(fraction * scores.numel() + 0.5)) or 1
    layer = top_fraction_mask(scores, fraction)
    assert int(layer.sum()) == k
    if k <= 55:  # the layer-wide rule spends everything on the first 5 channels
        assert not bool(layer[5:].any())
    mask = top_fraction_mask(scores, fraction, "channel")
    per_channel = mask.sum(1)
    assert int(per_channel.sum()) == k
    assert int(per_channel.max() - per_channel.min()) <= 1
    # inside a channel the kept weights are its highest scores
    for row, keep in zip(scores, mask, strict=True):
        if 0 < int(keep.sum()) < row.numel():
            assert float(row[keep].min()) >= float(row[~keep].max())
    # the training mask is exactly the artifact's class >= 1
    classes = rank_classes(scores, (fraction,), "channel").reshape(scores.shape)
    assert torch.equal(torch.from_numpy(classes >= 1), mask)


def test_channel_balanced_classes_are_nested_and_travel_in_the_mask_format() -> None:
    scores = _skewed_scores()
    fractions = (0.6, 0.31, 0.05)
    cls = rank_classes(scores, fractions, "channel").reshape(scores.shape)
    for j, f in enumerate(fractions, start=1):
        assert torch.equal(torch.from_numpy(cls >= j), top_fraction_mask(scores, f, "channel"))
    _, layout, art = _artifact(balance="channel", fractions=(0.5, 0.2))
    back = decode_mask(encode_mask(art))
    assert np.array_equal(back.classes, art.classes)
    for layer, c in zip(layout.layers, art.layer_classes().values(), strict=True):
        per_channel = (c.reshape(layer.n_channels, -1) >= 1).sum(1)
        assert int(per_channel.max() - per_channel.min()) <= 1
    with pytest.raises(MaskError, match="balance must be one of"):
        top_fraction_mask(scores, 0.5, "row")


def test_quantize_keep_zeros_leaves_pruned_weights_at_zero() -> None:
    w = torch.randn(6, 10, generator=torch.Generator().manual_seed(1))
    w[:, ::3] = 0.0
    for bits in (1, 2, 3, 8):
        q = quantize_keep_zeros(w, bits)
        assert bool((q[w == 0] == 0).all())
        assert bool((q * w >= 0).all())  # rounding may reach 0, never the other sign
    assert bool((quantize_keep_zeros(w, 1)[w != 0] != 0).all())


@pytest.mark.parametrize("generator", sorted(GENERATORS))
@pytest.mark.parametrize("tier", ["low", "mid"])
def test_device_reconstruction_equals_the_clouds_level_bank(tier: str, generator: str) -> None:
    raw, layout, art = _artifact(level_min_class=(4, 2, 1, 1), generator=generator)
    levels = np.random.default_rng(3).integers(0, 4, layout.n_channels).astype(np.uint8)
    bank = LevelBank(raw, layout, DEFAULT_TIERS[tier], mask=MaskedSource(raw, decode_mask(
        encode_mask(art))))
    cloud = bank.mix(one_hot_levels(torch.from_numpy(levels).long())[None])
    device = personal_weights(raw, art, levels, DEFAULT_TIERS[tier])
    assert set(cloud) == set(device)
    for key, value in device.items():
        assert torch.equal(cloud[key][0], value), key
    pruned = layout.split(levels)["blocks.0.ffn.fc1"] == 0
    assert bool((device["blocks.0.ffn.fc1.weight"][torch.from_numpy(pruned)] == 0).all())


def test_stored_bytes_count_kept_weights_at_their_bits() -> None:
    _, layout, art = _artifact(level_min_class=(4, 2, 1, 1))
    tier = DEFAULT_TIERS["mid"]
    zeros = np.zeros(layout.n_channels, dtype=np.uint8)  # level 0 prunes every channel here
    threes = np.full(layout.n_channels, 3, dtype=np.uint8)
    overhead = (layout.n_channels * 32 + layout.n_weights + 7) // 8  # scales and keep map
    assert stored_bytes(art, zeros, tier) == overhead
    kept = int((art.classes >= 1).sum())  # level 3 keeps class >= 1 at 8 bits
    assert stored_bytes(art, threes, tier) == (kept * 8 + layout.n_channels * 32
                                               + layout.n_weights + 7) // 8


def test_mask_header_rejects_levels_that_name_no_class() -> None:
    _, _, art = _artifact()
    with pytest.raises(MaskError, match="level_min_class"):
        dataclasses.replace(art.header, level_min_class=(5, 1, 1, 1))
    with pytest.raises(MaskError, match="strictly decreasing"):
        dataclasses.replace(art.header, keep_fractions=(0.5, 0.6, 0.4))


def test_a_width_is_priced_with_the_sparsest_class_a_level_of_that_width_keeps() -> None:
    raw, layout, art = _artifact(level_min_class=(4, 2, 1, 1), generator=TORCH_XAVIER_SIGNED)
    source = MaskedSource(raw, art)
    tiers = [DEFAULT_TIERS["low"], DEFAULT_TIERS["mid"]]  # bits (1,2,3,4) and (2,3,4,8)
    assert [source.width_class(b, tiers) for b in (1, 2, 3, 4, 5, 8)] == [4, 4, 2, 1, 2, 1]
    name = layout.layers[1].name
    pruned = source.width_weights(name, 2, tiers)  # mid tier's level 0 prunes the channel
    assert not bool(pruned.any())
    bank = source.level_weights(f"{name}.weight", DEFAULT_TIERS["mid"].level_bits)
    assert torch.equal(source.width_weights(name, 8, tiers), bank[3])
