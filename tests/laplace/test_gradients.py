"""Autograd against central finite differences (float64).

(i)  the log marginal likelihood w.r.t. ``log δ`` (scalar and layerwise) and ``log σ``;
(ii) the GLM predictive mean and variance w.r.t. the inputs (``enable_backprop=True``).
"""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from laplace import Laplace

STRUCTURES = ("full", "kron", "diag")
EPS = 1e-6
DT = torch.float64


# ------------------------------------------------------------------- builders
def mlp(n_in: int = 3, hidden: int = 8, n_out: int = 1, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(n_in, hidden), nn.Tanh(), nn.Linear(hidden, n_out)).to(DT)


def regression_data(n: int = 40, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, 3, generator=g, dtype=DT)
    y = torch.sin(X.sum(1, keepdim=True)) + 0.1 * torch.randn(n, 1, generator=g, dtype=DT)
    return X, y


def fitted_regression(structure: str, **kwargs) -> object:
    X, y = regression_data()
    la = Laplace(
        mlp(), "regression", subset_of_weights="all", hessian_structure=structure, **kwargs
    )
    la.fit(DataLoader(TensorDataset(X, y), batch_size=16))
    return la


def fitted_classification(structure: str, **kwargs) -> object:
    g = torch.Generator().manual_seed(2)
    X = torch.randn(30, 3, generator=g, dtype=DT)
    y = (X[:, 0] > 0).long() + (X[:, 1] > 0.5).long()
    la = Laplace(
        mlp(n_out=3, seed=3), "classification", subset_of_weights="all",
        hessian_structure=structure, **kwargs,
    )
    la.fit(DataLoader(TensorDataset(X, y), batch_size=16))
    return la


def central_diff(f, x: torch.Tensor, eps: float = EPS) -> torch.Tensor:
    """Gradient of the scalar ``f`` at ``x`` by central differences."""
    grad = torch.zeros_like(x)
    flat = grad.view(-1)
    for i in range(x.numel()):
        xp, xm = x.clone(), x.clone()
        xp.view(-1)[i] += eps
        xm.view(-1)[i] -= eps
        flat[i] = (f(xp) - f(xm)) / (2 * eps)
    return grad


def lml_at(la, log_prior: torch.Tensor, log_sigma: torch.Tensor | None) -> torch.Tensor:
    sigma = None if log_sigma is None else log_sigma.exp()
    return la.log_marginal_likelihood(prior_precision=log_prior.exp(), sigma_noise=sigma)


def check_lml_gradients(la, log_prior0: torch.Tensor, log_sigma0: torch.Tensor | None):
    log_prior = log_prior0.clone().requires_grad_(True)
    inputs = [log_prior]
    log_sigma = None
    if log_sigma0 is not None:
        log_sigma = log_sigma0.clone().requires_grad_(True)
        inputs.append(log_sigma)
    value = lml_at(la, log_prior, log_sigma)
    grads = torch.autograd.grad(value, inputs)

    with torch.no_grad():
        fd_prior = central_diff(lambda lp: float(lml_at(la, lp, log_sigma0)), log_prior0)
        # the value itself does not depend on whether gradients were requested
        assert float(lml_at(la, log_prior0, log_sigma0)) == pytest.approx(
            float(value), rel=1e-12
        )
    torch.testing.assert_close(grads[0], fd_prior, rtol=1e-6, atol=1e-6)
    assert fd_prior.abs().max() > 1e-2  # a real dependence is being checked
    if log_sigma0 is not None:
        with torch.no_grad():
            fd_sigma = central_diff(lambda ls: float(lml_at(la, log_prior0, ls)), log_sigma0)
        torch.testing.assert_close(grads[1], fd_sigma, rtol=1e-6, atol=1e-6)
        assert fd_sigma.abs() > 1e-2
    return grads


# ------------------------------------------------------- (i) marginal likelihood
@pytest.mark.parametrize("structure", STRUCTURES)
def test_lml_gradient_scalar_prior_and_sigma(structure):
    la = fitted_regression(structure, sigma_noise=0.4, prior_precision=1.0)
    check_lml_gradients(
        la, torch.tensor(0.3, dtype=DT), torch.tensor(-0.7, dtype=DT)
    )


@pytest.mark.parametrize("structure", STRUCTURES)
def test_lml_gradient_layerwise_prior_and_sigma(structure):
    la = fitted_regression(structure)
    assert la.n_layers == 4
    log_prior0 = torch.tensor([0.5, -0.2, 1.1, -1.0], dtype=DT)
    grads = check_lml_gradients(la, log_prior0, torch.tensor(-0.5, dtype=DT))
    assert grads[0].shape == (4,)


@pytest.mark.parametrize("structure", ["full", "diag"])
def test_lml_gradient_per_parameter_prior(structure):
    la = fitted_regression(structure)
    g = torch.Generator().manual_seed(4)
    log_prior0 = 0.5 * torch.randn(la.n_params, generator=g, dtype=DT)
    check_lml_gradients(la, log_prior0, torch.tensor(-0.5, dtype=DT))


def test_full_lml_and_gradient_same_with_precomputed_spectrum():
    # marglik tuning uses the eigenvalues of H instead of a Cholesky factorization:
    # both paths must agree in value and gradient.
    la = fitted_regression("full")
    lp, ls = torch.tensor(0.2, dtype=DT), torch.tensor(-0.6, dtype=DT)
    g_chol = check_lml_gradients(la, lp, ls)
    v_chol = float(lml_at(la, lp, ls))
    la.spectrum  # noqa: B018  (computes and caches the spectrum)
    g_spec = check_lml_gradients(la, lp, ls)
    assert float(lml_at(la, lp, ls)) == pytest.approx(v_chol, rel=1e-10)
    for a, b in zip(g_chol, g_spec):
        torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize("structure", STRUCTURES)
def test_lml_gradient_classification(structure):
    la = fitted_classification(structure)
    check_lml_gradients(la, torch.tensor([0.1, -0.3, 0.4, 0.0], dtype=DT), None)


# ------------------------------------------------- (ii) predictive vs inputs
def query_inputs():
    g = torch.Generator().manual_seed(5)
    return torch.randn(5, 3, generator=g, dtype=DT)


@pytest.mark.parametrize("structure", STRUCTURES)
def test_glm_predictive_gradient_wrt_inputs(structure):
    la = fitted_regression(structure, sigma_noise=0.5, prior_precision=2.0,
                           enable_backprop=True)
    X0 = query_inputs()

    X = X0.clone().requires_grad_(True)
    f_mu, f_var = la(X)
    assert f_mu.requires_grad and f_var.requires_grad
    g_mu = torch.autograd.grad(f_mu.sum(), X, retain_graph=True)[0]
    g_var = torch.autograd.grad(f_var.sum(), X)[0]

    with torch.no_grad():
        fd_mu = central_diff(lambda x: float(la(x)[0].sum()), X0)
        fd_var = central_diff(lambda x: float(la(x)[1].sum()), X0)
    torch.testing.assert_close(g_mu, fd_mu, rtol=1e-6, atol=1e-8)
    torch.testing.assert_close(g_var, fd_var, rtol=1e-6, atol=1e-8)
    assert fd_var.abs().max() > 1e-3


@pytest.mark.parametrize("structure", STRUCTURES)
def test_glm_joint_predictive_gradient_wrt_inputs(structure):
    la = fitted_regression(structure, enable_backprop=True)
    X0 = query_inputs()[:3]
    X = X0.clone().requires_grad_(True)
    _, f_cov = la(X, joint=True)
    weights = torch.arange(1.0, 10.0, dtype=DT).reshape(3, 3)  # off-diagonal terms count
    g_cov = torch.autograd.grad((f_cov * weights).sum(), X)[0]
    with torch.no_grad():
        fd = central_diff(lambda x: float((la(x, joint=True)[1] * weights).sum()), X0)
    torch.testing.assert_close(g_cov, fd, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("structure", STRUCTURES)
def test_probit_predictive_gradient_wrt_inputs(structure):
    la = fitted_classification(structure, enable_backprop=True)
    X0 = query_inputs()
    X = X0.clone().requires_grad_(True)
    probs = la(X, link_approx="probit")
    g = torch.autograd.grad(probs[:, 0].sum() - 2 * probs[:, 2].sum(), X)[0]
    with torch.no_grad():
        fd = central_diff(
            lambda x: float((lambda p: p[:, 0].sum() - 2 * p[:, 2].sum())(la(x))), X0
        )
    torch.testing.assert_close(g, fd, rtol=1e-6, atol=1e-8)


def test_predictive_without_backprop_is_detached():
    la = fitted_regression("full")
    X = query_inputs().requires_grad_(True)
    f_mu, f_var = la(X)
    assert not f_mu.requires_grad and not f_var.requires_grad
