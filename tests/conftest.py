"""Session-wide test settings: quiet, deterministic, private local services only."""

from __future__ import annotations

import os
import tempfile

# A private local Ray cluster for tests: no token auth, no dashboard, no usage reporting.
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_DEDUP_LOGS", "0")

import torch

# Two cores are shared by the test process, Ray workers and gRPC threads.
torch.set_num_threads(1)

# Devices built without an explicit cache keep artifacts in a folder private to this session.
_DEVICE_CACHE = tempfile.TemporaryDirectory(prefix="chord-device-cache-")
os.environ["CHORD_DEVICE_CACHE"] = _DEVICE_CACHE.name

pytest_plugins = ["tests.ray_fixtures"]
