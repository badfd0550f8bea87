"""Curvature backends. ``TorchFuncGGN`` (native, ``torch.func``) is the default.

The BackPACK, Curvlinops and ASDL adapters (see ``docs/backends.md``) are imported on
first use, so ``import laplace`` does not import those libraries.
"""

from importlib import import_module
from typing import Any

from laplace.curvature.curvature import CurvatureInterface, EFInterface, GGNInterface
from laplace.curvature.jacobians import (
    jacobians_by_autodiff,
    linear_layer_jacobians,
    network_jacobians,
    output_layer_jacobians,
)
from laplace.curvature.torchfunc import TorchFuncEF, TorchFuncGGN

_ADAPTERS = {
    "BackPackInterface": "backpack",
    "BackPackGGN": "backpack",
    "BackPackEF": "backpack",
    "CurvlinopsInterface": "curvlinops",
    "CurvlinopsGGN": "curvlinops",
    "CurvlinopsEF": "curvlinops",
    "CurvlinopsHessian": "curvlinops",
    "AsdlInterface": "asdl",
    "AsdlGGN": "asdl",
    "AsdlEF": "asdl",
    "AsdlHessian": "asdl",
    "AsdfghjklInterface": "asdfghjkl",
    "AsdfghjklGGN": "asdfghjkl",
    "AsdfghjklEF": "asdfghjkl",
    "AsdfghjklHessian": "asdfghjkl",
}


def __getattr__(name: str) -> Any:
    if name in _ADAPTERS:
        return getattr(import_module(f"laplace.curvature.{_ADAPTERS[name]}"), name)
    if name in set(_ADAPTERS.values()):  # the adapter modules, as laplace-torch exposes them
        return import_module(f"laplace.curvature.{name}")
    raise AttributeError(f"module 'laplace.curvature' has no attribute {name!r}")


def __dir__() -> list[str]:
    """The lazily imported adapters too (``dir``, tab completion), as laplace-torch lists
    them."""
    return sorted({*globals(), *_ADAPTERS, *_ADAPTERS.values()})


__all__ = [
    "CurvatureInterface",
    "EFInterface",
    "GGNInterface",
    "TorchFuncEF",
    "TorchFuncGGN",
    "jacobians_by_autodiff",
    "linear_layer_jacobians",
    "network_jacobians",
    "output_layer_jacobians",
    *_ADAPTERS,
]
