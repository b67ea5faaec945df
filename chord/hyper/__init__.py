"""CHORD's cloud side: the hypernetwork, its end-to-end training and the run directories."""

from chord.hyper.hypernet import HyperConfig, HyperNetError, HyperNetwork
from chord.hyper.runs import ChordRun, RunConfig, RunError, load_run, prepare_run
from chord.hyper.scoring import PersonalScorer
from chord.hyper.training import HyperTrainConfig, HyperTrainReport, train_hypernet

__all__ = [
    "ChordRun",
    "HyperConfig",
    "HyperNetError",
    "HyperNetwork",
    "HyperTrainConfig",
    "HyperTrainReport",
    "PersonalScorer",
    "RunConfig",
    "RunError",
    "load_run",
    "prepare_run",
    "train_hypernet",
]
