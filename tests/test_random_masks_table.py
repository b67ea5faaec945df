"""The random-mode table's bookkeeping: merging rows measured by separate invocations."""

from __future__ import annotations

from typing import Any

from benchmarks.random_masks import merged


def _row(dataset: str, budget: float | str, method: str, ndcg: float) -> dict[str, Any]:
    return {"dataset": dataset, "backbone": "sasrec", "width": 256, "budget": budget,
            "method": method, "NDCG@10": ndcg}


def test_budgets_measured_apart_fold_into_one_table_and_a_remeasured_row_replaces_its_old_one(
) -> None:
    first = [_row("ml-1m", "-", "shared-mask-fp32", 0.5), _row("ml-1m", 2.0, "chord", 0.4),
             _row("ml-1m", 3.0, "chord", 0.41), _row("ml-100k", 3.0, "chord", 0.42)]
    second = [_row("ml-1m", "-", "shared-mask-fp32", 0.51), _row("ml-1m", 4.0, "chord", 0.43)]
    out = merged(first, second)
    keys = [(r["dataset"], r["budget"], r["method"]) for r in out]
    assert keys == [("ml-1m", "-", "shared-mask-fp32"), ("ml-1m", 2.0, "chord"),
                    ("ml-1m", 3.0, "chord"), ("ml-1m", 4.0, "chord"),
                    ("ml-100k", 3.0, "chord")]
    assert out[0]["NDCG@10"] == 0.51  # the newer measurement wins


def test_meta_entries_are_replaced_per_dataset_backbone_and_width() -> None:
    def meta(width: int, tag: str) -> dict[str, Any]:
        return {"config": {"dataset": "ml-100k", "backbone": "caser", "width": width},
                "tag": tag}

    out = merged([meta(64, "old"), meta(256, "old")], [meta(64, "new")])
    assert [(m["config"]["width"], m["tag"]) for m in out] == [(64, "new"), (256, "old")]
