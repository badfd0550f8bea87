"""``BaseLaplace``: hyperparameters, likelihood terms and the marginal likelihood.

Everything here is shared by every Laplace variant; variants supply the curvature
(``fit``) and the log-determinant of their posterior precision.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn

from laplace.curvature.curvature import CurvatureInterface
from laplace.posterior import arguments
from laplace.posterior.marglik import (
    check_bounds,
    check_hyperprior,
    check_method,
    log_normal_density,
    maximize,
)
from laplace.posterior.tuning import gridsearch, marglik
from laplace.utils import checks
from laplace.utils.data import Inputs, batch_size, inputs_to, state_to
from laplace.utils.distributed import unwrap_parallel
from laplace.utils.enums import (
    Likelihood,
    LinkApprox,
    PredType,
    PriorStructure,
    TuningMethod,
    parse_option,
)
from laplace.utils.parameters import expand_to_parameters, fix_prior_prec_structure


class BaseLaplace(metaclass=arguments.PositionalArguments):
    """Common state of a Laplace approximation.

    Args:
        model: the trained (MAP) network.
        likelihood: ``"regression"``, ``"classification"`` or ``"reward_modeling"``.
        sigma_noise: observation noise standard deviation, a positive float or 0-d /
            one-element tensor (stored 0-d); must be 1 unless ``likelihood`` is
            ``"regression"``.
        prior_precision: non-negative float or tensor ``(1,)``, ``(n_layers,)`` (one
            per parameter tensor) or ``(n_params,)`` (stored 1-d).
        prior_mean: a scalar or a vector ``(n_params,)``.
        temperature: posterior temperature ``T > 0`` (curvature is scaled by ``1/T``).

    The constructor assigns the hyperparameters through their setters, so both run
    the same checks (``ValueError`` naming the argument).
        enable_backprop: keep the autograd graph in predictions (gradients w.r.t.
            inputs flow through the network Jacobians).
        dict_key_x, dict_key_y: keys of dict-like (Hugging Face) batches.
        backend: a ``CurvatureInterface`` subclass; the native ``torch.func``
            GGN backend by default.
        backend_kwargs: extra keyword arguments for the backend.
        asdl_fisher_kwargs: keyword arguments forwarded to ASDL's Fisher calls.
    """

    #: laplace-torch's order of the positional arguments after ``(model, likelihood)``
    #: (``arguments.PositionalArguments``); ``None``: the constructor's own binding.
    _POSITIONAL: tuple[str, ...] | None = arguments.BASE

    def __init__(
        self,
        model: nn.Module,
        likelihood: Likelihood | str,
        sigma_noise: float | Tensor = 1.0,
        prior_precision: float | Tensor = 1.0,
        prior_mean: float | Tensor = 0.0,
        temperature: float = 1.0,
        enable_backprop: bool = False,
        dict_key_x: str = "input_ids",
        dict_key_y: str = "labels",
        backend: type[CurvatureInterface] | None = None,
        backend_kwargs: dict[str, Any] | None = None,
        asdl_fisher_kwargs: dict[str, Any] | None = None,
    ) -> None:
        self.likelihood = parse_option(Likelihood, likelihood, "likelihood")
        checks.torch_module(model)
        self.model = unwrap_parallel(model)  # a DDP / DataParallel model's inner module
        self._distributed = False  # whether the last fit summed over processes
        self.enable_backprop = enable_backprop
        self.dict_key_x, self.dict_key_y = dict_key_x, dict_key_y
        self.backend_kwargs = checks.keyword_dict(backend_kwargs, "backend_kwargs")
        self.asdl_fisher_kwargs = checks.keyword_dict(asdl_fisher_kwargs, "asdl_fisher_kwargs")
        if backend is not None and not (isinstance(backend, type)
                                        and issubclass(backend, CurvatureInterface)):
            raise ValueError(f"backend must be a curvature class (a CurvatureInterface "
                             f"subclass such as laplace.curvature.AsdlGGN), not {backend!r}.")
        self._backend_cls = backend or self._default_backend()
        self._backend: CurvatureInterface | None = None
        self.loss: Tensor | float = 0.0
        self.n_data = 0
        self.n_outputs: int | None = None
        # The setters below validate: the constructor takes no shortcut past them.
        self.sigma_noise = sigma_noise
        self.temperature = temperature
        self.prior_precision = prior_precision
        self.prior_mean = prior_mean

    # ------------------------------------------------------------------ basics
    def _default_backend(self) -> type[CurvatureInterface]:
        from laplace.curvature.torchfunc import TorchFuncGGN

        return TorchFuncGGN

    @property
    def enable_backprop(self) -> bool:
        """Whether predictions keep the autograd graph (to ``x`` and the weights)."""
        return self._enable_backprop

    @enable_backprop.setter
    def enable_backprop(self, value: bool) -> None:
        self._enable_backprop = checks.flag(value, "enable_backprop")

    @property
    def dict_key_x(self) -> str:
        """The key of the inputs in dict-like (Hugging Face) batches."""
        return self._dict_key_x

    @dict_key_x.setter
    def dict_key_x(self, value: str) -> None:
        self._dict_key_x = checks.dict_key(value, "dict_key_x")
        self.__dict__["_backend"] = None  # the backend reads batches with the keys

    @property
    def dict_key_y(self) -> str:
        """The key of the targets in dict-like (Hugging Face) batches."""
        return self._dict_key_y

    @dict_key_y.setter
    def dict_key_y(self, value: str) -> None:
        self._dict_key_y = checks.dict_key(value, "dict_key_y")
        self.__dict__["_backend"] = None

    @property
    def _params(self) -> list[nn.Parameter]:
        """Parameters the posterior is over (trainable ones for subset ``all``)."""
        return [p for p in self.model.parameters() if p.requires_grad]

    @property
    def params(self) -> list[nn.Parameter]:
        """The model's trainable parameters (laplace-torch's attribute)."""
        return [p for p in self.model.parameters() if p.requires_grad]

    @property
    def is_subset_params(self) -> bool:
        """Whether some of the model's parameters are frozen (``requires_grad=False``)."""
        return any(not p.requires_grad for p in self.model.parameters())

    @property
    def _device(self) -> torch.device:
        params = list(self.model.parameters())
        return params[0].device if params else torch.device("cpu")

    @property
    def _dtype(self) -> torch.dtype:
        params = list(self.model.parameters())
        return params[0].dtype if params else torch.get_default_dtype()

    def _as_tensor(self, value: float | Tensor) -> Tensor:
        return torch.as_tensor(value, device=self._device, dtype=self._dtype)

    def _from_state(self, value: Any) -> Any:
        """A saved state's tensors on this LA's device, floating ones in its dtype."""
        return state_to(value, self._device, self._dtype)

    @property
    def n_params(self) -> int:
        return sum(p.numel() for p in self._params)

    @property
    def _posterior_dim(self) -> int:
        """Dimension of the Gaussian (``n_params`` except for subnetworks)."""
        return self.n_params

    def _posterior_part(self, v: Tensor) -> Tensor:
        """Entries of a full parameter-length vector that the posterior covers."""
        return v

    @property
    def n_layers(self) -> int:
        """Number of parameter tensors (the length of a layerwise prior)."""
        return len(self._params)

    @property
    def _layer_sizes(self) -> list[int]:
        return [p.numel() for p in self._params]

    @property
    def backend(self) -> CurvatureInterface:
        if self._backend is None:
            self._backend = self._backend_cls(
                self.model, self.likelihood, dict_key_x=self.dict_key_x,
                dict_key_y=self.dict_key_y, **self.backend_kwargs,
            )
        return self._backend

    # ---------------------------------------------------------- hyperparameters
    @property
    def sigma_noise(self) -> Tensor:
        """Observation noise standard deviation: a positive 0-d tensor."""
        return self._sigma_noise

    @sigma_noise.setter
    def sigma_noise(self, value: float | Tensor) -> None:
        value = checks.positive_scalar(value, "sigma_noise", self._device, self._dtype)
        if self.likelihood != Likelihood.REGRESSION and float(value) != 1.0:
            raise ValueError(
                "sigma_noise must be 1 for classification and reward modeling "
                f"(got {float(value):.4g}); it is the regression noise level."
            )
        self._sigma_noise = value
        self._invalidate()

    @property
    def temperature(self) -> float:
        """Posterior temperature ``T > 0`` (the curvature is scaled by ``1/T``)."""
        return self._temperature

    @temperature.setter
    def temperature(self, value: float | Tensor) -> None:
        self._temperature = checks.positive_float(value, "temperature")
        self._invalidate()

    def _prior_precision_lengths(self) -> tuple[list[tuple[int, str]], str]:
        """Allowed ``(length, meaning)`` of the prior precision, and a note on the rest."""
        return [
            (1, "a scalar"),
            (self.n_layers, "one value per parameter tensor"),
            (self._posterior_dim, "per parameter"),
        ], ""

    @property
    def prior_precision(self) -> Tensor:
        """``(1,)`` scalar, ``(n_layers,)`` layerwise or ``(n_params,)`` diagonal."""
        return self._prior_precision

    @prior_precision.setter
    def prior_precision(self, value: float | Tensor) -> None:
        lengths, note = self._prior_precision_lengths()
        self._prior_precision = checks.precision_vector(
            value, "prior_precision", lengths, self._device, self._dtype, note
        )
        self._invalidate()

    @property
    def prior_mean(self) -> Tensor:
        """A 0-d scalar or one value per posterior parameter ``(n_params,)``."""
        return self._prior_mean

    @prior_mean.setter
    def prior_mean(self, value: float | Tensor) -> None:
        self._prior_mean = checks.mean_vector(
            value, "prior_mean", self._posterior_dim, self._device, self._dtype
        )
        self._prior_mean_changed()

    def _prior_mean_changed(self) -> None:
        """Hook: the state that follows the prior mean (a posterior before ``fit``)."""

    @property
    def prior_precision_diag(self) -> Tensor:
        """Prior precision expanded to one value per posterior parameter."""
        prior = self.prior_precision
        if prior.numel() == 1:
            return prior.expand(self._posterior_dim)
        if prior.numel() == self._posterior_dim:
            return prior
        return self._posterior_part(expand_to_parameters(prior, self._layer_sizes))

    @property
    def _H_factor(self) -> Tensor:
        """Scale of the curvature in the posterior precision: ``1 / (σ² T)``."""
        return 1 / (self.sigma_noise.square() * self.temperature)

    def _invalidate(self) -> None:
        """Hook for subclasses caching factorizations that depend on hyperparameters."""

    def _fit_inplace_state(self, override: bool) -> dict[str, Any]:
        """Copies of the attributes that ``fit`` would change in place (none here), kept
        so that a fit that raises can restore them (``transaction``)."""
        return {}

    def _prepare_for_tuning(self) -> None:
        """Hook: precompute what repeated marginal-likelihood evaluations share."""

    @contextmanager
    def _hyperparameters_kept_on_error(self) -> Iterator[None]:
        """A tuning run that raises leaves ``prior_precision`` and ``sigma_noise`` as
        they were (not its last iterate, which may still require gradients)."""
        previous = self._prior_precision, self._sigma_noise
        try:
            yield
        except BaseException:
            self._prior_precision, self._sigma_noise = previous
            self._invalidate()
            raise

    # -------------------------------------------------------- likelihood terms
    @property
    def log_likelihood(self) -> Tensor:
        """Log likelihood of the training data at the MAP (up to the Laplace terms)."""
        factor = -self._H_factor
        if self.likelihood == Likelihood.REGRESSION:
            outputs = self.n_outputs or 0  # before fit: no data, no term (laplace-torch: −0)
            c = self.n_data * outputs * torch.log(self.sigma_noise * math.sqrt(2 * math.pi))
            return factor * self.loss - c
        return factor * self.loss

    @property
    def scatter(self) -> Tensor:
        """``(θ* − μ₀)ᵀ P₀ (θ* − μ₀)``."""
        delta = self._posterior_part(self.mean) - self.prior_mean
        if self.prior_precision.numel() == 1:
            return (delta @ delta) * self.prior_precision[0]
        return (delta * self.prior_precision_diag) @ delta

    @property
    def log_det_prior_precision(self) -> Tensor:
        if self.prior_precision.numel() == 1:
            return self._posterior_dim * self.prior_precision[0].log()
        return self.prior_precision_diag.log().sum()

    @property
    def log_det_posterior_precision(self) -> Tensor:
        raise NotImplementedError

    def fit(self, train_loader: Any) -> None:
        """Fit the posterior on ``train_loader``: each variant implements it (laplace-torch's
        abstract method, for subclasses written against it)."""
        raise NotImplementedError(f"{type(self).__name__} does not implement fit.")

    def sample(self, n_samples: int = 100, generator: torch.Generator | None = None) -> Tensor:
        """Weight samples ``(n_samples, P)``: each variant with a weight posterior
        implements it (laplace-torch's abstract method)."""
        raise NotImplementedError(f"{type(self).__name__} does not implement sample.")

    @property
    def log_det_ratio(self) -> Tensor:
        return self.log_det_posterior_precision - self.log_det_prior_precision

    def log_marginal_likelihood(
        self, prior_precision: Tensor | float | None = None,
        sigma_noise: Tensor | float | None = None,
    ) -> Tensor:
        """Laplace log marginal likelihood, differentiable in both hyperparameters.

        Given hyperparameters are stored on the object (as laplace-torch does).
        """
        self._require_fit()
        if sigma_noise is not None and self.likelihood != Likelihood.REGRESSION:
            raise ValueError("sigma_noise can only be set for regression.")
        previous = self._prior_precision, self._sigma_noise
        try:  # both or neither: a refused value leaves the other unchanged too
            if prior_precision is not None:
                self.prior_precision = prior_precision
            if sigma_noise is not None:
                self.sigma_noise = sigma_noise
        except ValueError:
            self._prior_precision, self._sigma_noise = previous
            self._invalidate()
            raise
        return self.log_likelihood - 0.5 * (self.log_det_ratio + self.scatter)

    def _require_fit(self) -> None:
        if self.n_outputs is None:
            from laplace.precision.base import NotFittedError

            raise NotFittedError(f"{type(self).__name__} is not fitted: call fit(train_loader).")

    # ---------------------------------------------------------------- tuning
    def optimize_prior_precision(
        self,
        pred_type: PredType | str = PredType.GLM,
        method: TuningMethod | str = TuningMethod.MARGLIK,
        n_steps: int = 100,
        lr: float = 1e-1,
        init_prior_prec: float | Tensor = 1.0,
        prior_structure: PriorStructure | str = PriorStructure.SCALAR,
        val_loader: Any = None,
        loss: Any = None,
        log_prior_prec_min: float = -4,
        log_prior_prec_max: float = 4,
        grid_size: int = 100,
        link_approx: LinkApprox | str = LinkApprox.PROBIT,
        n_samples: int = 100,
        verbose: bool = False,
        progress_bar: bool = False,
        log_prior_prec_base: float = 10.0,
    ) -> None:
        """Tune the prior precision (laplace-torch 0.3's signature and defaults).

        ``method="marglik"`` maximises the log marginal likelihood with Adam on the log
        prior precision (``n_steps`` steps of rate ``lr`` from ``init_prior_prec``). A
        scalar ``init_prior_prec`` is expanded to ``prior_structure`` (``"scalar"``,
        ``"layerwise"`` or ``"diag"``); a vector keeps its own structure.
        ``method="gridsearch"`` picks the value on ``log_prior_prec_base **
        linspace(log_prior_prec_min, log_prior_prec_max, grid_size)`` with the lowest
        validation ``loss`` on ``val_loader``. The observation noise is left unchanged
        (as in laplace-torch); tune it with ``log_marginal_likelihood(prior_precision,
        sigma_noise)`` directly.
        """
        pred_type = parse_option(PredType, pred_type, "pred_type")
        method = parse_option(TuningMethod, method, "method")
        structure = parse_option(PriorStructure, prior_structure or "scalar", "prior_structure")
        verbose, progress_bar = checks.flag(verbose, "verbose"), checks.flag(progress_bar,
                                                                               "progress_bar")
        if self.likelihood != Likelihood.REGRESSION:
            warnings.warn(
                "By default `link_approx` is `probit`. Make sure to set it equals to the way "
                "you want to call `la(test_data, pred_type=..., link_approx=...)`.",
                stacklevel=2,
            )
        if method == TuningMethod.MARGLIK:
            if val_loader is not None:
                warnings.warn(
                    "`val_loader` will be ignored when `method` == 'marglik'. Do you mean to "
                    "set `method = 'gridsearch'`?",
                    stacklevel=2,
                )
            n_steps = checks.positive_int(n_steps, "n_steps")
            lr = checks.positive_float(lr, "lr")
            with self._hyperparameters_kept_on_error():
                marglik(self, n_steps, lr, init_prior_prec, structure, progress_bar, verbose)
        else:
            grid_size = checks.positive_int(grid_size, "grid_size")
            base = checks.positive_float(log_prior_prec_base, "log_prior_prec_base")
            if base == 1.0:
                raise ValueError("log_prior_prec_base must not be 1: every grid point would "
                                 "be 1.")
            with self._hyperparameters_kept_on_error():
                gridsearch(
                    self, pred_type, val_loader, loss, log_prior_prec_min, log_prior_prec_max,
                    grid_size, link_approx, n_samples, progress_bar, verbose,
                    log_prior_prec_base,
                )

    def optimize_marginal_likelihood(
        self,
        method: str = "lbfgs",
        n_steps: int = 100,
        lr: float = 1e-1,
        prior_structure: PriorStructure | str | None = None,
        tune_sigma_noise: bool = False,
        prior_precision_bounds: tuple[float, float] | None = None,
        sigma_noise_bounds: tuple[float, float] | None = None,
        prior_precision_hyperprior: tuple[float, float] | None = None,
        sigma_noise_hyperprior: tuple[float, float] | None = None,
        progress_bar: bool = False,
    ) -> Tensor:
        """Maximise the log marginal likelihood over ``log δ`` and optionally ``log σ``.

        Starts from the current ``prior_precision`` (expanded to ``prior_structure``
        ``"scalar"`` / ``"layerwise"`` / ``"diag"`` when given) and ``sigma_noise``, and
        stores the best point visited. ``method``: ``"lbfgs"`` (at most ``n_steps``
        iterations with a strong-Wolfe line search) or ``"adam"`` (``n_steps`` steps of
        rate ``lr``). Bounds ``(low, high)`` (positive) clamp ``δ`` / ``σ``; hyperpriors
        ``(loc, scale)`` add a log-normal log density on each ``δ_g`` / on ``σ²`` to the
        objective (``laplace.posterior.marglik``).

        Returns:
            The objective (log marginal likelihood plus hyperpriors) at the stored point
            (0-d, detached).
        """
        self._require_fit()
        method = check_method(method)
        n_steps = checks.positive_int(n_steps, "n_steps")
        lr = checks.positive_float(lr, "lr")
        if not isinstance(tune_sigma_noise, bool):
            raise ValueError(f"tune_sigma_noise must be a bool, got {tune_sigma_noise!r}.")
        if tune_sigma_noise and self.likelihood != Likelihood.REGRESSION:
            raise ValueError("tune_sigma_noise=True needs likelihood='regression'.")
        options = dict(
            prior_bounds=check_bounds(prior_precision_bounds, "prior_precision_bounds"),
            sigma_bounds=check_bounds(sigma_noise_bounds, "sigma_noise_bounds"),
            prior_hyperprior=check_hyperprior(prior_precision_hyperprior,
                                              "prior_precision_hyperprior"),
            noise_hyperprior=check_hyperprior(sigma_noise_hyperprior, "sigma_noise_hyperprior"),
        )
        with self._hyperparameters_kept_on_error():
            return self._maximize_marginal_likelihood(prior_structure, tune_sigma_noise,
                                                      method, n_steps, lr, progress_bar,
                                                      options)

    def _maximize_marginal_likelihood(self, prior_structure: Any, tune_sigma_noise: bool,
                                      method: str, n_steps: int, lr: float,
                                      progress_bar: bool, options: dict[str, Any]) -> Tensor:
        """``optimize_marginal_likelihood`` after its arguments were checked."""
        if prior_structure is not None:
            structure = parse_option(PriorStructure, prior_structure, "prior_structure")
            lengths = {PriorStructure.SCALAR: 1, PriorStructure.LAYERWISE: self.n_layers,
                       PriorStructure.DIAG: self._posterior_dim}
            if self.prior_precision.numel() != lengths[structure]:  # from the mean value
                self.prior_precision = self._init_prior(float(self.prior_precision.mean()),
                                                        structure)
        self._prepare_for_tuning()

        def lml(prior: Tensor, sigma: Tensor | None) -> Tensor:
            return self.log_marginal_likelihood(prior_precision=prior, sigma_noise=sigma)

        prior, sigma = maximize(lml, self.prior_precision,
                                self.sigma_noise if tune_sigma_noise else None, method=method,
                                n_steps=n_steps, lr=lr, keep_best=True,
                                progress_bar=progress_bar, **options)
        with torch.no_grad():
            value = lml(prior, sigma)
            if options["prior_hyperprior"] is not None:
                value = value + log_normal_density(prior, *options["prior_hyperprior"])
            if sigma is not None and options["noise_hyperprior"] is not None:
                value = value + log_normal_density(sigma.square(), *options["noise_hyperprior"])
        return value

    def _init_prior(self, init: float | Tensor, structure: PriorStructure) -> Tensor:
        """The first prior of a tuning run: a vector ``init`` keeps its own structure."""
        if isinstance(init, Tensor) and init.numel() > 1:
            return init.detach().to(device=self._device, dtype=self._dtype).flatten()
        return fix_prior_prec_structure(
            init, structure, self.n_layers, self._posterior_dim, self._device, self._dtype
        )

    # ------------------------------------------------------------ devices
    def to(self, device: torch.device | str) -> BaseLaplace:
        """Move the model and every fitted tensor (curvature included) to ``device``."""
        self.model.to(device)
        for name, value in list(vars(self).items()):
            if name not in ("model", "_backend"):
                setattr(self, name, move_to(value, torch.device(device)))
        self._invalidate()
        return self

    # ------------------------------------------------------------ prediction
    def _prediction_inputs(self, x: Inputs) -> Inputs:
        """``x`` on the model's device, checked: finite, and its first dimension the batch.

        A 1-D ``x`` ``(n,)`` is ``n`` scalar inputs; the model must then give ``n``
        outputs (one network pass checks it), else a ``ValueError`` names ``x``.
        """
        x = inputs_to(x, self._device)
        if batch_size(x, self.dict_key_x) == 0:
            raise ValueError("Input x has no points (its first dimension, the batch, is 0).")
        if isinstance(x, Tensor) and x.ndim == 1:
            with torch.no_grad():
                checks.batch_output(x, self.model(x), self.dict_key_x)
        return x

    def __call__(self, x: Inputs, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError

    def predictive(self, x: Inputs, pred_type: PredType | str, link_approx: LinkApprox | str,
                   n_samples: int) -> Any:
        """``self(x, pred_type=..., link_approx=..., n_samples=...)`` (laplace-torch's
        older name of the predictive)."""
        return self(x, pred_type=pred_type, link_approx=link_approx, n_samples=n_samples)

    def _detached(self, f_mu: Tensor, f_var: Tensor) -> tuple[Tensor, Tensor]:
        """The predictive moments, detached unless ``enable_backprop`` (laplace-torch's
        rule: a loop that tunes ``prior_precision`` by autograd leaves it requiring grad,
        and its predictions are still plain tensors)."""
        if self.enable_backprop:
            return f_mu, f_var
        return f_mu.detach(), f_var.detach()

    def functional_samples(self, x: Inputs, pred_type: str, n_samples: int = 100,
                           diagonal_output: bool = False,
                           generator: torch.Generator | None = None) -> Tensor:
        raise NotImplementedError

    def predictive_samples(
        self, x: Inputs, pred_type: str | None = None, n_samples: int = 100,
        diagonal_output: bool = False, generator: torch.Generator | None = None,
    ) -> Tensor:
        """Draws ``(n_samples, n, K)`` of the predictive: latent function values for
        regression, class probabilities (softmax of the latent draws) otherwise."""
        kwargs = {} if pred_type is None else {"pred_type": pred_type}
        f = self.functional_samples(x, n_samples=n_samples, diagonal_output=diagonal_output,
                                    generator=generator, **kwargs)
        if self.likelihood == Likelihood.CLASSIFICATION:
            return torch.softmax(f, dim=-1)
        return f


def move_to(value: Any, device: torch.device) -> Any:
    """``value`` with its tensors on ``device`` (tensors, lists/tuples, Kron matrices)."""
    from laplace.utils.matrix import Kron, KronDecomposed

    if isinstance(value, Tensor):
        return value.to(device)
    if isinstance(value, (list, tuple)):
        return type(value)(move_to(v, device) for v in value)
    if isinstance(value, Kron):
        return Kron(move_to(value.kfacs, device))
    if isinstance(value, KronDecomposed):
        return KronDecomposed(move_to(value.eigenvectors, device),
                              move_to(value.eigenvalues, device),
                              move_to(value.deltas, device), value.damping)
    return value
