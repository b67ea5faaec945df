"""Baselines of the accuracy table and the `chord eval` suite that runs them next to CHORD."""

from chord.baselines.duet import DuetConfig, DuetGenerator, DuetScorer, train_duet
from chord.baselines.finetune import FinetuneConfig, FinetuneScorer
from chord.baselines.rows import COLUMNS, METRICS, MethodRow, size_weighted_bits
from chord.baselines.static import (
    random_importance,
    static_levels,
    uniform_bits,
)
from chord.baselines.suite import ALL_METHODS, EvalConfig, EvalError, pick_tier, run_eval

__all__ = [
    "ALL_METHODS",
    "COLUMNS",
    "METRICS",
    "DuetConfig",
    "DuetGenerator",
    "DuetScorer",
    "EvalConfig",
    "EvalError",
    "FinetuneConfig",
    "FinetuneScorer",
    "MethodRow",
    "pick_tier",
    "random_importance",
    "run_eval",
    "size_weighted_bits",
    "static_levels",
    "train_duet",
    "uniform_bits",
]
