"""Kronecker-factored posterior precision (``KronLaplace``, ``KronLLLaplace``)."""

from __future__ import annotations

import torch
from torch import Tensor

from laplace.precision import lastlayer
from laplace.precision.base import NotPositiveDefiniteError, PrecisionMatrix, not_pd_message
from laplace.utils.matrix import KronDecomposed


class KronPrecision(PrecisionMatrix):
    """``Σ⁻¹``, block-diagonal over parameter tensors, each ``s·kron(B, A) + δᵢ I``.

    Args:
        H: the eigendecomposed curvature factors (no scale, no prior).
        scale: ``s``.
        prior: ``(1,)`` or one value per parameter tensor ``(n_blocks,)``.
    """

    def __init__(self, H: KronDecomposed, scale: Tensor, prior: Tensor) -> None:
        if prior.numel() not in (1, len(H)):
            raise ValueError(
                "A Kronecker posterior takes a scalar or layerwise prior precision "
                f"({len(H)} values); got {prior.numel()} values (a diagonal prior does "
                "not keep the Kronecker structure)."
            )
        self.matrix = H * scale + prior.expand(len(H))
        self.n_params = sum(self.matrix._block_sizes())
        for i in range(len(H)):
            eig = self.matrix.block_eigenvalues(i).detach()
            if not bool((eig > 0).all()):
                raise NotPositiveDefiniteError(
                    not_pd_message("Kronecker", f" (block {i}: smallest {eig.min():.3g})")
                )

    def logdet(self) -> Tensor:
        return self.matrix.logdet()

    def square_form(self, delta: Tensor) -> Tensor:
        flat = delta.reshape(-1, self.n_params)
        quad = (flat * self.matrix.bmm(flat, exponent=1)).sum(-1)
        return quad.reshape(delta.shape[:-1])

    def inv_square_form(self, Js: Tensor) -> Tensor:
        return self.matrix.inv_square_form(Js)

    def sample(self, n_samples: int, generator: torch.Generator | None = None) -> Tensor:
        return self.matrix.sample(n_samples, generator)

    def diag(self) -> Tensor:
        return self.matrix.diag()

    def to_matrix(self) -> Tensor:
        return self.matrix.to_matrix()

    def covariance_diag(self) -> Tensor:
        return self.matrix.diag(exponent=-1)

    def last_layer_variance(self, phi, n_outputs, bias, joint=False, diagonal=False):
        M = self.matrix
        Q1, Q2 = M.eigenvectors[0]
        inv_eig = M.block_eigenvalues(0).reciprocal()
        bias_block = None
        if bias:
            (Qb,) = M.eigenvectors[1]
            inv_b = M.block_eigenvalues(1).reciprocal()
            # Only its diagonal when that is all the caller wants (K³ → K²).
            bias_block = (Qb.square() @ inv_b if diagonal and not joint
                          else (Qb * inv_b) @ Qb.T)
        return lastlayer.kron(Q1, Q2, inv_eig, bias_block, phi, joint, diagonal)
