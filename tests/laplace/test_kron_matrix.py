"""``Kron`` / ``KronDecomposed`` against dense matrices (float64), with dense and
diagonal (1-D) factors, and ``KronDecomposed.detach``."""

from __future__ import annotations

import pytest
import torch

from laplace.utils.matrix import Kron, KronDecomposed

DT = torch.float64


def spd(d: int, g: torch.Generator) -> torch.Tensor:
    A = torch.randn(d, d, generator=g, dtype=DT)
    return A @ A.T + 0.5 * torch.eye(d, dtype=DT)


def positive(d: int, g: torch.Generator) -> torch.Tensor:
    return torch.rand(d, generator=g, dtype=DT) + 0.5


# Block layouts: (sizes, which factors are diagonal).
LAYOUTS = {
    "dense": [((3, 4), (False, False)), ((3,), (False,))],
    "diag_B": [((3, 4), (True, False)), ((3,), (False,))],
    "diag_A": [((3, 4), (False, True)), ((2,), (True,))],
    "all_diag": [((2, 3), (True, True)), ((2,), (True,))],
}


def make(layout: str, seed: int = 0) -> tuple[Kron, torch.Tensor]:
    """A ``Kron`` and its dense block-diagonal matrix, built independently."""
    g = torch.Generator().manual_seed(seed)
    kfacs, blocks = [], []
    for sizes, diagonal in LAYOUTS[layout]:
        F = [positive(d, g) if is_diag else spd(d, g) for d, is_diag in zip(sizes, diagonal)]
        kfacs.append(F)
        mats = [torch.diag(f) if f.ndim == 1 else f for f in F]
        blocks.append(mats[0] if len(mats) == 1 else torch.kron(mats[0], mats[1]))
    return Kron(kfacs), torch.block_diag(*blocks)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_to_matrix_diag_logdet(layout):
    K, M = make(layout)
    assert torch.allclose(K.to_matrix(), M, rtol=1e-12, atol=1e-12)
    assert torch.allclose(K.diag(), M.diagonal(), rtol=1e-12, atol=1e-12)
    assert torch.allclose(K.logdet(), torch.logdet(M), rtol=1e-10)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_products(layout):
    K, M = make(layout)
    g = torch.Generator().manual_seed(5)
    P = M.shape[0]
    for shape in [(P,), (4, P), (4, 2, P)]:
        W = torch.randn(*shape, generator=g, dtype=DT)
        assert torch.allclose(K.bmm(W), W @ M, rtol=1e-10, atol=1e-10)  # M symmetric
        assert torch.allclose(K.bmm(W, exponent=-1), W @ torch.linalg.inv(M), rtol=1e-9,
                              atol=1e-10)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("damping", [False, True])
def test_decompose(layout, damping):
    K, M = make(layout)
    D = K.decompose(damping=damping)
    assert isinstance(D, KronDecomposed)
    assert torch.allclose(D.to_matrix(), M, rtol=1e-10, atol=1e-10)
    deltas = torch.tensor([0.3, 2.0], dtype=DT)
    shifted = D + deltas
    dense = _shifted_dense(K, deltas, damping)
    assert torch.allclose(shifted.to_matrix(), dense, rtol=1e-10, atol=1e-10)
    assert torch.allclose(shifted.logdet(), torch.logdet(dense), rtol=1e-10)
    assert torch.allclose(shifted.diag(), dense.diagonal(), rtol=1e-10)
    assert torch.allclose(shifted.diag(exponent=-1), torch.linalg.inv(dense).diagonal(),
                          rtol=1e-9)
    J = torch.randn(3, 2, dense.shape[0], generator=torch.Generator().manual_seed(1), dtype=DT)
    assert torch.allclose(shifted.inv_square_form(J),
                          J @ torch.linalg.inv(dense) @ J.transpose(-1, -2), rtol=1e-9)
    assert torch.allclose(shifted.bmm(J[0], exponent=1), J[0] @ dense, rtol=1e-9)


def _shifted_dense(K: Kron, deltas: torch.Tensor, damping: bool) -> torch.Tensor:
    """``kron(B, A) + δI`` per block, or ``kron(B + √δ I, A + √δ I)`` with damping."""
    blocks = []
    for F, delta in zip(K.kfacs, deltas):
        mats = [torch.diag(f) if f.ndim == 1 else f for f in F]
        if len(mats) == 1:
            blocks.append(mats[0] + delta * torch.eye(len(mats[0]), dtype=DT))
        elif damping:
            root = delta.sqrt()
            blocks.append(torch.kron(*[m + root * torch.eye(len(m), dtype=DT) for m in mats]))
        else:
            B = torch.kron(*mats)
            blocks.append(B + delta * torch.eye(len(B), dtype=DT))
    return torch.block_diag(*blocks)


def test_sum_and_scale_with_diagonal_factors():
    (K1, M1), (K2, _) = make("diag_A", 0), make("diag_A", 1)
    # Factor-wise sums (the batch convention): kron(B1 + B2, A1 + A2).
    total = K1 + K2
    for F, F1, F2 in zip(total.kfacs, K1.kfacs, K2.kfacs):
        for f, f1, f2 in zip(F, F1, F2):
            assert f.shape == f1.shape and torch.equal(f, f1 + f2)
    assert torch.allclose((K1 * 3.0).to_matrix(), 3 * M1, rtol=1e-12)


def test_detach():
    K, _ = make("diag_B")
    scale = torch.tensor(2.0, dtype=DT, requires_grad=True)
    prior = torch.tensor([0.5, 1.5], dtype=DT, requires_grad=True)
    D = K.decompose() * scale + prior
    assert D.logdet().requires_grad
    ref = D.to_matrix().detach()
    out = D.detach()
    assert out is D  # in place, as laplace-torch
    assert not D.deltas.requires_grad and not D.logdet().requires_grad
    assert all(not t.requires_grad for ls in D.eigenvalues + D.eigenvectors for t in ls)
    assert torch.equal(D.to_matrix(), ref)


def test_kron_refuses_operands_it_would_truncate_or_make_complex():
    import numpy as np


    g = torch.Generator().manual_seed(0)
    B, A, F = (torch.randn(n, n, generator=g, dtype=torch.float64) for n in (2, 3, 4))
    K = Kron([[B @ B.T, A @ A.T], [F @ F.T]])  # P = 6 + 4
    with pytest.raises(ValueError, match="same blocks and factor shapes"):
        K + Kron([[B @ B.T, A @ A.T]])
    with pytest.raises(ValueError, match="non-negative scalar"):
        K * -1.0
    with pytest.raises(ValueError, match="non-negative scalar"):
        K * torch.tensor([1.0, 2.0])
    torch.testing.assert_close((K * np.float32(4.0)).to_matrix(), 4 * K.to_matrix())
    for W in (torch.ones(11, dtype=torch.float64), torch.ones(3, 9, dtype=torch.float64)):
        with pytest.raises(ValueError, match="the 10 parameters in its last dimension"):
            K.bmm(W)
    decomposed = K.decompose()
    with pytest.raises(ValueError, match="the 10 parameters in its last dimension"):
        decomposed.inv_square_form(torch.ones(3, 2, 9, dtype=torch.float64))
    with pytest.raises(ValueError, match="the 10 parameters"):
        decomposed.bmm(torch.ones(11, dtype=torch.float64))
