"""``LowRankLaplace``: exact at full rank, and the product-based eigenpairs are right."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from laplace import Laplace
from tests.laplace import reference as R


def _fit(structure: str, **kwargs):
    model = R.build_model("reg1")
    train, _ = R.loaders("reg1")
    la = Laplace(model, "regression", "all", structure, sigma_noise=0.5, **kwargs)
    la.fit(train)
    return la


def test_full_rank_reproduces_full_ggn_on_reg1():
    full, low = _fit("full"), _fit("lowrank", n_eigenvalues=353)
    X = R.data("reg1")["X_test"]
    for args in ({}, {"joint": True}):
        (m1, v1), (m2, v2) = full(X[:8], **args), low(X[:8], **args)
        torch.testing.assert_close(m2, m1, rtol=1e-12, atol=0)
        torch.testing.assert_close(v2, v1, rtol=1e-9, atol=1e-12)
    for prior, sigma in ((1.0, 0.5), (0.3, 0.9), (torch.rand(353) + 0.5, 0.4)):
        expected = full.log_marginal_likelihood(prior, sigma)
        torch.testing.assert_close(low.log_marginal_likelihood(prior, sigma), expected,
                                   rtol=1e-8, atol=0)
    # The reference record's value at the fit hyperparameters.
    ref = R.combo("reg1", "all.full.default")["log_marginal_likelihood"]
    low.prior_precision, low.sigma_noise = 1.0, 0.5
    assert abs(low.log_marginal_likelihood().item() / ref["at_fit_hyperparameters"]["value"]
               - 1) < 1e-10


def test_product_eigenpairs_match_dense_spectrum():
    full, low = _fit("full"), _fit("lowrank", n_eigenvalues=20)  # 20 < 0.3·P: ARPACK
    U, lam = low.H
    top = torch.linalg.eigvalsh(full.H).flip(0)[:20]
    torch.testing.assert_close(lam, top, rtol=1e-8, atol=1e-8)
    torch.testing.assert_close(U.T @ U, torch.eye(20, dtype=U.dtype), atol=1e-8, rtol=0)
    torch.testing.assert_close(full.H @ U, U * lam, atol=1e-6 * lam[0].item(), rtol=0)


def test_lowrank_sampling_covariance():
    low = _fit("lowrank", n_eigenvalues=20)
    draws = low.sample(40000, generator=torch.Generator().manual_seed(0)) - low.mean
    rel = (draws.var(0) / low.posterior_variance - 1).abs().max().item()
    assert rel < 0.05
    dense = torch.linalg.inv(low.posterior_precision[0][0] @ torch.diag(
        low.posterior_precision[0][1]) @ low.posterior_precision[0][0].T
        + torch.diag(low.prior_precision_diag))
    torch.testing.assert_close(low.posterior_variance, dense.diagonal(), rtol=1e-9, atol=0)


def test_sigma_gradient_is_finite_when_the_curvature_has_lower_rank_than_k():
    # n·K = 3 < P = 17: the default rank keeps zero eigenvalues, whose √ has an infinite
    # derivative; the σ gradient was NaN and σ tuning failed as a "divergence"
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(2, 4), nn.Tanh(), nn.Linear(4, 1)).double()
    g = torch.Generator().manual_seed(1)
    X, y = torch.randn(3, 2, generator=g, dtype=torch.float64), torch.randn(3, 1, generator=g,
                                                                             dtype=torch.float64)
    loader = DataLoader(TensorDataset(X, y), batch_size=3)
    grads = []
    for structure in ("lowrank", "full"):
        la = Laplace(model, "regression", "all", structure, sigma_noise=0.5)
        la.fit(loader)
        sigma = torch.tensor(0.5, dtype=torch.float64, requires_grad=True)
        la.log_marginal_likelihood(sigma_noise=sigma).backward()
        grads.append(sigma.grad)
    assert torch.isfinite(grads[0])
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-8, atol=0)
