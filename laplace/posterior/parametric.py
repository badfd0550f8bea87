"""``ParametricLaplace``: a Gaussian over weights ``N(θ*, Σ)`` with ``Σ⁻¹ = H/(σ²T) + P₀``.

Fitting accumulates a curvature ``H``; a structure-specific ``PrecisionMatrix`` built
from ``H`` and the hyperparameters answers every question about the Gaussian, so the
predictive, sampling and serialization below are written once for all structures.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call
from tqdm.auto import tqdm

from laplace.posterior.base import BaseLaplace
from laplace.posterior.transaction import restores_state_on_error
from laplace.precision import PrecisionMatrix
from laplace.predictive import links
from laplace.utils import checks
from laplace.utils import distributed as distributed_fit
from laplace.utils.data import Inputs, batch_size, dataset_size, inputs_to, split_batch
from laplace.utils.enums import Likelihood, LinkApprox, PredType, parse_option
from laplace.utils.parameters import vector_of


class ParametricLaplace(BaseLaplace):
    """Weight-space Laplace approximation; subclasses choose the curvature structure."""

    _key: tuple[str, str]
    #: ``μ − θ*`` ``(posterior_dim,)`` after ``condition`` moved the mean off the network's
    #: weights; the GLM predictive mean is then ``f(x; θ*) + J(x)(μ − θ*)``.
    _glm_offset: Tensor | None = None

    def __init__(self, model: nn.Module, likelihood: str, *args: Any, **kwargs: Any) -> None:
        super().__init__(model, likelihood, *args, **kwargs)
        if self.n_params == 0:
            raise ValueError("The model has no trainable parameters (requires_grad=True).")
        # Before fit the posterior is the prior: mean = prior mean, zero curvature.
        self.mean: Tensor = self._prior_mean_vector()
        self._cached: tuple[tuple[Tensor, Tensor], PrecisionMatrix] | None = None
        self._init_H()

    def _prior_precision_lengths(self) -> tuple[list[tuple[int, str]], str]:
        lengths, note = super()._prior_precision_lengths()
        if self._key[1] == "kron":  # refused at assignment, not at first use
            return lengths[:2], " (a Kronecker posterior takes no per-parameter prior)"
        return lengths, note

    def _posterior_vector(self) -> Tensor:
        """The MAP values of the posterior's parameters: ``(posterior_dim,)``."""
        return self._posterior_part(vector_of(p.detach() for p in self._params))

    def _prior_mean_vector(self) -> Tensor:
        """The posterior mean before any data, the prior mean: ``(posterior_dim,)``."""
        return self.prior_mean.expand(self._posterior_dim).clone()

    def _prior_mean_changed(self) -> None:
        """Before ``fit`` the posterior is the prior: ``mean`` follows ``prior_mean``."""
        if self.n_outputs is None and "mean" in vars(self):
            self.mean = self._prior_mean_vector()

    def _embed_posterior_mean(self, mean: Tensor) -> Tensor:
        """``mean`` as stored: ``(posterior_dim,)`` becomes the ``mean`` attribute."""
        return mean

    def _linearized_outputs(self, f: Tensor, Js: Tensor) -> Tensor:
        """``f(x; θ*) + J(μ − θ*)`` for ``f`` ``(n, K)``, ``Js`` ``(n, K, P)``: ``(n, K)``."""
        if self._glm_offset is None:
            return f
        return f + Js @ self._glm_offset

    def _full_parameters(self, theta: Tensor) -> Tensor:
        """A full parameter vector with the posterior's entries set to ``theta``."""
        return theta

    # ------------------------------------------------------- structure hooks
    def _init_H(self) -> None:
        raise NotImplementedError

    def _require_curvature(self) -> None:
        """Raise ``NotFittedError`` where the structure has no posterior before ``fit``.

        Dense and diagonal structures start from a zero curvature: before ``fit`` their
        posterior is the prior (laplace-torch's behaviour), so they predict with it.
        """

    def _curv_closure(self, X: Inputs, y: Tensor, N: int) -> tuple[Tensor, Any]:
        raise NotImplementedError

    def _accumulate(self, H_batch: Any) -> None:
        self.H = self.H + H_batch

    def _finalize_fit(self) -> None:
        """Post-process the accumulated curvature (e.g. decompose it)."""

    def _make_precision(self, scale: Tensor, prior: Tensor) -> PrecisionMatrix:
        raise NotImplementedError

    def _curvature_unset(self) -> bool:
        """Whether no curvature (not even the zero one of the prior) is allocated yet."""
        return self.__dict__.get("_H") is None

    def _curvature_view(self) -> Any:
        """The public ``H`` of a structure that stores it as ``_H`` (last-layer variants)."""
        return self.__dict__.get("_H")

    def _H_state(self) -> Any:
        return self.H

    def _load_H_state(self, state: Any) -> None:
        self.H = state

    # ------------------------------------------------------------------- fit
    @restores_state_on_error
    def fit(self, train_loader: Any, override: bool = True, progress_bar: bool = False,
            distributed: bool | None = None) -> None:
        """Accumulate the curvature of the training data at the current weights.

        Args:
            train_loader: a ``DataLoader`` of ``(X, y)`` or dict-like batches.
            override: start afresh (``False`` adds to the previous fit, e.g. for
                continual learning).
            progress_bar: show a tqdm bar over batches (on rank 0 only).
            distributed: ``None`` (fit across processes when a default process group of
                more than one process is initialised), ``True`` or ``False``. A
                distributed fit treats ``train_loader`` as this rank's shard and ends,
                on every rank, with the posterior of one fit on all shards (see
                ``laplace.utils.distributed``).
        """
        override, progress_bar = checks.fit_flags(override, progress_bar)
        self._distributed = dist = distributed_fit.resolve(distributed)
        N = distributed_fit.data_count(train_loader, dist, self._device, dataset_size)
        if dist and not override and self.n_data > 0:
            raise ValueError(
                "fit(override=False) after an earlier fit is not supported in a distributed "
                "fit: every process holds the earlier posterior, so summing would count it "
                "once per process. Fit all the data in one distributed fit instead."
            )
        if override:
            self._init_H()
            self.loss, self.n_data = 0.0, 0
        self.model.eval()
        self.mean = self._posterior_vector()
        self._glm_offset = None
        with distributed_fit.collective_errors(dist, "fitting", self._device):
            self._fit_batches(train_loader, N, progress_bar)
        if dist:
            self._reduce_across_processes()
        self.n_data += N
        self._finalize_fit()
        self._invalidate()

    def _fit_batches(self, train_loader: Any, N: int, progress_bar: bool) -> None:
        """Add this process's batches to the curvature and loss (``N``: all the data)."""
        batches = 0
        show = distributed_fit.show_progress(progress_bar)
        for batch in tqdm(train_loader, desc="fit", disable=not show):
            X, y = split_batch(batch, self.dict_key_x, self.dict_key_y)
            X, y = inputs_to(X, self._device), y.to(self._device)
            if batches == 0:
                self._set_n_outputs(X)
            self._check_targets(X, y, batches)
            if self.likelihood != Likelihood.REGRESSION:
                y = checks.class_labels(y, batches)
            loss_batch, H_batch = self._curv_closure(X, y, N)
            checks.finite_loss(loss_batch, batches)
            self.loss = self.loss + loss_batch
            self._accumulate(H_batch)
            batches += 1
        if batches == 0:
            raise ValueError("The data loader yielded no batches: nothing to fit on.")

    def _reduce_across_processes(self) -> None:
        """Sum the loss and the accumulated curvature over all processes (before
        ``_finalize_fit``); structures whose ``H`` is not a tensor override this."""
        loss = torch.as_tensor(self.loss, device=self._device, dtype=self._dtype)
        self.loss, self.H = distributed_fit.all_reduce_nested([loss, self.H])

    def _set_n_outputs(self, X: Inputs) -> None:
        batch_size(X, self.dict_key_x)  # a dict batch must hold dict_key_x
        with torch.no_grad():
            out = self.model(X)
        checks.batch_output(X, out, self.dict_key_x)
        if self.likelihood == Likelihood.REWARD_MODELING:
            checks.pair_output(X, out)
        self._output_shape = tuple(out.shape[1:]) if out.ndim > 1 else (1,)
        self.n_outputs = self._output_shape[-1]
        if self.likelihood == Likelihood.CLASSIFICATION:
            checks.class_logits(self.n_outputs)
        self.model.output_size = self.n_outputs

    def _check_targets(self, X: Inputs, y: Tensor, index: int) -> None:
        checks.fit_targets(y, batch_size(X, self.dict_key_x), self._output_shape,
                           self.likelihood == Likelihood.REGRESSION, index)

    # ---------------------------------------------------------- the Gaussian
    def _invalidate(self) -> None:
        self._cached = None

    def _precision(self) -> PrecisionMatrix:
        """The posterior precision at the current hyperparameters (cached when constant)."""
        self._require_curvature()
        scale, prior = self._H_factor, self.prior_precision
        if scale.requires_grad or prior.requires_grad:
            return self._make_precision(scale, prior)
        if self._cached is not None:
            (s, p), precision = self._cached
            if torch.equal(s, scale) and p.shape == prior.shape and torch.equal(p, prior):
                return precision
        precision = self._make_precision(scale, prior)
        self._cached = ((scale.clone(), prior.clone()), precision)
        return precision

    def _density_precision(self) -> PrecisionMatrix:
        """The precision of ``square_norm``, ``log_prob`` and
        ``log_det_posterior_precision``: the posterior's (``KronLaplace`` falls back to
        the prior's before ``fit``, as laplace-torch)."""
        return self._precision()

    @property
    def log_det_posterior_precision(self) -> Tensor:
        return self._density_precision().logdet()

    @property
    def posterior_precision(self) -> Any:
        return self._precision().to_matrix()

    @property
    def posterior_variance(self) -> Tensor:
        """Marginal posterior variances of the parameters: ``(n_params,)``."""
        return self._precision().covariance_diag()

    def functional_variance(self, Js: Tensor) -> Tensor:
        """``Jₙ Σ Jₙᵀ`` for ``Js`` ``(n, K, P)``: ``(n, K, K)``."""
        precision = self._precision()  # NotFittedError before the dimension is known
        checks.jacobians(Js, self._posterior_dim, self._dtype)
        return precision.inv_square_form(Js)

    def functional_covariance(self, Js: Tensor) -> Tensor:
        """Joint ``J Σ Jᵀ`` ``(n·K, n·K)``, rows ordered ``point·K + output``."""
        precision = self._precision()
        checks.jacobians(Js, self._posterior_dim, self._dtype)
        return precision.joint_inv_square_form(Js)

    def sample(self, n_samples: int = 100, generator: torch.Generator | None = None) -> Tensor:
        """Weight samples ``θ ~ N(θ*, Σ)``: ``(n_samples, n_params)``."""
        n_samples = checks.positive_int(n_samples, "n_samples")
        checks.random_generator(generator, self._device)
        return self.mean + self._precision().sample(n_samples, generator)

    @property
    def _posterior_mean(self) -> Tensor:
        """The Gaussian's mean over the posterior's parameters: ``(posterior_dim,)``."""
        if self.mean.numel() == self._posterior_dim:
            return self.mean
        return self._posterior_part(self.mean)

    def square_norm(self, value: Tensor) -> Tensor:
        """``Δᵀ Σ⁻¹ Δ`` with ``Δ = value − mean``.

        Args:
            value: ``(P,)`` or a batch ``(..., P)`` of points in the posterior's
                parameter space (``P = n_params_subnet`` for subnetworks).
        Returns:
            ``()`` or ``(...)``.
        """
        precision = self._density_precision()  # NotFittedError before the dimension is known
        P = self._posterior_dim
        if not isinstance(value, Tensor) or value.ndim == 0 or value.shape[-1] != P:
            shape = tuple(value.shape) if isinstance(value, Tensor) else type(value).__name__
            raise ValueError(f"value of shape {shape} must be a tensor (..., {P}).")
        delta = value.to(device=self._device, dtype=self._dtype) - self._posterior_mean
        return precision.square_form(delta)

    def log_prob(self, value: Tensor, normalized: bool = True) -> Tensor:
        """Log density of ``value`` ``(..., P)`` under ``N(mean, Σ)``: ``()`` or ``(...)``.

        ``normalized=False`` gives only the term that depends on ``value``, ``−Δᵀ Σ⁻¹ Δ / 2``.
        """
        normalized = checks.flag(normalized, "normalized")
        log_prob = -self.square_norm(value) / 2
        if not normalized:
            return log_prob
        P = self._posterior_dim
        return log_prob + (self.log_det_posterior_precision - P * math.log(2 * math.pi)) / 2

    # ------------------------------------------------------------ predictive
    def __call__(
        self,
        x: Inputs,
        pred_type: PredType | str = PredType.GLM,
        joint: bool = False,
        link_approx: LinkApprox | str = LinkApprox.PROBIT,
        n_samples: int = 100,
        diagonal_output: bool = False,
        generator: torch.Generator | None = None,
        fitting: bool = False,
        **model_kwargs: Any,
    ) -> Tensor | tuple[Tensor, Tensor]:
        """Posterior predictive at ``x``.

        Regression returns ``(f_mu (n, K), f_var (n, K, K))`` — ``(n·K,)`` and
        ``(n·K, n·K)`` with ``joint=True``, ``(n, K)`` variances with
        ``diagonal_output=True`` — without observation noise. Classification returns
        probabilities ``(n, K)`` under the link approximation. Before ``fit``, dense and
        diagonal structures give the prior predictive; the others raise
        ``NotFittedError``.
        """
        pred_type = parse_option(PredType, pred_type, "pred_type")
        link_approx = parse_option(LinkApprox, link_approx, "link_approx")
        joint, diagonal_output = checks.flag(joint, "joint"), checks.flag(
            diagonal_output, "diagonal_output")
        checks.ignored_keywords(model_kwargs, "The predictive")
        checks.random_generator(generator, self._device)
        self._require_curvature()
        x = self._prediction_inputs(x)
        regression = self.likelihood == Likelihood.REGRESSION or (
            self.likelihood == Likelihood.REWARD_MODELING and not fitting
        )
        if pred_type == PredType.GP:
            raise ValueError("pred_type='gp' needs a function-space (hessian_structure='gp') LA.")
        if pred_type == PredType.NN and not regression and link_approx != LinkApprox.MC:
            # laplace-torch's check; regression has no link and ignores link_approx
            raise ValueError("Only mc link approximation is supported for nn prediction type.")
        if pred_type == PredType.NN:
            return self._nn_predictive(x, regression, n_samples, generator, joint)
        if regression:
            return self._glm_predictive_distribution(x, joint, diagonal_output)
        # Probit needs only the variances: never form K×K blocks for it.
        only_diag = link_approx == LinkApprox.PROBIT or (
            diagonal_output and link_approx == LinkApprox.MC
        )
        f_mu, f_var = self._glm_predictive_distribution(x, diagonal_output=only_diag)
        if link_approx == LinkApprox.PROBIT:
            return links.probit(f_mu, f_var)
        if link_approx == LinkApprox.MC:
            if only_diag:
                f_var = torch.diag_embed(f_var)
            return links.monte_carlo(f_mu, f_var, n_samples, generator)
        return links.bridge(f_mu, f_var, normalize=link_approx == LinkApprox.BRIDGE_NORM)

    def _glm_predictive_distribution(
        self, X: Inputs, joint: bool = False, diagonal_output: bool = False
    ) -> tuple[Tensor, Tensor]:
        """Linearized latent mean ``(n, K)`` and covariance ``(n, K, K)`` (or joint)."""
        Js, f_mu = self.backend.jacobians(X, enable_backprop=self.enable_backprop)
        checks.finite_outputs(f_mu)
        f_mu = self._linearized_outputs(f_mu, Js)
        if joint:
            return self._detached(f_mu.flatten(), self.functional_covariance(Js))
        f_var = self.functional_variance(Js)
        if diagonal_output:
            f_var = f_var.diagonal(dim1=-2, dim2=-1)
        return self._detached(f_mu, f_var)

    def functional_samples(
        self, x: Inputs, pred_type: str = "glm", n_samples: int = 100,
        diagonal_output: bool = False, generator: torch.Generator | None = None,
    ) -> Tensor:
        """Draws of the latent function ``(n_samples, n, K)``: of the linearized model
        (``"glm"``) or of the network under weight samples (``"nn"``)."""
        pred_type = parse_option(PredType, pred_type, "pred_type")
        checks.random_generator(generator, self._device)
        x = self._prediction_inputs(x)
        if pred_type == PredType.NN:
            return self._nn_samples(x, n_samples, generator)
        f_mu, f_var = self._glm_predictive_distribution(x)
        if diagonal_output:
            f_var = torch.diag_embed(f_var.diagonal(dim1=-2, dim2=-1))
        return links.gaussian_samples(f_mu, f_var, n_samples, generator)

    def _nn_samples(self, X: Inputs, n_samples: int, generator: torch.Generator | None) -> Tensor:
        """Network outputs under weight samples: ``(n_samples, n, K)``."""
        with torch.set_grad_enabled(self.enable_backprop and torch.is_grad_enabled()):
            thetas = self.sample(n_samples, generator)
        names = [n for n, p in self.model.named_parameters() if p.requires_grad]
        sizes = self._layer_sizes
        shapes = [p.shape for p in self._params]
        outs = []
        # laplace-torch detaches these outputs unless enable_backprop
        with torch.set_grad_enabled(self.enable_backprop and torch.is_grad_enabled()):
            for theta in thetas:
                chunks = self._full_parameters(theta).split(sizes)
                params = {n: c.reshape(s) for n, c, s in zip(names, chunks, shapes)}
                out = functional_call(self.model, params, (X,))
                outs.append(out.reshape(-1, out.shape[-1]) if out.ndim > 1 else out[:, None])
        outs = torch.stack(outs)
        checks.finite_outputs(outs, "The network's output at x under the weight samples")
        return outs

    def _nn_predictive(
        self, X: Inputs, regression: bool, n_samples: int, generator: torch.Generator | None,
        joint: bool = False,
    ) -> Tensor | tuple[Tensor, Tensor]:
        """Sample moments of the network under weight samples: regression gives the mean
        ``(n, K)`` and variances ``(n, K)`` (laplace-torch's form), or with ``joint`` the
        flattened mean ``(n·K,)`` and the sample covariance ``(n·K, n·K)`` (laplace-torch
        ignores ``joint`` here and returns the variances); classification the mean softmax.
        """
        if regression and n_samples < 2:  # laplace-torch returns a NaN variance
            raise ValueError(f"pred_type='nn' for regression needs n_samples >= 2 to estimate "
                             f"a variance, not {n_samples}.")
        f = self._nn_samples(X, n_samples, generator)
        if not regression:
            return torch.softmax(f, dim=-1).mean(0)
        if not joint:
            return f.mean(0), f.var(0)
        f = f.flatten(1)  # (S, n·K), in the order of the GLM's joint covariance
        centred = f - f.mean(0)
        return f.mean(0), centred.T @ centred / (n_samples - 1)

    # --------------------------------------------------------- serialization
    def state_dict(self) -> dict[str, Any]:
        """Posterior state (tensors, numbers, strings): ``torch.load(weights_only=True)``."""
        self._require_fit()
        return {
            "cls_name": type(self).__name__,
            "likelihood": str(self.likelihood),
            "mean": self.mean,
            "H": self._H_state(),
            "loss": torch.as_tensor(self.loss),
            "prior_mean": self.prior_mean,
            "prior_precision": self.prior_precision,
            "sigma_noise": self.sigma_noise,
            "n_data": self.n_data,
            "n_outputs": self.n_outputs,
            "output_shape": list(self._output_shape),
            "param_shapes": [list(p.shape) for p in self._params],
            "temperature": self.temperature,
            "enable_backprop": self.enable_backprop,
        }

    @restores_state_on_error
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore a posterior saved by ``state_dict`` (the model is loaded separately)."""
        checks.state_keys(state_dict, ("cls_name", "likelihood", "mean", "H", "loss", "n_data",
                                       "n_outputs", "temperature",
                                       "enable_backprop", "sigma_noise", "prior_mean",
                                       "prior_precision"), type(self).__name__)
        if state_dict["cls_name"] != type(self).__name__:
            raise ValueError(
                f"State of a {state_dict['cls_name']} cannot be loaded into {type(self).__name__}."
            )
        if state_dict["likelihood"] != str(self.likelihood):
            raise ValueError(
                f"State has likelihood {state_dict['likelihood']!r}, this LA {self.likelihood!r}."
            )
        if state_dict["mean"].numel() != self.n_params:
            raise ValueError(
                f"State has {state_dict['mean'].numel()} parameters, this LA "
                f"{self.n_params}."
            )
        shapes = [list(p.shape) for p in self._params]
        if state_dict.get("param_shapes", shapes) != shapes:
            raise ValueError(
                f"State was saved for parameter tensors of shapes {state_dict['param_shapes']}, "
                f"this model has {shapes}: a different architecture."
            )
        self._check_H_state(state_dict["H"])
        checks.state_fit_record(state_dict, type(self).__name__)
        self.mean = self._from_state(state_dict["mean"])
        self._load_H_state(self._from_state(state_dict["H"]))
        self.loss = self._from_state(state_dict["loss"])
        self.n_data = int(state_dict["n_data"])
        self.n_outputs = int(state_dict["n_outputs"])
        # laplace-torch's states have no output shape: one output vector per input
        self._output_shape = tuple(state_dict.get("output_shape", (self.n_outputs,)))
        self.temperature = state_dict["temperature"]
        self.enable_backprop = state_dict["enable_backprop"]
        self.sigma_noise = self._from_state(state_dict["sigma_noise"])
        self.prior_mean = self._from_state(state_dict["prior_mean"])
        self.prior_precision = self._from_state(state_dict["prior_precision"])
        self.model.output_size = self.n_outputs
        self._invalidate()

    def _check_H_state(self, state: Any) -> None:
        """The saved curvature must have this architecture's shapes (the same parameter
        count is not enough: Kronecker factors follow the layer shapes)."""
        expected, got = _shapes(self._H_state()), _shapes(state)
        if got != expected:
            raise ValueError(
                f"State's curvature H has shapes {got}, this {type(self).__name__} expects "
                f"{expected}: it was saved for a different architecture."
            )

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_cached"] = None
        return state


def _shapes(state: Any) -> Any:
    """The nested shapes of a curvature state (tensors in lists/tuples)."""
    if isinstance(state, Tensor):
        return tuple(state.shape)
    if isinstance(state, (list, tuple)):
        return [_shapes(s) for s in state]
    return None
