"""``condition(X, y)``: exact conditioning of the linearized regression posterior.

A linear model's Laplace posterior is the exact Bayesian linear regression posterior, so
conditioning it on new points must give the exact posterior on all points (1e-10,
float64), in both precision forms, over all weights and over the last layer.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from laplace import FullLaplace, Laplace

DT = torch.float64
TOL = dict(rtol=1e-10, atol=1e-10)
SIGMA, DELTA = 0.3, 2.0


def loader(X, y):
    return DataLoader(TensorDataset(X, y), batch_size=4)


def blr(Phi: torch.Tensor, y: torch.Tensor, sigma: float, delta: float):
    """Exact posterior of ``y = Φw + ε``, ``w ~ N(0, I/δ)``: mean ``(P,)``, cov ``(P, P)``."""
    A = Phi.T @ Phi / sigma**2 + delta * torch.eye(Phi.shape[1], dtype=DT)
    cov = torch.linalg.inv(A)
    return cov @ Phi.T @ y / sigma**2, cov


def features(X: torch.Tensor) -> torch.Tensor:
    """``[x, 1]``: the Jacobian of ``nn.Linear`` in laplace's ``(weight, bias)`` order."""
    return torch.cat([X, torch.ones(len(X), 1, dtype=DT)], 1)


def problem(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(9, 5, generator=g, dtype=DT)
    w = torch.randn(6, generator=g, dtype=DT)
    y = features(X) @ w + 0.3 * torch.randn(9, generator=g, dtype=DT)
    return X, y


@pytest.mark.parametrize("form", ["sample", "dense"])
def test_conditioning_a_linear_model_gives_the_exact_posterior_on_all_points(form):
    X, y = problem()
    X1, y1, X2, y2 = X[:3], y[:3], X[3:], y[3:]
    mean1, _ = blr(features(X1), y1, SIGMA, DELTA)
    model = nn.Linear(5, 1).to(DT)
    with torch.no_grad():  # the MAP of the first three points
        model.weight.copy_(mean1[:5][None])
        model.bias.copy_(mean1[5:])
    la = FullLaplace(model, "regression", sigma_noise=SIGMA, prior_precision=DELTA,
                     precision_form=form)
    la.fit(loader(X1, y1[:, None]))
    assert la.uses_sample_space == (form == "sample")
    before = (la.mean.clone(), la.posterior_covariance.clone())
    new = la.condition(X2[:2], y2[:2, None]).condition(X2[2:], y2[2:])  # (n,) targets too
    mean, cov = blr(features(X), y, SIGMA, DELTA)
    torch.testing.assert_close(new.mean, mean, **TOL)
    torch.testing.assert_close(new.posterior_covariance, cov, **TOL)
    assert new.n_data == 9 and new.uses_sample_space == (form == "sample")
    Xt = torch.randn(4, 5, generator=torch.Generator().manual_seed(1), dtype=DT)
    f_mu, f_var = new(Xt)
    torch.testing.assert_close(f_mu[:, 0], features(Xt) @ mean, **TOL)
    torch.testing.assert_close(f_var[:, 0, 0], (features(Xt) @ cov * features(Xt)).sum(1),
                               **TOL)
    torch.testing.assert_close(la.mean, before[0], rtol=0, atol=0)  # the original unchanged
    torch.testing.assert_close(la.posterior_covariance, before[1], rtol=0, atol=0)


@pytest.mark.parametrize("form", ["sample", "dense"])
def test_conditioning_the_last_layer_is_bayesian_regression_on_the_features(form):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(2, 7), nn.Tanh(), nn.Linear(7, 1)).to(DT)
    g = torch.Generator().manual_seed(3)
    X = torch.randn(6, 2, generator=g, dtype=DT)
    y = torch.randn(6, generator=g, dtype=DT)
    with torch.no_grad():
        Phi = features(torch.tanh(model[0](X)))
    mean1, _ = blr(Phi[:2], y[:2], SIGMA, DELTA)
    with torch.no_grad():
        model[2].weight.copy_(mean1[:7][None])
        model[2].bias.copy_(mean1[7:])
    la = Laplace(model, "regression", "last_layer", "full", sigma_noise=SIGMA,
                 prior_precision=DELTA, precision_form=form)
    la.fit(loader(X[:2], y[:2, None]))
    new = la.condition(X[2:], y[2:, None])
    mean, cov = blr(Phi, y, SIGMA, DELTA)
    torch.testing.assert_close(new.mean, mean, **TOL)
    torch.testing.assert_close(new.posterior_covariance, cov, **TOL)
    f_mu, f_var = new(X[:3])
    torch.testing.assert_close(f_mu[:, 0], Phi[:3] @ mean, **TOL)
    torch.testing.assert_close(f_var[:, 0, 0], (Phi[:3] @ cov * Phi[:3]).sum(1), **TOL)
    draws = new.predictive_samples(X[:3], pred_type="nn", n_samples=3,
                                   generator=torch.Generator().manual_seed(0))
    thetas = new.sample(3, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(draws[..., 0], thetas @ Phi[:3].T, **TOL)


def test_conditioning_adds_the_curvature_of_a_refit_and_is_order_free():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, 2)).to(DT)
    g = torch.Generator().manual_seed(4)
    X, y = torch.randn(7, 3, generator=g, dtype=DT), torch.randn(7, 2, generator=g, dtype=DT)
    la = FullLaplace(model, "regression", sigma_noise=0.5, temperature=0.8)
    la.fit(loader(X[:3], y[:3]))
    refit = FullLaplace(model, "regression", sigma_noise=0.5, temperature=0.8)
    refit.fit(loader(X[:3], y[:3]))
    refit.fit(loader(X[3:], y[3:]), override=False)
    once = la.condition(X[3:], y[3:])
    twice = la.condition(X[5:], y[5:]).condition(X[3:5], y[3:5])
    torch.testing.assert_close(once.H, refit.H, **TOL)
    torch.testing.assert_close(once.loss, refit.loss, **TOL)
    for name in ("mean", "posterior_precision", "log_det_posterior_precision"):
        torch.testing.assert_close(getattr(twice, name), getattr(once, name), **TOL)
    # the GLM step: Σ_new⁻¹ (μ_new − θ*) = Jᵀ r / (σ²T) with r the residual at θ*
    Js, f = la.backend.jacobians(X[3:])
    resid = (y[3:] - f).reshape(-1)
    lhs = once.posterior_precision @ (once.mean - la.mean)
    torch.testing.assert_close(lhs, Js.reshape(-1, la.n_params).T @ resid / (0.25 * 0.8),
                               **TOL)
    state = once.state_dict()  # the moved mean survives a round trip
    back = FullLaplace(model, "regression")
    back.load_state_dict(state)
    torch.testing.assert_close(back(X[:2])[0], once(X[:2])[0], **TOL)
    la.fit(loader(X[:3], y[:3]))  # a new fit starts from the network's weights again
    torch.testing.assert_close(la(X[:2])[0], model(X[:2]).detach(), rtol=0, atol=0)


def test_condition_is_validated():
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).to(DT)
    X = torch.randn(4, 3, dtype=DT)
    la = FullLaplace(model, "classification")
    la.fit(loader(X, torch.tensor([0, 1, 1, 0])))
    with pytest.raises(ValueError, match=r"condition needs likelihood='regression' \(a "
                                         r"Gaussian likelihood\), this LA has 'classification'"):
        la.condition(X, torch.zeros(4, 2, dtype=DT))
    reg = FullLaplace(model, "regression")
    reg.fit(loader(X, torch.zeros(4, 2, dtype=DT)))
    with pytest.raises(ValueError, match=r"y of shape \(4,\) must be a tensor \(4, 2\) for "
                                         r"the 4 inputs X"):
        reg.condition(X, torch.zeros(4, dtype=DT))
    with pytest.raises(ValueError, match=r"y must be finite"):
        reg.condition(X, torch.full((4, 2), float("nan"), dtype=DT))
