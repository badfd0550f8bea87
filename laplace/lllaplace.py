"""laplace-torch import path: last-layer Laplace variants."""

from laplace.posterior.functional import FunctionalLLLaplace
from laplace.posterior.lastlayer import DiagLLLaplace, FullLLLaplace, KronLLLaplace, LLLaplace

__all__ = ["DiagLLLaplace", "FullLLLaplace", "FunctionalLLLaplace", "KronLLLaplace", "LLLaplace"]
