"""``LinearizedPosterior`` (moved from ``lapbo.gaussian.LinearizedGaussian``) against
explicit dense Gaussian algebra: sample-space and dense bases, batched conditioning
(fantasies), mean steps and Matheron-rule samples."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

from laplace import FullLaplace, LinearizedPosterior
from laplace.precision import DensePrecision, WoodburyPrecision

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


@pytest.mark.parametrize("rows_key", ["rows_few", "rows_many"])  # fewer / more rows than P
@pytest.mark.parametrize("per_weight", [False, True])
@pytest.mark.parametrize("base", ["rows", "dense"])  # WoodburyPrecision / DensePrecision
def test_from_rows_and_condition_match_dense_algebra(
    case: dict[str, Tensor], rows_key: str, per_weight: bool, base: str
) -> None:
    rows = case[rows_key]
    noise = torch.full((rows.shape[0],), 0.3, dtype=torch.float64)
    prior = case["prior_vec"] if per_weight else torch.tensor(2.0, dtype=torch.float64)
    Sigma = dense_posterior(rows, noise, prior)
    if base == "rows":
        gauss = LinearizedPosterior.from_rows(rows, noise, prior)
        # the sample-space form up to P rows, the dense P × P form beyond
        assert isinstance(gauss.base, WoodburyPrecision if len(rows) <= P else DensePrecision)
    else:
        gauss = LinearizedPosterior.from_precision_matrix(torch.linalg.inv(Sigma))
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


@pytest.mark.parametrize("nested", [False, True])
def test_batched_fantasies_and_samples(case: dict[str, Tensor], nested: bool) -> None:
    rows = case["rows_few"]
    noise = torch.full((4,), 0.3, dtype=torch.float64)
    gauss = LinearizedPosterior.from_rows(rows, noise, torch.tensor(2.0, dtype=torch.float64))
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
    if nested:  # one more observation on top: Matheron's rule through two steps
        cond = cond.condition(case["J"][:1], case["f"][:1], torch.full((1,), 0.1,
                                                                       dtype=torch.float64))
    draws = cond.sample_offsets(200_000, generator=torch.Generator().manual_seed(2))
    mean_f, cov_f = cond.predict(case["J"], torch.zeros(3, dtype=torch.float64))
    f_draws = draws @ case["J"].mT
    assert torch.allclose(f_draws.mean(0), mean_f, atol=0.02)
    assert torch.allclose(torch.cov(f_draws.mT), cov_f, rtol=0.03, atol=0.01)


def test_nested_fantasy_batches_broadcast(case: dict[str, Tensor]) -> None:
    """A fantasy batch ``(5,)`` conditioned again on a batch ``(4, 1)`` has batch
    ``(4, 5)``, and each entry equals conditioning that one fantasy alone."""
    noise = torch.full((4,), 0.3, dtype=torch.float64)
    gauss = LinearizedPosterior.from_rows(case["rows_few"], noise,
                                          torch.tensor(2.0, dtype=torch.float64))
    g = torch.Generator().manual_seed(4)
    ys = torch.randn(5, 2, dtype=torch.float64, generator=g)
    J2 = torch.randn(4, 1, 1, P, dtype=torch.float64, generator=g)
    y2 = torch.randn(4, 1, 1, dtype=torch.float64, generator=g)
    v1, v2 = torch.full((2,), 0.05, dtype=torch.float64), torch.full((1,), 0.1,
                                                                      dtype=torch.float64)
    both = gauss.condition(case["J_new"], ys, v1).condition(J2, y2, v2)
    assert both.batch_shape == torch.Size([4, 5])
    mean, cov = both.predict(case["J"], case["f"])
    one = gauss.condition(case["J_new"], ys[3], v1).condition(J2[2, 0], y2[2, 0], v2)
    mean1, cov1 = one.predict(case["J"], case["f"])
    assert torch.allclose(mean[2, 3], mean1, atol=1e-12)
    assert torch.allclose(cov[2, 3], cov1, atol=1e-12)
    assert both.sample_offsets(3).shape == (3, 4, 5, P)


def test_from_laplace_matches_the_laplace_predictive() -> None:
    """``from_laplace`` of a sample-space and a dense ``FullLaplace``: ``J Σ Jᵀ`` equals
    ``functional_covariance``; after ``la.condition`` the mean shift is carried over."""
    from torch.utils.data import DataLoader, TensorDataset

    g = torch.Generator().manual_seed(0)
    X = torch.rand(6, 2, generator=g, dtype=torch.float64)
    y = torch.sin(3 * X[:, :1])
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(2, 5), torch.nn.Tanh(),
                              torch.nn.Linear(5, 1)).double()
    Xt = torch.rand(4, 2, generator=g, dtype=torch.float64)
    for form in ("sample", "dense"):
        la = FullLaplace(net, "regression", sigma_noise=0.3, prior_precision=2.0,
                         precision_form=form)
        la.fit(DataLoader(TensorDataset(X, y), batch_size=6))
        la = la.condition(Xt[:2], torch.ones(2, 1, dtype=torch.float64))
        post = LinearizedPosterior.from_laplace(la)
        Js, f = la.backend.jacobians(Xt)
        mean, cov = post.predict(Js.reshape(1, 4, -1), f.reshape(1, 4))
        f_mu, f_cov = la(Xt, joint=True)
        assert torch.allclose(mean.reshape(-1), f_mu.reshape(-1), atol=1e-10)
        assert torch.allclose(cov[0], f_cov, atol=1e-10)


def test_arguments_are_validated(case: dict[str, Tensor]) -> None:
    rows = case["rows_few"]
    with pytest.raises(ValueError, match=r"noise_var must be a tensor of shape \(4,\)"):
        LinearizedPosterior.from_rows(rows, torch.ones(3, dtype=torch.float64), 1.0)
    with pytest.raises(ValueError, match=r"precision must be a square \(P, P\) tensor"):
        LinearizedPosterior.from_precision_matrix(rows)
    gauss = LinearizedPosterior.from_rows(rows, torch.ones(4, dtype=torch.float64), 1.0)
    with pytest.raises(ValueError, match=r"noise_var must be a positive tensor"):
        gauss.condition(case["J_new"], case["y_new"], -torch.ones(2, dtype=torch.float64))
    with pytest.raises(ValueError, match="base must be an unbatched WoodburyPrecision"):
        LinearizedPosterior(object())  # type: ignore[arg-type]


@pytest.mark.parametrize("M", [200, 260])  # sample-space base (M ≤ P) and dense (M > P)
def test_float32_base_computes_in_float64(M: int) -> None:
    """A float32 base is held and stepped in float64: at noise 10⁻² the float32
    subtraction ``J Σ₀ Jᵀ − UUᵀ`` gave negative variances at the training inputs and was
    240 % off elsewhere, and conditioning at noise 10⁻³ failed; now the float32 results
    equal the float64 posterior's to float32 input rounding, in float32."""
    g = torch.Generator().manual_seed(0)
    Pw = 201
    R = torch.randn(M, Pw, generator=g, dtype=torch.float64)
    J = torch.cat([R[:20], torch.randn(10, Pw, generator=g, dtype=torch.float64)]).unsqueeze(1)
    Jc = torch.randn(5, Pw, generator=g, dtype=torch.float64)
    f = torch.zeros(30, 1, dtype=torch.float64)
    for sigma in (1e-2, 1e-3):
        noise = torch.full((M,), sigma ** 2, dtype=torch.float64)
        posts = {dt: LinearizedPosterior.from_rows(R.to(dt), noise.to(dt),
                                                   torch.tensor(1.0, dtype=dt))
                 for dt in (torch.float64, torch.float32)}
        assert posts[torch.float32].dtype == torch.float32
        for step in (False, True):
            var = {}
            for dt, post in posts.items():
                if step:
                    post = post.condition(Jc.to(dt), torch.ones(5, dtype=dt),
                                          torch.full((5,), sigma ** 2, dtype=dt))
                mean, cov = post.predict(J.to(dt), f.to(dt))
                assert mean.dtype == cov.dtype == dt
                var[dt] = cov.reshape(-1)
            assert bool((var[torch.float32] > 0).all())
            rel = (var[torch.float32].double() - var[torch.float64]).abs() / var[torch.float64]
            assert float(rel.max()) < 1e-4
    draws = posts[torch.float32].sample_offsets(3, torch.Generator().manual_seed(1))
    assert draws.dtype == torch.float32 and draws.shape == (3, Pw)
    J32 = J[:2].float().requires_grad_()
    posts[torch.float32].predict(J32, f[:2].float())[1].sum().backward()
    assert J32.grad.dtype == torch.float32 and bool(torch.isfinite(J32.grad).all())


@pytest.mark.parametrize("base", ["rows", "dense"])
@pytest.mark.parametrize("fantasies", [False, True])
def test_shared_rows_give_the_joint_moments(case: dict[str, Tensor], base: str,
                                            fantasies: bool) -> None:
    """``predict_with_shared`` at ``[shared rows; J]`` equals ``predict`` of the joined rows,
    for a batch of queries and a conditioned (optionally fantasy-batched) posterior."""
    rows, prior = case["rows_few"], torch.tensor(2.0, dtype=torch.float64)
    noise = torch.full((rows.shape[0],), 0.3, dtype=torch.float64)
    gauss = LinearizedPosterior.from_rows(rows, noise, prior)
    if base == "dense":
        gauss = LinearizedPosterior.from_precision_matrix(
            torch.linalg.inv(dense_posterior(rows, noise, prior)))
    y = case["y_new"].expand(4, 2) if fantasies else case["y_new"]
    gauss = gauss.condition(case["J_new"], y, torch.full((2,), 0.05, dtype=torch.float64))
    g = torch.Generator().manual_seed(1)
    own = (5, 1) if fantasies else (5,)  # broadcast with the fantasy batch (4,)
    J_own = torch.randn(*own, 2, P, generator=g, dtype=torch.float64)
    f_own = torch.randn(*own, 2, generator=g, dtype=torch.float64)
    J_s, f_s = case["J"], case["f"]
    mean, cov = gauss.predict_with_shared(gauss.shared_rows(J_s, f_s), J_own, f_own)
    want_mean, want_cov = gauss.predict(torch.cat([J_s.expand(*own, 3, P), J_own], dim=-2),
                                        torch.cat([f_s.expand(*own, 3), f_own], dim=-1))
    assert mean.shape == ((5, 4, 5) if fantasies else (5, 5)) == want_mean.shape
    torch.testing.assert_close(mean, want_mean, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(cov, want_cov, rtol=1e-10, atol=1e-12)


def test_shared_rows_arguments_are_validated(case: dict[str, Tensor]) -> None:
    noise = torch.full((4,), 0.3, dtype=torch.float64)
    gauss = LinearizedPosterior.from_rows(case["rows_few"], noise, torch.tensor(2.0))
    shared = gauss.shared_rows(case["J"], case["f"])
    for bad in (-1, 4, 1.5, True):
        with pytest.raises(ValueError, match="lead must be an int from 0 to the 3 shared rows"):
            gauss.predict_with_shared(shared, case["J_new"], case["y_new"], lead=bad)
    with pytest.raises(ValueError, match="shared must be the SharedRows"):
        gauss.predict_with_shared((shared.mean, shared.cov), case["J_new"], case["y_new"])
