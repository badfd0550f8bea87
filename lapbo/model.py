"""``LaplaceBNN``: a BoTorch ``Model`` backed by a linearized Laplace posterior.

Predictions, conditioning and samples all go through one Gaussian over the weights,
``laplace.LinearizedPosterior`` (the library's linearized posterior with batched exact
conditioning and pathwise samples); ``lapbo`` does no Gaussian linear algebra itself.
For the default full GGN the posterior precision is kept in ``laplace``'s sample-space
form (``WoodburyPrecision`` over the training Jacobian rows), so predictions cost
``O(q·P·n)`` instead of ``O(q·P²)`` and no ``P × P`` matrix is ever formed.
``condition_on_observations`` adds a downdate (batched for fantasies) and moves the mean:
an exact Bayesian update of the linearized model. With ``subset_of_weights="last_layer"``
(an option) the same Gaussian lives on the output layer's weights only (``J`` is then the
Jacobian w.r.t. those, i.e. the features and a one).
"""

from __future__ import annotations

import copy
import inspect
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from botorch import settings
from botorch.exceptions.errors import UnsupportedError
from botorch.models.gpytorch import GPyTorchModel
from botorch.models.transforms.input import InputTransform
from botorch.models.transforms.outcome import OutcomeTransform, Standardize
from botorch.models.utils.assorted import check_min_max_scaling
from botorch.utils.datasets import SupervisedDataset
from botorch.utils.types import DEFAULT, _DefaultType
from torch import Tensor, nn

from lapbo import lengthscales, networks, saved_state, selection, training, validation, warping
from lapbo.linearized_model import _device_only, _LinearizedModel
from lapbo.rollback import restored_on_error
from laplace import LinearizedPosterior, SampleSpaceEvidence
from laplace.baselaplace import ParametricLaplace
from laplace.curvature import network_jacobians

#: constructor options kept as attributes that cannot be set after construction
_FIXED = frozenset({"candidates", "subset_of_weights", "hessian_structure", "likelihood",
                    "backend", "prior_structure"})


def _check_warm_start(warm_start: Any, d: int, m: int) -> None:
    """``warm_start`` is a fitted ``LaplaceBNN`` on ``d`` inputs and ``m`` outputs."""
    if not isinstance(warm_start, LaplaceBNN):
        raise ValueError(f"warm_start must be a LaplaceBNN, not {type(warm_start).__name__}.")
    d_old, m_old = warm_start._train_X.shape[-1], warm_start._num_net_outputs
    if (d_old, m_old) != (d, m):
        raise ValueError(f"warm_start was trained on {d_old} inputs and {m_old} outputs; "
                         f"this model has {d} inputs and {m} outputs.")
    if not bool(warm_start.is_fitted):
        raise ValueError("warm_start is not fitted: call warm_start.fit() first (a warm "
                         "start continues from a fitted model's network and hyperparameters).")


def _configured(options: dict[str, Any]) -> list[str]:
    """The names of ``LaplaceBNN``'s keyword options that differ from their defaults."""
    defaults = inspect.signature(LaplaceBNN.__init__).parameters
    same = lambda a, b: (tuple(a) if isinstance(a, list) else a) == b  # noqa: E731
    return [k for k, v in options.items()
            if k in defaults and not same(v, defaults[k].default)]


def _random_feature_network(d: int, m: int, options: dict[str, Any]) -> nn.Module:
    """``networks.random_feature_network`` with ``LaplaceBNN``'s network options."""
    return networks.random_feature_network(
        d, m, options["random_features"], kernel=options["random_feature_kernel"],
        trend=options["trend"],
        lengthscale=networks.lengthscale_start(d, options.get("lengthscale_prior")))


class LaplaceBNN(_LinearizedModel):
    r"""A neural network surrogate with a linearized Laplace posterior.

    ``model = LaplaceBNN(X, Y); model.fit()`` trains the MAP network, fits the Laplace
    posterior and refits prior precision and noise by the marginal likelihood. In a BO
    loop, warm-start each round from the last: ``LaplaceBNN(X, Y, warm_start=old).fit()``.

    **Defaults** (the measurements behind each, and the history of what was tried, are
    in ``docs/lapbo_defaults.md``):

    - *Family* (``selection.DEFAULT_CANDIDATES`` below four inputs; from there on
      ``selection.MID_DIMENSIONAL_CANDIDATES``, from ten on the GP-like
      ``selection.HIGH_DIMENSIONAL_CANDIDATES``, see ``candidates``): four
      random-feature networks
      (``net="random_features"``: 4,096 quasi-random Fourier features of the
      squared-exponential or the Matérn-5/2 kernel, each with and without a quadratic
      trend). They are linear in their weights, so their Laplace posterior and evidence
      are exact; ARD length scales, ``δ`` and ``σ`` are fitted by the evidence
      (``lapbo.lengthscales``) and the candidate of highest evidence is kept every
      round (``model_averaging=True`` predicts with the evidence-weighted mixture
      instead: better calibrated, slower to converge in BO). Setting an option of the
      MLP below (``selection.MLP_OPTIONS``) selects the MLP family
      (``selection.MLP_CANDIDATES``) instead; ``candidates=None`` fits one network.

    The remaining defaults configure the MLP:

    - *Network*: 2 × 50 MLP with Gaussian activations ``exp(−z²)``, first layer
      initialised at ``init_scale = 1.25`` per input coordinate of the unit box (use
      ``Normalize`` with the box bounds); its output layer also sees a quadratic trend
      ``[z, z²]``, ``z = 2x − 1``, and 100 random Fourier features with length scales
      spread over 0.2–1.0 of the box (``random_features``).
    - *Posterior over all weights* (``subset_of_weights="all"``, exact GGN in Woodbury
      form): the evidence that refits ``δ`` and ``σ`` covers the same weights that ``δ``
      regularises as weight decay. The last-layer posterior (an option) trains the body
      under a prior its evidence does not see; at N ≳ 100 it interpolates and the
      posterior collapses (mean |z| up to 12 at N = 100 over ten test problems, 494 at
      N = 1,000 on Ackley-20).
    - *Hyperpriors*: ``LogNormal(−8, 2)`` on ``σ²`` (standardized units) and a
      log-normal on ``δ`` around the precision whose prior function variance is the
      outcome variance (``prior_precision_prior``), so one or two observations keep
      the prior variance.
    - *Prior mean* ``"init"``: ``N(θ₀, I/δ)`` with ``θ₀`` the initial weights.
    - *Training*: L-BFGS, 1,000 epochs from scratch (300 left the network under-fitted:
      on the development seeds the test RMSE at N = 1,000 fell 2–7× on Branin,
      Hartmann-3 and Rosenbrock-4 with 1,000), 100 warm-started, evidence refits of
      ``(δ, σ)`` every 50 epochs and after the last (``laplace.SampleSpaceEvidence``).

    Args:
        train_X: ``(n, d)`` training inputs.
        train_Y: ``(n, m)`` training observations.
        train_Yvar: optional ``(n, m)`` known noise variances (then ``σ`` is not refit;
            in standardized units, those below ``min_noise_std²`` are raised to it).
        net: an ``nn.Module`` mapping ``(n, d)`` transformed inputs to ``(n, m)``, a
            zero-argument factory, ``None`` for ``networks.default_network``, or
            ``"random_features"`` for ``networks.random_feature_network`` with
            ``random_features`` features: linear in its weights, its length scales,
            ``δ`` and ``σ`` are fitted by the exact evidence instead of MAP training
            (``lapbo.lengthscales``; the MLP and training options do not apply, and it
            computes in float64 whatever ``compute_dtype``). Its feature count follows
            the data: from 513 to 1,024 rows of four or more inputs the network grows to
            at least 16,384 features (``lengthscales.LIMIT_FEATURES``), whose length
            scales are those of the kernel they approximate; above 1,024 rows it keeps
            its first 512.
        likelihood: only ``"regression"``.
        subset_of_weights: ``"all"`` (default: the Gaussian over every weight) or
            ``"last_layer"`` (the output layer only, i.e. Bayesian linear regression on the
            learned features; cheaper, but overconfident once the body fits the data).
        hessian_structure: ``"full"`` (default: exact GGN, low-rank Woodbury form),
            ``"kron"`` or ``"diag"`` (dense Cholesky of the Laplace precision).
        backend: curvature backend class for the Laplace object (default native GGN).
        input_transform: a BoTorch input transform (learned on ``train_X``; a learnable
            ``Warp``'s concentrations by the evidence, ``lapbo.warping``); the default
            network expects inputs in the unit box.
        outcome_transform: default ``Standardize(m)``; ``None`` for none.
        n_epochs: full-batch iterations of MAP training from scratch.
        lr: Adam learning rate (used when ``optimizer="adam"``).
        optimizer: ``"lbfgs"`` (default: converges far better on BO-sized data sets)
            or ``"adam"``.
        warm_start: a fitted ``LaplaceBNN`` whose weights, prior mean and
            hyperparameters seed this one; training then runs ``n_epochs_warm_start``
            epochs.
        n_epochs_warm_start: epochs of a warm-started fit.
        width, depth, activation: the default network (``activation``: one name or one
            per hidden layer, see ``networks.default_network``).
        prior_precision, sigma_noise: initial ``δ`` and ``σ`` (standardized units).
        prior_structure: ``"scalar"`` (one ``δ``) or ``"layerwise"`` (one ``δ`` per
            parameter tensor, all refit by the marginal likelihood; full GGN over all
            weights only).
        tune_noise: refit ``σ`` by the marginal likelihood.
        min_noise_std: lower bound of ``σ`` and of known noise SDs (standardized units).
        marglik_every, marglik_steps, final_marglik_steps, marglik_lr: see
            ``lapbo.training.TrainingOptions``.
        compute_dtype: dtype of the network, its training and Jacobians (the Gaussian
            of the full GGN is float64 whatever it is; posteriors are returned in the
            dtype of the query ``X``, promoted to ``train_Y``'s by an
            outcome transform's buffers, e.g. ``Standardize``); ``model.to(dtype)`` (which
            BoTorch's analytic acquisitions call with the query) keeps it and moves
            devices only. Training and conditioning inputs go through the input
            transform's ``preprocess_transform``, queries through the transform as BoTorch
            evaluates it: ``InputPerturbation`` (robust BO) turns ``q`` query points into
            ``q·n_w``, ``AppendFeatures`` into ``q·n_f`` with the feature set appended
            (``train_X`` carries those columns; ``validation.check_input_transform``).
        seed: seed of the network initialisation.
        input_map: a fixed map of the unit box in front of the default network
            (``"box"``: none; ``"centered"``, ``"circle"``, ``"sphere"``: see
            ``networks.InputMap``).
        prior_mean: ``"init"`` (the prior is centred on the initial weights) or
            ``"zero"``.
        noise_prior: ``(loc, scale)`` of a log-normal hyperprior on ``σ²`` for the
            refit, ``("gamma", α, β)`` (``net="random_features"``), or ``None``.
        lengthscale_prior, outputscale_prior: ``net="random_features"``'s hyperpriors on
            each length scale (default BoTorch's dimension-scaled log-normal; or
            ``("gamma", α, β)``, ``("lognormal", loc, scale)``) and, as
            ``("gamma", α, β)``, on its kernel's output scale ``1/δ`` of the feature
            weights (``lapbo.training.TrainingOptions``).
        candidates: a list of dicts of options, each one candidate surrogate on top of
            these options; ``fit()`` trains each (warm-started from its own model of the
            previous round) and keeps the one of highest Laplace evidence
            (``lapbo.selection``; the scores are in ``model.selection``). Options that
            change what the evidence measures (``subset_of_weights``,
            ``hessian_structure``, ...) cannot vary. Default: with ``net=None``,
            ``selection.DEFAULT_CANDIDATES`` (random-feature networks of the
            squared-exponential and Matérn-5/2 kernels, with and without a quadratic
            trend) below ``selection.MID_DIMENSIONAL`` (4) inputs,
            ``selection.MID_DIMENSIONAL_CANDIDATES`` (Matérn-5/2 networks under the
            Gamma hyperpriors of BoTorch's GP before 0.12, without and with the trend;
            above 512 rows also the squared-exponential one) up to nine and
            ``selection.HIGH_DIMENSIONAL_CANDIDATES`` (squared-exponential
            networks under ``SingleTaskGP``'s hyperpriors: two that split the prior
            variance between kernel and constant differently, and the second with a
            quadratic trend) from ten on, refit from their initial values every round up to 512
            rows (a warm start's candidates unused: ``selection.refits_cold``); ``trend``,
            ``random_feature_kernel``, ``random_features``, ``noise_prior``,
            ``lengthscale_prior``, ``outputscale_prior``,
            ``prior_precision_prior`` or ``prior_precision_reference`` set here holds for
            all of them
            (``selection.default_family``), or
            ``selection.MLP_CANDIDATES`` (the default MLP as configured, and
            one with ``√d``-scaled length scales trained from ``σ = 1``) when one of
            ``selection.MLP_OPTIONS`` (``width``, ``depth``, ``n_epochs``, ...) is set;
            with ``net`` given, none.
            ``None``: one network.
        model_averaging: with ``candidates``, predict with the evidence-weighted mixture
            of the candidates (weights ``∝ p(y | M_k)``, shown in ``selection``; passed
            to BoTorch as the Gaussian of the mixture's mean and covariance; Thompson
            paths from the mixture itself; ``lapbo.averaging``) instead of the candidate
            of highest evidence alone (default). The chosen candidate is still the one
            ``net``, ``la`` and ``log_marginal_likelihood`` describe. The mixture's test
            NLL is lower (30 points: within the GP's + 0.1 nats in 35 of 40 cells
            against 30), but BO with it converged more slowly on low-dimensional
            problems, and each candidate's predictive costs one more evaluation per
            acquisition step (``docs/lapbo_defaults.md``, session 13).
        keep_best: at every refit during training, remember the network and ``(δ, σ)``
            if their refit objective (evidence plus hyperpriors) is the highest so far,
            and return to it at the end if the final one is lower. Training with the
            noise refit can slide into interpolating the data (``σ`` falls, the network
            fits the noise, ``σ`` falls further) while the evidence falls; this keeps
            the network the evidence prefers.
        reference_dim: ``d₀`` such that ``init_scale`` and ``random_feature_lengthscale``
            hold for ``d₀`` inputs and scale by ``√(d/d₀)`` for ``d``
            (``networks.default_network``); ``None``: as given in every dimension.
        prior_precision_prior: scale of a log-normal hyperprior on ``δ`` centred where
            the prior function variance at the data equals the outcome variance
            (``lapbo.training.TrainingOptions``; full GGN only), or ``None``. Without it
            one or two observations send ``δ`` to its bound and the posterior variance
            to ~0 everywhere, so an acquisition function has no reason to explore.
        prior_precision_reference: the centre ``δ_ref`` of that hyperprior in place of
            the default (``None``; ``lapbo.training.TrainingOptions``): ``1.0`` gives a
            random-feature network's kernel part the prior variance 1, as
            ``SingleTaskGP``'s output scale (the default ``2.0`` gives the kernel and the
            constant 1/2 each). With ``prior_structure="layerwise"``, a tuple of one
            centre per weight tensor: ``(1.0, 0.01)`` for a random-feature network's
            ``(W, b)`` gives the kernel the prior variance 1 and the constant the broad
            variance 100 (``SingleTaskGP``: output scale 1, constant mean without a prior).
        trend: ``"quadratic"`` (default: the default network's output layer also sees
            ``z`` and ``z²``, ``networks.QuadraticFeatures``; a random-feature network's
            features end with ``[z, z²]/√d``) or ``None``.
        trend_scale: scale of those trend features, i.e. the square root of their prior
            variance relative to the other output-layer inputs (one ``δ`` serves the
            whole layer). A good candidate for selection by evidence
            (``candidates=[{}, {"trend_scale": 5.0}]``): a larger scale lets a smooth
            global trend explain the data instead of local features
            (``docs/lapbo_defaults.md``).
        random_features, random_feature_lengthscale, random_feature_variance: ``N``
            random Fourier features of squared-exponential kernels (a length scale or a
            range of them in the unit box, variance relative to ``1/δ``) in the default
            network's output layer (``networks.RandomFourierFeatures``; ``0``: none).
        random_feature_kernel: the kernel whose spectral density the features of
            ``net="random_features"`` sample: ``"rbf"`` (squared exponential, default),
            ``"matern12"``, ``"matern32"`` or ``"matern52"``
            (``networks.ScaledRandomFeatures``).
        init_scale: first-layer initialisation of the default network (weights
            ``N(0, c²)`` per input coordinate); ``None``: PyTorch's default.
        mean: ``"map"`` (default: ``f(x; θ*)``) or ``"linearized"``: the exact posterior
            mean of the linearized model (one Gauss–Newton step from ``θ*``, equal to the
            MAP at an exact optimum) with its exact evidence for the refits; full GGN
            only.
    """

    def __init__(
        self, train_X: Tensor, train_Y: Tensor, train_Yvar: Tensor | None = None, *,
        net: nn.Module | Any = None, likelihood: str = "regression",
        subset_of_weights: str = "all", hessian_structure: str = "full",
        backend: Any = None,
        input_transform: InputTransform | None = None,
        outcome_transform: OutcomeTransform | _DefaultType | None = DEFAULT,
        n_epochs: int = 1000, lr: float = 1e-2, optimizer: str = "lbfgs",
        warm_start: LaplaceBNN | None = None, n_epochs_warm_start: int = 100,
        width: int = 50, depth: int = 2,
        activation: str | Sequence[str] = ("gauss", "gauss"),
        prior_precision: float = 1.0, sigma_noise: float = 0.01,
        tune_noise: bool = True, min_noise_std: float = 1e-3, marglik_every: int = 50,
        marglik_steps: int = 20, final_marglik_steps: int = 100, marglik_lr: float = 0.1,
        compute_dtype: torch.dtype = torch.float64, seed: int | None = None,
        input_map: str = "box", prior_mean: str = "init",
        noise_prior: tuple[Any, ...] | None = (-8.0, 2.0),
        lengthscale_prior: tuple[Any, ...] | None = None,
        outputscale_prior: tuple[Any, ...] | None = None,
        prior_precision_prior: float | None = 1.0,
        prior_precision_reference: float | Sequence[float] | None = None,
        init_scale: float | None = 1.25, mean: str = "map", trend: str | None = "quadratic",
        random_features: int = 100,
        random_feature_lengthscale: float | tuple[float, float] = (0.2, 1.0),
        random_feature_variance: float = 3.0, trend_scale: float = 1.0,
        random_feature_kernel: str = "rbf",
        prior_structure: str = "scalar",
        candidates: Sequence[Mapping[str, Any]] | _DefaultType | None = DEFAULT,
        keep_best: bool = True, reference_dim: float | None = None,
        model_averaging: bool = False,
    ) -> None:
        init_options = {k: v for k, v in locals().items()  # the candidates' base options
                        if k not in ("self", "train_X", "train_Y", "train_Yvar", "__class__")}
        super().__init__()
        normalised = validation.check_model_options(init_options)
        lengthscale_prior = normalised["lengthscale_prior"]
        outputscale_prior = normalised["outputscale_prior"]
        prior_precision_reference = normalised["prior_precision_reference"]
        if train_X.ndim != 2:
            raise UnsupportedError("LaplaceBNN takes unbatched (n, d) training inputs.")
        validation.check_training_data(train_X, train_Y, train_Yvar)
        GPyTorchModel._validate_tensor_args(X=train_X, Y=train_Y, Yvar=train_Yvar)
        if warm_start is not None:
            _check_warm_start(warm_start, train_X.shape[-1], train_Y.shape[-1])
        m = train_Y.shape[-1]
        validation.check_outcome_transform(outcome_transform)
        if outcome_transform is DEFAULT:
            outcome_transform = Standardize(m=m)
        validation.check_input_transform(input_transform)
        if input_transform is not None:  # training inputs as in train mode, whatever its
            input_transform.train()  # mode (e.g. a transform shared with an evaluated GP)
            if warm_start is not None:  # a learned Warp starts from the last round's
                warping.copy_concentrations(getattr(warm_start, "input_transform", None),
                                            input_transform)
        with torch.no_grad():
            X_tf = self.transform_inputs(train_X, input_transform=input_transform)
        validation.check_finite("input_transform(train_X)", X_tf)  # e.g. Log10 at 0
        if settings.validate_input_scaling.on():  # as BoTorch's GPs: warn outside [0, 1]^d
            check_min_max_scaling(X_tf)
        Yvar_tf = train_Yvar
        if outcome_transform is not None:
            outcome_transform.train()
            Y_tf, Yvar_tf = outcome_transform(Y=train_Y, Yvar=train_Yvar, X=X_tf)
            if not bool(torch.isfinite(Y_tf).all()):
                raise ValueError(
                    f"The outcome transform {type(outcome_transform).__name__} maps the "
                    "finite train_Y to NaN or inf (e.g. Log of standardized, partly "
                    "negative values): choose a transform defined on these targets.")
            self.outcome_transform = outcome_transform
        if input_transform is not None:
            self.input_transform = input_transform
        self._train_X, self._train_Y, self._train_Yvar = train_X, train_Y, train_Yvar
        self._outputs = list(range(m))
        self._num_net_outputs = m
        self.hessian_structure, self.backend = hessian_structure, backend
        self.subset_of_weights = subset_of_weights
        if mean == "linearized" and (hessian_structure != "full" or backend is not None):
            raise UnsupportedError("mean='linearized' needs the full GGN (native backend).")
        self.mean_kind = mean
        self.options = training.TrainingOptions(
            n_epochs=n_epochs, n_epochs_warm_start=n_epochs_warm_start, lr=lr,
            optimizer=optimizer,
            marglik_every=marglik_every, marglik_steps=marglik_steps,
            final_marglik_steps=final_marglik_steps, marglik_lr=marglik_lr,
            tune_noise=tune_noise, min_noise_std=min_noise_std,
            noise_prior=None if noise_prior is None else tuple(noise_prior),
            lengthscale_prior=lengthscale_prior, outputscale_prior=outputscale_prior,
            prior_precision_prior=prior_precision_prior,
            prior_precision_reference=prior_precision_reference, keep_best=keep_best,
        )
        validation.check_bounds(self.options, prior_precision, sigma_noise)
        validation.warn_small_known_noise(Yvar_tf, min_noise_std)
        device = train_X.device
        net_options = {
            "width": width, "depth": depth, "activation": activation, "input_map": input_map,
            "init_scale": init_scale, "trend": trend, "random_features": random_features,
            "random_feature_lengthscale": random_feature_lengthscale,
            "random_feature_variance": random_feature_variance, "trend_scale": trend_scale,
            "reference_dim": reference_dim, "random_feature_kernel": random_feature_kernel,
            "lengthscale_prior": lengthscale_prior,
        }
        # what the network is built from: a warm start must have been built the same way
        self._architecture = (None if not (net is None or isinstance(net, str)) else
                              (net, {k: v for k, v in net_options.items()
                                     if k not in validation.INITIALIZATION_OPTIONS}))
        if warm_start is not None and self._architecture is not None \
                and warm_start._architecture != self._architecture:
            raise ValueError(validation.architecture_mismatch(warm_start._architecture,
                                                    self._architecture))
        self.net = self._make_net(net, warm_start, X_tf.shape[-1], m, net_options,
                                  compute_dtype, device, seed)
        validation.check_network_outputs(self.net, X_tf, m)
        kept = grown = None
        if isinstance(net, str) and len(train_X) > lengthscales.FULL_FEATURE_ROWS:
            kept = networks.truncate_random_features(
                self.net, min(random_features, lengthscales.FIT_FEATURES))
        elif isinstance(net, str) and lengthscales.limit_kernel_fit(*train_X.shape[-2:]):
            grown = networks.extend_random_features(
                self.net, max(random_features, lengthscales.LIMIT_FEATURES))
        self._net_options = net_options if net is None or isinstance(net, str) else None
        self._param_names = training.posterior_parameter_names(self.net, subset_of_weights)
        dtype = self._compute_dtype
        if prior_structure == "layerwise" and (
            subset_of_weights != "all" or hessian_structure != "full" or backend is not None
        ):
            raise UnsupportedError(
                "prior_structure='layerwise' needs subset_of_weights='all' and the full GGN "
                "(native backend)."
            )
        self.prior_structure = prior_structure
        shape = (len(list(self.net.parameters())),) if prior_structure == "layerwise" else ()
        if isinstance(prior_precision_reference, tuple) and prior_structure != "layerwise":
            raise ValueError("prior_precision_reference as a tuple needs "
                             f"prior_structure='layerwise', not {prior_structure!r}.")
        prior = torch.full(shape, prior_precision, dtype=dtype, device=device)
        if warm_start is not None:
            sigma_noise = float(warm_start.sigma_noise)
            old = warm_start.prior_precision.detach().to(prior)
            prior = old.clone() if old.shape == prior.shape else prior.fill_(float(old.mean()))
        self.register_buffer("sigma_noise", torch.tensor(sigma_noise, dtype=dtype, device=device))
        self.register_buffer("prior_precision", prior)
        self.register_buffer("is_fitted", torch.tensor(False, device=device))
        self.prior_mean_kind = prior_mean
        if prior_mean == "init":
            if warm_start is not None and warm_start.prior_mean_kind == "init":
                theta0 = warm_start.prior_mean.detach().clone().to(dtype=dtype, device=device)
                if kept is not None:  # the same entries of the truncated head
                    theta0 = networks.resized_head_vector(theta0, m, kept)
                if grown is not None:  # the same entries of the grown head, zero elsewhere
                    theta0 = networks.resized_head_vector(theta0, m, grown,
                                                          self.net[1].in_features)
            else:
                theta0 = torch.cat([p.detach().reshape(-1) for p in self.net.parameters()])
            self.register_buffer("prior_mean", theta0)
        self._warm = warm_start is not None
        # (rows, two optima?) of the last random-feature fit that ran both starts in σ
        self._mode_check: tuple[int, bool] | None = getattr(warm_start, "_mode_check", None)
        self._init_options = init_options
        cold = False  # the default family refits from its initial values (refits_cold)
        if candidates is DEFAULT:
            # the network's inputs: a transform may drop some (FilterFeatures)
            configured, d = _configured(init_options), X_tf.shape[-1]
            candidates = (selection.default_family(configured, d, len(train_X))
                          if net is None else None)
            cold = net is None and selection.refits_cold(configured, d, len(train_X))
        self.candidates = selection.check_candidates(
            candidates, inspect.signature(LaplaceBNN.__init__).parameters)
        validation.check_candidate_features(self.candidates, net, random_features)
        selection.check_candidate_values(self.candidates, init_options)
        warping.check_warp_support(input_transform, self.candidates, net)
        if isinstance(prior_precision_reference, tuple) and not self.candidates \
                and len(prior_precision_reference) != shape[0]:  # candidates check their own
            raise ValueError(
                "prior_precision_reference as a tuple needs one value per weight tensor "
                f"({shape[0]} here), not {prior_precision_reference!r}.")
        if self.candidates and isinstance(net, nn.Module):
            raise ValueError("candidates need net=None or a network factory, not one module "
                             "instance that every candidate would share.")
        self._warm_candidates = None if cold else selection.warm_candidates(
            self.candidates, warm_start)
        self._candidate_models: list[LaplaceBNN] | None = None
        self._model_averaging = model_averaging
        # (observations, scores) of the last fit that refit every candidate
        self._last_selection: tuple[int, list[selection.CandidateScore]] | None = \
            getattr(warm_start, "_last_selection", None)
        self.selection: list[selection.CandidateScore] = []
        self._la: ParametricLaplace | None = None
        self._evidence: SampleSpaceEvidence | None = None
        self._post: LinearizedPosterior | None = None
        self._noise_cache: Tensor | None = None
        # constructor options that are not attributes (setting one later would do nothing),
        # and those that are but that the candidates were built from (setting one later was
        # unchecked, and ignored by the candidates); a subclass with its own constructor may
        # give them a meaning: not checked there
        self._construction_only = frozenset(
            name for name in init_options if not hasattr(self, name) or name in _FIXED
        ) if type(self).__init__ is LaplaceBNN.__init__ else frozenset()

    @property
    def model_averaging(self) -> bool:
        """Whether ``fit`` makes the model predict with its candidates' evidence-weighted
        mixture (``lapbo.averaging``); set before ``fit``."""
        return self._model_averaging

    @model_averaging.setter
    def model_averaging(self, value: bool) -> None:
        if not isinstance(value, bool):
            raise ValueError(f"model_averaging must be True or False, not {value!r}.")
        self._model_averaging = value

    def __setattr__(self, name: str, value: Any) -> None:
        """``model.sigma_noise = σ`` and ``model.prior_precision = δ`` (standardized
        units; ``δ`` one value or one per parameter tensor for ``prior_structure=
        "layerwise"``) are checked as the constructor checks them and take effect: before
        ``fit`` they are its starting values; after it the posterior, the evidence and a
        random-feature network's weights (its posterior mean) follow them, without
        retraining, as ``laplace``'s setters do. A constructor option that is not an
        attribute (``min_noise_std``, ``n_epochs``, ...), or one the candidates were built
        from (``candidates``, ``subset_of_weights``, ``hessian_structure``, ...: ``_FIXED``),
        cannot be set afterwards: it raises, where it would otherwise be stored unchecked
        and ignored. Other attributes are set as usual."""
        if name in ("sigma_noise", "prior_precision") and name in self.__dict__.get(
                "_buffers", {}):
            self._set_hyperparameter(name, value)
        elif name in self.__dict__.get("_construction_only", ()):
            raise AttributeError(
                f"{name} is a LaplaceBNN constructor option, fixed when the model is built: "
                f"build a new LaplaceBNN(..., {name}=...) (warm_start=model keeps its "
                "network) and fit it.")
        else:
            super().__setattr__(name, value)

    def _set_hyperparameter(self, name: str, value: Any) -> None:
        """Validate ``value`` for the buffer ``name``, copy it in, and bring the fitted
        state in line (weights of a random-feature network, cached posterior)."""
        current, o = self._buffers[name], self.options
        low, high = ((0.0, o.max_noise_std) if name == "sigma_noise"
                     else (o.min_prior_precision, o.max_prior_precision))
        value = validation.check_hyperparameter(name, value, current.shape, low, high)
        if self._mixture:
            raise ValueError(f"{name} cannot be set on a model that predicts with the "
                             "evidence-weighted mixture of its candidates (model_averaging="
                             "True): each candidate has its own. Refit without averaging.")
        if name == "sigma_noise" and self._train_Yvar is not None:
            raise ValueError("sigma_noise is not used by this model: it was given train_Yvar "
                             "(known observation noise variances).")
        with torch.no_grad():
            current.copy_(value)
        if bool(self.is_fitted) and networks.random_feature_layer(self.net) is not None:
            lengthscales.condition_weights(self.net, *self._training_data(), self.sigma_noise,
                                           self.prior_precision, self._prior_mean_list())
        self._invalidate()

    @staticmethod
    def _make_net(
        net: Any, warm_start: LaplaceBNN | None, d: int, m: int, options: dict[str, Any],
        dtype: torch.dtype, device: torch.device, seed: int | None,
    ) -> nn.Module:
        """The network: a copy of the warm start's, ``net`` (module or factory) or
        ``networks.default_network(d, m, **options)``, seeded by ``seed``."""
        cuda = list(range(torch.cuda.device_count())) if torch.cuda.is_initialized() else []
        copied = warm_start is not None and (net is None or isinstance(net, str))
        with torch.random.fork_rng(devices=cuda, enabled=seed is not None and not copied):
            if seed is not None and not copied:  # a copy draws nothing
                torch.manual_seed(seed)
            if net is None or isinstance(net, str):
                module = (copy.deepcopy(warm_start.net) if warm_start is not None
                          else networks.default_network(d, m, **saved_state.mlp_options(options))
                          if net is None else _random_feature_network(d, m, options))
            elif isinstance(net, nn.Module):
                module = net
            elif callable(net):
                module = net()
                if not isinstance(module, nn.Module):
                    raise TypeError("net, a factory, must return an nn.Module, not "
                                    f"{type(module).__name__}.")
            else:
                raise TypeError("net must be an nn.Module, a zero-argument factory or None.")
        if warm_start is not None and module is not warm_start.net and net is not None \
                and not isinstance(net, str):
            module.load_state_dict(warm_start.net.state_dict())
        if isinstance(net, str):  # cheap, and ill-conditioned at small noise: always double
            dtype = torch.float64
        return module.to(dtype=dtype, device=device)

    @classmethod
    def construct_inputs(
        cls, training_data: SupervisedDataset, **kwargs: Any
    ) -> dict[str, Any]:
        """``train_X``, ``train_Y`` (and ``train_Yvar``) from the dataset, plus ``kwargs``."""
        inputs = super().construct_inputs(training_data=training_data)
        inputs.update(kwargs)
        return inputs

    @property
    def batch_shape(self) -> torch.Size:  # one network, also before fitting
        return torch.Size()

    @property
    def train_targets(self) -> Tensor:
        """The outcome-transformed training targets in GPyTorch's layout, ``(n,)`` for
        one output and ``(m, n)`` for ``m`` (BoTorch's input constructors read it, e.g.
        for ``qNegIntegratedPosteriorVariance``), in ``train_Y``'s dtype."""
        Y = self._training_data()[1].to(self._train_Y.dtype)
        return Y.squeeze(-1) if Y.shape[-1] == 1 else Y.mT

    # ----------------------------------------------------------------- data
    def _training_data(self) -> tuple[Tensor, Tensor, Tensor | None]:
        """Transformed ``X (n, d)``, ``Y (n, m)``, ``Yvar (n, m) | None`` in compute dtype."""
        self.eval()
        dtype, device = self._compute_dtype, self.sigma_noise.device
        with torch.no_grad():
            X = self._transform_observed(self._train_X.to(device))
            Y, Yvar = self._train_Y.to(device), self._train_Yvar
            Yvar = Yvar.to(device) if Yvar is not None else None
            ot = getattr(self, "outcome_transform", None)
            if ot is not None:
                Y, Yvar = ot(Y, Yvar, X=X)
            if Yvar is not None:
                Yvar = training.floor_known_noise(Yvar, self.options.min_noise_std)
        return X.to(dtype), Y.to(dtype), (Yvar.to(dtype) if Yvar is not None else None)

    @property
    def _noise_var(self) -> Tensor:
        """Default observation noise ``(m,)`` in the transformed space."""
        if self._train_Yvar is None:
            return self.sigma_noise.square().expand(len(self._outputs))
        if self._noise_cache is None:
            self._noise_cache = self._training_data()[2].mean(0)
        return self._noise_cache

    # ------------------------------------------------------------------ fit
    def fit(self) -> LaplaceBNN:
        """Train the MAP network, fit the Laplace posterior, refit ``δ`` and ``σ``; with
        ``candidates``, do so for each and keep the one of highest evidence. A fit that
        raises leaves the model as it was (``lapbo.rollback``)."""
        with restored_on_error(self):
            return self._fit()

    def _fit(self) -> LaplaceBNN:
        if self.candidates:
            return selection.fit_by_evidence(self)
        X, Y, Yvar = self._training_data()
        if networks.random_feature_layer(self.net) is not None:
            if warping.learnable_warps(getattr(self, "input_transform", None)):
                X, Y, Yvar = warping.fit_with_warps(self, X, Y, Yvar)
            return self._fit_random_feature_network(X, Y, Yvar)
        n_epochs = self.options.n_epochs_warm_start if self._warm else self.options.n_epochs
        la, sigma, prior, evidence = training.fit_network_and_laplace(
            self.net, X, Y, Yvar, self.sigma_noise, self.prior_precision, n_epochs,
            self.options, subset_of_weights=self.subset_of_weights,
            hessian_structure=self.hessian_structure, backend=self.backend,
            prior_mean=self._prior_mean_list(), linearized=self.mean_kind == "linearized",
        )
        self.sigma_noise.copy_(sigma)
        self.prior_precision.copy_(prior)
        self.is_fitted.fill_(True)
        self._invalidate()
        self._la, self._evidence = la, evidence
        self.eval()
        return self

    def _fit_random_feature_network(self, X: Tensor, Y: Tensor, Yvar: Tensor | None
                                    ) -> LaplaceBNN:
        """``fit`` for ``net="random_features"``: length scales, ``δ`` and ``σ`` by the
        exact evidence, the weights at the posterior mean (``lapbo.lengthscales``); the
        second start in ``σ`` runs as ``lengthscales.needs_second_start`` says."""
        second = lengthscales.needs_second_start(self._mode_check, len(X))
        fit = lengthscales.fit_random_feature_network(
            self.net, X, Y, Yvar, self.sigma_noise, self.prior_precision, self.options,
            prior_mean=self._prior_mean_list(), exact_rows=lengthscales.EXACT_FIT_ROWS,
            second_start=second)
        if fit.two_optima is not None:
            self._mode_check = (len(X), fit.two_optima)
        self.sigma_noise.copy_(fit.sigma)
        self.prior_precision.copy_(fit.prior)
        self.is_fitted.fill_(True)
        self._invalidate()
        self.eval()
        return self

    def _invalidate(self) -> None:
        self._la, self._post, self._noise_cache = None, None, None
        self._shared_cache = None
        self._evidence = None  # of the current weights and data, evaluated at any (δ, σ)

    def _adopt(self, child: LaplaceBNN) -> None:
        """Become the fitted candidate ``child`` (network, prior, hyperparameters)."""
        self.net = child.net
        self._param_names = child._param_names
        self.options = child.options
        self.__dict__["prior_structure"] = child.prior_structure  # a fixed option (_FIXED)
        for name in ("sigma_noise", "prior_precision", "is_fitted"):
            self.register_buffer(name, getattr(child, name).clone())
        if self.prior_mean_kind == "init":
            self.register_buffer("prior_mean", child.prior_mean.clone())
        self._invalidate()
        self._la, self._evidence = child._la, child._evidence
        self._mode_check = child._mode_check
        warping.copy_concentrations(getattr(child, "input_transform", None),
                                    getattr(self, "input_transform", None))
        self.eval()

    def log_marginal_likelihood(self) -> Tensor:
        """The Laplace evidence ``log p(y | δ, σ)`` of the fitted model (scalar tensor).

        Over the weights of the posterior, at the current hyperparameters, for the
        standardized outcomes: the quantity the refits maximise (without hyperpriors) and
        candidates are compared by; equal to the ``laplace`` object's
        ``log_marginal_likelihood()`` (``model.la``).
        """
        self._require_fitted()
        if self.hessian_structure != "full" or self.backend is not None:
            return self.la.log_marginal_likelihood().detach()
        if self._evidence is None:
            X, Y, Yvar = self._training_data()
            self._evidence = training.network_evidence(
                self.net, X, Y, Yvar, self._param_names, self._prior_mean_list(),
                linearized=self.mean_kind == "linearized",
                layerwise=self.prior_structure == "layerwise",
            )
        return self._evidence(self.prior_precision, self.sigma_noise).detach()

    @property
    def la(self) -> ParametricLaplace:
        """The Laplace object at the current weights and hyperparameters."""
        self._require_fitted()
        if self._la is None:
            X, Y, _ = self._training_data()
            with torch.enable_grad():  # curvature backends differentiate (KFAC)
                self._la = training.fit_laplace(
                    self.net, X, Y, self.sigma_noise, self.prior_precision,
                    subset_of_weights=self.subset_of_weights,
                    hessian_structure=self.hessian_structure, backend=self.backend,
                    prior_mean=self._prior_mean_list(),
                )
        return self._la

    def _weight_offset(self) -> Tensor:
        """``θ* − θ₀`` over the weights of the posterior ``(P,)``."""
        theta0 = self._prior_mean_list()
        parts = []
        for i, (name, p) in enumerate(self.net.named_parameters()):
            if self._param_names is None or name in self._param_names:
                parts.append((p.detach() - (0.0 if theta0 is None else theta0[i])).reshape(-1))
        return torch.cat(parts)

    def _prior_mean_list(self) -> list[Tensor] | None:
        """``θ₀`` split into one tensor per network parameter (``None``: zero)."""
        if self.prior_mean_kind == "zero":
            return None
        shapes = [p.shape for p in self.net.parameters()]
        chunks = self.prior_mean.split([s.numel() for s in shapes])
        return [c.reshape(s) for c, s in zip(chunks, shapes)]

    def _require_fitted(self) -> None:
        if not bool(self.is_fitted):
            raise RuntimeError("LaplaceBNN is not fitted: call model.fit() (or load a state).")

    def _gaussian(self) -> LinearizedPosterior:
        self._require_fitted()
        if self._post is None:
            with torch.no_grad():
                self._post = self._build_gaussian()
        return self._post

    def _build_gaussian(self) -> LinearizedPosterior:
        """The weight posterior, from ``laplace``: the sample-space form from the training
        Jacobian rows for the full GGN, else the fitted Laplace object's precision."""
        if self.hessian_structure != "full":
            return LinearizedPosterior.from_laplace(self.la)
        X, Y, Yvar = self._training_data()
        prior = self.prior_precision.to(self._compute_dtype)
        if self.prior_structure == "layerwise":
            prior = training.expand_prior(prior, [p.numel() for p in self.net.parameters()])
        Js, f = network_jacobians(self.net, X, self._param_names,
                                  independent_samples=networks.rows_independent(self.net))
        # in float64 whatever compute_dtype: at σ = 1e-3 a float32 capacitance fails
        wide = torch.float64
        rows, f, prior = (t.to(wide) for t in (Js.reshape(-1, Js.shape[-1]), f, prior))
        Y = Y.to(wide)
        if Yvar is None:
            noise = self.sigma_noise.square().to(rows).expand(rows.shape[0])
        else:
            noise = Yvar.reshape(-1).to(wide).clamp_min(1e-12)
        posterior = LinearizedPosterior.from_rows(rows, noise, prior)
        if self.mean_kind == "linearized":  # −∇ of the MAP loss at θ*
            v = (rows.mT @ ((Y - f).reshape(-1) / noise)
                 - prior * self._weight_offset().to(wide))
            posterior = posterior.with_mean_step(v)
        return posterior

    # --------------------------------------------------------- module state
    def load_state_dict(self, state_dict: Any, strict: bool = True, assign: bool = False) -> Any:
        """Load weights, hyperparameters and transforms; the posterior is rebuilt lazily
        from this model's own training data (no retraining; a random-feature network's
        weights, a posterior mean, are conditioned on it: ``lengthscales.condition_weights``,
        as a GP conditions on its data). A state of the other
        architecture of the default family (the random-feature network where this model
        has the default MLP, or the reverse: whichever candidate the saved model had
        selected) first rebuilds this model's network to match. The state holds the
        chosen candidate only: a model loaded from it predicts with that candidate, not
        with the evidence-weighted mixture (``model_averaging``) it was saved from."""
        saved_state.check_inputs(self, state_dict)
        saved_state.match_network(self, state_dict)
        saved_state.match_prior_structure(self, state_dict)
        out = super().load_state_dict(state_dict, strict=strict, assign=assign)
        if networks.random_feature_layer(self.net) is not None and bool(self.is_fitted):
            lengthscales.condition_weights(self.net, *self._training_data(), self.sigma_noise,
                                           self.prior_precision, self._prior_mean_list())
        self._invalidate()
        self._mixture = None  # the state holds the chosen candidate only
        return out

    def _apply(self, fn: Any, *args: Any, **kwargs: Any) -> LaplaceBNN:
        out = super()._apply(fn, *args, **kwargs)
        for _, component in self._mixture or []:  # not submodules: moved with the model
            if component is not self:
                component._apply(fn, *args, **kwargs)
        move = _device_only(fn)
        self._train_X, self._train_Y = move(self._train_X), move(self._train_Y)
        if self._train_Yvar is not None:
            self._train_Yvar = move(self._train_Yvar)
        self._invalidate()
        return out
