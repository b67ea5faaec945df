"""The hypernetwork's fused inference kernel against its autograd formula, and numba's cache."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from chord.hyper.runs import ChordRun, load_run
from chord.levels import assign_levels_batch
from tests.server_fixtures import tiny_run_dir


def _served_profiles(run: ChordRun, n_histories: int, n_random: int) -> torch.Tensor:
    """Profiles as devices send them (the run's profiler over random histories of 1..max_len
    items) and standard-normal ones, [n_histories + n_random, profile_dim]."""
    rng = np.random.default_rng(0)
    max_len, n_items = int(run.backbone.max_len), int(run.backbone.n_items)
    seqs = torch.zeros(n_histories, max_len, dtype=torch.long)
    for row in range(n_histories):
        n = int(rng.integers(1, max_len + 1))
        seqs[row, max_len - n :] = torch.from_numpy(rng.integers(1, n_items + 1, size=n))
    with torch.no_grad():
        devices = run.profile(seqs)
    noise = torch.from_numpy(rng.standard_normal((n_random, devices.shape[1])).astype(np.float32))
    return torch.cat([devices, noise])


def test_served_importance_and_levels_equal_the_autograd_formula() -> None:
    run = load_run(tiny_run_dir())
    model = run.importance_model.eval()
    profiles = _served_profiles(run, 200, 100)
    fast = model.importance(profiles)  # no autograd: the fused kernel
    with torch.enable_grad():
        slow = model(profiles).detach()  # autograd: the [B, L, n_out, n_in] torch formula
    assert fast.shape == slow.shape == (300, run.n_channels)
    scale = slow.abs().amax(dim=1, keepdim=True)
    assert ((fast - slow).abs() <= 1e-5 * scale).all()
    assert not torch.equal(fast[0], fast[1])  # profiles do move the importance
    sizes = np.asarray(run.layout.channel_sizes(), dtype=np.int64)
    for tier in run.tiers.values():
        budgets = [tier.default_budget_bits] * len(profiles)
        tiers = [tier] * len(profiles)
        got = assign_levels_batch(fast.numpy(), sizes, tiers, budgets, run.level_cost)
        want = assign_levels_batch(slow.numpy(), sizes, tiers, budgets, run.level_cost)
        assert all(isinstance(x, np.ndarray) for x in want)
        assert all(np.array_equal(g, w) for g, w in zip(got, want, strict=True)), tier.name  # type: ignore[arg-type]


_NO_CACHE = """
import numba.core.caching as caching
impl = getattr(caching, "CacheImpl", None) or caching._CacheImpl  # renamed in numba 0.6x
impl._locator_classes = []  # as where no directory can be written
import numpy as np, torch
from chord.config import SASRecConfig
from chord.hyper import HyperNetwork
from chord.models import build_backbone
from chord.quant import channel_layout
model = build_backbone(SASRecConfig(n_items=30, hidden=8, max_len=5), 0)
net = HyperNetwork(channel_layout(model), model.state_dim, model.state_dict(), hidden=8)
x = torch.randn(3, model.state_dim)
with torch.enable_grad():
    want = net(x).detach()
torch.testing.assert_close(net.importance(x), want, atol=1e-5, rtol=0)
from chord.hyper.score_kernel import group_scores
assert type(group_scores._cache).__name__ == "NullCache", group_scores._cache
print("served without a cache")
"""


def test_kernel_compiles_in_memory_where_numba_cannot_cache(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    env.pop("NUMBA_CACHE_DIR", None)
    done = subprocess.run(
        [sys.executable, "-c", _NO_CACHE], env=env, cwd=tmp_path, capture_output=True,
        text=True, timeout=300, check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "served without a cache" in done.stdout


@pytest.mark.parametrize("rank", [1, 3, 4])
def test_every_rank_and_width_matches(rank: int) -> None:
    """Ranks other than 4 take the general loop; rank 4 takes four j per pass and the general
    loop for what a width not divisible by 4 leaves over."""
    from chord.config import CaserConfig
    from chord.hyper import HyperNetwork
    from chord.models import build_backbone
    from chord.quant import channel_layout

    model = build_backbone(CaserConfig(n_items=40, embed=10), 0)
    net = HyperNetwork(channel_layout(model), model.state_dim, model.state_dict(), rank=rank,
                       hidden=12)
    assert any(n_in % 4 for _, n_in in net.shapes) and any(n_in % 4 == 0 for _, n_in in net.shapes)
    profiles = torch.randn(9, model.state_dim, generator=torch.Generator().manual_seed(rank))
    with torch.enable_grad():
        want = net(profiles).detach()
    torch.testing.assert_close(net.importance(profiles), want, atol=1e-5, rtol=0)


def test_served_batch_matches_its_levels_and_the_unbatched_rule() -> None:
    """StrategyEngine.compute on a mixed batch: each reply decodes to the levels the numpy rule
    assigns to that profile alone, with the counts and mean bits of those levels."""
    from chord.codes import decode_levels
    from chord.levels import average_bits
    from chord.strategy import StrategyRequest, StrategyResult
    from cloud_server.engine import StrategyEngine

    engine = StrategyEngine.from_run_dir(tiny_run_dir())
    run, spec = engine.run, engine.spec
    profiles = _served_profiles(run, 20, 10).numpy()
    names = list(run.tiers)
    requests = [
        StrategyRequest(f"d{i}", f"r{i}", spec.version, names[i % len(names)],
                        run.tiers[names[i % len(names)]].default_budget_bits, profile=profiles[i],
                        reference_id=spec.reference_id if i % 2 else "")
        for i in range(len(profiles))
    ]
    sizes = np.asarray(run.layout.channel_sizes(), dtype=np.int64)
    for req, result in zip(requests, engine.compute(requests), strict=True):
        assert isinstance(result, StrategyResult), result
        tier = run.tiers[req.tier]
        ref = engine._reference_for(req, tier)
        levels = decode_levels(result.code, spec.version, run.n_channels, reference=ref)
        imp = run.importance_model.importance(torch.from_numpy(req.profile[None]))  # type: ignore[index]
        (want,) = assign_levels_batch(imp.numpy(), sizes, [tier], [req.budget_bits],
                                      run.level_cost)
        np.testing.assert_array_equal(levels, want)  # type: ignore[arg-type]
        assert result.level_counts == tuple(np.bincount(levels, minlength=4))
        assert result.avg_bits == average_bits(levels, sizes, tier)
