"""Session fixtures for fleet tests: one private local Ray and one small trained run per session."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def ray_session() -> Iterator[None]:
    """A local Ray with 2 CPUs (so 2 device actors), started once and always shut down."""
    import ray

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    path = os.environ.get("PYTHONPATH", "")
    if str(REPO_ROOT) not in path.split(os.pathsep):  # workers import device_client from here
        os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), path) if p)
    from simulator.runner import start_local_ray

    start_local_ray(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        yield
    finally:
        ray.shutdown()


@pytest.fixture(scope="session")
def smoke_run_dir() -> Path:
    """A tiny pretrained SASRec run on ML-100K (smoke preset), trained once and cached."""
    from chord.hyper.runs import RunConfig, prepare_run

    return prepare_run(
        RunConfig.preset("smoke", dataset="ml-100k", backbone="sasrec", mode="pretrained", seed=0)
    )


__all__ = ["ray_session", "smoke_run_dir"]
