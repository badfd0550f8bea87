"""Posterior variances that a Woodbury subtraction cannot resolve.

The sample-space, low-rank and function-space posteriors give ``J Σ Jᵀ = J D⁻¹ Jᵀ − VᵀV``
(and ``Σ = D⁻¹ − BᵀB``): the prior covariance minus what the data explain. Where a
posterior variance is many orders of magnitude below the prior's (a small
``sigma_noise`` at the training points), the subtraction loses every digit of the dtype
and can return a negative variance, and its error (about ``ε`` times the condition number
times the prior variance) spoils the other entries too. Then everything is recomputed in
float64 from the curvature as given: predictive covariances from a square root of ``Σ``
(``(uT)(uT)ᵀ``, ``T`` symmetric), non-negative by construction; weight-space variances
and the last-layer predictive by the same formula in float64.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import torch
from torch import Tensor

#: A variance at most this many machine epsilons of its prior variance has lost its digits
#: to the subtraction (float32 from ``s/δ`` of about 10⁵; float64 from about 10¹³).
CANCELLATION_EPS = 100.0


def wide_dtype(T: Tensor) -> torch.dtype:
    """float64, the dtype of the recomputation, unless ``T``'s device has none (MPS)."""
    return T.dtype if T.device.type == "mps" else torch.float64


def lost_digits(var: Tensor, prior_var: Tensor) -> Tensor:
    """Where ``var`` is at most ``CANCELLATION_EPS`` machine epsilons of ``prior_var``
    (broadcast shapes; a zero prior variance, a zero Jacobian row, is exact)."""
    tol = CANCELLATION_EPS * torch.finfo(var.dtype).eps
    return (var <= tol * prior_var) & (prior_var > 0)


def recompute_if_lost(bad: Tensor, out: Tensor, recompute: Callable[[], Tensor], what: str,
                      jittered: bool = False, stacklevel: int = 4) -> Tensor:
    """``out`` if no entry of ``bad`` is set and not ``jittered``, else ``recompute()``
    (the same quantity in float64, called only then) in ``out``'s dtype, with a
    ``RuntimeWarning`` that counts the ``what`` (``"points"``, ``"weights"``) of ``bad``
    or says that the factorisation needed a jitter in ``out``'s dtype."""
    if not jittered and not bool(bad.any()):
        return out
    tol = CANCELLATION_EPS * torch.finfo(out.dtype).eps
    why = (f"The posterior's sample-space factorisation needed a jitter in {out.dtype}"
           if jittered and not bool(bad.any()) else
           f"The posterior variance of {int(bad.sum())} of {bad.numel()} {what} is below "
           f"{tol:.1g} of their prior variance, beyond {out.dtype}'s precision for the "
           "Woodbury subtraction")
    warnings.warn(
        f"{why}; all recomputed in float64 (slower; the curvature as given still limits "
        "the accuracy: compute in float64, or raise sigma_noise or the prior precision).",
        RuntimeWarning, stacklevel=stacklevel)
    return recompute().to(out.dtype).expand_as(out).clone()


def guard_subtraction(base: Tensor, out: Tensor, root_rows: Callable[[], Tensor],
                      jittered: bool = False, stacklevel: int = 5) -> Tensor:
    """``out = base − VᵀV`` ``(*b, n, K, K)`` (``base`` ``(*b or 1, n, K, K)`` is
    ``J D⁻¹ Jᵀ``), or ``R Rᵀ`` for ``R = root_rows()`` ``(*b, n, K, P)`` in float64
    (``J Σ Jᵀ = R Rᵀ``) when the variance of any point lost its digits (``lost_digits``)
    or the factorisation behind ``out`` needed a jitter in a narrow dtype (``jittered``).
    Every point is recomputed then: the subtraction's error spoils the others too (a
    float32 variance at 10⁻² of its prior's was 30 % off in the tests)."""
    bad = lost_digits(out.diagonal(dim1=-2, dim2=-1), base.diagonal(dim1=-2, dim2=-1))
    return recompute_if_lost(bad.any(-1), out, lambda: _gram(root_rows()), "points",
                             jittered, stacklevel)


def guard_narrow(var: Tensor, prior_var: Tensor, out: Tensor,
                 recompute: Callable[[], Tensor], what: str, jittered: bool = False) -> Tensor:
    """``out`` (whose variances are ``var``, prior variances ``prior_var``), or
    ``recompute()`` when a variance lost its digits, or the factorisation behind ``out``
    needed a jitter (``jittered``), in a dtype narrower than float64; in float64 ``out``
    as computed (there is no wider dtype to recompute in)."""
    if out.dtype == wide_dtype(out):
        return out
    return recompute_if_lost(lost_digits(var, prior_var), out, recompute, what, jittered)


def _gram(R: Tensor) -> Tensor:
    return R @ R.mT
