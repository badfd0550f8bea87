"""``LinearizedGaussian`` against explicit dense Gaussian algebra."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

from lapbo.gaussian import LinearizedGaussian

P = 7


def dense_posterior(rows: Tensor, noise: Tensor, prior: Tensor) -> Tensor:
    """``Σ = (diag(δ) + Rᵀ diag(1/noise) R)⁻¹`` ``(P, P)``."""
    prec = (rows.mT / noise) @ rows + torch.diag(prior.expand(rows.shape[-1]))
    return torch.linalg.inv(prec)


@pytest.fixture
def case() -> dict[str, Tensor]:
    g = torch.Generator().manual_seed(0)
    kw = {"generator": g, "dtype": torch.float64}
    return {
        "rows_few": torch.randn(4, P, **kw), "rows_many": torch.randn(11, P, **kw),
        "J": torch.randn(3, P, **kw), "f": torch.randn(3, **kw),
        "J_new": torch.randn(2, P, **kw), "y_new": torch.randn(2, **kw),
        "prior_vec": torch.rand(P, **kw) + 0.5,
    }


@pytest.mark.parametrize("rows_key", ["rows_few", "rows_many"])  # Woodbury / dense route
@pytest.mark.parametrize("per_weight", [False, True])
def test_from_rows_and_condition_match_dense_algebra(
    case: dict[str, Tensor], rows_key: str, per_weight: bool
) -> None:
    rows = case[rows_key]
    noise = torch.full((rows.shape[0],), 0.3, dtype=torch.float64)
    prior = case["prior_vec"] if per_weight else torch.tensor(2.0, dtype=torch.float64)
    gauss = LinearizedGaussian.from_rows(rows, noise, prior)
    assert (gauss.chol is None) == (rows.shape[0] < P)
    Sigma = dense_posterior(rows, noise, prior)
    J, f = case["J"], case["f"]
    mean, cov = gauss.predict(J, f)
    assert torch.allclose(mean, f, atol=1e-12)
    assert torch.allclose(cov, J @ Sigma @ J.mT, atol=1e-10)

    # conditioning on y = f_lin(x_new) + ε, ε ~ N(0, 0.05): the Gaussian update in f-space
    J_new, y_new = case["J_new"], case["y_new"]
    new_noise = torch.full((2,), 0.05, dtype=torch.float64)
    cond = gauss.condition(J_new, y_new, new_noise)  # residual y − f(θ*) with f(θ*) = 0
    K_nn = J_new @ Sigma @ J_new.mT + torch.diag(new_noise)
    K_tn = J @ Sigma @ J_new.mT
    exp_mean = f + K_tn @ torch.linalg.solve(K_nn, y_new)
    exp_cov = J @ Sigma @ J.mT - K_tn @ torch.linalg.solve(K_nn, K_tn.mT)
    mean_c, cov_c = cond.predict(J, f)
    assert torch.allclose(mean_c, exp_mean, atol=1e-9)
    assert torch.allclose(cov_c, exp_cov, atol=1e-9)

    # a mean step v lands at Σv
    v = torch.linspace(-1.0, 1.0, P, dtype=torch.float64)
    moved, _ = gauss.with_mean_step(v).predict(J, f)
    assert torch.allclose(moved, f + J @ Sigma @ v, atol=1e-10)


def test_batched_fantasies_and_samples(case: dict[str, Tensor]) -> None:
    rows = case["rows_few"]
    noise = torch.full((4,), 0.3, dtype=torch.float64)
    gauss = LinearizedGaussian.from_rows(rows, noise, torch.tensor(2.0, dtype=torch.float64))
    ys = torch.randn(5, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    batch = gauss.condition(case["J_new"], ys, torch.full((2,), 0.05, dtype=torch.float64))
    assert batch.batch_shape == torch.Size([5])
    mean_b, cov_b = batch.predict(case["J"], case["f"])
    assert mean_b.shape == (5, 3) and cov_b.shape == (5, 3, 3)
    one, _ = gauss.condition(case["J_new"], ys[2], torch.full((2,), 0.05,
                                                               dtype=torch.float64)).predict(
        case["J"], case["f"])
    assert torch.allclose(mean_b[2], one, atol=1e-12)
    assert torch.allclose(cov_b[0], cov_b[4], atol=1e-12)  # covariance ignores y
    # draws θ − θ* have the posterior covariance (and the shifted mean)
    cond = gauss.condition(case["J_new"], ys[0], torch.full((2,), 0.05, dtype=torch.float64))
    draws = cond.sample_offsets(200_000, generator=torch.Generator().manual_seed(2))
    mean_f, cov_f = cond.predict(case["J"], torch.zeros(3, dtype=torch.float64))
    f_draws = draws @ case["J"].mT
    assert torch.allclose(f_draws.mean(0), mean_f, atol=0.02)
    assert torch.allclose(torch.cov(f_draws.mT), cov_f, rtol=0.03, atol=0.01)
