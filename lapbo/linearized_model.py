"""The BoTorch ``Model`` interface over a ``laplace.LinearizedPosterior``.

``_LinearizedModel`` holds what ``LaplaceBNN`` and its conditioned (fantasy) models share:
``posterior`` (a joint Gaussian over ``q`` points and the outputs from the network's
Jacobians), ``condition_on_observations`` (an exact, batched Bayesian update of the
linearized model) and ``subset_output``. ``ConditionedLaplaceBNN`` is the model such an
update or subsetting returns; it shares its parent's network and transforms.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from botorch.acquisition.objective import PosteriorTransform
from botorch.exceptions.errors import UnsupportedError
from botorch.models.model import FantasizeMixin, Model
from botorch.models.transforms.outcome import OutcomeTransform
from botorch.posteriors.gpytorch import GPyTorchPosterior
from gpytorch.distributions import MultitaskMultivariateNormal, MultivariateNormal
from linear_operator.operators import DenseLinearOperator
from torch import Tensor, nn

from lapbo import averaging, networks, validation
from lapbo.shared_points import SharedPointsCache, shared_points
from laplace import LinearizedPosterior, SharedRows
from laplace.curvature import network_jacobians


def _check_noise_shape(name: str, noise: Tensor, n: int, k: int) -> None:
    """``noise`` must broadcast to ``(*b, n, k)``: ``n`` points and ``k`` outputs."""
    if noise.ndim < 2 or noise.shape[-2] not in (1, n) or noise.shape[-1] not in (1, k):
        raise ValueError(f"{name} must have shape (*batch, {n}, {k}) for {n} points and {k} "
                         f"outputs (or broadcast to it); got {tuple(noise.shape)}.")


def _device_only(fn: Callable[[Tensor], Tensor]) -> Callable[[Tensor], Tensor]:
    """``fn`` (a ``Module._apply`` conversion) without its change of floating dtype."""

    def apply(t: Tensor) -> Tensor:
        if not (t.is_floating_point() or t.is_complex()):
            return fn(t)
        target = fn(torch.empty(0, dtype=t.dtype, device=t.device))
        return fn(t) if target.dtype == t.dtype else t.to(device=target.device)

    return apply


#: Without gradients, ``posterior`` evaluates a batch of queries in pieces whose Jacobians
#: ``(b, q·k, P)`` take at most this many bytes: BoTorch's raw-sample sweep of
#: ``optimize_acqf`` (256 batches of 16 points over 16,425 weights at 1,000 rows of the
#: default family) would otherwise hold several 540 MB copies at once. Each piece is the
#: computation the whole batch runs, row for row, so the moments are the same.
PREDICT_CHUNK_BYTES = 64 * 2**20


class _LinearizedModel(Model, FantasizeMixin):
    """Shared BoTorch interface of ``LaplaceBNN`` and its conditioned (fantasy) models.

    Subclasses provide ``net`` (transformed ``(n, d)`` inputs to ``(n, K)`` standardized
    outputs), ``_gaussian()``, ``_noise_var`` ``(K,)`` (transformed space),
    ``_outputs`` (indices into the network outputs) and ``_train_X``.
    """

    net: nn.Module
    _noise_var: Tensor
    _outputs: list[int]
    _num_net_outputs: int
    _param_names: list[str] | None = None  # weights of the posterior (None: all)
    likelihood: Any = None  # FantasizeMixin: no GPyTorch likelihood
    #: ``[(weight, component)]`` of an evidence-weighted mixture (``lapbo.averaging``),
    #: whose moments ``posterior`` returns instead of this model's own; ``None``: none.
    _mixture: list[tuple[float, _LinearizedModel]] | None = None
    #: The shared leading and trailing points of the last query and their rows (``_predict``).
    _shared_cache: SharedPointsCache | None = None

    def _gaussian(self) -> LinearizedPosterior:
        raise NotImplementedError

    @property
    def num_outputs(self) -> int:
        return len(self._outputs)

    @property
    def batch_shape(self) -> torch.Size:
        return self._gaussian().batch_shape

    @property
    def train_inputs(self) -> tuple[Tensor]:
        """The training inputs as a BoTorch GP holds them: input-transformed
        (``preprocess_transform``) in eval mode, original in train mode; ``((*b, n, d),)``
        for one output and ``((*b, k, n, d),)`` for ``k`` (the layout of ``train_targets``,
        as a multi-output ``SingleTaskGP`` has them), ``*b`` the batch of a conditioned
        (fantasy) model's observations."""
        X = self._observed_inputs()
        if self._has_transformed_inputs:
            X = self._transform_observed(X)
        return (self._output_layout(X),)

    @property
    def _has_transformed_inputs(self) -> bool:
        """Whether ``train_inputs`` are input-transformed (BoTorch's flag): in eval mode,
        with an input transform."""
        return not self.training and getattr(self, "input_transform", None) is not None

    @property
    def _original_train_inputs(self) -> Tensor | None:
        """The original training inputs while ``train_inputs`` are transformed (BoTorch's
        attribute, read by ``get_train_inputs`` and ``get_X_baseline``), else ``None``."""
        if not self._has_transformed_inputs:
            return None
        return self._output_layout(self._observed_inputs())

    def _input_pieces(self) -> list[Tensor]:
        """The observed inputs as conditioning appended them, ``[(*b_i, n_i, d), ...]``."""
        return [self._train_X]

    def _observed_inputs(self) -> Tensor:
        """All observed inputs ``(*b, n, d)`` (original scale)."""
        return self._train_X

    def _output_layout(self, X: Tensor) -> Tensor:
        """``X (*b, n, d)``, expanded to ``(*b, k, n, d)`` for ``k > 1`` outputs."""
        k = len(self._outputs)
        return X if k == 1 else X.unsqueeze(-3).expand(*X.shape[:-2], k, *X.shape[-2:])

    def _set_transformed_inputs(self) -> None:
        """No-op: the network transforms inputs on every call."""

    def _transform_observed(self, X: Tensor) -> Tensor:
        """Observed inputs ``(*b, n, d)`` (training data, conditioning points) as BoTorch's
        models cache theirs: the input transform's ``preprocess_transform``, which leaves
        out the parts applied only at evaluation (``InputPerturbation``: an observation
        is at its input, a query is perturbed)."""
        transform = getattr(self, "input_transform", None)
        return X if transform is None else transform.preprocess_transform(
            X.to(self._output_dtype(X)))

    def _check_query(self, X: Tensor) -> None:
        """A query ``(*b, q, d)`` with ``train_X``'s width ``d``, or any width when the input
        transform appends features at evaluation only (``train_X`` has them, a query does
        not); ``_transform_query`` checks the transformed width in every case."""
        transform = getattr(self, "input_transform", None)
        width = (None if validation.appends_features_at_evaluation(transform)
                 else self._train_X.shape[-1])
        validation.check_query("X", X, width)

    def _transform_query(self, X: Tensor) -> Tensor:
        """Query inputs ``(*b, q, d)`` → ``(*b, q', d')`` through the input transform as
        BoTorch applies it at evaluation (``q' = q·n_w`` under ``InputPerturbation``,
        ``q·n_f`` under ``AppendFeatures``), ``d'`` the network's inputs. The query enters
        the transform in the dtype of the predictions (``_output_dtype``), which is that of
        the transform's parameters and buffers (a float64 model keeps them in float64)."""
        X_tf = self.transform_inputs(X.to(self._output_dtype(X)))
        validation.check_transformed_query(X, X_tf, self._network_width)
        return X_tf

    @property
    def _network_width(self) -> int:
        """The network's inputs: the transformed training inputs' width (computed once,
        not on every query of an acquisition's optimisation)."""
        width = self.__dict__.get("_network_width_cache")
        if width is None:
            width = self._transform_observed(self._train_X[..., :1, :]).shape[-1]
            self.__dict__["_network_width_cache"] = width
        return width

    def _revert_to_original_inputs(self) -> None:
        """No-op: the network transforms inputs on every call."""

    @property
    def _compute_dtype(self) -> torch.dtype:
        return next(self.net.parameters()).dtype

    def _output_dtype(self, X: Tensor) -> torch.dtype:
        """The dtype of predictions at ``X``: the query's and the training data's, promoted
        (as a ``SingleTaskGP``'s; the outcome transform, fitted on the data, promotes the
        same way), so a float32 query of a float64 model is answered in float64 with or
        without an outcome transform."""
        return torch.promote_types(X.dtype, self._train_X.dtype)

    def _apply(self, fn: Any, *args: Any, **kwargs: Any) -> _LinearizedModel:
        """``.to``, ``.cuda``, ``.float()``… move the model between devices but keep its
        dtypes: the network computes in its ``compute_dtype`` and posteriors come back in
        the query's dtype promoted with the data's (``_output_dtype``). (BoTorch's analytic
        acquisitions call ``model.to(X)`` on every evaluation: a float32 ``X`` used to cast
        the network, shared with the models derived from it, to float32 — wrong signs in
        the covariance of a random-feature posterior, and dtype errors in the parent after a
        fantasy model was cast.)"""
        return super()._apply(_device_only(fn), *args, **kwargs)

    def _outcome_transform_for(self, idx: list[int]) -> OutcomeTransform | None:
        ot = getattr(self, "outcome_transform", None)
        if ot is None or idx == list(range(self._num_net_outputs)):
            return ot
        sub = ot.subset_output(idx)
        sub.eval()
        return sub

    def _features(self, X_tf: Tensor, idx: list[int]) -> tuple[Tensor, Tensor]:
        """``J`` ``(*b, q·k, P)`` and ``f`` ``(*b, q·k)`` (rows point-major) at ``(*b, q, d)``."""
        batch, q, d = X_tf.shape[:-2], X_tf.shape[-2], X_tf.shape[-1]
        Xf = X_tf.reshape(-1, d).to(self._compute_dtype)
        Js, f = network_jacobians(self.net, Xf, self._param_names,
                                  independent_samples=networks.rows_independent(self.net))
        if idx != list(range(Js.shape[1])):  # a list index copies the (n, k, P) rows
            Js, f = Js[:, idx], f[:, idx]
        return Js.reshape(*batch, q * len(idx), -1), f.reshape(*batch, q * len(idx))

    def posterior(
        self, X: Tensor, output_indices: list[int] | None = None,
        observation_noise: bool | Tensor = False,
        posterior_transform: PosteriorTransform | None = None, **kwargs: Any,
    ) -> GPyTorchPosterior:
        """Joint Gaussian over ``q`` points and the outputs.

        Args:
            X: ``(*batch, q, d)`` (a 2-D input is one joint batch of ``q`` points).
            output_indices: outputs to return (default: all).
            observation_noise: ``True`` adds ``σ²``; a ``(*batch, q, m)`` tensor adds
                those variances (outcome-transformed space).
            posterior_transform: applied last.

        Returns:
            ``GPyTorchPosterior`` over ``MultivariateNormal`` (mean ``(*b, q)``) for one
            output, interleaved ``MultitaskMultivariateNormal`` (mean ``(*b, q, m)``,
            covariance ``(*b, q·m, q·m)``) for several; for a model that averages
            candidates, their ``averaging.MixturePosterior``.
        """
        self.eval()
        self._check_query(X)
        try:
            torch.broadcast_shapes(X.shape[:-2], self.batch_shape)
        except RuntimeError:
            raise ValueError(f"X's batch shape {tuple(X.shape[:-2])} does not broadcast with "
                             f"the model's {tuple(self.batch_shape)} (e.g. a model conditioned "
                             "on a batch of fantasies).") from None
        if isinstance(observation_noise, Tensor):
            validation.check_non_negative("observation_noise", observation_noise)
        elif not isinstance(observation_noise, bool):
            raise ValueError("observation_noise must be True, False or a (*batch, q, m) tensor "
                             f"of noise variances, not {observation_noise!r}.")
        sel = (list(range(self.num_outputs)) if output_indices is None else
               validation.check_output_indices("output_indices", output_indices,
                                               self.num_outputs))
        idx = [self._outputs[i] for i in sel]
        k = len(idx)
        if self._mixture:
            return averaging.MixturePosterior(
                [c.posterior(X, output_indices, observation_noise, posterior_transform)
                 for _, c in self._mixture], [w for w, _ in self._mixture])
        mean, cov = self._moments(X, idx, observation_noise)
        q = mean.shape[-1] // k  # the transformed query's points (``_transform_query``)
        jitter = 1e-10 * cov.diagonal(dim1=-2, dim2=-1).mean(-1).clamp_min(1e-6)
        cov = cov + jitter[..., None, None] * torch.eye(q * k, dtype=cov.dtype, device=cov.device)
        mean, cov = mean.to(self._output_dtype(X)), cov.to(self._output_dtype(X))
        batch = torch.broadcast_shapes(mean.shape[:-1], cov.shape[:-2])
        mean, cov = mean.expand(*batch, q * k), cov.expand(*batch, q * k, q * k)
        if k == 1:
            mvn: MultivariateNormal = MultivariateNormal(mean, DenseLinearOperator(cov))
        else:
            mvn = MultitaskMultivariateNormal(
                mean.reshape(*batch, q, k), DenseLinearOperator(cov), interleaved=True
            )
        posterior: Any = GPyTorchPosterior(mvn)
        ot = self._outcome_transform_for(idx)
        if ot is not None:
            posterior = ot.untransform_posterior(posterior, X=X)
        if posterior_transform is not None:
            posterior = posterior_transform(posterior)
        return posterior

    def forward(self, X: Tensor) -> MultivariateNormal:
        """``model(X)``: the latent (noise-free) joint Gaussian at ``X`` ``(*batch, q, d)``.

        For BoTorch code that calls a model as GPyTorch models are called, e.g. GIBBON
        (``qLowerBoundMaxValueEntropy``) with pending points, which combines the
        cross-covariances of ``model(X)`` with ``posterior``'s covariances. Unlike a
        GPyTorch model in eval mode (transformed inputs in, standardized outcomes out),
        this takes ``X`` as ``posterior`` does and returns ``posterior(X).distribution``,
        in the original outcome units, so the two can be combined: with a
        ``SingleTaskGP`` and outcome/input transforms they cannot.

        Returns:
            ``MultivariateNormal`` (mean ``(*b, q)``) for one output, interleaved
            ``MultitaskMultivariateNormal`` (mean ``(*b, q, m)``) for several.
        """
        posterior = self.posterior(X)
        if not isinstance(posterior, GPyTorchPosterior):
            raise UnsupportedError(
                f"model(X) returns a Gaussian, but this model's posterior is a "
                f"{type(posterior).__name__} (a non-affine outcome transform such as Log "
                "makes it non-Gaussian); use model.posterior(X) instead.")
        return posterior.distribution

    def _moments(self, X: Tensor, idx: list[int], observation_noise: bool | Tensor
                 ) -> tuple[Tensor, Tensor]:
        """Mean ``(*b, q·k)`` and covariance ``(*b, q·k, q·k)`` of this model's own
        linearized predictive at ``X`` ``(*b, q, d)`` for network outputs ``idx``, in the
        outcome-transformed space, with the observation noise that ``posterior`` adds."""
        X_tf = self._transform_query(X)
        q, k = X_tf.shape[-2], len(idx)
        mean, cov = self._predict(X_tf, idx)
        if observation_noise is True:
            cov = cov + torch.diag_embed(self._noise_var[idx].repeat(q).to(cov))
        elif isinstance(observation_noise, Tensor):
            _check_noise_shape("observation_noise", observation_noise, q, k)
            noise = observation_noise.to(cov).expand(*observation_noise.shape[:-2], q, k)
            cov = cov + torch.diag_embed(noise.reshape(*noise.shape[:-2], q * k))
        return mean, cov

    def _predict(self, X_tf: Tensor, idx: list[int]) -> tuple[Tensor, Tensor]:
        """``LinearizedPosterior.predict`` at ``X_tf`` ``(*b, q, d)``: mean ``(*b, q·k)`` and
        covariance ``(*b, q·k, q·k)``; without gradients and above ``PREDICT_CHUNK_BYTES``
        of Jacobians, in pieces of the flattened batch. Leading and trailing points shared by
        the whole batch (a noisy acquisition's baseline, pending points;
        ``lapbo.shared_points``) are computed once and kept for the next call."""
        gaussian = self._gaussian()
        shared = self._shared_rows(X_tf, idx, gaussian)
        if shared is not None:
            lead, trail, rows = shared
            X_tf = X_tf[..., lead:X_tf.shape[-2] - trail, :]

        def whole(Xb: Tensor) -> tuple[Tensor, Tensor]:
            J, f = self._features(Xb, idx)
            J, f = J.to(gaussian.dtype), f.to(gaussian.dtype)
            if shared is None:
                return gaussian.predict(J, f)
            return gaussian.predict_with_shared(rows, J, f, lead=lead * len(idx))

        batch, q, d = X_tf.shape[:-2], X_tf.shape[-2], X_tf.shape[-1]
        per_query = q * len(idx) * gaussian.n_params * torch.finfo(gaussian.dtype).bits // 8
        size = max(1, PREDICT_CHUNK_BYTES // per_query)
        if torch.is_grad_enabled() or gaussian.batch_shape or batch.numel() <= size:
            return whole(X_tf)
        pieces = [whole(part) for part in X_tf.reshape(-1, q, d).split(size)]
        mean, cov = torch.cat([m for m, _ in pieces]), torch.cat([c for _, c in pieces])
        return mean.reshape(*batch, *mean.shape[1:]), cov.reshape(*batch, *cov.shape[1:])

    def _shared_rows(self, X_tf: Tensor, idx: list[int], gaussian: LinearizedPosterior
                     ) -> tuple[int, int, SharedRows] | None:
        """``(lead, trail, rows)`` of the leading and trailing points of ``X_tf`` that every
        batch element shares (``shared_points``), from the last call's cache or computed
        and cached; ``None`` when none is shared."""
        if gaussian.batch_shape:  # a fantasy model: Σ Jᵀ would be one (P, k_s) per fantasy
            return None
        lead, trail = shared_points(X_tf, self._shared_cache, gaussian, tuple(idx))
        if not (lead or trail):
            return None
        q, cache = X_tf.shape[-2], self._shared_cache
        first = X_tf[(0,) * (X_tf.ndim - 2)].detach()
        points = torch.cat([first[:lead], first[q - trail:]])
        if cache is None or (cache.q, cache.lead, cache.trail) != (q, lead, trail) \
                or cache.gaussian is not gaussian or cache.outputs != tuple(idx) \
                or not torch.equal(cache.points, points):
            J, f = self._features(points, idx)
            rows = gaussian.shared_rows(J.to(gaussian.dtype), f.to(gaussian.dtype))
            cache = SharedPointsCache(q, lead, trail, points, gaussian, tuple(idx), rows)
            self._shared_cache = cache
        return lead, trail, cache.rows

    def condition_on_observations(
        self, X: Tensor, Y: Tensor, noise: Tensor | None = None, **kwargs: Any
    ) -> ConditionedLaplaceBNN:
        """Exact Bayesian update of the linearized weight posterior (no retraining).

        Args:
            X: ``(*bx, n', d)`` inputs.
            Y: ``(*by, n', m)`` observations (original scale); ``*by`` may carry extra
                leading (fantasy) dimensions.
            noise: ``(*b, n', m)`` noise variances in the outcome-transformed space
                (default: the model's noise).

        Returns:
            A model with batch shape ``broadcast(*bx, *by, self.batch_shape)``. A model
            that averages candidates conditions each of them; the mixture weights stay
            those of the fit (they are not updated by ``Y``).
        """
        self.eval()
        validation.check_query("X", X, self._train_X.shape[-1])
        validation.check_finite("Y", Y)
        validation.check_non_negative("noise", noise)
        if Y.ndim < 2 or Y.shape[-2] != X.shape[-2] or Y.shape[-1] != self.num_outputs:
            raise validation.TensorShapeError(
                f"Y must have shape (*batch, {X.shape[-2]}, {self.num_outputs}) to match X "
                f"{tuple(X.shape)}; got {tuple(Y.shape)}.")
        train_X = self._train_X
        if X.ndim == 2:
            train_X = torch.cat([train_X, X.to(train_X)], dim=0)
        pieces = [*self._input_pieces(), X.detach().to(self._train_X)]
        if self._mixture:  # each component conditioned; the first one's posterior for shapes
            parts = [(w, c.condition_on_observations(X, Y, noise, **kwargs))
                     for w, c in self._mixture]
            out = ConditionedLaplaceBNN(self, parts[0][1]._gaussian(), train_X,
                                        targets=parts[0][1]._targets, pieces=pieces)
            out._mixture = parts
            return out
        idx = self._outputs
        k, n_new = len(idx), X.shape[-2]
        X_tf = self._transform_observed(X)
        ot = self._outcome_transform_for(idx)
        if ot is not None:
            Y, _ = ot(Y, X=X_tf)
        targets = self._targets_after(Y)
        J, f = self._features(X_tf, idx)
        dtype = self._gaussian().dtype  # float64 for a full GGN whatever compute_dtype
        J, f = J.to(dtype), f.to(dtype)
        y = Y.to(dtype).reshape(*Y.shape[:-2], n_new * k)
        if noise is None:
            noise_var = self._noise_var[idx].to(dtype).repeat(n_new)
        else:
            _check_noise_shape("noise", noise, n_new, k)
            noise = noise.to(dtype).expand(*noise.shape[:-2], n_new, k)
            noise_var = noise.reshape(*noise.shape[:-2], n_new * k)
        gaussian = self._gaussian().condition(J, y - f, noise_var.clamp_min(1e-12))
        return ConditionedLaplaceBNN(self, gaussian, train_X, targets=targets, pieces=pieces)

    def _targets_after(self, Y_tf: Tensor) -> Tensor:
        """``train_targets`` with the outcome-transformed observations ``Y_tf``
        ``(*b, n', k)`` appended, broadcast over the batch dimensions (GPyTorch's
        layout: ``(*b, n + n')`` for one output, ``(*b, k, n + n')`` for ``k``)."""
        old = self.train_targets
        new = (Y_tf.squeeze(-1) if Y_tf.shape[-1] == 1 else Y_tf.mT).to(old)
        batch = torch.broadcast_shapes(old.shape[:-1], new.shape[:-1])
        return torch.cat([old.expand(*batch, old.shape[-1]),
                          new.expand(*batch, new.shape[-1])], dim=-1)

    def subset_output(self, idcs: list[int]) -> _LinearizedModel:
        """The model restricted to outputs ``idcs`` (exact: a row selection of ``J``)."""
        idcs = validation.check_output_indices("idcs", idcs, self.num_outputs)
        targets = self.train_targets
        if self.num_outputs > 1:  # (*b, m, n) → (*b, k, n), or (*b, n) for one output
            targets = targets[..., idcs, :]
            targets = targets.squeeze(-2) if len(idcs) == 1 else targets
        out = ConditionedLaplaceBNN(
            self, self._gaussian(), self._train_X, outputs=[self._outputs[i] for i in idcs],
            targets=targets, pieces=self._input_pieces())
        if self._mixture:
            out._mixture = [(w, c.subset_output(idcs)) for w, c in self._mixture]
        return out


class ConditionedLaplaceBNN(_LinearizedModel):
    """A ``LaplaceBNN`` after conditioning or output subsetting (shares the network).

    Args:
        parent: the model it derives from (network and transforms are shared).
        gaussian: its (possibly batched) weight posterior.
        train_X: ``(n, d)`` original inputs: the parent's and unbatched conditioning points.
        outputs: network output indices (default: the parent's).
        targets: its ``train_targets`` (GPyTorch's layout, outcome-transformed).
        pieces: every observed input, ``[(*b_i, n_i, d), ...]`` (default ``[train_X]``),
            broadcast and joined into ``train_inputs`` only when they are read.
    """

    def __init__(
        self, parent: _LinearizedModel, gaussian: LinearizedPosterior, train_X: Tensor,
        outputs: list[int] | None = None, targets: Tensor | None = None,
        pieces: list[Tensor] | None = None,
    ) -> None:
        super().__init__()
        self._targets = targets
        self._pieces = [train_X] if pieces is None else pieces
        self.net = parent.net
        for name in ("input_transform", "outcome_transform"):
            if getattr(parent, name, None) is not None:
                setattr(self, name, getattr(parent, name))
        self._noise_var = parent._noise_var
        self._outputs = list(parent._outputs if outputs is None else outputs)
        self._num_net_outputs = parent._num_net_outputs
        self._param_names = parent._param_names
        self._train_X = train_X
        self._post = gaussian
        self.eval()

    def _gaussian(self) -> LinearizedPosterior:
        return self._post

    def _input_pieces(self) -> list[Tensor]:
        return list(self._pieces)

    def _observed_inputs(self) -> Tensor:
        """The pieces broadcast to the batch of ``train_targets`` and joined along the
        points: ``(*b, n + n', d)``, as a conditioned GP's."""
        targets = self._targets
        batch = torch.Size() if targets is None else targets.shape[
            : -1 if len(self._outputs) == 1 else -2]
        batch = torch.broadcast_shapes(batch, *(piece.shape[:-2] for piece in self._pieces))
        return torch.cat([piece.expand(*batch, *piece.shape[-2:]) for piece in self._pieces],
                         dim=-2)

    @property
    def train_targets(self) -> Tensor:
        """The parent's outcome-transformed targets and the conditioned observations, in
        GPyTorch's layout (``LaplaceBNN.train_targets``), broadcast to the batch shape."""
        return self._targets
