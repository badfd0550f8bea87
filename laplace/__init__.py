"""Laplace approximations for neural networks, with the laplace-torch public API."""

#: The version of the ``lapbo`` distribution that ships this package (and ``lapbo``).
#: The single source of truth: pyproject.toml reads it (``[tool.setuptools.dynamic]``).
__version__ = "0.1.0"

from laplace.baselaplace import (
    BaseFunctionalLaplace,
    BaseLaplace,
    DiagLaplace,
    FullLaplace,
    KronLaplace,
    ParametricLaplace,
)
from laplace.laplace import Laplace
from laplace.lllaplace import DiagLLLaplace, FullLLLaplace, KronLLLaplace, LLLaplace
from laplace.marglik_training import marglik_training
from laplace.posterior.ella import ELLA
from laplace.posterior.evidence import SampleSpaceEvidence
from laplace.posterior.functional import FunctionalLaplace, FunctionalLLLaplace
from laplace.posterior.linear_gaussian import (
    gram_evidence,
    gram_evidence_gradients,
    group_grams,
    linear_gaussian_evidence,
    linear_gaussian_posterior_mean,
)
from laplace.posterior.linearized import LinearizedPosterior, SharedRows
from laplace.posterior.lowrank import LowRankLaplace
from laplace.posterior.marglik import log_normal_density
from laplace.posterior.marglik import maximize as maximize_marginal_likelihood
from laplace.posterior.valla import VaLLA
from laplace.precision import GramSpectrum, WoodburyPrecision
from laplace.subnetlaplace import DiagSubnetLaplace, FullSubnetLaplace, SubnetLaplace
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
    "BaseFunctionalLaplace",
    "ELLA",
    "VaLLA",
    "DiagLLLaplace",
    "DiagSubnetLaplace",
    "FullLLLaplace",
    "FullSubnetLaplace",
    "FunctionalLLLaplace",
    "FunctionalLaplace",
    "KronLLLaplace",
    "LLLaplace",
    "LowRankLaplace",
    "SubnetLaplace",
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
    "__version__",
    # beyond laplace-torch: the sample-space pieces the BoTorch adapter (lapbo) uses
    "GramSpectrum",
    "LinearizedPosterior",
    "SharedRows",
    "SampleSpaceEvidence",
    "gram_evidence",
    "gram_evidence_gradients",
    "group_grams",
    "linear_gaussian_evidence",
    "linear_gaussian_posterior_mean",
    "WoodburyPrecision",
    "log_normal_density",
    "maximize_marginal_likelihood",
]
