"""The hypernetwork's grouped, in-place inference path equals the per-layer formula."""

from __future__ import annotations

import pytest
import torch
from torch.nn import functional as F

from chord.config import CaserConfig, SASRecConfig
from chord.hyper import HyperNetwork
from chord.models import build_backbone
from chord.quant import channel_layout


def _net(kind: str) -> HyperNetwork:
    cfg = (
        SASRecConfig(n_items=60, hidden=16, max_len=10)
        if kind == "sasrec"
        else CaserConfig(n_items=60, embed=12)
    )
    model = build_backbone(cfg, 0).eval()
    return HyperNetwork(channel_layout(model), model.state_dim, model.state_dict(), hidden=16)


def _reference(net: HyperNetwork, profiles: torch.Tensor) -> torch.Tensor:
    """The per-layer formula the class docstring states, one layer at a time."""
    h = net.trunk(net.norm(profiles.float()))
    layer_w = F.softplus(net.layer_head(h))
    r = net.config.rank
    out = []
    for i, (_, n_in) in enumerate(net.shapes):
        w = getattr(net, f"ref{i}")
        a = net.elem_a[i](h).view(-1, n_in, r)
        v = net.elem_v[i](h).view(-1, n_in, r)
        s = torch.einsum("bor,bjr->boj", torch.einsum("oj,bjr->bor", w, a), v)
        elem = (s * w).abs().mean(-1)
        filt = torch.einsum("oj,bj->bo", w, net.filt[i](h)) / n_in**0.5 + net.filt_bias[i]
        out.append(layer_w[:, i : i + 1] * (elem + filt))
    return torch.cat(out, dim=1)


@pytest.mark.parametrize("kind", ["sasrec", "caser"])
def test_grouped_path_equals_per_layer_formula(kind: str) -> None:
    net = _net(kind)
    assert len(net._groups) < len(net.shapes)  # some layers share a shape and run together
    profiles = torch.randn(70, net.profile_dim, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = _reference(net, profiles)
    torch.testing.assert_close(net.importance(profiles), want, atol=1e-5, rtol=0)
    with torch.inference_mode():
        torch.testing.assert_close(net.importance(profiles[:3]), want[:3], atol=1e-5, rtol=0)
    # With autograd: same values, and gradients reach every head.
    got = net(profiles[:4])
    torch.testing.assert_close(got.detach(), want[:4], atol=1e-5, rtol=0)
    got.square().sum().backward()
    assert all(p.grad is not None for p in net.parameters())


def test_state_dict_unchanged_and_cache_follows_updates() -> None:
    net = _net("sasrec")
    keys = set(net.state_dict())
    assert not any(k.startswith(("gref", "gidx", "ref")) for k in keys)
    profiles = torch.randn(5, net.profile_dim, generator=torch.Generator().manual_seed(2))
    before = net.importance(profiles)
    opt = torch.optim.SGD(net.parameters(), lr=0.5)
    net(profiles).sum().backward()
    opt.step()  # in-place update: the packed heads must not go stale
    after = net.importance(profiles)
    assert not torch.allclose(before, after)
    with torch.no_grad():
        torch.testing.assert_close(after, _reference(net, profiles), atol=1e-5, rtol=0)
    clone = _net("sasrec")
    clone.load_state_dict(net.state_dict())
    torch.testing.assert_close(clone.importance(profiles), after, atol=1e-6, rtol=0)
