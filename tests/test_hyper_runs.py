"""Run directories: prepare, reuse, load, and the errors for broken or mismatched ones."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from chord.checkpoint import weights_version
from chord.hyper import ChordRun, RunConfig, RunError, load_run, prepare_run
from chord.strategy import ImportanceModel
from tests.hyper_fixtures import synthetic_csv  # noqa: F401


@pytest.fixture(scope="module")
def run_dir(synthetic_csv: str) -> Path:  # noqa: F811
    # The same config as the smoke runs of `chord eval` in the other tests, so it is reused.
    cfg = RunConfig.preset("smoke", dataset=synthetic_csv, mode="random", max_users=None,
                           hyper_steps=6)
    return prepare_run(cfg)


def test_round_trip_fields_and_profile(run_dir: Path) -> None:
    run = load_run(run_dir)
    assert isinstance(run, ChordRun)
    meta = json.loads((run_dir / "run.json").read_text())
    assert run.mode == meta["mode"] == "random" and run.seed == 0
    assert run.version == meta["version"] == weights_version(run.backbone)
    assert run.profile_dim == run.backbone.state_dim == meta["profile_dim"]
    assert run.n_channels == run.layout.n_channels == meta["n_channels"]
    assert set(run.tiers) == {"low", "mid", "high"}
    assert meta["backbone_config"]["kind"] == "sasrec" and not run.backbone.training
    model: ImportanceModel = run.importance_model
    seqs = torch.tensor([[0, 0, 3, 4, 5], [1, 2, 3, 9, 11]])
    prof = run.profile(seqs)
    assert prof.shape == (2, run.profile_dim)
    imp = model.importance(prof)
    assert imp.shape == (2, run.n_channels)
    again = load_run(run_dir)
    assert torch.equal(imp, again.importance_model.importance(again.profile(seqs)))


def test_prepare_reuses_matching_dir(run_dir: Path, synthetic_csv: str) -> None:  # noqa: F811
    cfg = RunConfig(**json.loads((run_dir / "run.json").read_text())["run_config"])
    before = (run_dir / "hypernet.pt").stat().st_mtime_ns
    assert prepare_run(cfg, run_dir) == run_dir
    assert (run_dir / "hypernet.pt").stat().st_mtime_ns == before


def test_load_errors_name_the_problem(run_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(RunError, match="does not exist"):
        load_run(tmp_path / "nope")
    broken = tmp_path / "broken"
    shutil.copytree(run_dir, broken)
    (broken / "hypernet.pt").unlink()
    with pytest.raises(RunError, match=r"hypernet\.pt"):
        load_run(broken)
    tampered = tmp_path / "tampered"
    shutil.copytree(run_dir, tampered)
    meta = json.loads((tampered / "run.json").read_text())
    meta["version"] = "0" * 16
    (tampered / "run.json").write_text(json.dumps(meta))
    with pytest.raises(RunError, match="version"):
        load_run(tampered)


def test_run_config_rejects_unknown_mode() -> None:
    with pytest.raises(RunError, match="mode"):
        RunConfig(mode="trained")
    with pytest.raises(RunError, match="preset"):
        RunConfig.preset("huge")


def test_runs_fold_a_trained_caser_unless_told_not_to(synthetic_csv: str) -> None:  # noqa: F811
    from chord.hyper.runs import load_split, obtain_backbone

    cfg = RunConfig.preset("smoke", dataset=synthetic_csv, backbone="caser", mode="pretrained")
    # Random-mode backbones stay as built: devices rebuild them from seed and config.
    _, random_info = obtain_backbone(RunConfig(**{**cfg.__dict__, "mode": "random"}),
                                     load_split(cfg))
    assert "folded_for_quantization" not in random_info
    split = load_split(cfg)
    folded, info = obtain_backbone(cfg, split)
    plain, plain_info = obtain_backbone(RunConfig(**{**cfg.__dict__, "fold": False}), split)
    assert info.get("folded_for_quantization") and "folded_for_quantization" not in plain_info
    assert cfg.key() != RunConfig(**{**cfg.__dict__, "fold": False}).key()
    rows = folded.out_emb.weight[1:]
    assert float(rows.mean(0).norm()) < 1e-5 < float(plain.out_emb.weight[1:].mean(0).norm())
    assert torch.allclose(rows, plain.out_emb.weight[1:] - plain.out_emb.weight[1:].mean(0))
