"""Every baseline of the accuracy table yields a valid row on a small synthetic dataset."""

from __future__ import annotations

import math

import numpy as np
import pytest

from chord.baselines import ALL_METHODS, METRICS, EvalConfig, EvalError, pick_tier, run_eval
from chord.levels import DEFAULT_TIERS
from tests.hyper_fixtures import synthetic_csv  # noqa: F401


def test_pick_tier_rules() -> None:
    assert pick_tier(2.0, None).name == "low"
    assert pick_tier(3.0, None).name == "mid"
    assert pick_tier(5.0, "high").name == "high"
    with pytest.raises(EvalError, match="strictly inside"):
        pick_tier(2.0, "mid")
    with pytest.raises(EvalError, match="unknown tier"):
        pick_tier(3.0, "tiny")


def test_every_method_gives_a_valid_row(synthetic_csv: str) -> None:  # noqa: F811
    cfg = EvalConfig(dataset=synthetic_csv, budget=3.0, preset="smoke", finetune_users=15,
                     finetune_steps=2, duet_steps=6, hyper_steps=6,
                     prior="none")  # six steps move a hypernetwork, not a zero-started gate
    result = run_eval(cfg)
    rows = result["rows"]
    pretrained = {r["method"]: r for r in rows if r["backbone_mode"] == "pretrained"}
    assert set(pretrained) == set(ALL_METHODS) - {"chord-random"}
    random_rows = {r["method"] for r in rows if r["backbone_mode"] == "random"}
    assert "chord-random" in random_rows and "fp32" in random_rows
    for r in rows:
        for k in METRICS:
            assert 0.0 <= r[k] <= 1.0 and not math.isnan(r[k])
        assert r["HR@5"] <= r["HR@10"] and r["NDCG@5"] <= r["NDCG@10"] <= r["HR@10"]
    for name in ("mixed-static", "mixed-random", "chord-pretrained"):
        assert abs(pretrained[name]["avg_bits"] - 3.0) <= 0.1, name
    assert pretrained["ptq-2"]["avg_bits"] == 2.0 and pretrained["fp32"]["avg_bits"] == 32.0
    chord = pretrained["chord-pretrained"]
    n_channels = sum(chord["level_counts_mean"])
    assert chord["bytes_down_per_user"] >= math.ceil(n_channels / 4) * 0.05
    assert chord["bytes_down_per_user"] < n_channels  # far below 4 bytes per weight
    assert chord["distinct_strategies"] > 1  # personalized
    duet = pretrained["duet"]
    assert duet["bytes_down_per_user"] > chord["bytes_down_per_user"]
    assert duet["avg_bits"] > 3.0  # its generated layer stays fp32
    assert pretrained["finetune"]["adapt_ms"] > 0
    assert result["meta"]["tier"] == "mid"
    # Per-user NDCG@10 for every row, over the same test users in split order.
    n_test = result["meta"]["test_users"]
    assert set(result["per_user"]) == {(r["backbone_mode"], r["method"]) for r in rows}
    for r in rows:
        v = result["per_user"][(r["backbone_mode"], r["method"])]
        assert v.shape == (n_test,)
        measured = ~np.isnan(v)
        assert measured.sum() == (15 if r["method"] == "finetune" else n_test), r["method"]
        assert np.all((v[measured] >= 0) & (v[measured] <= 1))
        assert np.mean(v[measured]) == pytest.approx(r["NDCG@10"], abs=1e-5)
    assert np.isclose(pretrained["fp32"]["NDCG@10"], pretrained["ptq-8"]["NDCG@10"], atol=0.05)


def test_unknown_method_is_rejected() -> None:
    with pytest.raises(EvalError, match="unknown methods"):
        run_eval(EvalConfig(methods=("fp32", "magic")))
    assert DEFAULT_TIERS["mid"].level_bits == (2, 3, 4, 8)
