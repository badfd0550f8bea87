"""Posterior precision matrices, one class per storage structure."""

from laplace.precision.base import NotFittedError, NotPositiveDefiniteError, PrecisionMatrix
from laplace.precision.dense import DensePrecision
from laplace.precision.diag import DiagPrecision
from laplace.precision.kron import KronPrecision
from laplace.precision.woodbury import GramSpectrum, WoodburyPrecision

__all__ = [
    "DensePrecision",
    "DiagPrecision",
    "GramSpectrum",
    "KronPrecision",
    "NotFittedError",
    "NotPositiveDefiniteError",
    "PrecisionMatrix",
    "WoodburyPrecision",
]
