"""Serving snapshots (chord.hyper.frozen) against the hypernetwork's per-layer formula."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from chord.hyper import HyperNetError, HyperNetwork
from chord.hyper.frozen import FrozenPrior, serving_importance
from chord.hyper.prior import PriorImportance
from tests.test_hypernet_grouped import _net, _reference


def _profiles(net: HyperNetwork, n: int, seed: int = 3) -> torch.Tensor:
    return torch.randn(n, net.profile_dim, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("kind", ["sasrec", "caser"])
@pytest.mark.parametrize("batch", [1, 5])
def test_snapshot_equals_the_per_layer_formula(kind: str, batch: int) -> None:
    net = _net(kind).eval()
    profiles = _profiles(net, batch)
    with torch.inference_mode():
        got = net.frozen()(profiles)
    with torch.no_grad():
        want = _reference(net, profiles)
    assert got.shape == (batch, net.n_channels) and got.dtype == torch.float32
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)


def test_prior_snapshot_adds_the_gated_hypernetwork_to_the_prior() -> None:
    net = _net("sasrec").eval()
    prior = torch.linspace(-1, 1, net.n_channels)
    model = PriorImportance(net, prior, gate=0.7).eval()
    profiles = _profiles(net, 4)
    snap = serving_importance(model)
    assert isinstance(snap, FrozenPrior)
    with torch.inference_mode():
        got = snap(profiles)
        assert torch.equal(got, model.importance(profiles))  # the module's own serving path
    with torch.no_grad():
        want = prior.unsqueeze(0) + 0.7 * _reference(net, profiles)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)


def test_snapshot_keeps_the_weights_it_was_taken_with() -> None:
    net = _net("sasrec").eval()
    profiles = _profiles(net, 3)
    snap = net.frozen()
    with torch.inference_mode():
        before = snap(profiles)
    with torch.no_grad():
        net.filt_bias[0].add_(5.0)  # changes the module follows (its cache key sees them)
        first = net.trunk[0]
        assert isinstance(first, nn.Linear)
        first.weight.mul_(0.5)
        net.layer_head.bias.add_(1.0)
    with torch.inference_mode():
        assert torch.equal(snap(profiles), before)
        assert not torch.equal(net.importance(profiles), before)
        assert not torch.equal(net.frozen()(profiles), before)  # a new snapshot sees it


def test_a_trunk_of_another_shape_is_called_as_a_module() -> None:
    net = _net("sasrec").eval()
    hidden = net.config.hidden
    net.trunk = nn.Sequential(nn.Linear(net.profile_dim, hidden), nn.ReLU()).eval()
    profiles = _profiles(net, 2)
    with torch.no_grad():
        want = _reference(net, profiles)
        torch.testing.assert_close(net.frozen()(profiles), want, atol=1e-5, rtol=0)


def test_models_without_a_snapshot_are_served_by_their_importance_method() -> None:
    class Plain:  # chord.strategy.ImportanceModel without nn.Module
        profile_dim = 4

        def importance(self, profiles: torch.Tensor) -> torch.Tensor:
            return profiles * 2

    class PlainModule(nn.Module):
        profile_dim = 4

        def importance(self, profiles: torch.Tensor) -> torch.Tensor:
            return profiles * 3

    for model, factor in ((Plain(), 2.0), (PlainModule(), 3.0)):
        fn = serving_importance(model)
        assert torch.equal(fn(torch.ones(1, 4)), torch.full((1, 4), factor))


def test_snapshot_refuses_profiles_of_another_size() -> None:
    net = _net("caser")
    with pytest.raises(HyperNetError, match=rf"profiles must be \[batch, {net.profile_dim}\]"):
        net.frozen()(torch.zeros(2, net.profile_dim + 1))
