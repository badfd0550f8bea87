"""laplace-torch import path: the base classes and the all-weights variants."""

from laplace.posterior.base import BaseLaplace
from laplace.posterior.diag import DiagLaplace
from laplace.posterior.full import FullLaplace
from laplace.posterior.functional import FunctionalLaplace
from laplace.posterior.kron import KronLaplace
from laplace.posterior.lowrank import LowRankLaplace
from laplace.posterior.parametric import ParametricLaplace

__all__ = [
    "BaseLaplace",
    "DiagLaplace",
    "FullLaplace",
    "FunctionalLaplace",
    "KronLaplace",
    "LowRankLaplace",
    "ParametricLaplace",
]
