"""``WoodburyPrecision`` against the dense precision ``s·RᵀR + diag(δ)`` (float64, 1e-10)."""

from __future__ import annotations

import math
import warnings

import pytest
import torch

from laplace.precision import (
    DensePrecision,
    GramSpectrum,
    NotPositiveDefiniteError,
    WoodburyPrecision,
)

DT = torch.float64
M, P = 7, 23
TOL = {"rtol": 1e-10, "atol": 1e-10}


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _rows(m: int = M, p: int = P, seed: int = 0, dtype=DT) -> torch.Tensor:
    return torch.randn(m, p, generator=_gen(seed), dtype=dtype)


def _prior(kind: str, p: int = P) -> torch.Tensor:
    if kind == "scalar":
        return torch.tensor([0.7], dtype=DT)
    if kind == "per_tensor":  # three parameter tensors, one value each, expanded
        sizes = [p // 3, p // 3, p - 2 * (p // 3)]
        return torch.repeat_interleave(torch.tensor([0.4, 1.3, 2.2], dtype=DT),
                                       torch.tensor(sizes))
    return torch.rand(p, generator=_gen(5), dtype=DT) + 0.3


def _pair(kind: str, scale: float = 2.5, rows=None):
    R = _rows() if rows is None else rows
    s, d = torch.tensor(scale, dtype=DT), _prior(kind, R.shape[-1])
    return WoodburyPrecision(R, s, d), DensePrecision(R.T @ R, s, d)


PRIORS = ("scalar", "per_tensor", "per_weight")


@pytest.mark.parametrize("kind", PRIORS)
def test_matches_dense(kind):
    wb, dense = _pair(kind)
    J = torch.randn(5, 3, P, generator=_gen(1), dtype=DT)
    delta = torch.randn(4, P, generator=_gen(2), dtype=DT)
    torch.testing.assert_close(wb.logdet(), dense.logdet(), **TOL)
    torch.testing.assert_close(wb.inv_square_form(J), dense.inv_square_form(J), **TOL)
    torch.testing.assert_close(wb.joint_inv_square_form(J), dense.joint_inv_square_form(J),
                               **TOL)
    torch.testing.assert_close(wb.square_form(delta), dense.square_form(delta), **TOL)
    torch.testing.assert_close(wb.diag(), dense.diag(), **TOL)
    torch.testing.assert_close(wb.to_matrix(), dense.to_matrix(), **TOL)
    torch.testing.assert_close(wb.covariance_diag(), dense.covariance().diagonal(), **TOL)
    torch.testing.assert_close(wb.solve(delta), delta @ dense.covariance(), **TOL)


@pytest.mark.parametrize("bias", [True, False])
def test_last_layer_variance_matches_dense(bias):
    K, width, n = 3, 5, 4
    p = K * width + (K if bias else 0)
    wb, dense = _pair("per_weight", rows=_rows(6, p, seed=3))
    phi = torch.randn(n, width, generator=_gen(4), dtype=DT)
    for joint, diagonal in ((False, False), (True, False), (False, True)):
        torch.testing.assert_close(wb.last_layer_variance(phi, K, bias, joint, diagonal),
                                   dense.last_layer_variance(phi, K, bias, joint, diagonal),
                                   **TOL)
    with pytest.raises(ValueError, match=r"does not match the \d+ parameters"):
        wb.last_layer_variance(phi, K + 1, bias)


def test_predictive_is_differentiable_in_J():
    wb, dense = _pair("per_weight")
    J = torch.randn(3, 2, P, generator=_gen(6), dtype=DT)
    J1, J2 = J.clone().requires_grad_(), J.clone().requires_grad_()
    (g1,) = torch.autograd.grad(wb.joint_inv_square_form(J1).square().sum(), J1)
    (g2,) = torch.autograd.grad(dense.joint_inv_square_form(J2).square().sum(), J2)
    torch.testing.assert_close(g1, g2, **TOL)


def test_sample_is_an_exact_square_root():
    # ``sample`` is linear in its ``randn`` draws: recover S from P draws and check SSᵀ = Σ.
    wb, dense = _pair("per_weight", scale=40.0)
    draws = wb.sample(P, generator=_gen(7))
    eps = torch.randn(P, P, generator=_gen(7), dtype=DT)
    S = torch.linalg.solve(eps, draws).T  # draws = eps Sᵀ
    torch.testing.assert_close(S @ S.T, dense.covariance(), **TOL)


def test_sample_covariance_statistical():
    wb, dense = _pair("per_weight", scale=40.0)
    draws = wb.sample(200_000, generator=_gen(8))
    Sigma = dense.covariance()
    sd = Sigma.diagonal().sqrt()
    err = ((draws.T @ draws / len(draws) - Sigma) / torch.outer(sd, sd)).abs().max()
    # Correlation-scale error; the prior alone (no curvature) would be off by far more.
    prior_only = ((torch.diag(1 / wb.D) - Sigma) / torch.outer(sd, sd)).abs().max()
    assert err < 0.02 < prior_only
    assert draws.mean(0).abs().div(sd).max() < 0.02


def _logdets(route: str, log_prior: torch.Tensor, log_scale: torch.Tensor, R, spectrum):
    prior, scale = log_prior.exp(), log_scale.exp()
    if route == "dense":
        return DensePrecision(R.T @ R, scale, prior).logdet()
    return WoodburyPrecision(R, scale, prior, spectrum if route == "spectrum" else None).logdet()


@pytest.mark.parametrize("route", ["spectrum", "cholesky"])
@pytest.mark.parametrize("kind", ["scalar", "per_weight"])
def test_logdet_and_gradients_match_dense(route, kind):
    R = _rows()
    spectrum = GramSpectrum(R)
    results = []
    for r in (route, "dense"):
        lp = _prior(kind).log().requires_grad_()
        ls = torch.tensor(0.9, dtype=DT, requires_grad=True)
        value = _logdets(r, lp, ls, R, spectrum)
        results.append((value, *torch.autograd.grad(value, (lp, ls))))
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, **TOL)


def test_spectrum_evaluates_a_grid_of_settings():
    R = _rows()
    spectrum = GramSpectrum(R)
    scales = torch.tensor([0.1, 1.0, 30.0], dtype=DT).unsqueeze(-1)
    priors = torch.tensor([0.05, 0.5, 5.0, 50.0], dtype=DT)
    grid = spectrum.logdet(scales, priors)
    assert grid.shape == (3, 4)
    for i, j in ((0, 0), (1, 2), (2, 3)):
        s, d = scales[i, 0], priors[j:j + 1]
        torch.testing.assert_close(grid[i, j], DensePrecision(R.T @ R, s, d).logdet(), **TOL)
        torch.testing.assert_close(spectrum.log_det_ratio(s, d[0]), grid[i, j] - P * d[0].log(),
                                   **TOL)
    wb = WoodburyPrecision(R, 1.0, torch.tensor([0.5], dtype=DT), spectrum)
    torch.testing.assert_close(wb.with_hyperparameters(30.0, torch.tensor([50.0], dtype=DT))
                               .logdet(), grid[2, 3], **TOL)


def _linear_gaussian():
    """Prior N(0, D⁻¹), first data y₁ = Rθ + N(0, 1/s), then y₂ = Jθ + N(0, diag(v))."""
    R, s, d = _rows(), torch.tensor(2.5, dtype=DT), _prior("per_weight")
    J = torch.randn(3, P, generator=_gen(9), dtype=DT)
    v = torch.tensor([0.3, 0.8, 1.7], dtype=DT)
    y1 = torch.randn(M, generator=_gen(10), dtype=DT)
    y2 = torch.randn(3, generator=_gen(11), dtype=DT)
    return R, s, d, J, v, y1, y2


def test_condition_equals_refit_on_enlarged_data():
    R, s, d, J, v, y1, y2 = _linear_gaussian()
    wb = WoodburyPrecision(R, s, d)
    theta_star = wb.solve(s * (R.T @ y1))  # the exact posterior mean of the first fit
    new = wb.condition(J, v)
    A = s * R.T @ R + (J.T / v) @ J + torch.diag(d)
    refit = DensePrecision(A, torch.tensor(1.0, dtype=DT), torch.zeros(1, dtype=DT))
    mean_refit = torch.linalg.solve(A, s * R.T @ y1 + J.T @ (y2 / v))
    theta_new = theta_star + new.mean_shift(J, y2 - J @ theta_star, v)
    torch.testing.assert_close(theta_new, mean_refit, **TOL)
    torch.testing.assert_close(new.logdet(), refit.logdet(), **TOL)
    Js = torch.randn(4, 2, P, generator=_gen(12), dtype=DT)
    torch.testing.assert_close(new.inv_square_form(Js), refit.inv_square_form(Js), **TOL)
    torch.testing.assert_close(new.covariance_diag(), refit.covariance().diagonal(), **TOL)
    # The bordered capacitance factor equals a fresh factorization of the new rows.
    fresh = WoodburyPrecision(new.rows, s, d)
    torch.testing.assert_close(new._capacitance_cholesky, fresh._capacitance_cholesky, **TOL)
    assert new.rows.shape == (M + 3, P)


def test_batched_condition_for_fantasies():
    R, s, d, _, v, _, _ = _linear_gaussian()
    wb = WoodburyPrecision(R, s, d)
    J = torch.randn(4, 2, P, generator=_gen(13), dtype=DT)  # four fantasies, two rows each
    resid = torch.randn(4, 2, generator=_gen(14), dtype=DT)
    batch = wb.condition(J, v[:2])
    assert batch.batch_shape == (4,) and batch.sample(5, _gen(15)).shape == (5, 4, P)
    Js = torch.randn(3, 2, P, generator=_gen(16), dtype=DT)
    shifts = batch.mean_shift(J, resid, v[:2])
    for f in range(4):
        one = wb.condition(J[f], v[:2])
        torch.testing.assert_close(batch.logdet()[f], one.logdet(), **TOL)
        torch.testing.assert_close(batch.inv_square_form(Js)[f], one.inv_square_form(Js), **TOL)
        torch.testing.assert_close(batch.joint_inv_square_form(Js)[f],
                                   one.joint_inv_square_form(Js), **TOL)
        torch.testing.assert_close(batch.covariance_diag()[f], one.covariance_diag(), **TOL)
        torch.testing.assert_close(shifts[f], one.mean_shift(J[f], resid[f], v[:2]), **TOL)
    # Conditioning a batch again keeps the batch and stays exact.
    twice = batch.condition(J[:, :1], 0.5)
    dense = DensePrecision(twice.rows[2].T @ twice.rows[2], s, d)
    torch.testing.assert_close(twice.logdet()[2], dense.logdet(), **TOL)


def test_float32_sanity():
    R32 = _rows(dtype=torch.float32)
    d = _prior("per_weight")
    wb = WoodburyPrecision(R32, torch.tensor(2.5), d.float(), GramSpectrum(R32))
    dense = DensePrecision(R32.double().T @ R32.double(), torch.tensor(2.5, dtype=DT), d)
    J = torch.randn(5, 3, P, generator=_gen(17))
    assert wb.logdet().dtype == torch.float32
    close = {"rtol": 1e-4, "atol": 1e-5}
    torch.testing.assert_close(wb.logdet().double(), dense.logdet(), **close)
    torch.testing.assert_close(wb.inv_square_form(J).double(), dense.inv_square_form(J.double()),
                               **close)
    torch.testing.assert_close(wb.covariance_diag().double(), dense.covariance().diagonal(),
                               **close)
    scalar = WoodburyPrecision(R32, 2.5, torch.tensor([0.7]), GramSpectrum(R32))
    dense_scalar = DensePrecision(dense.H, dense.scale, _prior("scalar"))
    torch.testing.assert_close(scalar.logdet().double(), dense_scalar.logdet(), **close)
    assert scalar.sample(3, _gen(18)).dtype == torch.float32


def test_no_P_by_P_matrix_for_a_million_parameters():
    R = _rows(8, 1_000_000, seed=19, dtype=torch.float32)  # a dense Σ⁻¹ would need 4 TB
    wb = WoodburyPrecision(R, 1.0, torch.tensor([2.0]))
    J = torch.randn(2, 1, 1_000_000, generator=_gen(20))
    var = wb.inv_square_form(J)
    prior_var = J.square().sum(-1, keepdim=True) / 2.0
    assert bool((var > 0).all()) and bool((var < prior_var).all())
    assert wb.sample(2, _gen(21)).shape == (2, 1_000_000)
    G = (R.double() @ R.double().T) / 2.0
    expected = 1e6 * torch.log(torch.tensor(2.0, dtype=DT)) + torch.logdet(torch.eye(8, dtype=DT)
                                                                           + G)
    torch.testing.assert_close(wb.logdet().double(), expected, rtol=1e-6, atol=0)


def test_invalid_arguments():
    R, d = _rows(), _prior("scalar")
    with pytest.raises(ValueError, match=r"rows must have shape \(\.\.\., M, P\)"):
        WoodburyPrecision(R[0], 1.0, d)
    with pytest.raises(ValueError, match="rows must be a floating-point"):
        WoodburyPrecision(R.long(), 1.0, d)
    with pytest.raises(ValueError, match="rows must be finite"):
        WoodburyPrecision(R * float("nan"), 1.0, d)
    with pytest.raises(ValueError, match="scale must be positive"):
        WoodburyPrecision(R, -1.0, d)
    with pytest.raises(ValueError, match=r"prior of shape \(3,\) must be a scalar or one value"):
        WoodburyPrecision(R, 1.0, torch.ones(3, dtype=DT))
    with pytest.raises(NotPositiveDefiniteError, match="the prior precision must be positive"):
        WoodburyPrecision(R, 1.0, torch.zeros(1, dtype=DT))
    with pytest.raises(ValueError, match="spectrum must be the GramSpectrum"):
        WoodburyPrecision(R, 1.0, d, GramSpectrum(R[:3]))
    wb = WoodburyPrecision(R, 1.0, d)
    with pytest.raises(ValueError, match=r"must have 23 columns and dtype torch.float64"):
        wb.condition(_rows(2, P + 1), 1.0)
    with pytest.raises(ValueError, match="noise_var must be positive and finite"):
        wb.condition(_rows(2), torch.tensor([1.0, 0.0], dtype=DT))
    with pytest.raises(ValueError, match=r"noise_var of shape \(3,\) must be a scalar or end in 2"):
        wb.condition(_rows(2), torch.ones(3, dtype=DT))
    with pytest.raises(ValueError, match="n_samples must be a positive int"):
        wb.sample(0)
    with pytest.raises(ValueError, match="scale and prior must be positive"):
        GramSpectrum(R).logdet(1.0, 0.0)


def test_capacitance_rounding_is_jittered_with_a_warning():
    """``C = I + s·R D⁻¹ Rᵀ`` is positive definite by construction; with ``s = 10¹⁴`` and
    rank-deficient rows its Cholesky factorisation fails to rounding, and the factor of
    ``C + ε·mean(diag(s R D⁻¹ Rᵀ))·I`` is used instead for the first ``ε`` of
    ``CAPACITANCE_JITTERS`` at which it exists: ``(M − r)`` eigenvalues ``1 + ε·m``."""
    from laplace.precision.woodbury import CAPACITANCE_JITTERS

    m_rows, p, r, s = 300, 500, 20, 1e14
    g = _gen(11)
    A = torch.randn(m_rows, r, generator=g, dtype=DT)
    B = torch.randn(r, p, generator=g, dtype=DT)
    R = A @ B  # rank r: R Rᵀ has r positive eigenvalues, those of Lᵀ AᵀA L (B Bᵀ = L Lᵀ)
    C = torch.eye(m_rows, dtype=DT) + s * R @ R.mT
    assert int(torch.linalg.cholesky_ex(C)[1]) != 0  # the case: rounding breaks it
    prec = WoodburyPrecision(R, s, torch.ones(1, dtype=DT))
    with pytest.warns(RuntimeWarning, match="jitter"):
        logdet = prec.logdet()
    L = torch.linalg.cholesky(B @ B.mT)
    lam = torch.linalg.eigvalsh(L.mT @ A.mT @ A @ L)
    mean_diag = s * float(lam.sum()) / m_rows
    candidates = [float(torch.log1p(eps * mean_diag + s * lam).sum()
                        + (m_rows - r) * math.log1p(eps * mean_diag))
                  for eps in CAPACITANCE_JITTERS]
    assert min(abs(float(logdet) - c) / abs(c) for c in candidates) < 1e-6
    J = torch.randn(4, 1, p, generator=g, dtype=DT)
    var = prec.inv_square_form(J)
    assert torch.isfinite(var).all() and (var > 0).all()


def test_capacitance_with_non_finite_curvature_still_raises():
    prec = WoodburyPrecision(_rows(), 2.5, _prior("scalar"))
    prec.rows = prec.rows.clone()
    prec.rows[0, 0] = float("inf")  # past the constructor's check
    prec.__dict__.pop("_W", None)
    prec.__dict__.pop("_DinvW", None)
    with pytest.raises(NotPositiveDefiniteError, match="not positive definite"):
        prec.logdet()


def test_a_ratio_beyond_the_dtype_names_the_remedy():
    """float32 rows at ``s = 10¹²``: no jitter up to 10⁻⁶ of the mean diagonal helps, and
    the error says what to change instead of blaming an indefinite Hessian."""
    g = _gen(12)
    R = (torch.randn(300, 5, generator=g) @ torch.randn(5, 400, generator=g))
    prec = WoodburyPrecision(R, 1e12, torch.ones(1))
    with pytest.raises(NotPositiveDefiniteError, match="Raise sigma_noise .* float64"):
        prec.logdet()


def _cancelling(dtype=torch.float32):
    """Rows at ``s/δ = 10⁵``: at the rows' own points the posterior variance is ``1/s``,
    about 10⁻⁷ of the prior's, which float32's Woodbury subtraction cannot resolve."""
    R = torch.randn(40, 60, generator=_gen(30), dtype=dtype)
    fresh = torch.randn(10, 60, generator=_gen(31), dtype=dtype)
    wb = WoodburyPrecision(R, torch.tensor(1e5, dtype=dtype), torch.tensor([1.0], dtype=dtype))
    dense = DensePrecision(R.double().T @ R.double(), torch.tensor(1e5, dtype=DT),
                           torch.tensor([1.0], dtype=DT))
    return wb, dense, torch.cat([R[:20], fresh])


def test_cancellation_in_float32_is_recomputed_non_negative():
    wb, dense, J = _cancelling()
    Js = torch.stack([J, 0.5 * J + 0.1 * J.flip(-1)], dim=1)  # two outputs: (30, 2, P)
    V = wb._project(Js)
    plain = (Js @ Js.mT) - V.mT @ V  # the unguarded subtraction (δ = 1)
    var_plain = plain.diagonal(dim1=-2, dim2=-1)
    ref = dense.inv_square_form(Js.double())
    assert bool((var_plain[:20] <= 0).any())  # the defect being guarded against
    with pytest.warns(RuntimeWarning, match="20 of 30 points.*float64"):
        out = wb.inv_square_form(Js)
    var = out.diagonal(dim1=-2, dim2=-1)
    assert bool((var > 0).all())
    rel = ((var.double() - ref.diagonal(dim1=-2, dim2=-1)) / ref.diagonal(dim1=-2, dim2=-1))
    assert float(rel.abs().max()) < 1e-5  # the plain subtraction is off by > 100 %
    torch.testing.assert_close(out[:20], out[:20].mT)
    # The joint covariance goes through the same guard.
    with pytest.warns(RuntimeWarning):
        joint = wb.joint_inv_square_form(Js[:3])
    assert bool((joint.diagonal() > 0).all())
    assert bool((torch.linalg.eigvalsh(joint.double()) > -1e-9).all())


def test_cancellation_guard_is_silent_where_digits_remain():
    wb, dense, J = _cancelling(torch.float64)
    Js = torch.cat([J, torch.zeros(1, J.shape[-1], dtype=DT)]).unsqueeze(1)  # a zero row
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = wb.inv_square_form(Js)
    torch.testing.assert_close(out[:-1], dense.inv_square_form(Js[:-1]), rtol=1e-6, atol=0)
    assert float(out[-1].abs().max()) == 0.0  # exact zero, not a cancellation


def test_cancellation_guard_with_batched_rows():
    wb, _, J = _cancelling()
    extra = torch.randn(3, 2, J.shape[-1], generator=_gen(32))
    batch = wb.condition(extra, 1e-3)
    Js = J[:5].unsqueeze(1)
    with pytest.warns(RuntimeWarning):
        out = batch.inv_square_form(Js)
    assert out.shape == (3, 5, 1, 1) and bool((out > 0).all())
    for f in range(3):
        one = wb.condition(extra[f], 1e-3)
        with pytest.warns(RuntimeWarning):
            torch.testing.assert_close(out[f], one.inv_square_form(Js), rtol=1e-4, atol=0)
