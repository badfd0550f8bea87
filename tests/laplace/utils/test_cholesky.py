"""``laplace.utils.cholesky.jittered_cholesky``: the factor of the first jittered matrix."""

from __future__ import annotations

import torch

from laplace.utils.cholesky import jittered_cholesky

DT = torch.float64


def _rank_deficient(n: int = 30, r: int = 3, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    B = torch.randn(n, r, generator=g, dtype=DT)
    return B @ B.mT  # positive semi-definite, rank r


def test_a_positive_definite_matrix_needs_no_jitter():
    A = _rank_deficient() + torch.eye(30, dtype=DT)
    L, jitter = jittered_cholesky(A, (1e-6,), 2.0)
    assert jitter == 0.0
    torch.testing.assert_close(L @ L.mT, A, rtol=1e-12, atol=1e-12)


def test_the_first_jitter_that_works_is_used_at_its_scale():
    A = 1e6 * _rank_deficient()
    assert int(torch.linalg.cholesky_ex(A)[1]) != 0
    L, jitter = jittered_cholesky(A, (0.0, 1e-8, 1e-4), 5.0)
    assert jitter == 1e-8  # 0.0 is tried first and fails
    torch.testing.assert_close(L @ L.mT, A + 5e-8 * torch.eye(30, dtype=DT),
                               rtol=1e-10, atol=1e-8)


def test_batched_scales_broadcast():
    A = torch.stack([_rank_deficient(seed=1), 100.0 * _rank_deficient(seed=2)])
    scale = torch.tensor([1.0, 100.0], dtype=DT)[:, None, None]
    L, jitter = jittered_cholesky(A, (1e-6,), scale)
    expected = A + 1e-6 * scale * torch.eye(30, dtype=DT)
    torch.testing.assert_close(L @ L.mT, expected, rtol=1e-10, atol=1e-8)


def test_non_finite_or_indefinite_matrices_give_none():
    A = _rank_deficient()
    A[0, 0] = float("nan")
    assert jittered_cholesky(A, (1e-8, 1e-4), 1.0) is None
    assert jittered_cholesky(-torch.eye(4, dtype=DT), (1e-8, 1e-4), 1.0) is None
    assert jittered_cholesky(_rank_deficient(), (), 1.0) is None
