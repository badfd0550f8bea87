"""Last-layer Laplace: the Gaussian over the output layer ``f = Wφ(x) + b`` only.

The Jacobian is ``I_K ⊗ φ(x)ᵀ`` (plus ``I_K`` for the bias), so the predictive needs
only the features ``φ`` and the precision's last-layer product; it never builds
``J``, and the NN predictive reuses one feature pass for every weight sample.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from laplace.posterior.diag import DiagLaplace
from laplace.posterior.full import FullLaplace
from laplace.posterior.kron import KronLaplace
from laplace.posterior.parametric import ParametricLaplace
from laplace.utils.data import Inputs
from laplace.utils.feature_extractor import FeatureExtractor


class LLLaplace(ParametricLaplace):
    """Laplace approximation over the last ``nn.Linear`` layer.

    Args:
        model: the network (wrapped, not copied, in a ``FeatureExtractor``).
        likelihood: as for ``BaseLaplace``.
        last_layer_name: the output layer's name in ``model.named_modules()``; found
            at ``fit`` (the last ``nn.Linear`` to run) when ``None``.
        feature_reduction: pooling of ``(batch, seq, D)`` features (see
            ``FeatureReduction``).
        Other arguments as for ``BaseLaplace``.
    """

    def __init__(
        self,
        model: nn.Module,
        likelihood: str,
        *args: Any,
        last_layer_name: str | None = None,
        feature_reduction: str | None = None,
        **kwargs: Any,
    ) -> None:
        enable_backprop = kwargs.get("enable_backprop", False)
        extractor = FeatureExtractor(model, last_layer_name, enable_backprop, feature_reduction)
        self._confirm_last_layer = last_layer_name is None
        if last_layer_name is None:
            _pick_last_linear(extractor)
        super().__init__(extractor, likelihood, *args, **kwargs)

    @property
    def _params(self) -> list[nn.Parameter]:
        layer = self.model.last_layer
        return [] if layer is None else list(layer.parameters())

    @property
    def backend(self):
        if self._backend is None:
            self._backend = self._backend_cls(
                self.model, self.likelihood, last_layer=True, dict_key_x=self.dict_key_x,
                dict_key_y=self.dict_key_y, **self.backend_kwargs,
            )
        return self._backend

    @property
    def _has_bias(self) -> bool:
        return self.model.last_layer.bias is not None

    def fit(self, train_loader: Any, override: bool = True, progress_bar: bool = False) -> None:
        """Confirm an automatically chosen last layer on the first batch, then fit."""
        if self._confirm_last_layer:
            self.model.find_last_layer(_first_inputs(train_loader, self))
            self._confirm_last_layer = False
            # Re-validate hyperparameter shapes against the confirmed layer.
            self.prior_precision, self.prior_mean = self.prior_precision, self.prior_mean
        self._check_output_is_last_layer(_first_inputs(train_loader, self))
        super().fit(train_loader, override=override, progress_bar=progress_bar)

    def _check_output_is_last_layer(self, X: Inputs) -> None:
        """The Jacobian ``I ⊗ φᵀ`` holds only if the output *is* ``last_layer(φ)``."""
        with torch.no_grad():
            f, phi = self.model.forward_with_features(X)
            expected = self.model.last_layer(phi)
        if f.shape != expected.shape or not torch.allclose(f, expected, rtol=1e-5, atol=1e-6):
            raise ValueError(
                f"The model output is not the output of its last layer "
                f"{self.model.last_layer_name!r} (an operation follows it); last-layer "
                "Laplace needs f = last_layer(φ). Pass last_layer_name or use "
                "subset_of_weights='all'."
            )

    def _glm_predictive_distribution(
        self, X: Inputs, joint: bool = False, diagonal_output: bool = False
    ) -> tuple[Tensor, Tensor]:
        with torch.set_grad_enabled(self.enable_backprop or torch.is_grad_enabled()):
            f_mu, phi = self.model.forward_with_features(X)
        if not self.enable_backprop:
            f_mu, phi = f_mu.detach(), phi.detach()
        f_mu, phi = f_mu.reshape(-1, f_mu.shape[-1]), phi.reshape(-1, phi.shape[-1])
        f_var = self._precision().last_layer_variance(
            phi, f_mu.shape[-1], self._has_bias, joint=joint, diagonal=diagonal_output
        )
        return (f_mu.flatten(), f_var) if joint else (f_mu, f_var)

    def _nn_samples(self, X: Inputs, n_samples: int, generator: torch.Generator | None) -> Tensor:
        """One feature pass, then ``φWₛᵀ + bₛ`` for every weight sample."""
        with torch.no_grad():
            _, phi = self.model.forward_with_features(X)
        phi = phi.reshape(-1, phi.shape[-1])
        thetas = self.sample(n_samples, generator)
        K, D = self.model.last_layer.weight.shape
        W = thetas[:, : K * D].reshape(n_samples, K, D)
        f = torch.einsum("nd,skd->snk", phi, W)
        if self._has_bias:
            f = f + thetas[:, K * D :].unsqueeze(1)
        return f

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        state["last_layer_name"] = self.model.last_layer_name
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if state_dict.get("last_layer_name"):
            self.model.set_last_layer(state_dict["last_layer_name"])
        super().load_state_dict(state_dict)


def _pick_last_linear(extractor: FeatureExtractor) -> None:
    """Provisional last layer (registration order); ``fit`` confirms it by execution."""
    names = [n for n, m in extractor.model.named_modules() if isinstance(m, nn.Linear)]
    if not names:
        raise ValueError("Last-layer Laplace needs a model with an nn.Linear output layer.")
    extractor.set_last_layer(names[-1])


def _first_inputs(loader: Any, la: ParametricLaplace) -> Inputs:
    from laplace.utils.data import inputs_to, split_batch

    for batch in loader:
        X, _ = split_batch(batch, la.dict_key_x, la.dict_key_y)
        return inputs_to(X, la._device)
    raise ValueError("The data loader yielded no batches: nothing to fit on.")


class FullLLLaplace(LLLaplace, FullLaplace):
    """Last-layer Laplace with a dense precision."""

    _key = ("last_layer", "full")


class KronLLLaplace(LLLaplace, KronLaplace):
    """Last-layer Laplace with Kronecker-factored precision."""

    _key = ("last_layer", "kron")


class DiagLLLaplace(LLLaplace, DiagLaplace):
    """Last-layer Laplace with a diagonal precision."""

    _key = ("last_layer", "diag")
