"""Layer conditions under which the layer-wise curvature routes are wrong.

The hook-based diagonal and Kronecker factors (``kfac``) and the BackPACK, ASDL and
Curvlinops adapters compute a parameter's curvature from the inputs and output gradients
of the *one* module that owns it. Two kinds of layers break that silently:

* a convolution whose input is padded other than with zeros (``padding_mode``
  ``"reflect"``, ``"replicate"``, ``"circular"``): the patches are unfolded with zero
  padding, so the curvature is that of another function (7–12% off the exact diagonal);
* a parameter shared between modules (tied weights): each owner sees only its own
  use, and the parameter is counted once per owner.

The routes ask ``unsupported_layer`` before they run and refuse (Kronecker factors) or
fall back to per-sample Jacobians (the native diagonal) instead of returning such
numbers.
"""

from __future__ import annotations

from collections.abc import Iterable

from torch import Tensor, nn


def nonzero_padding(module: nn.Module) -> bool:
    """Whether ``module`` is a convolution that pads its input other than with zeros."""
    return isinstance(module, nn.modules.conv._ConvNd) and module.padding_mode != "zeros"


def shared_parameters(model: nn.Module, params: Iterable[Tensor]) -> list[str]:
    """Names of those ``params`` that more than one module of ``model`` owns."""
    wanted = {id(p) for p in params}
    owners: dict[int, list[str]] = {}
    for mod_name, module in model.named_modules(remove_duplicate=False):
        for p_name, p in module.named_parameters(recurse=False):
            if id(p) in wanted:
                owners.setdefault(id(p), []).append(f"{mod_name}.{p_name}" if mod_name else p_name)
    return [" = ".join(names) for names in owners.values() if len(set(names)) > 1]


def unsupported_layer(model: nn.Module, params: Iterable[Tensor]) -> str | None:
    """Why the layer-wise routes cannot compute the curvature of ``params``, or ``None``."""
    params = list(params)
    shared = shared_parameters(model, params)
    if shared:
        return (f"parameters shared between modules (tied weights: {'; '.join(shared)}) "
                "get the curvature of each use separately")
    wanted = {id(p) for p in params}
    for name, module in model.named_modules():
        owns = any(id(p) in wanted for p in module.parameters(recurse=False))
        if owns and nonzero_padding(module):
            return (f"module {name!r} pads with padding_mode={module.padding_mode!r}, which "
                    "the layer-wise curvature treats as zero padding")
    return None
