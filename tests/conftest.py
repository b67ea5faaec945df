"""Session-wide test settings: quiet, deterministic, private local services only."""

from __future__ import annotations

import os

# A private local Ray cluster for tests: no token auth, no dashboard, no usage reporting.
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_DEDUP_LOGS", "0")

import torch

# Two cores are shared by the test process, Ray workers and gRPC threads.
torch.set_num_threads(1)

pytest_plugins = ["tests.ray_fixtures"]
