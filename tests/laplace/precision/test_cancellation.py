"""The Woodbury predictive's guard against cancellation (``laplace.precision.cancellation``):
low-rank precisions in float32 where ``J D⁻¹ Jᵀ − VᵀV`` loses every digit."""

from __future__ import annotations

import warnings

import pytest
import torch

from laplace.precision import DensePrecision, NotPositiveDefiniteError, WoodburyPrecision
from laplace.precision.cancellation import CANCELLATION_EPS, guard_subtraction
from laplace.precision.lowrank import LowRankPrecision

P, K_RANK = 40, 12  # parameters, rank of the low-rank precision


def _lowrank(dtype: torch.dtype) -> tuple[LowRankPrecision, DensePrecision, torch.Tensor]:
    """Eigenvalues 10⁶–10⁸ over a prior precision of 1: directions in the span of ``U``
    have posterior variance 10⁻⁸–10⁻⁶ of their prior variance."""
    g = torch.Generator().manual_seed(0)
    U, _ = torch.linalg.qr(torch.randn(P, K_RANK, generator=g, dtype=torch.float64))
    lam = torch.logspace(6, 8, K_RANK, dtype=torch.float64)
    prior = torch.tensor([1.0], dtype=torch.float64)
    low = LowRankPrecision(U.to(dtype), lam.to(dtype), torch.tensor(1.0, dtype=dtype),
                           prior.to(dtype))
    dense = DensePrecision(U @ torch.diag(lam) @ U.T, torch.tensor(1.0, dtype=torch.float64),
                           prior)
    inside = (U @ torch.randn(K_RANK, 6, generator=g, dtype=torch.float64)).T
    outside = torch.randn(4, P, generator=g, dtype=torch.float64)
    return low, dense, torch.cat([inside, outside]).unsqueeze(1)  # (10, 1, P)


def test_lowrank_float32_variances_are_recomputed_non_negative():
    low, dense, Js = _lowrank(torch.float32)
    J32 = Js.float()
    base = J32 @ J32.mT
    V = low._project(J32)
    plain = (base - V @ V.mT).squeeze()
    ref = dense.inv_square_form(Js).squeeze()
    assert float(((plain.double() - ref) / ref)[:6].abs().max()) > 1.0  # the defect
    with pytest.warns(RuntimeWarning, match="6 of 10 points"):
        out = low.inv_square_form(J32).squeeze()
    assert bool((out > 0).all())
    rel = (out.double() - ref) / ref
    assert float(rel.abs().max()) < 1e-5  # every point recomputed in float64


def test_lowrank_float64_is_unguarded_and_exact():
    low, dense, Js = _lowrank(torch.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = low.inv_square_form(Js)
    torch.testing.assert_close(out, dense.inv_square_form(Js), rtol=1e-8, atol=0)


def test_guard_threshold_and_laziness():
    base = torch.ones(3, 1, 1)
    eps = torch.finfo(torch.float64).eps
    out = torch.tensor([1e-3, 2 * CANCELLATION_EPS * eps, 0.5 * CANCELLATION_EPS * eps],
                       dtype=torch.float64).reshape(3, 1, 1)
    calls = []

    def root():
        calls.append(1)
        return torch.full((3, 1, 1), 0.1, dtype=torch.float64)

    with pytest.warns(RuntimeWarning, match="1 of 3 points"):
        fixed = guard_subtraction(base.double(), out, root)
    assert fixed.flatten().tolist() == pytest.approx([0.01] * 3)  # all points recomputed
    calls.clear()
    kept = out[:2]
    assert guard_subtraction(base[:2].double(), kept, root) is kept
    assert not calls  # no root computed when nothing lost its digits


def test_weight_variances_in_float32_are_recomputed_in_float64():
    """Weights 0–4 observed directly at ``s/δ = 10⁸`` (posterior variance 10⁻⁸ of the
    prior's): ``1/δ − colsum(B²)`` in float32 has no digit left for them."""
    g = torch.Generator().manual_seed(1)
    R = torch.cat([torch.eye(5, P, dtype=torch.float64),
                   torch.randn(20, P, generator=g, dtype=torch.float64)]).float().double()
    s, d = torch.tensor(1e8, dtype=torch.float64), torch.tensor([1.0], dtype=torch.float64)
    dense = DensePrecision(R.T @ R, s, d).covariance()
    wb = WoodburyPrecision(R.float(), s.float(), d.float())
    plain = 1 / d.float() - wb.covariance_factor().square().sum(-2)
    assert float(((plain[:5].double() - dense.diagonal()[:5]) / dense.diagonal()[:5]).abs()
                 .max()) > 0.5  # the defect
    with pytest.warns(RuntimeWarning, match="5 of 40 weights"):
        diag = wb.covariance_diag()
    torch.testing.assert_close(diag.double(), dense.diagonal(), rtol=1e-5, atol=0)
    with pytest.warns(RuntimeWarning, match="weights"):
        cov = wb.covariance()
    torch.testing.assert_close(cov.double(), dense, rtol=0, atol=1e-6)  # entries O(1)
    # Low rank: weights 0–11 are the eigenvectors, at eigenvalues 10⁶–10⁸.
    U = torch.eye(P, K_RANK, dtype=torch.float64)
    lam = torch.logspace(6, 8, K_RANK, dtype=torch.float64)
    one = torch.tensor(1.0, dtype=torch.float64)
    low = LowRankPrecision(U.float(), lam.float(), one.float(), d.float())
    ref = 1 / (d + torch.cat([lam, torch.zeros(P - K_RANK, dtype=torch.float64)]))
    with pytest.warns(RuntimeWarning, match="12 of 40 weights"):
        low_diag = low.covariance_diag()
    torch.testing.assert_close(low_diag.double(), ref, rtol=1e-6, atol=0)
    # In float64 nothing is recomputed.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        WoodburyPrecision(R, s, d).covariance_diag()


@pytest.mark.parametrize("scale", [1e3, 1e4])
def test_ill_conditioned_float32_dense_precision_is_factorised_in_float64(scale):
    """``s·H + I`` from a float32 ``H`` of rank 40 over 80 weights (condition about
    ``s·600``): too ill-conditioned for a float32 factor, so factorised in float64 (the
    same ``H``), with a warning. (At ``s = 10⁶`` the rounding of the float32 ``H`` itself
    exceeds ``δ``: no factor exists, and the error says to compute in float64.)"""
    g = torch.Generator().manual_seed(2)
    R = torch.randn(40, P + 20, generator=g)
    H = R.T @ R
    d = torch.tensor([1.0])
    dense32 = DensePrecision(H, torch.tensor(scale), d)
    ref = DensePrecision(H.double(), torch.tensor(scale, dtype=torch.float64), d.double())
    J = torch.cat([R[:5], torch.randn(3, P + 20, generator=g)]).unsqueeze(1)
    with pytest.warns(RuntimeWarning, match="ill-conditioned for torch.float32"):
        var = dense32.inv_square_form(J)
    assert var.dtype == torch.float32
    torch.testing.assert_close(var.double(), ref.inv_square_form(J.double()), rtol=1e-4,
                               atol=0)
    torch.testing.assert_close(dense32.logdet().double(), ref.logdet(), rtol=1e-6, atol=0)
    assert dense32.sample(4).dtype == torch.float32
    torch.testing.assert_close(dense32.covariance_diag().double(), ref.covariance_diag(),
                               rtol=1e-4, atol=0)
    # a well-conditioned float32 precision keeps its float32 factor, silently
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert DensePrecision(H, torch.tensor(1.0), d).cholesky.dtype == torch.float32

    with pytest.raises(NotPositiveDefiniteError, match="float64"):
        DensePrecision(H, torch.tensor(1e6), d).logdet()
