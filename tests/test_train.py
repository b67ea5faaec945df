"""Tests of backbone training, the `chord train` command and its outputs (tiny synthetic data)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from chord.checkpoint import load_backbone
from chord.cli import main as cli_main
from chord.config import CaserConfig, SASRecConfig
from chord.train import (
    TrainConfig,
    TrainConfigError,
    backbone_config_for,
    train_backbone,
    training_examples,
)

N_ITEMS = 130
KEYS = {"HR@5", "HR@10", "NDCG@5", "NDCG@10"}


@pytest.fixture(autouse=True)
def _private_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test gets its own dataset cache."""
    monkeypatch.setenv("CHORD_CACHE_DIR", str(tmp_path / "cache"))


@pytest.fixture
def patterned(tmp_path: Path) -> Path:
    """A CSV where each user walks the catalogue in steps of one: item i is followed by i + 1."""
    lines = []
    for user in range(40):
        start = (user * 7) % N_ITEMS
        for step in range(12):
            lines.append(f"u{user},{(start + step) % N_ITEMS + 1},{step}")
    path = tmp_path / "walk.csv"
    path.write_text("\n".join(lines) + "\n")
    return path


def tiny(path: Path, backbone: str, **kw: object) -> TrainConfig:
    """A fast training config on the patterned file."""
    base: dict[str, object] = {
        "dataset": str(path),
        "backbone": backbone,
        "epochs": 1,
        "batch_size": 64,
        "hidden": 16,
        "progress": False,
    }
    base.update(kw)
    return TrainConfig(**base)  # type: ignore[arg-type]


def test_training_examples_shapes() -> None:
    train = [np.array([1, 2, 3, 4]), np.array([5]), np.array([6, 7])]
    x, y = training_examples(train, SASRecConfig(n_items=9, max_len=3))
    assert x.tolist() == [[1, 2, 3], [0, 0, 6]]
    assert y.tolist() == [[2, 3, 4], [0, 0, 7]]
    x, y = training_examples(train, CaserConfig(n_items=9, max_len=2))
    assert x.tolist() == [[0, 1], [1, 2], [2, 3], [0, 6]]
    assert y.tolist() == [2, 3, 4, 7]


def test_backbone_config_defaults() -> None:
    cfg = TrainConfig(dataset="ml-1m")
    assert backbone_config_for(cfg, 10, "ml-1m") == SASRecConfig(n_items=10, max_len=200)
    assert backbone_config_for(cfg, 10, "ml-100k") == SASRecConfig(n_items=10)
    caser = TrainConfig(dataset="ml-1m", backbone="caser", hidden=8)
    assert backbone_config_for(caser, 10, "ml-1m") == CaserConfig(n_items=10, embed=8)
    with pytest.raises(TrainConfigError, match="backbone"):
        TrainConfig(dataset="x", backbone="gru")
    with pytest.raises(TrainConfigError, match="loss"):
        TrainConfig(dataset="x", loss="hinge")


@pytest.mark.parametrize("backbone", ["sasrec", "caser"])
def test_one_epoch_smoke(patterned: Path, backbone: str) -> None:
    result = train_backbone(tiny(patterned, backbone))
    m = result.metrics
    assert (m["dataset"], m["backbone"], m["n_users"], m["n_items"]) == (
        "walk",
        backbone,
        40,
        N_ITEMS,
    )
    for stage in ("valid", "test", "test_full"):
        assert set(m[stage]) == KEYS
        assert all(0.0 <= v <= 1.0 for v in m[stage].values())
    assert len(result.history) == 1 and np.isfinite(result.history[0]["loss"])
    assert not result.model.training


def test_learns_a_simple_pattern(patterned: Path) -> None:
    result = train_backbone(tiny(patterned, "sasrec", epochs=15, lr=1e-2, dropout=0.0))
    # the next item is always previous + 1: far above the ~0.1 of random ranking
    assert result.metrics["test"]["HR@10"] > 0.5
    assert result.history[-1]["loss"] < result.history[0]["loss"]


@pytest.mark.parametrize("backbone", ["sasrec", "caser"])
def test_same_seed_same_weights_and_metrics(patterned: Path, backbone: str) -> None:
    a = train_backbone(tiny(patterned, backbone, epochs=2, seed=7))
    b = train_backbone(tiny(patterned, backbone, epochs=2, seed=7))
    for (name, x), y in zip(
        a.model.state_dict().items(), b.model.state_dict().values(), strict=True
    ):
        assert torch.equal(x, y), name
    drop = ("train_seconds",)
    assert {k: v for k, v in a.metrics.items() if k not in drop} == {
        k: v for k, v in b.metrics.items() if k not in drop
    }
    c = train_backbone(tiny(patterned, backbone, epochs=1, seed=8))
    assert not torch.equal(a.model.item_emb.weight, c.model.item_emb.weight)


def test_early_stopping_keeps_best_epoch(patterned: Path) -> None:
    result = train_backbone(tiny(patterned, "caser", epochs=30, patience=1, lr=0.05))
    ndcg = [h["valid_NDCG@10"] for h in result.history]
    best = result.metrics["best_epoch"]
    assert ndcg[best - 1] == max(ndcg)
    assert len(result.history) < 30 or best == 30
    assert result.metrics["valid"]["NDCG@10"] == pytest.approx(max(ndcg))


def test_cli_train_writes_backbone_and_metrics(
    patterned: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    code = cli_main(
        [
            "train",
            "--dataset",
            str(patterned),
            "--format",
            "csv",
            "--backbone",
            "sasrec",
            "--epochs",
            "1",
            "--hidden",
            "16",
            "--no-progress",
            "--out",
            str(out),
        ]
    )
    assert code == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert {
        "dataset",
        "backbone",
        "n_users",
        "n_items",
        "valid",
        "test",
        "test_full",
        "train_seconds",
    } <= set(metrics)
    raw = torch.load(out / "backbone.pt", weights_only=True)
    assert json.loads(raw["config"])["hidden"] == 16
    model, meta = load_backbone(out / "backbone.pt")
    assert meta["version"] == metrics["version"] == raw["version"]
    assert model.n_items == N_ITEMS
    assert '"test"' in capsys.readouterr().out


def test_cli_train_reports_bad_input(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = cli_main(["train", "--dataset", "ml-5k", "--out", str(tmp_path / "x")])
    assert code == 2
    assert "ml-100k" in capsys.readouterr().err
    bad = tmp_path / "bad.dat"
    bad.write_text("1::2::3\n")
    code = cli_main(
        ["train", "--dataset", str(bad), "--format", "movielens-dat", "--out", str(tmp_path / "y")]
    )
    assert code == 2
    assert f"{bad}:1:" in capsys.readouterr().err


def _cli_train(path: Path, out: Path, *extra: str) -> int:
    """`chord train` on a file with a tiny model, one or two epochs, no progress bar."""
    return cli_main(["train", "--dataset", str(path), "--hidden", "16", "--batch-size", "64",
                     "--no-progress", "--out", str(out), *extra])


def test_cli_train_lr_1e8_stops_with_a_clear_error(
    patterned: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The issue's case: --lr 1e8 used to exit 0 with HR@10 = 1.0; now it stops, exit 1."""
    out = tmp_path / "run"
    code = _cli_train(patterned, out, "--lr", "1e8", "--epochs", "3")
    err = capsys.readouterr().err
    assert code == 1
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("chord train: error: training diverged: ")
    assert "lr=1e+08" in lines[0]
    assert not (out / "metrics.json").exists()  # nothing diverged is written


def test_train_config_refuses_non_finite_options(patterned: Path) -> None:
    for kw, field in (({"lr": float("nan")}, "lr"), ({"lr": float("inf")}, "lr"),
                      ({"weight_decay": -1.0}, "weight_decay"), ({"dropout": 1.0}, "dropout"),
                      ({"n_negatives": 0}, "negatives"), ({"ranking": "top"}, "ranking")):
        with pytest.raises(TrainConfigError, match=field):
            tiny(patterned, "sasrec", **kw)


@pytest.fixture
def small_catalogue(tmp_path: Path) -> Path:
    """30 users over a catalogue of 75 items; user 'u7' touches 10 items."""
    lines = []
    for user in range(30):
        for step in range(10):
            lines.append(f"u{user},{(user * 3 + step) % 75 + 1},{step}")
    path = tmp_path / "small.csv"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_cli_train_small_catalogue_refused_before_training(
    small_catalogue: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The issue's case: 75 items cannot give 100 unseen negatives; one error line at start."""
    code = _cli_train(small_catalogue, tmp_path / "run", "--epochs", "1")
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert err == [
        "chord train: error: small: sampled ranking needs 100 unseen negatives per user, "
        "but user u0 touched 10 of 75 items, leaving 65 unseen (the fewest of any user); pass "
        "--negatives 65 or fewer, or --full-ranking"
    ]
    code = _cli_train(small_catalogue, tmp_path / "run", "--epochs", "1", "--negatives", "70")
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert err == [
        "chord train: error: small: sampled ranking needs 70 unseen negatives per user, but user "
        "u0 touched 10 of 75 items, leaving 65 unseen (the fewest of any user); pass --negatives "
        "65 or fewer, or --full-ranking"
    ]


@pytest.mark.parametrize("flags", [("--negatives", "50"), ("--full-ranking",)])
def test_cli_train_small_catalogue_with_a_fitting_protocol(
    small_catalogue: Path, tmp_path: Path, flags: tuple[str, ...]
) -> None:
    out = tmp_path / "run"
    assert _cli_train(small_catalogue, out, "--epochs", "1", *flags) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    full = flags == ("--full-ranking",)
    assert metrics["protocol"] == {"ranking": "full" if full else "sampled",
                                   "n_negatives": None if full else 50}
    groups = ("valid_full", "test_full") if full else ("valid", "test", "test_full")
    assert set(groups) <= set(metrics) and ("valid" in metrics) != full
    for group in groups:
        assert all(0.0 <= v <= 1.0 for v in metrics[group].values())


def test_diverged_training_raises_instead_of_keeping_an_epoch(patterned: Path) -> None:
    """Early stopping never sees a diverged epoch: the first non-finite loss or weight stops it."""
    from chord.divergence import DivergedError

    with pytest.raises(DivergedError, match=r"^training diverged: (loss is (nan|inf)|weight \S+ is "
                       r"not finite) at (epoch \d+ batch \d+|the end of epoch \d+); lower the "):
        train_backbone(tiny(patterned, "sasrec", lr=1e8, epochs=5, patience=5))


def test_cli_train_out_that_is_a_file_is_refused(
    patterned: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    target = tmp_path / "taken"
    target.write_text("x")
    assert _cli_train(patterned, target, "--epochs", "1") == 2
    assert capsys.readouterr().err.strip() == (
        f"chord train: error: --out '{target}' is a file; send a directory path"
    )


def test_cli_train_cache_dir_that_is_a_file_is_refused(
    patterned: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    cache = tmp_path / "cache-file"
    cache.write_text("x")
    monkeypatch.setenv("CHORD_CACHE_DIR", str(cache))
    assert _cli_train(patterned, tmp_path / "run", "--epochs", "1") == 2
    assert capsys.readouterr().err.strip() == (
        f"chord train: error: $CHORD_CACHE_DIR '{cache}' is a file; set it to a directory (or "
        "unset it for ~/.cache/chord)"
    )


def test_cli_train_refuses_more_threads_than_can_work(
    patterned: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--threads 100000 crashed torch's thread pool (exit 139, no output); now one line, exit 2,
    and no --out directory is created."""
    out = tmp_path / "run"
    with pytest.raises(SystemExit) as info:
        _cli_train(patterned, out, "--threads", "100000")
    assert info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("chord train: error: argument --threads: 100000 threads is above ")
    most = 4 * len(os.sched_getaffinity(0))
    assert err[-1].endswith(f" (4 per usable core); send 1..{most}")
    assert not out.exists()
