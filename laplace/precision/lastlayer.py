"""``J Σ Jᵀ`` for last-layer Jacobians ``J = [I_K ⊗ φᵀ, I_K]`` without building ``J``.

The last layer ``f = Wφ + b`` has parameters ``θ = [vec_row(W), b]`` (``W``: ``K×D``),
so its Jacobian is ``I_K ⊗ φᵀ`` (plus ``I_K`` for the bias). Each function returns
per-point covariances ``(n, K, K)`` (``(n, K)`` with ``diagonal=True``) or, with
``joint=True``, the covariance over all points ``(n·K, n·K)``.
"""

from __future__ import annotations

import torch
from torch import Tensor


def _pairs(joint: bool) -> str:
    return "m" if joint else "n"


def _finish(cov: Tensor, joint: bool, diagonal: bool) -> Tensor:
    """``cov`` is ``(n, [m,] K, K)`` — return joint ``(nK, nK)``, per point, or diagonal."""
    if joint:
        n, _, K, _ = cov.shape
        return cov.permute(0, 2, 1, 3).reshape(n * K, n * K)
    if diagonal:
        return cov.diagonal(dim1=-2, dim2=-1)
    return cov


def dense(Sigma: Tensor, phi: Tensor, K: int, bias: bool, joint: bool, diagonal: bool) -> Tensor:
    """Dense covariance ``Σ`` ``(P, P)``, ``P = K·D (+K)``."""
    n, D = phi.shape
    m = _pairs(joint)
    out = "nmkl" if joint else "nkl"
    W = Sigma[: K * D, : K * D].reshape(K, D, K, D)
    cov = torch.einsum(f"nd,kdle,{m}e->{out}", phi, W, phi)
    if bias:
        Wb = Sigma[: K * D, K * D :].reshape(K, D, K)
        bb = Sigma[K * D :, K * D :]
        cross = torch.einsum("nd,kdl->nkl", phi, Wb)
        if joint:
            cov = cov + cross.unsqueeze(1) + cross.transpose(-1, -2).unsqueeze(0) + bb
        else:
            cov = cov + cross + cross.transpose(-1, -2) + bb
    return _finish(cov, joint, diagonal)


def diag(variances: Tensor, phi: Tensor, K: int, bias: bool, joint: bool,
         diagonal: bool) -> Tensor:
    """Diagonal covariance ``diag(Σ)`` ``(P,)``."""
    n, D = phi.shape
    var_W = variances[: K * D].reshape(K, D)
    var_b = variances[K * D :] if bias else torch.zeros_like(var_W[:, 0])
    if joint:
        s = torch.einsum("nd,md,kd->nmk", phi, phi, var_W) + var_b
        return _finish(torch.diag_embed(s), joint, diagonal)
    s = phi.square() @ var_W.T + var_b
    return s if diagonal else torch.diag_embed(s)


def kron(
    Q1: Tensor, Q2: Tensor, inv_eig: Tensor, bias_block: Tensor | None, phi: Tensor,
    joint: bool, diagonal: bool,
) -> Tensor:
    """Kronecker weight block ``(Q₁⊗Q₂) diag(inv_eig) (Q₁⊗Q₂)ᵀ`` plus a dense bias block.

    Args:
        Q1, Q2: eigenvectors ``(K, K)`` and ``(D, D)``.
        inv_eig: inverse eigenvalues of the weight block ``(K, D)``.
        bias_block: bias covariance ``(K, K)`` or ``None``.
    """
    psi = phi @ Q2  # (n, D)
    if joint:
        s = torch.einsum("nj,mj,ij->nmi", psi, psi, inv_eig)
        cov = torch.einsum("ki,nmi,li->nmkl", Q1, s, Q1)
        if bias_block is not None:
            cov = cov + bias_block
        return _finish(cov, joint, diagonal)
    s = psi.square() @ inv_eig.T  # (n, K)
    if diagonal:
        out = s @ Q1.square().T
        if bias_block is not None:
            out = out + (bias_block if bias_block.ndim == 1 else bias_block.diagonal())
        return out
    cov = torch.einsum("ki,ni,li->nkl", Q1, s, Q1)
    if bias_block is not None:
        cov = cov + bias_block
    return cov
