"""laplace-torch import path: last-layer Laplace variants."""

from laplace.posterior.functional import FunctionalLLLaplace
from laplace.posterior.lastlayer import DiagLLLaplace, FullLLLaplace, KronLLLaplace, LLLaplace

__all__ = ["DiagLLLaplace", "FullLLLaplace", "FunctionalLLLaplace", "KronLLLaplace", "LLLaplace"]

from laplace.utils.reexports import reexports  # noqa: E402

__getattr__ = reexports(__name__, (
    "BackPackGGN", "CurvatureInterface", "DiagLaplace", "FullLaplace", "KronLaplace",
    "FunctionalLaplace", "ParametricLaplace", "FeatureExtractor", "FeatureReduction", "Kron",
    "Likelihood"))
