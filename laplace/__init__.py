"""Laplace approximations for neural networks, with the laplace-torch public API."""

from laplace.baselaplace import (
    BaseLaplace,
    DiagLaplace,
    FullLaplace,
    KronLaplace,
    ParametricLaplace,
)
from laplace.laplace import Laplace
from laplace.marglik_training import marglik_training
from laplace.utils.enums import (
    FunctionalApproximation,
    HessianStructure,
    Likelihood,
    LinkApprox,
    PredType,
    PriorStructure,
    SubsetOfWeights,
    TuningMethod,
)

__all__ = [
    "BaseLaplace",
    "DiagLaplace",
    "FullLaplace",
    "FunctionalApproximation",
    "HessianStructure",
    "KronLaplace",
    "Laplace",
    "Likelihood",
    "LinkApprox",
    "ParametricLaplace",
    "PredType",
    "PriorStructure",
    "SubsetOfWeights",
    "TuningMethod",
    "marglik_training",
]
