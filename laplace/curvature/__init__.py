"""Curvature backends. ``TorchFuncGGN`` (native, ``torch.func``) is the default."""

from laplace.curvature.curvature import CurvatureInterface, EFInterface, GGNInterface
from laplace.curvature.torchfunc import TorchFuncEF, TorchFuncGGN

__all__ = [
    "CurvatureInterface",
    "EFInterface",
    "GGNInterface",
    "TorchFuncEF",
    "TorchFuncGGN",
]
