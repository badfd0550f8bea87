"""Utilities users import from ``laplace.utils``."""

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
from laplace.utils.matrix import Kron, KronDecomposed
from laplace.utils.parameters import (
    expand_prior_precision,
    fix_prior_prec_structure,
    parameters_per_layer,
)

__all__ = [
    "FunctionalApproximation",
    "HessianStructure",
    "Kron",
    "KronDecomposed",
    "Likelihood",
    "LinkApprox",
    "PredType",
    "PriorStructure",
    "SubsetOfWeights",
    "TuningMethod",
    "expand_prior_precision",
    "fix_prior_prec_structure",
    "parameters_per_layer",
]
