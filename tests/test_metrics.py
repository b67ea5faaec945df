"""Tests of chord.metrics and chord.evaluation against hand-computed cases."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from chord.data import Split, leave_one_out
from chord.data.interactions import InteractionData
from chord.evaluation import eval_negatives, evaluate
from chord.metrics import full_ranks, rank_metrics, sample_negatives, target_ranks


def test_rank_metrics_hand_computed() -> None:
    m = rank_metrics(np.array([0, 1, 4, 5, 9, 10]))
    assert m["HR@5"] == pytest.approx(3 / 6)
    assert m["HR@10"] == pytest.approx(5 / 6)
    ndcg5 = (1 + 1 / math.log2(3) + 1 / math.log2(6)) / 6
    assert m["NDCG@5"] == pytest.approx(ndcg5)
    assert m["NDCG@10"] == pytest.approx(ndcg5 + (1 / math.log2(7) + 1 / math.log2(11)) / 6)
    assert list(m) == ["HR@5", "HR@10", "NDCG@5", "NDCG@10"]


def test_target_ranks_ties_count_against_target() -> None:
    scores = torch.tensor([[3.0, 1.0, 2.0], [1.0, 5.0, 1.0], [2.0, 2.0, 2.0]])
    assert target_ranks(scores).tolist() == [0, 2, 2]
    assert target_ranks(scores, target_col=1).tolist() == [2, 0, 2]


def test_full_ranks_ignore_padding_mask_history_keep_target() -> None:
    scores = torch.tensor([[100.0, 1.0, 5.0, 3.0, 2.0], [100.0, 1.0, 5.0, 3.0, 2.0]])
    targets = torch.tensor([3, 3])
    assert full_ranks(scores, targets).tolist() == [1, 1]  # only item 2 beats item 3
    hist = [np.array([2]), np.array([3, 4])]
    assert full_ranks(scores, targets, hist).tolist() == [0, 1]  # item 2 masked; target kept


def test_sample_negatives_unseen_distinct_seeded() -> None:
    seen = [np.arange(1, 51), np.array([7]), np.array([1, 2, 3])]
    a = sample_negatives(200, seen, 100, seed=3)
    assert a.shape == (3, 100)
    for row, items in zip(a, seen, strict=True):
        assert len(set(row.tolist())) == 100
        assert not np.isin(row, items).any()
        assert row.min() >= 1 and row.max() <= 200
    assert np.array_equal(a, sample_negatives(200, seen, 100, seed=3))
    assert not np.array_equal(a, sample_negatives(200, seen, 100, seed=4))
    with pytest.raises(ValueError, match="cannot draw"):
        sample_negatives(120, [np.arange(1, 30)], 100)


def small_split() -> Split:
    """Six users over 150 items with fixed sequences."""
    rng = np.random.default_rng(0)
    seqs = [rng.choice(np.arange(1, 151), size=8, replace=False) for _ in range(6)]
    data = InteractionData("toy", seqs, 150, np.array(list("abcdef")), np.arange(150).astype(str))
    return leave_one_out(data)


def test_evaluate_with_oracle_and_constant_score_functions() -> None:
    split = small_split()
    targets = {s: torch.from_numpy(split.stage(s).targets) for s in ("valid", "test")}

    def oracle(stage: str):  # the target always scores 1, everything else 0
        def fn(seqs: torch.Tensor, cands: torch.Tensor | None, users: torch.Tensor) -> torch.Tensor:
            t = targets[stage][users]
            if cands is None:
                out = torch.zeros(len(users), split.n_items + 1)
                out[torch.arange(len(users)), t] = 1.0
                return out
            return (cands == t[:, None]).float()

        return fn

    def constant(seqs: torch.Tensor, cands: torch.Tensor | None, users: torch.Tensor):
        width = split.n_items + 1 if cands is None else cands.shape[1]
        return torch.zeros(len(users), width)

    for stage in ("valid", "test"):
        for full in (False, True):
            m = evaluate(oracle(stage), split, stage, full=full, batch_size=4)
            assert m == {"HR@5": 1.0, "HR@10": 1.0, "NDCG@5": 1.0, "NDCG@10": 1.0}
            assert evaluate(constant, split, stage, full=full)["HR@10"] == 0.0
    part = evaluate(oracle("test"), split, "test", users=np.array([1, 3]))
    assert part["HR@10"] == 1.0


def test_eval_negatives_depend_on_stage_and_seed_only() -> None:
    split = small_split()
    a = eval_negatives(split, "test", 100, seed=0)
    assert np.array_equal(a, eval_negatives(split, "test", 100, seed=0))
    assert not np.array_equal(a, eval_negatives(split, "valid", 100, seed=0))
    assert not np.array_equal(a, eval_negatives(split, "test", 100, seed=1))


NAN, INF = float("nan"), float("inf")


def test_nan_row_is_a_miss_not_a_perfect_hit() -> None:
    """The issue's case: a row of NaN scores used to rank the target at -1 (HR@10 1.0, NDCG inf)."""
    ranks = target_ranks(torch.full((3, 101), NAN))
    assert ranks.tolist() == [100, 100, 100]
    m = rank_metrics(ranks)
    assert m == {"HR@5": 0.0, "HR@10": 0.0, "NDCG@5": 0.0, "NDCG@10": 0.0}
    full = full_ranks(torch.full((2, 6), NAN), torch.tensor([1, 4]), [np.array([2]), np.array([])])
    assert full.tolist() == [3, 4]  # last among the ranked items (padding and history dropped)


@pytest.mark.parametrize("bad", [NAN, INF, -INF])
def test_non_finite_score_anywhere_counts_against_the_target(bad: float) -> None:
    # target column 0 would rank first on its finite scores; one non-finite negative costs it 1
    scores = torch.tensor([[5.0, 1.0, bad, 2.0], [bad, 1.0, 2.0, 3.0]])
    assert target_ranks(scores).tolist() == [1, 3]
    full = torch.tensor([[0.0, 5.0, 1.0, bad, 2.0], [0.0, bad, 1.0, 2.0, 3.0]])
    assert full_ranks(full, torch.tensor([1, 1])).tolist() == [1, 3]
    # a masked (history) item's score is not ranked, finite or not
    assert full_ranks(full, torch.tensor([1, 1]), [np.array([3]), np.array([])]).tolist() == [0, 3]


def test_every_metric_in_unit_range_for_any_scores() -> None:
    rng = np.random.default_rng(0)
    pool = np.array([NAN, INF, -INF, 0.0, 1.0, -1.0, 1e38, -1e38])
    for _ in range(50):
        scores = torch.from_numpy(rng.choice(pool, size=(16, 12)).astype(np.float32))
        for ranks in (target_ranks(scores), full_ranks(scores, torch.full((16,), 3))):
            assert ranks.min() >= 0
            for value in rank_metrics(ranks).values():
                assert 0.0 <= value <= 1.0


def test_rank_metrics_refuses_ranks_below_zero() -> None:
    with pytest.raises(ValueError, match=">= 0"):
        rank_metrics(np.array([-1, 0]))


def test_evaluate_nan_model_scores_zero_sampled_and_full() -> None:
    split = small_split()

    def nan_scores(
        seqs: torch.Tensor, cands: torch.Tensor | None, users: torch.Tensor
    ) -> torch.Tensor:
        cols = split.n_items + 1 if cands is None else cands.shape[1]
        return torch.full((len(seqs), cols), NAN)

    for full in (False, True):
        m = evaluate(nan_scores, split, "test", full=full)
        assert m == {"HR@5": 0.0, "HR@10": 0.0, "NDCG@5": 0.0, "NDCG@10": 0.0}
