"""Shared fixtures of the CHORD method tests: a small synthetic dataset with per-user patterns."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest


def write_synthetic(path: Path, n_users: int = 80, n_items: int = 150, seed: int = 0) -> Path:
    """A `user item timestamp` CSV where each user walks the catalogue with a personal stride."""
    rng = np.random.default_rng(seed)
    lines = []
    for u in range(n_users):
        stride = int(rng.integers(1, 4))
        item = int(rng.integers(0, n_items))
        for t in range(int(rng.integers(15, 26))):
            lines.append(f"u{u} i{item} {t}")
            step = stride if rng.random() < 0.85 else int(rng.integers(1, 10))
            item = (item + step) % n_items
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="module")
def synthetic_csv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Path of the synthetic dataset, with every cache redirected into a temporary folder.

    The folder is the same for every test module of a session, so trained backbones and runs
    cached by one module are reused by the next.
    """
    root = tmp_path_factory.getbasetemp() / "chord_hyper"
    root.mkdir(exist_ok=True)
    mp = pytest.MonkeyPatch()
    mp.setenv("CHORD_CACHE_DIR", str(root / "cache"))
    try:
        yield str(write_synthetic(root / "walks.csv"))
    finally:
        mp.undo()
