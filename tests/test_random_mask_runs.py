"""Random-mode runs with a learned mask: prepared, reloaded, scored and rebuilt like a device."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from chord.evaluation import evaluate
from chord.hyper import PersonalScorer, RunConfig, load_run, prepare_run
from chord.hyper.personal import LevelBank, one_hot_levels
from chord.hyper.runs import MASK_FILE, RunError, load_split
from chord.masks import decode_mask, personal_weights, rebuild_backbone
from chord.models import build_backbone
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
    with pytest.raises(RunError, match="mask.chmk"):
        load_run(copy)
