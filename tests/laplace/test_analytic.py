"""Exact results for Bayesian linear regression.

For ``f(x) = Wx + b`` with a Gaussian likelihood the GGN is the exact Hessian, the
Laplace posterior is the exact posterior and, at the exact posterior mode, the Laplace
log marginal likelihood is the exact log evidence. Everything below is compared with
closed forms computed independently of the library (float64 throughout).

Parameter order of ``nn.Linear(d, K)``: the row-major weight ``W[k, j]`` at index
``k·d + j``, then the bias ``b[k]`` at ``K·d + k``.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from laplace import Laplace

STRUCTURES = ("full", "kron", "diag")
SIGMA = 0.7
DELTA = 2.5


# ------------------------------------------------------------------- builders
def jacobians(X: torch.Tensor, K: int) -> torch.Tensor:
    """Exact Jacobians ``(n, K, K·d + K)`` of a linear layer w.r.t. ``(W, b)``."""
    n, d = X.shape
    J = torch.zeros(n, K, K * d + K, dtype=X.dtype)
    for k in range(K):
        J[:, k, k * d : (k + 1) * d] = X
        J[:, k, K * d + k] = 1.0
    return J


def make_data(n: int, d: int, K: int, seed: int, centered: bool = False):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, d, generator=g, dtype=torch.float64) + 0.3
    if centered:
        # columns orthogonal to 1 and to each other, with distinct norms:
        # XᵀX diagonal and Σₙ xₙ = 0, so the GGN is diagonal (kron and diag are exact).
        Q, _ = torch.linalg.qr(X - X.mean(0))
        X = Q * torch.linspace(2.0, 5.0, d, dtype=torch.float64)
    W = torch.randn(K, d, generator=g, dtype=torch.float64)
    y = X @ W.T + 0.5 + SIGMA * torch.randn(n, K, generator=g, dtype=torch.float64)
    return X, y


def exact_posterior(X, y, sigma=SIGMA, delta=DELTA):
    """Exact posterior precision, mode and covariance of ``(W, b)``."""
    K = y.shape[1]
    J = jacobians(X, K)
    H = torch.einsum("nkp,nkq->pq", J, J)
    P = H / sigma**2 + delta * torch.eye(H.shape[0], dtype=X.dtype)
    rhs = torch.einsum("nkp,nk->p", J, y) / sigma**2
    theta = torch.linalg.solve(P, rhs)
    return H, P, theta


def exact_log_evidence(X, y, sigma=SIGMA, delta=DELTA):
    """``Σₖ log N(yₖ; 0, σ²I + ΦΦᵀ/δ)`` with ``Φ = [X, 1]``."""
    n = X.shape[0]
    Phi = torch.cat([X, torch.ones(n, 1, dtype=X.dtype)], dim=1)
    C = sigma**2 * torch.eye(n, dtype=X.dtype) + Phi @ Phi.T / delta
    L = torch.linalg.cholesky(C)
    total = 0.0
    for k in range(y.shape[1]):
        z = torch.linalg.solve_triangular(L, y[:, k : k + 1], upper=False)
        total += -0.5 * float(z.square().sum()) - float(L.diagonal().log().sum())
        total += -0.5 * n * math.log(2 * math.pi)
    return total


def laplace_lml_formula(theta, y_hat, y, P_struct, sigma=SIGMA, delta=DELTA):
    """``log p(y|θ*) − ½(log det P − p log δ + δ‖θ*‖²)`` for a given precision."""
    n, K = y.shape
    p = theta.numel()
    loglik = -0.5 * float((y - y_hat).square().sum()) / sigma**2
    loglik -= n * K * math.log(sigma * math.sqrt(2 * math.pi))
    logdet = float(torch.linalg.slogdet(P_struct)[1])
    return loglik - 0.5 * (logdet - p * math.log(delta) + delta * float(theta @ theta))


def linear_at(theta: torch.Tensor, d: int, K: int) -> nn.Linear:
    model = nn.Linear(d, K).double()
    with torch.no_grad():
        model.weight.copy_(theta[: K * d].reshape(K, d))
        model.bias.copy_(theta[K * d :])
    return model


def fitted(structure, X, y, theta, batch_size=16):
    d, K = X.shape[1], y.shape[1]
    model = linear_at(theta, d, K)
    la = Laplace(
        model, "regression", subset_of_weights="all", hessian_structure=structure,
        sigma_noise=SIGMA, prior_precision=DELTA,
    )
    la.fit(DataLoader(TensorDataset(X, y), batch_size=batch_size))
    return la


def dense_precision(la) -> torch.Tensor:
    P = la.posterior_precision
    if hasattr(P, "to_matrix"):
        return P.to_matrix()
    if P.ndim == 1:
        return torch.diag(P)
    return P


def structured(P: torch.Tensor, structure: str, d: int, K: int) -> torch.Tensor:
    """The exact precision restricted to what a structure keeps."""
    if structure == "full":
        return P.clone()
    if structure == "diag":
        return torch.diag(P.diagonal())
    out = torch.zeros_like(P)  # kron: parameter-tensor blocks (weight, bias)
    w = slice(0, K * d)
    b = slice(K * d, K * d + K)
    out[w, w] = P[w, w]
    out[b, b] = P[b, b]
    return out


# ---------------------------------------------------------------------- tests
@pytest.mark.parametrize("K", [1, 2])
def test_full_lml_is_exact_log_evidence(K):
    X, y = make_data(50, 3, K, seed=0)
    H, P, theta = exact_posterior(X, y)
    la = fitted("full", X, y, theta)
    torch.testing.assert_close(la.H, H, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(la.posterior_precision, P, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(la.mean, theta, rtol=0, atol=0)
    lml = float(la.log_marginal_likelihood())
    assert lml == pytest.approx(exact_log_evidence(X, y), rel=1e-8)


@pytest.mark.parametrize("structure", STRUCTURES)
@pytest.mark.parametrize("K", [1, 2])
def test_lml_exact_for_every_structure_when_ggn_is_diagonal(structure, K):
    # centered, orthogonal inputs: the exact GGN is diagonal, so no structure loses
    # anything and all three must reproduce the exact evidence.
    X, y = make_data(40, 3, K, seed=1, centered=True)
    H, P, theta = exact_posterior(X, y)
    assert torch.allclose(H, torch.diag(H.diagonal()), atol=1e-12)
    la = fitted(structure, X, y, theta)
    torch.testing.assert_close(dense_precision(la), P, rtol=1e-10, atol=1e-10)
    lml = float(la.log_marginal_likelihood())
    assert lml == pytest.approx(exact_log_evidence(X, y), rel=1e-8)


@pytest.mark.parametrize("structure", STRUCTURES)
@pytest.mark.parametrize("K", [1, 2])
def test_structured_precision_and_lml(structure, K):
    # general (uncentered, correlated) inputs: kron keeps the exact weight and bias
    # blocks of a linear layer (B = N·I, A = XᵀX/N) but drops their cross terms; diag
    # keeps the exact diagonal.
    d = 3
    X, y = make_data(50, d, K, seed=2)
    _, P, theta = exact_posterior(X, y)
    la = fitted(structure, X, y, theta)
    P_struct = structured(P, structure, d, K)
    torch.testing.assert_close(dense_precision(la), P_struct, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(
        la.posterior_variance, torch.linalg.inv(P_struct).diagonal(), rtol=1e-10, atol=1e-12
    )
    y_hat = X @ theta[: K * d].reshape(K, d).T + theta[K * d :]
    expected = laplace_lml_formula(theta, y_hat, y, P_struct)
    assert float(la.log_marginal_likelihood()) == pytest.approx(expected, rel=1e-10)
    if structure != "full":
        # the approximation really differs from the exact evidence here
        assert abs(expected - exact_log_evidence(X, y)) > 1e-3


def test_kron_factors_of_a_linear_layer():
    X, y = make_data(37, 4, 2, seed=3)
    _, _, theta = exact_posterior(X, y)
    la = fitted("kron", X, y, theta, batch_size=10)  # uneven batches
    (B, A), (Bb,) = la.H_facs.kfacs
    N = X.shape[0]
    torch.testing.assert_close(B, N * torch.eye(2, dtype=torch.float64), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(A, X.T @ X / N, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(Bb, N * torch.eye(2, dtype=torch.float64), rtol=1e-12, atol=1e-12)


def test_diag_is_diagonal_of_full():
    X, y = make_data(45, 3, 2, seed=4)
    _, P, theta = exact_posterior(X, y)
    full = fitted("full", X, y, theta)
    diag = fitted("diag", X, y, theta)
    torch.testing.assert_close(diag.H, full.H.diagonal(), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(diag.posterior_precision, P.diagonal(), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("structure", STRUCTURES)
@pytest.mark.parametrize("K", [1, 2])
def test_glm_predictive_is_exact(structure, K):
    d = 3
    X, y = make_data(50, d, K, seed=5)
    _, P, theta = exact_posterior(X, y)
    la = fitted(structure, X, y, theta)
    Sigma = torch.linalg.inv(structured(P, structure, d, K))

    g = torch.Generator().manual_seed(6)
    Xs = 2 * torch.randn(7, d, generator=g, dtype=torch.float64)
    Js = jacobians(Xs, K)
    mu = torch.einsum("nkp,p->nk", Js, theta)
    var = torch.einsum("nkp,pq,nlq->nkl", Js, Sigma, Js)

    f_mu, f_var = la(Xs)
    assert f_mu.shape == (7, K) and f_var.shape == (7, K, K)
    torch.testing.assert_close(f_mu, mu, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(f_var, var, rtol=1e-9, atol=1e-12)

    _, f_diag = la(Xs, diagonal_output=True)
    torch.testing.assert_close(f_diag, var.diagonal(dim1=-2, dim2=-1), rtol=1e-9, atol=1e-12)

    Jflat = Js.reshape(7 * K, -1)  # rows ordered point·K + output
    f_mu_joint, f_cov = la(Xs, joint=True)
    assert f_mu_joint.shape == (7 * K,) and f_cov.shape == (7 * K, 7 * K)
    torch.testing.assert_close(f_mu_joint, mu.flatten(), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(f_cov, Jflat @ Sigma @ Jflat.T, rtol=1e-9, atol=1e-12)


def test_full_predictive_of_one_output_is_x_sigma_x():
    # the textbook form: Var[f(x*)] = φ*ᵀ Σ φ*, Cov = Φ* Σ Φ*ᵀ
    X, y = make_data(30, 2, 1, seed=7)
    _, P, theta = exact_posterior(X, y)
    la = fitted("full", X, y, theta, batch_size=30)
    Sigma = torch.linalg.inv(P)
    Xs = torch.tensor([[0.0, 0.0], [1.0, -2.0], [3.0, 0.5]], dtype=torch.float64)
    Phi = torch.cat([Xs, torch.ones(3, 1, dtype=torch.float64)], dim=1)
    _, f_var = la(Xs)
    expected = torch.stack([phi @ Sigma @ phi for phi in Phi])
    torch.testing.assert_close(f_var[:, 0, 0], expected, rtol=1e-10, atol=1e-14)
    _, f_cov = la(Xs, joint=True)
    torch.testing.assert_close(f_cov, Phi @ Sigma @ Phi.T, rtol=1e-10, atol=1e-14)
    # the variance at x = 0 is the bias variance
    assert float(f_var[0, 0, 0]) == pytest.approx(float(Sigma[-1, -1]), rel=1e-10)


def test_lml_exact_at_other_hyperparameters():
    # the evidence as a function of (δ, σ) is exact only at the mode for (δ, σ): refit
    # the mode for each setting and compare; passing hyperparameters to
    # log_marginal_likelihood must give the same as constructing with them.
    X, y = make_data(40, 2, 1, seed=8)
    for delta, sigma in [(0.1, 0.3), (10.0, 2.0), (1.0, 1.0)]:
        _, _, theta = exact_posterior(X, y, sigma=sigma, delta=delta)
        la = fitted("full", X, y, theta)
        lml = float(la.log_marginal_likelihood(
            prior_precision=torch.tensor(delta, dtype=torch.float64),
            sigma_noise=torch.tensor(sigma, dtype=torch.float64),
        ))
        assert lml == pytest.approx(exact_log_evidence(X, y, sigma, delta), rel=1e-8)


@pytest.mark.parametrize("K", [1, 2])
def test_nn_predictive_joint_is_the_sample_covariance_of_linear_outputs(K):
    # A linear network's outputs under weight samples θₛ are J θₛ exactly, so the
    # sampling predictive's joint covariance is J S Jᵀ with S the θ samples' covariance,
    # and its diagonal is the non-joint variance of the same draws.
    d, S = 3, 4000
    X, y = make_data(40, d, K, seed=11)
    _, P, theta = exact_posterior(X, y)
    la = fitted("full", X, y, theta)
    Xs = torch.randn(5, d, generator=torch.Generator().manual_seed(12), dtype=torch.float64)
    thetas = la.sample(S, generator=torch.Generator().manual_seed(3))
    Jflat = jacobians(Xs, K).reshape(5 * K, -1)
    centred = thetas - thetas.mean(0)
    expected = Jflat @ (centred.T @ centred / (S - 1)) @ Jflat.T

    mu, cov = la(Xs, pred_type="nn", joint=True, n_samples=S,
                 generator=torch.Generator().manual_seed(3))
    assert mu.shape == (5 * K,) and cov.shape == (5 * K, 5 * K)
    torch.testing.assert_close(mu, Jflat @ thetas.mean(0), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(cov, expected, rtol=1e-9, atol=1e-12)
    _, var = la(Xs, pred_type="nn", n_samples=S, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(var.flatten(), cov.diagonal(), rtol=1e-9, atol=1e-12)
    # and the draws estimate the exact joint covariance J Σ Jᵀ (4,000 samples: a few %)
    exact = Jflat @ torch.linalg.inv(P) @ Jflat.T
    torch.testing.assert_close(cov, exact, rtol=0.1, atol=0.1 * float(exact.diagonal().max()))
