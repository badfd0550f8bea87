"""``optimize_marginal_likelihood``: L-BFGS / Adam on ``log δ`` and ``log σ``.

For a linear model whose weights are the posterior mean at ``(δ̂, σ̂)``, the maximiser
of the exact Bayesian-linear-regression evidence, the Laplace evidence is stationary at
``(δ̂, σ̂)`` (envelope theorem), so the optimiser must find it. ``(δ̂, σ̂)`` comes from
MacKay's fixed-point iteration, independent of the optimiser. Hyperpriors move the
optimum to where the hand-derived gradient of evidence plus log hyperprior vanishes.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from laplace import FullLaplace

DT = torch.float64


def problem():
    g = torch.Generator().manual_seed(0)
    X = torch.randn(40, 4, generator=g, dtype=DT)
    Phi = torch.cat([X, torch.ones(40, 1, dtype=DT)], 1)
    y = Phi @ torch.tensor([1.0, -0.5, 0.3, 0.0, 0.2], dtype=DT)
    return X, Phi, y + 0.4 * torch.randn(40, generator=g, dtype=DT)


def posterior_mean(Phi, y, delta, sigma):
    A = Phi.T @ Phi / sigma**2 + delta * torch.eye(Phi.shape[1], dtype=DT)
    return torch.linalg.solve(A, Phi.T @ y) / sigma**2


def mackay(Phi, y, n_iter=2000):
    """Fixed point of the BLR evidence: ``δ = γ/‖m‖²``, ``σ² = ‖y − Φm‖²/(N − γ)``."""
    lam = torch.linalg.eigvalsh(Phi.T @ Phi)
    delta, var = 1.0, 1.0
    for _ in range(n_iter):
        m = posterior_mean(Phi, y, delta, var**0.5)
        gamma = float((lam / var / (lam / var + delta)).sum())
        delta = gamma / float(m @ m)
        var = float((y - Phi @ m).square().sum()) / (len(y) - gamma)
    return delta, var**0.5


def laplace_at(X, Phi, y, delta, sigma, form="auto") -> FullLaplace:
    m = posterior_mean(Phi, y, delta, sigma)
    model = nn.Linear(4, 1).to(DT)
    with torch.no_grad():
        model.weight.copy_(m[:4][None])
        model.bias.copy_(m[4:])
    la = FullLaplace(model, "regression", precision_form=form)
    la.fit(DataLoader(TensorDataset(X, y[:, None]), batch_size=40))
    return la


def evidence_gradient(la, Phi, delta, sigma, hyper_delta=None, hyper_var=None):
    """Hand-derived ``∂/∂log δ`` and ``∂/∂log σ`` of the Laplace evidence + hyperpriors.

    With ``λ`` the eigenvalues of ``ΦᵀΦ``, ``γ = Σ λ/(λ + σ²δ)`` and ``L`` the loss:
    ``∂/∂log δ = ½(γ − δ‖θ*‖²)``, ``∂/∂log σ = 2L/σ² − N + γ``; a log-normal ``(loc, s)``
    on ``x`` adds ``−1 − (log x − loc)/s²`` per ``log x`` (``log σ² = 2 log σ``).
    """
    lam = torch.linalg.eigvalsh(Phi.T @ Phi)
    gamma = float((lam / (lam + sigma**2 * delta)).sum())
    theta = la.mean
    g_delta = 0.5 * (gamma - delta * float(theta @ theta))
    g_sigma = 2 * float(la.loss) / sigma**2 - len(Phi) + gamma
    if hyper_delta is not None:
        loc, s = hyper_delta
        g_delta += -1 - (math.log(delta) - loc) / s**2
    if hyper_var is not None:
        loc, s = hyper_var
        g_sigma += 2 * (-1 - (2 * math.log(sigma) - loc) / s**2)
    return g_delta, g_sigma


@pytest.mark.parametrize("form", ["sample", "dense"])
def test_lbfgs_reaches_the_bayesian_linear_regression_optimum(form):
    X, Phi, y = problem()
    delta, sigma = mackay(Phi, y)
    la = laplace_at(X, Phi, y, delta, sigma, form)
    assert la.uses_sample_space == (form == "sample")  # forced: 40 rows for 5 weights
    la.prior_precision, la.sigma_noise = 1.0, 1.0
    value = la.optimize_marginal_likelihood(tune_sigma_noise=True, n_steps=200)
    assert la.prior_precision.item() == pytest.approx(delta, rel=1e-6)
    assert la.sigma_noise.item() == pytest.approx(sigma, rel=1e-6)
    torch.testing.assert_close(value, la.log_marginal_likelihood().detach())
    g = evidence_gradient(la, Phi, delta, sigma)
    assert abs(g[0]) < 1e-8 and abs(g[1]) < 1e-8  # the reference is the stationary point


def test_hyperpriors_shift_the_optimum_to_where_the_hand_gradient_vanishes():
    X, Phi, y = problem()
    delta, sigma = mackay(Phi, y)
    la = laplace_at(X, Phi, y, delta, sigma)
    hyper_delta, hyper_var = (math.log(10.0), 0.5), (math.log(0.5), 0.3)
    la.optimize_marginal_likelihood(
        tune_sigma_noise=True, n_steps=200, prior_precision_hyperprior=hyper_delta,
        sigma_noise_hyperprior=hyper_var,
    )
    d, s = la.prior_precision.item(), la.sigma_noise.item()
    assert d > 1.5 * delta and s > 1.2 * sigma  # pulled towards the hyperpriors' modes
    g = evidence_gradient(la, Phi, d, s, hyper_delta, hyper_var)
    assert abs(g[0]) < 1e-4 and abs(g[1]) < 1e-4  # L-BFGS stops at |∇| ~ 1e-7 per step
    g = evidence_gradient(la, Phi, delta, sigma, hyper_delta, hyper_var)
    assert abs(g[0]) > 0.5 and abs(g[1]) > 0.5  # where the evidence alone is stationary


def test_bounds_clamp_and_adam_keeps_the_best_point():
    X, Phi, y = problem()
    delta, sigma = mackay(Phi, y)
    la = laplace_at(X, Phi, y, delta, sigma)
    la.optimize_marginal_likelihood(prior_precision_bounds=(1e-3, delta / 2),
                                    sigma_noise_bounds=(1e-3, 10.0), tune_sigma_noise=True)
    assert la.prior_precision.item() == pytest.approx(delta / 2, rel=1e-12)
    la.prior_precision, la.sigma_noise = 1.0, 1.0
    la.optimize_marginal_likelihood(method="adam", n_steps=300, lr=0.05, tune_sigma_noise=True)
    assert la.prior_precision.item() == pytest.approx(delta, rel=1e-2)
    assert la.sigma_noise.item() == pytest.approx(sigma, rel=1e-2)


@pytest.mark.parametrize("structure,length", [("layerwise", 2), ("diag", 5)])
def test_structures_start_from_the_current_value(structure, length):
    X, Phi, y = problem()
    la = laplace_at(X, Phi, y, 1.0, 0.4)
    la.prior_precision = 2.0
    before = la.log_marginal_likelihood().item()
    value = la.optimize_marginal_likelihood(prior_structure=structure, n_steps=50)
    assert la.prior_precision.shape == (length,) and value.item() > before


def test_adam_route_of_optimize_prior_precision_is_unchanged():
    """``method="marglik"`` is laplace-torch's Adam loop: reproduced step by step."""
    X, Phi, y = problem()
    la = laplace_at(X, Phi, y, 1.0, 0.4)
    la.optimize_prior_precision(method="marglik", n_steps=30, lr=0.1)
    tuned = la.prior_precision.clone()
    log_prior = torch.zeros(1, dtype=DT, requires_grad=True)
    optimizer = torch.optim.Adam([log_prior], lr=0.1)
    for _ in range(30):
        optimizer.zero_grad()
        (-la.log_marginal_likelihood(prior_precision=log_prior.exp())).backward()
        optimizer.step()
    torch.testing.assert_close(tuned, log_prior.detach().exp(), rtol=0, atol=0)


def test_arguments_are_validated():
    X, Phi, y = problem()
    la = laplace_at(X, Phi, y, 1.0, 0.4)
    cases = [
        (dict(method="newton"), r"method must be one of \('adam', 'lbfgs'\), got 'newton'"),
        (dict(prior_precision_bounds=(2.0, 1.0)),
         r"prior_precision_bounds must have low <= high"),
        (dict(sigma_noise_bounds=(0.0, 1.0)), r"sigma_noise_bounds"),
        (dict(prior_precision_hyperprior=(math.inf, 1.0)),
         r"prior_precision_hyperprior must have a finite loc"),
        (dict(sigma_noise_hyperprior=3.0),
         r"sigma_noise_hyperprior must be None or a pair \(loc, scale\)"),
        (dict(tune_sigma_noise=1), r"tune_sigma_noise must be a bool"),
        (dict(n_steps=0), r"n_steps"),
    ]
    for kwargs, message in cases:
        with pytest.raises(ValueError, match=message):
            la.optimize_marginal_likelihood(**kwargs)
