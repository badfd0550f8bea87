"""Helpers about parameter vectors and prior precision shapes."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor, nn

from laplace.utils.enums import PriorStructure


def parameters_per_layer(model: nn.Module) -> list[int]:
    """Number of parameters of each parameter tensor (``requires_grad`` only)."""
    return [p.numel() for p in model.parameters() if p.requires_grad]


def expand_prior_precision(prior_prec: Tensor, model: nn.Module) -> Tensor:
    """Expand a scalar or layerwise prior precision to one value per parameter."""
    sizes = parameters_per_layer(model)
    return expand_to_parameters(prior_prec, sizes)


def expand_to_parameters(prior_prec: Tensor, sizes: list[int]) -> Tensor:
    """Expand a ``(1,)``, ``(len(sizes),)`` or ``(sum(sizes),)`` vector to ``(sum(sizes),)``.

    A 0-d tensor counts as ``(1,)``; a tensor of two or more dimensions is refused (as
    laplace-torch asserts a vector), whatever its number of entries.
    """
    if not isinstance(prior_prec, Tensor):
        raise TypeError(f"prior_prec must be a torch.Tensor, got {type(prior_prec).__name__}.")
    if prior_prec.ndim > 1:
        raise ValueError(f"prior_prec must be a scalar or a vector, got shape "
                         f"{tuple(prior_prec.shape)}.")
    n_params = sum(sizes)
    if prior_prec.ndim == 0 or prior_prec.numel() == 1:
        return prior_prec.reshape(1).expand(n_params)
    if prior_prec.numel() == len(sizes):
        return torch.cat([prior_prec[i].expand(n) for i, n in enumerate(sizes)])
    if prior_prec.numel() == n_params:
        return prior_prec
    raise ValueError(
        f"Prior precision of length {prior_prec.numel()} matches neither a scalar, "
        f"the {len(sizes)} parameter tensors (layerwise) nor the {n_params} parameters."
    )


def fix_prior_prec_structure(
    prior_prec_init: Tensor | float, prior_structure: str, n_layers: int, n_params: int,
    device: torch.device | None = None, dtype: torch.dtype | None = None,
) -> Tensor:
    """Initial prior precision vector of the length that ``prior_structure`` implies."""
    init = torch.as_tensor(prior_prec_init, device=device, dtype=dtype).flatten()
    length = {
        PriorStructure.SCALAR: 1,
        PriorStructure.LAYERWISE: n_layers,
        PriorStructure.DIAG: n_params,
    }[PriorStructure(prior_structure)]
    if init.numel() == length:
        return init.clone()
    if init.numel() == 1:
        return init.repeat(length)
    raise ValueError(
        f"Initial prior precision of length {init.numel()} does not fit the "
        f"{prior_structure!r} structure of length {length}."
    )


def trainable_parameters(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """Named parameters with ``requires_grad=True``, in ``model.parameters()`` order."""
    return [(n, p) for n, p in model.named_parameters() if p.requires_grad]


def vector_of(tensors: Iterable[Tensor]) -> Tensor:
    """Concatenate flattened tensors (``parameters_to_vector`` without the device check)."""
    return torch.cat([t.reshape(-1) for t in tensors])
