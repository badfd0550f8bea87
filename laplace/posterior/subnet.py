"""Subnetwork Laplace: the Gaussian over chosen entries of the parameter vector.

All other weights stay at their MAP values. Jacobians are computed only for the
parameter tensors that hold chosen entries. As in laplace-torch, ``n_params`` counts
all trainable parameters, ``mean`` holds all of them (``mean_subnet`` the chosen
entries) and ``sample`` returns full parameter vectors; the Gaussian has
``n_params_subnet`` dimensions, and priors are scalar, layerwise (by the tensor each
entry belongs to) or one value per subnetwork entry.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from laplace.curvature.curvature import EFInterface, GGNInterface
from laplace.posterior.diag import DiagLaplace
from laplace.posterior.full import FullLaplace
from laplace.posterior.parametric import ParametricLaplace
from laplace.posterior.transaction import restores_state_on_error
from laplace.utils import checks
from laplace.utils.errors import MissingArgumentError
from laplace.utils.parameters import vector_of

_INDEX_DTYPES = (torch.int8, torch.int16, torch.int32, torch.int64)


def check_subnetwork_indices(indices: Any, n_params: int) -> Tensor:
    """``subnetwork_indices`` as a ``LongTensor``, or a ``ValueError`` naming it.

    Args:
        indices: a non-empty 1-D integer tensor of distinct positions in
            ``[0, n_params)``.
    """
    if indices is None:
        raise MissingArgumentError("subnetwork_indices cannot be None: SubnetLaplace needs "
                                   "the indices of the subnetwork's parameters.")
    if not isinstance(indices, Tensor) or indices.dtype not in _INDEX_DTYPES:
        kind = indices.dtype if isinstance(indices, Tensor) else type(indices).__name__
        raise ValueError(
            f"subnetwork_indices must be a non-empty 1-D integer tensor, got {kind} "
            "(for a boolean mask pass mask.nonzero().flatten())."
        )
    if indices.ndim != 1 or indices.numel() == 0:
        raise ValueError(
            "subnetwork_indices must be a non-empty 1-D integer tensor, got shape "
            f"{tuple(indices.shape)}."
        )
    if bool((indices < 0).any()) or bool((indices >= n_params).any()):
        raise ValueError(f"subnetwork_indices must lie in [0, {n_params}) (n_params).")
    if indices.unique().numel() != indices.numel():
        raise ValueError("subnetwork_indices must not contain duplicates.")
    return indices.to(torch.long)


class SubnetLaplace(ParametricLaplace):
    """Laplace approximation over ``subnetwork_indices`` of the parameter vector.

    Args:
        subnetwork_indices: ``(S,)`` integer positions in
            ``parameters_to_vector(model.parameters())`` (e.g. from a ``SubnetMask``).

    Other arguments are those of ``BaseLaplace``; ``backend`` must be a GGN or EF one.
    """

    _POSITIONAL = ("subnetwork_indices", "sigma_noise", "prior_precision", "prior_mean",
                   "temperature", "backend", "backend_kwargs", "asdl_fisher_kwargs")

    def __init__(self, model: nn.Module, likelihood: str,
                 subnetwork_indices: Tensor | None = None, *args: Any, **kwargs: Any) -> None:
        backend = kwargs.get("backend")
        if backend is not None and not (
            isinstance(backend, type) and issubclass(backend, (GGNInterface, EFInterface))
        ):
            raise ValueError(
                "SubnetLaplace can only be used with GGN and EF backends, got "
                f"{getattr(backend, '__name__', backend)!r} (backend)."
            )
        n_total = sum(p.numel() for p in model.parameters() if p.requires_grad)
        self.subnetwork_indices = check_subnetwork_indices(subnetwork_indices, n_total)
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

    def _posterior_vector(self) -> Tensor:
        """All MAP parameters ``(n_params,)``: the mean keeps the fixed ones too."""
        return vector_of(p.detach() for p in self._params)

    def _prior_mean_vector(self) -> Tensor:
        """Before fit: all parameters ``(n_params,)`` at their current values, the
        subnetwork entries at the prior mean (the posterior before data)."""
        full = self._posterior_vector().clone()
        full[self.subnetwork_indices.to(full.device)] = super()._prior_mean_vector().to(full)
        return full

    @property
    def mean_subnet(self) -> Tensor:
        """The mean of the subnetwork entries: ``(n_params_subnet,)``."""
        return self._posterior_part(self.mean)

    def _embed_posterior_mean(self, mean: Tensor) -> Tensor:
        return self.assemble_full_samples(mean[None])[0]

    def assemble_full_samples(self, subnet_samples: Tensor) -> Tensor:
        """Full parameter vectors ``(n, n_params)`` from subnetwork draws
        ``(n, n_params_subnet)``; the other entries keep their MAP values."""
        full = self.mean.repeat(subnet_samples.shape[0], 1)
        full[:, self.subnetwork_indices.to(full.device)] = subnet_samples
        return full

    def sample(self, n_samples: int = 100, generator: torch.Generator | None = None) -> Tensor:
        """Full-network samples ``(n_samples, n_params)``: the subnetwork entries drawn
        from the posterior, the others at their MAP values."""
        n_samples = checks.positive_int(n_samples, "n_samples")
        checks.random_generator(generator, self._device)
        subnet = self.mean_subnet + self._precision().sample(n_samples, generator)
        return self.assemble_full_samples(subnet)

    @property
    def backend(self):
        if self._backend is None:
            self._backend = self._backend_cls(
                self.model, self.likelihood, subnetwork_indices=self.subnetwork_indices,
                dict_key_x=self.dict_key_x, dict_key_y=self.dict_key_y, **self.backend_kwargs,
            )
        return self._backend

    def state_dict(self, **kwargs: Any) -> dict[str, Any]:
        """The parametric state (``kwargs``: a full LA's ``dense``) and the indices."""
        state = super().state_dict(**kwargs)
        state["subnetwork_indices"] = self.subnetwork_indices
        return state

    @restores_state_on_error
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        checks.state_keys(state_dict, ("cls_name",), type(self).__name__)
        if "subnetwork_indices" not in state_dict:
            raise ValueError(f"State of a {state_dict['cls_name']} cannot be loaded into "
                             f"{type(self).__name__} (it has no subnetwork_indices).")
        if not torch.equal(state_dict["subnetwork_indices"].cpu(), self.subnetwork_indices.cpu()):
            raise ValueError("The state was saved for different subnetwork_indices.")
        super().load_state_dict(state_dict)


class FullSubnetLaplace(SubnetLaplace, FullLaplace):
    """Subnetwork Laplace with a dense precision."""

    _key = ("subnetwork", "full")


class DiagSubnetLaplace(SubnetLaplace, DiagLaplace):
    """Subnetwork Laplace with a diagonal precision."""

    _key = ("subnetwork", "diag")
