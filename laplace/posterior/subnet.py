"""Subnetwork Laplace: the Gaussian over chosen entries of the parameter vector.

All other weights stay at their MAP values. Jacobians are computed only for the
parameter tensors that hold chosen entries. ``n_params`` counts all trainable
parameters (as in laplace-torch); the posterior has ``n_params_subnet`` dimensions,
and priors are scalar, layerwise (by the tensor each entry belongs to) or one value
per subnetwork entry.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from laplace.posterior.diag import DiagLaplace
from laplace.posterior.full import FullLaplace
from laplace.posterior.parametric import ParametricLaplace
from laplace.utils.parameters import vector_of


class SubnetLaplace(ParametricLaplace):
    """Laplace approximation over ``subnetwork_indices`` of the parameter vector.

    Args:
        subnetwork_indices: ``(S,)`` int64 positions in
            ``parameters_to_vector(model.parameters())`` (e.g. from a ``SubnetMask``).
        Other arguments as for ``BaseLaplace``; ``backend`` must be a GGN or EF one.
    """

    def __init__(self, model: nn.Module, likelihood: str, subnetwork_indices: Tensor,
                 *args: Any, **kwargs: Any) -> None:
        backend = kwargs.get("backend")
        if backend is not None and "Hessian" in backend.__name__:
            raise ValueError("SubnetLaplace can only be used with GGN and EF.")
        indices = torch.as_tensor(subnetwork_indices)
        if indices.ndim != 1 or indices.numel() == 0 or indices.is_floating_point():
            raise ValueError("subnetwork_indices must be a non-empty 1-D integer tensor.")
        n_total = sum(p.numel() for p in model.parameters() if p.requires_grad)
        if bool((indices < 0).any()) or bool((indices >= n_total).any()):
            raise ValueError(f"subnetwork_indices must lie in [0, {n_total}).")
        if indices.unique().numel() != indices.numel():
            raise ValueError("subnetwork_indices must not contain duplicates.")
        self.subnetwork_indices = indices.to(torch.long)
        super().__init__(model, likelihood, *args, **kwargs)
        self.subnetwork_indices = self.subnetwork_indices.to(self._device)

    @property
    def n_params_subnet(self) -> int:
        return self.subnetwork_indices.numel()

    @property
    def _posterior_dim(self) -> int:
        return self.n_params_subnet

    def _posterior_part(self, v: Tensor) -> Tensor:
        return v[self.subnetwork_indices.to(v.device)]

    def _full_parameters(self, theta: Tensor) -> Tensor:
        full = vector_of(p.detach() for p in self._params).clone()
        full[self.subnetwork_indices] = theta
        return full

    @property
    def backend(self):
        if self._backend is None:
            self._backend = self._backend_cls(
                self.model, self.likelihood, subnetwork_indices=self.subnetwork_indices,
                dict_key_x=self.dict_key_x, dict_key_y=self.dict_key_y, **self.backend_kwargs,
            )
        return self._backend

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        state["subnetwork_indices"] = self.subnetwork_indices
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if not torch.equal(state_dict["subnetwork_indices"].cpu(), self.subnetwork_indices.cpu()):
            raise ValueError("The state was saved for different subnetwork_indices.")
        super().load_state_dict(state_dict)


class FullSubnetLaplace(SubnetLaplace, FullLaplace):
    """Subnetwork Laplace with a dense precision."""

    _key = ("subnetwork", "full")


class DiagSubnetLaplace(SubnetLaplace, DiagLaplace):
    """Subnetwork Laplace with a diagonal precision."""

    _key = ("subnetwork", "diag")
