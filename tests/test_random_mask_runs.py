"""Random-mode runs with a learned mask: prepared, reloaded, scored and rebuilt like a device."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from chord.checkpoint import weights_version
from chord.evaluation import evaluate
from chord.hyper import PersonalScorer, RunConfig, load_run, prepare_run
from chord.hyper.personal import LevelBank, one_hot_levels
from chord.hyper.runs import MASK_FILE, RunError, load_split
from chord.masks import decode_mask, personal_weights, rebuild_backbone
from chord.models import build_backbone
from cloud_server.config import ServerConfig
from cloud_server.embedded import EmbeddedServer
from device_client.backbone_cache import clear_cache, get_backbone
from device_client.device import DeviceJob, VirtualDevice
from device_client.transport import RetryPolicy, Transport
from device_client.wire import spec_from_proto, spec_request_to_proto
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


def _device(address: str, users: list[np.ndarray], i: int) -> VirtualDevice:
    job = DeviceJob(device_id=f"m-{i}", user_index=i, sequence=users[i], tier="mid",
                    budget_bits=3.0, rounds=2, interactions_per_round=2, request_tag="mask")
    return VirtualDevice(job, Transport(address, RetryPolicy(call_timeout_s=10.0)))


def test_a_device_rebuilds_the_masked_model_and_counts_the_mask_download(
    masked_run: Path, synthetic_csv: str  # noqa: F811
) -> None:
    clear_cache()
    users = load_users(synthetic_csv)[0]
    srv = EmbeddedServer(ServerConfig(run_dir=masked_run, grace_s=0.5)).start()
    try:
        report = _device(srv.address, users, 1).run()
        assert report.status == "completed", report.detail
        assert report.weights_download_bytes == (masked_run / MASK_FILE).stat().st_size
        assert all(r.strategy_source == "cloud" and r.n_targets == 2 for r in report.rounds)
        cached, hit = get_backbone(spec_from_proto(_spec(srv.address)))
        assert hit and cached.mask is not None and cached.source == "built+mask"
        assert weights_version(cached.model) == load_run(masked_run).version
    finally:
        srv.stop()
        clear_cache()


def test_a_device_refuses_a_tampered_mask(
    masked_run: Path, synthetic_csv: str, tmp_path: Path  # noqa: F811
) -> None:
    clear_cache()
    copy = tmp_path / "run"
    shutil.copytree(masked_run, copy)
    users = load_users(synthetic_csv)[0]
    srv = EmbeddedServer(ServerConfig(run_dir=copy, grace_s=0.5)).start()
    try:
        data = bytearray((copy / MASK_FILE).read_bytes())
        data[-40] ^= 0x01  # after the server published its id: what a device receives differs
        (copy / MASK_FILE).write_bytes(bytes(data))
        report = _device(srv.address, users, 2).run()
        assert report.status == "failed"
        assert report.reason == "setup:BackboneMismatchError" and "mask" in report.detail
    finally:
        srv.stop()
        clear_cache()


def _spec(address: str) -> Any:
    return Transport(address, RetryPolicy(call_timeout_s=10.0)).get_model_spec(
        spec_request_to_proto("probe"))[0]
