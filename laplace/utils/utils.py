"""laplace-torch's ``laplace.utils.utils``: small linear-algebra and sampling helpers.

``get_nll`` and ``validate`` live in ``laplace.utils.metrics``; the prior-precision
helpers ``parameters_per_layer``, ``expand_prior_precision`` and
``fix_prior_prec_structure`` in ``laplace.utils.parameters``. They are re-exported
here so that laplace-torch's import path keeps working.
"""

from __future__ import annotations

import logging
import numbers
from collections.abc import Iterator, Sequence

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import Sampler

from laplace.utils.checks import positive_int
from laplace.utils.metrics import RunningNLLMetric, get_nll, validate
from laplace.utils.parameters import (
    expand_prior_precision,
    fix_prior_prec_structure,
    parameters_per_layer,
)

__all__ = [
    "RunningNLLMetric",
    "SoDSampler",
    "block_diag",
    "diagonal_add_scalar",
    "expand_prior_precision",
    "fix_prior_prec_structure",
    "get_nll",
    "invsqrt_precision",
    "kron",
    "normal_samples",
    "parameters_per_layer",
    "symeig",
    "validate",
]

logger = logging.getLogger(__name__)

_BATCHNORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)


def _is_batchnorm(module: nn.Module) -> bool:
    """Whether ``module`` is a batch-norm layer (1d/2d/3d, lazy and sync variants)."""
    return isinstance(module, _BATCHNORMS)


def _is_valid_scalar(scalar: object) -> bool:
    """A real Python/NumPy number, a 0-d tensor or a one-element 1-d tensor."""
    if isinstance(scalar, Tensor):
        return scalar.ndim == 0 or (scalar.ndim == 1 and scalar.numel() == 1)
    if isinstance(scalar, np.ndarray):
        return False
    return isinstance(scalar, (numbers.Real, np.bool_))


def invsqrt_precision(M: Tensor) -> Tensor:
    """Lower-triangular ``L`` with ``L Lᵀ = M⁻¹`` for a positive-definite precision ``M``.

    The Cholesky factor of the covariance computed from the precision without
    inverting it (``torch.distributions``' ``_precision_to_scale_tril``): with
    ``flip`` reversing both matrix axes, ``chol(flip(M))`` gives ``M = Uᵀ U`` with ``U``
    lower triangular after flipping back, and ``L = U⁻ᵀ``. Works on batches ``(..., P, P)``.
    """
    Lf = torch.linalg.cholesky(torch.flip(M, (-2, -1)))
    L_inv = torch.transpose(torch.flip(Lf, (-2, -1)), -2, -1)
    eye = torch.eye(M.shape[-1], dtype=M.dtype, device=M.device)
    return torch.linalg.solve_triangular(L_inv, eye, upper=False)


def kron(t1: Tensor, t2: Tensor) -> Tensor:
    """Kronecker product of two matrices ``(a, b) ⊗ (c, d) → (a·c, b·d)``."""
    if t1.ndim != 2 or t2.ndim != 2:
        raise ValueError("kron takes two matrices (2-d tensors).")
    (a, b), (c, d) = t1.shape, t2.shape
    return (t1[:, None, :, None] * t2[None, :, None, :]).reshape(a * c, b * d)


def diagonal_add_scalar(X: Tensor, value: float | Tensor) -> Tensor:
    """``X + value·I`` for a square ``X`` (a new tensor; ``X`` is not modified)."""
    out = X.clone()
    out.diagonal(dim1=-2, dim2=-1).add_(value)
    return out


def symeig(M: Tensor) -> tuple[Tensor, Tensor]:
    """Eigendecomposition ``(eigenvalues, eigenvectors)`` of a symmetric PSD ``M``.

    As laplace-torch: ``torch.linalg.eigh`` on the upper triangle; if it does not
    converge it is retried on ``M + I`` and 1 is subtracted from the eigenvalues.
    Eigenvalues are clamped at 0 and NaNs in either output are replaced by 0.

    Raises:
        ValueError: ``M`` is not a square matrix (or batch of them) or has NaN or
            infinite entries (eigh would give NaNs that the clamp turns into zeros).
        torch.linalg.LinAlgError: the jittered retry failed too (laplace-torch exits).
    """
    if M.ndim < 2 or M.shape[-1] != M.shape[-2]:
        raise ValueError(f"symeig needs a square matrix M, got shape {tuple(M.shape)}.")
    if not bool(torch.isfinite(M).all()):
        raise ValueError("symeig: M has NaN or infinite entries.")
    try:
        L, W = torch.linalg.eigh(M, UPLO="U")
    except RuntimeError:  # torch.linalg.LinAlgError: did not converge
        logger.info("symeig: eigh did not converge; retrying with unit jitter.")
        L, W = torch.linalg.eigh(diagonal_add_scalar(M, 1.0), UPLO="U")
        L = L - 1.0
    return torch.nan_to_num(L.clamp(min=0.0)), torch.nan_to_num(W)


def block_diag(blocks: Sequence[Tensor]) -> Tensor:
    """Block-diagonal matrix of square ``blocks`` (same dtype and device)."""
    if len(blocks) == 0:
        raise ValueError("block_diag needs at least one block.")
    return torch.block_diag(*blocks)


def gaussian_samples(
    f_mu: Tensor, f_var: Tensor, n_samples: int, generator: torch.Generator | None = None
) -> Tensor:
    """Draws ``(n_samples, n, C)`` from ``N(f_mu, f_var)`` (PSD covariances welcome).

    A covariance that Cholesky refuses is factored by its eigenvalues, with negative
    rounding (up to ``1000·C·ε`` times the largest magnitude) set to zero; a clearly
    negative eigenvalue is refused (it was set to zero too: samples from another
    distribution)."""
    n_samples = positive_int(n_samples, "n_samples")
    L, info = torch.linalg.cholesky_ex(f_var)
    if bool((info != 0).any()):
        lam, Q = torch.linalg.eigh(f_var)
        tol = 1000 * f_var.shape[-1] * torch.finfo(lam.dtype).eps * lam.abs().amax(-1)
        if bool((lam.amin(-1) < -tol).any()):
            raise ValueError(f"The covariance is not positive semi-definite (smallest "
                             f"eigenvalue {float(lam.min()):.3g}).")
        L = Q * lam.clamp(min=0).sqrt().unsqueeze(-2)
    eps = torch.randn(n_samples, *f_mu.shape, generator=generator, device=f_mu.device,
                      dtype=f_mu.dtype)
    return f_mu + torch.einsum("nij,snj->sni", L, eps)


def normal_samples(
    mean: Tensor, var: Tensor, n_samples: int, generator: torch.Generator | None = None
) -> Tensor:
    """Samples ``(n_samples, n, k)`` of independent Gaussians ``N(mean[i], var[i])``.

    Args:
        mean: ``(n, k)``.
        var: variances ``(n, k)`` (diagonal covariance) or covariances ``(n, k, k)``;
            positive semi-definite covariances are accepted (eigen-factor fallback).
        generator: optional ``torch.Generator`` for the standard-normal draws.

    Unlike laplace-torch, which reuses one ``(k, n_samples)`` noise draw for every row,
    each row gets its own draw: the marginals are the same, rows are independent.
    Non-finite ``mean`` or ``var`` and negative variances are refused (laplace-torch's
    ``sqrt`` returns NaN samples); negative rounding (above ``−1e-10`` relative to the
    largest variance) is clamped to zero.
    """
    n_samples = positive_int(n_samples, "n_samples")
    if mean.ndim != 2:
        raise ValueError(f"mean must be 2-d (n, k), got shape {tuple(mean.shape)}.")
    if not bool(torch.isfinite(mean).all()):
        raise ValueError("normal_samples: mean has NaN or infinite entries.")
    if not bool(torch.isfinite(var).all()):
        raise ValueError("normal_samples: var has NaN or infinite entries.")
    if var.shape == mean.shape:
        tol = 1e-10 * float(var.abs().max()) if var.numel() else 0.0
        if bool((var < -tol).any()):
            raise ValueError(f"normal_samples: var has negative variances (min "
                             f"{float(var.min()):.3g}).")
        var = var.clamp(min=0.0)
        eps = torch.randn((n_samples, *mean.shape), generator=generator, device=mean.device,
                          dtype=mean.dtype)
        return mean + var.sqrt() * eps
    if var.shape == (*mean.shape, mean.shape[-1]):
        return gaussian_samples(mean, var, n_samples, generator)
    raise ValueError(
        f"var of shape {tuple(var.shape)} is neither diagonal {tuple(mean.shape)} nor full "
        f"{(*mean.shape, mean.shape[-1])} for mean of shape {tuple(mean.shape)}."
    )


class SoDSampler(Sampler[int]):
    """Subset-of-data sampler: ``M`` of ``N`` indices without replacement.

    Yields ``numpy.random.default_rng(seed).choice(list(range(N)), M, replace=False)``
    in that order — the same subset and order on every iteration (laplace-torch's
    draw, the ``sod_indices`` of the reference fixtures).
    """

    def __init__(self, N: int, M: int, seed: int = 0) -> None:
        super().__init__()
        if not 0 < int(M) <= int(N):
            raise ValueError(f"Need 0 < M <= N for a subset of data, got N={N}, M={M}.")
        self.N, self.M, self.seed = int(N), int(M), seed

    def indices(self) -> np.ndarray:
        """The ``M`` indices as an ``int64`` array, in visiting order."""
        rng = np.random.default_rng(self.seed)
        return rng.choice(list(range(self.N)), self.M, replace=False)

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices().tolist())

    def __len__(self) -> int:
        return self.M

from laplace.utils.reexports import reexports  # noqa: E402

__getattr__ = reexports(__name__, ("LinkApprox", "PredType", "PriorStructure"))
