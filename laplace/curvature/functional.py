"""Per-sample functional views of a model for ``torch.func`` transforms."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call

from laplace.utils.data import Inputs


def unsqueeze_input(x: Any) -> Any:
    """Give one sample (a tensor or a dict of tensors) a batch dimension of one."""
    if isinstance(x, Mapping):
        return {k: (v.unsqueeze(0) if isinstance(v, Tensor) else v) for k, v in x.items()}
    return x.unsqueeze(0)


def as_vmappable(X: Inputs) -> Inputs:
    """A plain dict (a pytree ``vmap`` understands) for dict-like inputs, else ``X``."""
    if isinstance(X, Mapping):
        return dict(X)
    return X


def vmap_in_dims(X: Inputs) -> Any:
    """``in_dims`` for ``vmap`` that batches tensors and passes other dict values along."""
    if isinstance(X, Mapping):
        return {k: (0 if isinstance(v, Tensor) else None) for k, v in X.items()}
    return 0


def single_output(
    model: nn.Module, params: dict[str, Tensor], x: Any, n_outputs: int | None = None
) -> Tensor:
    """Model output for one sample as a matrix ``(m, K)``; ``m`` counts extra output dims."""
    out = functional_call(model, params, (unsqueeze_input(x),))
    out = out.squeeze(0)
    if out.ndim == 0:
        return out.reshape(1, 1)
    return out.reshape(-1, out.shape[-1])


def flatten_outputs(f: Tensor) -> Tensor:
    """Outputs ``(n, ..., K)`` as ``(n·m, K)``; a vector ``(n,)`` becomes ``(n, 1)``."""
    if f.ndim == 1:
        return f.unsqueeze(-1)
    return f.reshape(-1, f.shape[-1])


def detach_params(params: dict[str, Tensor], enable_backprop: bool) -> dict[str, Tensor]:
    """Parameters to differentiate: detached unless the graph must be kept."""
    if enable_backprop:
        return params
    return {k: v.detach() for k, v in params.items()}


def concat_jacobian(jac: dict[str, Tensor], names: list[str], lead: int) -> Tensor:
    """Concatenate ``{name: (*lead_dims, *param_shape)}`` into ``(*lead_dims, P)``."""
    parts = [jac[n].flatten(start_dim=lead) for n in names]
    return torch.cat(parts, dim=lead)
