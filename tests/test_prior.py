"""The sensitivity prior under the hypernetwork: where training starts, and what a run stores."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from chord.config import SASRecConfig
from chord.hyper import HyperNetwork
from chord.hyper.prior import PriorImportance, standardize_prior
from chord.hyper.runs import RunConfig, RunError, load_run, prepare_run
from chord.models import build_backbone
from chord.quant import channel_layout
from tests.hyper_fixtures import synthetic_csv  # noqa: F401


def _wrapped() -> tuple[PriorImportance, torch.Tensor]:
    model = build_backbone(SASRecConfig(n_items=60, hidden=16, max_len=10), 0).eval()
    layout = channel_layout(model)
    net = HyperNetwork(layout, model.state_dim, model.state_dict(), hidden=16, seed=0)
    prior = standardize_prior(np.random.default_rng(0).lognormal(0, 3, layout.n_channels))
    return PriorImportance(net, prior), torch.randn(4, model.state_dim)


def test_standardized_prior_keeps_the_order() -> None:
    raw = np.array([1e-9, 3.0, 1e-3, 0.0, 50.0])
    prior = standardize_prior(raw).numpy()
    assert abs(prior.mean()) < 1e-6 and abs(prior.std() - 1) < 1e-5
    assert list(np.argsort(prior, kind="stable")) == list(np.argsort(raw, kind="stable"))


def test_training_starts_at_the_prior_and_learns_through_the_gate() -> None:
    model, profiles = _wrapped()
    out = model(profiles)
    assert torch.equal(out, model.get_buffer("prior").expand_as(out))
    out.pow(2).sum().backward()
    assert model.gate.grad is not None and model.gate.grad.abs() > 0
    with torch.no_grad():
        model.gate.fill_(0.5)
    assert not torch.equal(model.importance(profiles)[0], model.importance(profiles)[1])
    with torch.no_grad():  # the inference path importance takes (autograd's agrees to 1e-5)
        per_layer = model.channel_scores(profiles)
    assert torch.equal(torch.cat(per_layer, dim=1), model.importance(profiles))
    torch.testing.assert_close(
        torch.cat(model.channel_scores(profiles), dim=1).detach(), model.importance(profiles),
        atol=1e-5, rtol=0,
    )


def test_prior_must_cover_every_channel() -> None:
    model, _ = _wrapped()
    with pytest.raises(ValueError, match=r"scores .* channels"):
        PriorImportance(model.hyper, torch.zeros(model.n_channels + 1))


def test_run_stores_and_reloads_the_prior(synthetic_csv: str, tmp_path: Path) -> None:  # noqa: F811
    cfg = RunConfig.preset(
        "smoke", dataset=synthetic_csv, mode="pretrained", max_users=None, hyper_steps=10,
        hyper_eval_every=5, prior="fisher", allocation="quota",
    )
    run = load_run(prepare_run(cfg, tmp_path / "run"))
    assert isinstance(run.importance_model, PriorImportance)
    prior = run.importance_model.get_buffer("prior")
    assert prior.shape == (run.n_channels,) and float(prior.std()) > 0.5
    plain = load_run(prepare_run(RunConfig(**{**cfg.__dict__, "prior": "none"}), tmp_path / "p"))
    assert isinstance(plain.importance_model, HyperNetwork)
    with pytest.raises(RunError, match="prior must be one of"):
        RunConfig(prior="hessian")
    with pytest.raises(RunError, match="belongs to the quota rule"):
        RunConfig(prior="fisher")  # the rd rule (the default) measures its own prior
