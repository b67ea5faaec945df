"""Random-mode runs with a learned mask: prepared, reloaded, scored and rebuilt like a device."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from chord.artifacts import MASK_FORMAT
from chord.checkpoint import weights_version
from chord.evaluation import evaluate
from chord.hyper import PersonalScorer, RunConfig, load_run, prepare_run
from chord.hyper.personal import LevelBank
from chord.hyper.runs import MASK_FILE, RunError, load_split
from chord.levels.relaxed import one_hot_levels
from chord.masks import decode_mask, personal_weights, rebuild_backbone
from chord.models import build_backbone
from chord.spec import ModelSpec
from cloud_server.config import ServerConfig
from cloud_server.embedded import EmbeddedServer
from device_client.artifacts import ArtifactCache
from device_client.backbone_cache import BackboneMismatchError, clear_cache, get_backbone
from device_client.device import DeviceJob, VirtualDevice
from device_client.transport import RetryPolicy, Transport
from simulator.runner import load_users
from tests.hyper_fixtures import synthetic_csv  # noqa: F401  (pytest fixture)


def _cfg(dataset: str, **kw: object) -> RunConfig:
    base = dict(
        dataset=dataset, mode="random", mask_epochs=40, hyper_steps=30, hyper_eval_every=15,
        mask_fractions=(0.6, 0.5), mask_levels=(3, 2, 1, 1), mask_shared=2,
    )
    base.update(kw)
    return RunConfig.preset("smoke", **base)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def masked_run(synthetic_csv: str, tmp_path_factory: pytest.TempPathFactory) -> Path:  # noqa: F811
    return prepare_run(_cfg(synthetic_csv), tmp_path_factory.mktemp("masked") / "run")


def test_a_tiny_masked_run_beats_chance(masked_run: Path) -> None:
    run = load_run(masked_run)
    assert run.mask is not None
    split = load_split(RunConfig(**run.meta["run_config"]))
    raw = build_backbone(run.backbone_config, run.seed)
    chance = evaluate(raw, split, "test")["NDCG@10"]
    shared = evaluate(run.backbone, split, "test")["NDCG@10"]
    scorer = PersonalScorer(run.backbone, run.layout, run.importance_model.importance,
                            run.tiers["mid"], 3.0, cost=run.level_cost, mask=run.mask)
    personal = evaluate(scorer, split, "test")["NDCG@10"]
    assert shared > 2 * chance + 0.05, (shared, chance)
    assert personal > 2 * chance + 0.05, (personal, chance)


def test_the_run_ships_a_mask_a_device_rebuilds_exactly(masked_run: Path) -> None:
    run = load_run(masked_run)
    data = (masked_run / MASK_FILE).read_bytes()
    art = decode_mask(data)
    assert len(data) == run.meta["mask"]["bytes"]
    raw = rebuild_backbone(art.header.generator, run.backbone_config, art.header.seed)
    levels = np.random.default_rng(0).integers(0, 4, run.n_channels).astype(np.uint8)
    assert run.mask is not None
    cloud = run.mask  # the cloud's source of level banks
    bank = LevelBank(run.backbone, run.layout, run.tiers["low"], cloud)
    mixed = bank.mix(one_hot_levels(torch.from_numpy(levels).long())[None])
    device = personal_weights(raw, art, levels, run.tiers["low"])
    for key, value in device.items():
        assert torch.equal(mixed[key][0], value), key


def test_a_mask_for_other_weights_is_refused(masked_run: Path, tmp_path: Path) -> None:
    copy = tmp_path / "run"
    shutil.copytree(masked_run, copy)
    data = bytearray((copy / MASK_FILE).read_bytes())
    data[20] ^= 1
    (copy / MASK_FILE).write_bytes(bytes(data))
    with pytest.raises(RunError, match=r"mask\.chmk"):
        load_run(copy)


def _device(address: str, users: list[np.ndarray], i: int, cache: Path) -> VirtualDevice:
    job = DeviceJob(device_id=f"m-{i}", user_index=i, sequence=users[i], tier="mid",
                    budget_bits=3.0, rounds=2, interactions_per_round=2, request_tag="mask")
    transport = Transport(address, RetryPolicy(call_timeout_s=10.0))
    return VirtualDevice(job, transport, ArtifactCache(cache), reuse_artifacts=False)


def test_a_device_downloads_the_mask_and_rebuilds_the_masked_model(
    masked_run: Path, synthetic_csv: str, tmp_path: Path  # noqa: F811
) -> None:
    clear_cache()
    users = load_users(synthetic_csv)[0]
    srv = EmbeddedServer(ServerConfig(run_dir=masked_run, grace_s=0.5)).start()
    try:
        report = _device(srv.address, users, 1, tmp_path / "cache").run()
        assert report.status == "completed", report.detail
        spec = _spec(srv.address)
        ref = spec.artifact("shared_mask")
        assert ref is not None and ref.format == MASK_FORMAT and spec.artifact(
            "backbone_weights") is None  # random mode ships no weights
        assert ref.size_bytes == (masked_run / MASK_FILE).stat().st_size
        assert report.artifact_bytes > ref.size_bytes  # counted as received (plus framing)
        assert all(r.strategy_source == "cloud" and r.n_targets == 2 for r in report.rounds)
        cached, hit = get_backbone(spec)
        assert hit and cached.mask is not None and cached.source == "built+mask"
        assert weights_version(cached.model) == spec.version == load_run(masked_run).version
    finally:
        srv.stop()
        clear_cache()


def test_a_device_refuses_other_weights_and_a_damaged_mask(
    masked_run: Path,
) -> None:
    srv = EmbeddedServer(ServerConfig(run_dir=masked_run, grace_s=0.5)).start()
    try:
        spec = _spec(srv.address)
    finally:
        srv.stop()
    data = (masked_run / MASK_FILE).read_bytes()
    clear_cache()
    try:
        other = dataclasses.replace(spec, weights_checksum="0" * 16)
        with pytest.raises(BackboneMismatchError, match="must not run"):
            get_backbone(other, shared_mask=data)
        cut = data[:-7]
        with pytest.raises(BackboneMismatchError, match="truncated"):
            get_backbone(spec, shared_mask=cut)
        with pytest.raises(BackboneMismatchError, match="needs its shared mask"):
            get_backbone(spec)
    finally:
        clear_cache()


def _spec(address: str) -> ModelSpec:
    return Transport(address, RetryPolicy(call_timeout_s=10.0)).get_model_spec("probe")[0]


def test_the_benchmarks_shared_mask_rows_keep_the_shared_class_at_every_width(
    masked_run: Path,
) -> None:
    from benchmarks.random_masks import shared_artifact, uniform_tier
    from chord.masks import personal_model

    run = load_run(masked_run)
    assert run.mask is not None
    names = {f"{x.name}.weight" for x in run.layout.layers}
    shared = {k: v for k, v in run.backbone.state_dict().items() if k in names}
    zero_levels = np.zeros(run.n_channels, dtype=np.uint8)
    for bits in (2, 8):
        model = personal_model(run.mask.raw, shared_artifact(run), zero_levels,
                               uniform_tier(bits))
        kept = {k: v != 0 for k, v in model.state_dict().items() if k in names}
        assert all(torch.equal(kept[k], shared[k] != 0) for k in names)
    # Level 0 of this run's map prunes whole channels: the row must not be built from it.
    level0 = personal_model(run.mask.raw, run.mask.artifact, zero_levels, uniform_tier(8))
    assert not all(torch.equal(level0.state_dict()[k] != 0, shared[k] != 0) for k in names)


def test_the_mask_balance_names_a_new_run_only_when_it_is_not_the_default() -> None:
    base = RunConfig(mode="random", mask_epochs=5)
    assert base.key() == RunConfig(mode="random", mask_epochs=5, mask_balance="layer").key()
    assert base.key() != RunConfig(mode="random", mask_epochs=5, mask_balance="channel").key()
    with pytest.raises(RunError, match="mask_balance must be one of"):
        RunConfig(mode="random", mask_balance="rows")


def test_a_channel_balanced_caser_mask_keeps_every_item_row_so_candidates_do_not_tie(
    synthetic_csv: str, tmp_path: Path,  # noqa: F811
) -> None:
    cfg = _cfg(synthetic_csv, backbone="caser", mask_fractions=(0.1,), mask_levels=(1, 1, 1, 1),
               mask_shared=1, mask_balance="channel", mask_epochs=10)
    run = load_run(prepare_run(cfg, tmp_path / "run"))
    assert run.mask is not None
    classes = run.mask.artifact.layer_classes()
    for name in ("item_emb", "out_emb", "fc"):
        per_channel = (classes[name] >= 1).sum(1)
        assert int(per_channel.max() - per_channel.min()) <= 1, name
        assert int(per_channel.min()) >= 1, name
    # Every item's output row keeps weights, so candidates of one user score differently
    # (a layer-wide sparse mask left popular items' rows empty on ML-100K: all scored 0).
    split = load_split(cfg)
    seqs = torch.from_numpy(np.stack([h[-5:] for h in split.test.histories[:20]
                                      if len(h) >= 5]))
    cands = torch.arange(1, split.n_items + 1).expand(len(seqs), -1)
    scores = run.backbone.score_candidates(seqs, cands)
    assert bool((scores.std(dim=1) > 0).all())
    assert float((scores == 0).float().mean()) < 0.05  # a kept weight may meet a ReLU'd 0
