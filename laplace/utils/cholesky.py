"""Cholesky factors of matrices that are positive definite in exact arithmetic.

A Gram matrix plus a positive diagonal (``σ²I + K``, ``I + W D⁻¹ Wᵀ``, ``RᵀR/v + δ``) is
positive definite by construction; when its factorisation fails, the cause is rounding,
and each caller retries with a jitter on the diagonal at a scale it chooses (its
rounding scale, or a fraction of its mean diagonal) before it gives up.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor


def jittered_cholesky(matrix: Tensor, jitters: Sequence[float],
                      scale: Tensor | float = 1.0) -> tuple[Tensor, float] | None:
    """The lower Cholesky factor of ``matrix`` ``(*b, n, n)``, or, if that fails, of
    ``matrix + j·scale·I`` for the first ``j`` of ``jitters`` at which it exists.

    Args:
        matrix: symmetric ``(*b, n, n)``.
        jitters: the multiples of ``scale`` to try, in order (may be empty).
        scale: a number or a tensor broadcasting with ``(*b, 1, 1)``.

    Returns:
        ``(L, j)`` with ``j = 0.0`` when no jitter was needed, or ``None`` when every try
        failed (non-finite entries, or a matrix that is not positive definite).
    """
    chol, info = torch.linalg.cholesky_ex(matrix)
    if not bool((info != 0).any()):
        return chol, 0.0
    eye = torch.eye(matrix.shape[-1], dtype=matrix.dtype, device=matrix.device)
    for jitter in jitters:
        chol, info = torch.linalg.cholesky_ex(matrix + (jitter * scale) * eye)
        if not bool((info != 0).any()):
            return chol, float(jitter)
    return None
