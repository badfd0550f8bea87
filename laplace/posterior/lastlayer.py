"""Last-layer Laplace: the Gaussian over the output layer ``f = Wφ(x) + b`` only.

The Jacobian is ``I_K ⊗ φ(x)ᵀ`` (plus ``I_K`` for the bias), so the predictive needs
only the features ``φ`` and the precision's last-layer product; it never builds
``J``, and the NN predictive reuses one feature pass for every weight sample.

Unless ``last_layer_name`` is given, the last layer is found at ``fit`` (the last
``nn.Linear`` to run whose output is the model output), as in laplace-torch: until then
``n_params``, ``n_layers``, ``mean`` and ``H`` are ``None``, per-parameter priors wait
for the layer (their lengths are checked at ``fit``) and predicting raises
``NotFittedError``. With ``last_layer_name`` (or once the layer is known) the state
before ``fit`` is the prior: ``mean`` is the prior mean vector, ``H`` the zero curvature,
and full/diag structures give the prior predictive. Construction allocates nothing of
the posterior's size: ``mean`` and ``H`` before ``fit`` are built on first access.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from laplace.posterior import arguments
from laplace.posterior.diag import DiagLaplace
from laplace.posterior.full import FullLaplace
from laplace.posterior.kron import KronLaplace
from laplace.posterior.parametric import ParametricLaplace
from laplace.posterior.transaction import restores_state_on_error
from laplace.utils import checks
from laplace.utils import distributed as distributed_fit
from laplace.utils.data import Inputs, inputs_to
from laplace.utils.feature_extractor import FeatureExtractor

_PRIORS = ("prior_precision", "prior_mean")


def _next_property(obj: Any, owner: type, name: str) -> property:
    """The property ``name`` of the first class after ``owner`` in ``obj``'s MRO."""
    mro = type(obj).__mro__
    for cls in mro[mro.index(owner) + 1:]:
        if name in cls.__dict__:
            return cls.__dict__[name]
    raise AttributeError(name)


def _deferred_prior(name: str) -> property:
    """``prior_precision`` / ``prior_mean`` that wait for the last layer.

    Before the layer is known, a vector (whose length can only be checked against the
    layer) is kept as given; its values are checked now through the scalar rules (its
    minimum and maximum, so NaN, inf and signs are caught), its length at ``fit``.
    """

    def fget(self: LastLayerMixin) -> Any:
        deferred = self.__dict__.get("_deferred_priors", {})
        if name in deferred:
            return deferred[name]
        return _next_property(self, LastLayerMixin, name).fget(self)

    def fset(self: LastLayerMixin, value: Any) -> None:
        base = _next_property(self, LastLayerMixin, name)
        deferred = self.__dict__.setdefault("_deferred_priors", {})
        deferred.pop(name, None)
        vector = isinstance(value, Tensor) and value.ndim == 1 and value.numel() > 1
        if self.model.last_layer is None and vector:
            for extreme in (value.detach().min(), value.detach().max()):
                base.fset(self, extreme.reshape(1) if name == _PRIORS[0] else extreme)
            deferred[name] = value  # the length is checked against the layer at fit
            return
        base.fset(self, value)

    return property(fget, fset, doc=f"``{name}``; see ``BaseLaplace``.")


class LastLayerMixin:
    """The last-layer bookkeeping shared by ``LLLaplace`` and ``FunctionalLLLaplace``:
    parameters of ``model.last_layer`` only, found at ``fit`` when not named."""

    model: FeatureExtractor
    prior_precision = _deferred_prior("prior_precision")
    prior_mean = _deferred_prior("prior_mean")

    @property
    def _params(self) -> list[nn.Parameter]:
        layer = self.model.last_layer
        return [] if layer is None else list(layer.parameters())

    @property
    def n_params(self) -> int | None:
        """Parameters of the last layer; ``None`` until the layer is known."""
        layer = self.model.last_layer
        return None if layer is None else sum(p.numel() for p in layer.parameters())

    @property
    def n_layers(self) -> int | None:
        """Parameter tensors of the last layer; ``None`` until the layer is known."""
        layer = self.model.last_layer
        return None if layer is None else len(list(layer.parameters()))

    @property
    def backend(self):
        if self._backend is None:
            self._backend = self._backend_cls(
                self.model, self.likelihood, last_layer=True, dict_key_x=self.dict_key_x,
                dict_key_y=self.dict_key_y, **self.backend_kwargs,
            )
        return self._backend

    def _prepare_last_layer(self, train_loader: Any) -> Inputs:
        """Find the last layer on the first batch (if not known), check the deferred
        priors against it; returns that batch's inputs."""
        X = _first_inputs(train_loader, self)
        self._layer_probe = _first_row(X)
        if self.model.last_layer is None:
            self.model.find_last_layer(X)
        deferred = self.__dict__.pop("_deferred_priors", {})
        for name in _PRIORS:
            if name in deferred:
                setattr(self, name, deferred[name])
        return X

    def _set_layer_from_state(self, name: str | None) -> None:
        """Restore the saved layer; a different layer already in use is an error."""
        current = self.model.last_layer_name if self.model.last_layer is not None else None
        if name and current and name != current:
            raise ValueError(
                f"The state was saved for last layer {name!r}, this LA uses {current!r} "
                "(last_layer_name)."
            )
        if name and not current:
            self.model.set_last_layer(name)
        self.__dict__.pop("_deferred_priors", None)

    def _check_output_is_last_layer(self, X: Inputs) -> None:
        """The Jacobian ``I ⊗ φᵀ`` holds only if the output *is* ``last_layer(φ)``.

        With ``feature_reduction`` the model may pool the head's outputs its own way
        (e.g. at the last non-padding token): only the shape ``(batch, K)`` is checked
        then, and the model's own output is the predictive mean.
        """
        with torch.no_grad():
            f, phi = self.model.forward_with_features(X)
            expected = self.model.last_layer(phi)
            if self.likelihood == "reward_modeling" and self.model(X).shape != expected.shape:
                # a pair's two rewards from one-output heads: not f = last_layer(φ) per row
                f = self.model(X)
        # NaN outputs (e.g. diverged weights) are not "an operation after the layer"
        checks.finite_outputs(f, "The model's output on the first training batch")
        checks.finite_outputs(expected, f"The last layer {self.model.last_layer_name!r}'s "
                              "output on the first training batch")
        if f.shape == expected.shape and (
            self.model.feature_reduction is not None
            or torch.allclose(f, expected, rtol=1e-5, atol=1e-6)
        ):
            return
        if self.model.feature_reduction is not None:
            raise ValueError(
                f"The model output of shape {tuple(f.shape)} does not match the last layer "
                f"{self.model.last_layer_name!r} on the reduced features "
                f"{tuple(expected.shape)} (feature_reduction="
                f"{str(self.model.feature_reduction)!r}); the model must return (batch, K)."
            )
        raise ValueError(
            f"The model output is not the output of its last layer "
            f"{self.model.last_layer_name!r} (an operation follows it); last-layer "
            "Laplace needs f = last_layer(φ): name a layer whose output is the model's "
            "output (last_layer_name) or use subset_of_weights='all'."
        )


class LLLaplace(LastLayerMixin, ParametricLaplace):
    """Laplace approximation over the last ``nn.Linear`` layer.

    Args:
        model: the network (wrapped, not copied, in a ``FeatureExtractor``).
        likelihood: as for ``BaseLaplace``.
        last_layer_name: the output layer's name in ``model.named_modules()``; found
            at ``fit`` (the last ``nn.Linear`` to run) when ``None``.
        feature_reduction: pooling of ``(batch, ..., D)`` features to ``(batch, D)``
            (see ``FeatureReduction``); the predictive mean stays the model's output.

    Other arguments are those of ``BaseLaplace``.
    """

    _POSITIONAL = arguments.LAST_LAYER

    def __init__(
        self,
        model: nn.Module,
        likelihood: str,
        *args: Any,
        last_layer_name: str | None = None,
        feature_reduction: str | None = None,
        **kwargs: Any,
    ) -> None:
        enable_backprop = checks.flag(kwargs.get("enable_backprop", False), "enable_backprop")
        checks.torch_module(model)
        model = distributed_fit.unwrap_parallel(model)
        extractor = FeatureExtractor(model, last_layer_name, enable_backprop, feature_reduction)
        self._last_layer_name = last_layer_name  # the argument, as laplace-torch keeps it
        self._layer_probe: Inputs | None = None  # one input row the layer is found on
        self._constructing = True
        try:
            super().__init__(extractor, likelihood, *args, **kwargs)
        finally:
            self._constructing = False

    def _prior_mean_vector(self) -> Tensor | None:
        """Before fit the posterior is the prior: the prior mean over the last layer, or
        ``None`` while the layer is unknown (laplace-torch's state)."""
        if self.model.last_layer is None or self._constructing:
            return None
        return super()._prior_mean_vector()

    @property
    def mean(self) -> Tensor | None:
        """The posterior mean ``(n_params,)``. Before ``fit`` it is the prior mean vector
        over the last layer (``None`` while the layer is unknown), built on access: the
        constructor stores nothing of the posterior's size."""
        mean = self.__dict__.get("_mean")
        if mean is None and not self._constructing:
            return self._prior_mean_vector()
        return mean

    @mean.setter
    def mean(self, value: Tensor | None) -> None:
        self.__dict__["_mean"] = None if self._constructing else value

    def _prior_mean_changed(self) -> None:
        """Nothing to do: before ``fit`` ``mean`` is built from ``prior_mean`` on access."""

    def _require_curvature(self) -> None:
        if self.model.last_layer is None:
            from laplace.precision import NotFittedError

            raise NotFittedError(
                f"{type(self).__name__} is not fitted: call fit(train_loader) (the last "
                "layer is found at fit; pass last_layer_name to use the prior before fit)."
            )
        super()._require_curvature()

    def _posterior_vector(self) -> Tensor | None:
        if self.model.last_layer is None:
            return None
        return super()._posterior_vector()

    def _init_H(self) -> None:
        """Allocated at ``fit`` (for the layer found there), never at construction."""
        if self._constructing:
            self.H = None
            return
        super()._init_H()

    @property
    def H(self) -> Any:
        """The accumulated curvature. Before ``fit`` it is ``None`` while the layer is
        unknown, else the zero curvature of the prior (laplace-torch's state), allocated
        on first access: construction itself allocates nothing of the posterior's size."""
        if self._curvature_unset() and self.n_outputs is None and not self._constructing and (
            self.model.last_layer is not None
        ):
            super()._init_H()
        return self._curvature_view()

    @H.setter
    def H(self, value: Any) -> None:
        self.__dict__["_H"] = value

    @property
    def _has_bias(self) -> bool:
        return self.model.last_layer.bias is not None

    @restores_state_on_error
    def fit(self, train_loader: Any, override: bool = True, progress_bar: bool = False,
            distributed: bool | None = None) -> None:
        """Find the last layer on the first batch (unless named), then fit."""
        override, progress_bar = checks.fit_flags(override, progress_bar)
        dist = distributed_fit.resolve(distributed)
        with distributed_fit.collective_errors(dist, "finding the last layer", self._device):
            X = self._prepare_last_layer(train_loader)
            self._check_output_is_last_layer(X)
        if self.n_outputs is None:
            override = True  # nothing accumulated yet: allocate the curvature
        super().fit(train_loader, override=override, progress_bar=progress_bar,
                    distributed=dist)

    def _glm_predictive_distribution(
        self, X: Inputs, joint: bool = False, diagonal_output: bool = False
    ) -> tuple[Tensor, Tensor]:
        f_mu, phi = self._outputs_and_features(X)
        checks.finite_outputs(f_mu)
        if self._glm_offset is not None:
            f_mu = f_mu + self._last_layer_map(phi, self._glm_offset[None])[0]
        f_var = self._precision().last_layer_variance(
            phi, f_mu.shape[-1], self._has_bias, joint=joint, diagonal=diagonal_output
        )
        return self._detached(f_mu.flatten() if joint else f_mu, f_var)

    def _outputs_and_features(self, X: Inputs) -> tuple[Tensor, Tensor]:
        """The model's outputs ``(n, K)`` and the (reduced) features ``(n, D)``."""
        with torch.set_grad_enabled(self.enable_backprop or torch.is_grad_enabled()):
            f_mu, phi = self.model.forward_with_features(X)
        if not self.enable_backprop:
            f_mu, phi = f_mu.detach(), phi.detach()
        return f_mu.reshape(-1, f_mu.shape[-1]), phi.reshape(-1, phi.shape[-1])

    def functional_variance_fast(self, X: Inputs) -> tuple[Tensor, Tensor]:
        """The outputs ``(n, K)`` and their marginal variances ``(n, K)`` at ``X``
        (the ``diagonal_output=True`` GLM predictive), without ``K × K`` blocks."""
        self._require_fit()
        return self._glm_predictive_distribution(X, diagonal_output=True)

    def _nn_samples(self, X: Inputs, n_samples: int, generator: torch.Generator | None) -> Tensor:
        """One feature pass, then ``f + φ(Wₛ − W*)ᵀ + (bₛ − b*)`` per weight sample.

        Exactly ``φWₛᵀ + bₛ`` when the output is ``last_layer(φ)``; with a model that
        pools its head's outputs its own way, the change of the declared linear map
        around the model's output.
        """
        with torch.set_grad_enabled(self.enable_backprop and torch.is_grad_enabled()):
            f, phi = self._outputs_and_features(X)
            checks.finite_outputs(f)
            theta_map = self.mean if self._glm_offset is None else self.mean - self._glm_offset
            return f + self._last_layer_map(phi, self.sample(n_samples, generator) - theta_map)

    def _last_layer_map(self, phi: Tensor, deltas: Tensor) -> Tensor:
        """``φ ΔWᵀ + Δb`` for features ``(n, D)`` and changes ``(s, P)``: ``(s, n, K)``."""
        K, D = self.model.last_layer.weight.shape
        dW = deltas[:, : K * D].reshape(deltas.shape[0], K, D)
        out = torch.einsum("nd,skd->snk", phi, dW)
        if self._has_bias:
            out = out + deltas[:, K * D :].unsqueeze(1)
        return out

    def state_dict(self, **kwargs: Any) -> dict[str, Any]:
        """The parametric state (``kwargs``: a full LA's ``dense``) plus the layer's name,
        and the two keys laplace-torch 0.3 loads a last-layer state by: ``_last_layer_name``
        (the constructor's argument) and ``data``, an input batch the layer is found on
        (here one row, ``(X[:1], None)``)."""
        state = super().state_dict(**kwargs)
        state["last_layer_name"] = self.model.last_layer_name
        state["_last_layer_name"] = getattr(self, "_last_layer_name", None)  # older pickles
        probe = getattr(self, "_layer_probe", None)
        state["data"] = None if probe is None else (probe, None)
        return state

    @restores_state_on_error
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore a state of ``state_dict``, or one saved by laplace-torch, which keeps a
        batch (``data``) instead of the layer's name: the layer is found on it."""
        checks.state_keys(state_dict, ("cls_name",), type(self).__name__)
        name = state_dict.get("last_layer_name")
        data = state_dict.get("data")
        X = data[0] if isinstance(data, (list, tuple)) else data
        X = self._from_state(X)  # a float64 probe for a float32 model is cast
        if name is None and self.model.last_layer is None and X is not None:
            self.model.find_last_layer(inputs_to(X, self._device))
            name = self.model.last_layer_name
        self._set_layer_from_state(name)
        super().load_state_dict(state_dict)
        self._layer_probe = None if X is None else _first_row(inputs_to(X, self._device))


def _first_row(X: Inputs) -> Inputs:
    """A detached copy of the first row of ``X`` (a tensor or a dict of them), which does
    not keep the batch alive."""
    if isinstance(X, Tensor):
        return X[:1].detach().clone()
    return {k: v[:1].detach().clone() if isinstance(v, Tensor) else v for k, v in X.items()}


def _first_inputs(loader: Any, la: Any) -> Inputs:
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
    _POSITIONAL = arguments.insert_after(arguments.LAST_LAYER, "last_layer_name", "damping")


class DiagLLLaplace(LLLaplace, DiagLaplace):
    """Last-layer Laplace with a diagonal precision."""

    _key = ("last_layer", "diag")
