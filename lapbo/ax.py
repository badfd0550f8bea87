"""``LaplaceBNN`` inside Ax experiments (``Generators.BOTORCH_MODULAR``).

Importing this module registers three things with Ax 1.3:

* a ``submodel_input_constructor`` for ``LaplaceBNN``: builds the model's keyword
  arguments from the ``ModelConfig`` (``model_options``, input/outcome transform
  classes) and checks Ax's search-space digest, so that choice, task and fidelity
  parameters fail with a clear message instead of a ``TypeError`` deep inside Ax;
* a ``fit_botorch_model`` handler for ``LaplaceBNN``: Ax fits every model through this
  dispatcher with an MLL class (``ExactMarginalLogLikelihood`` is filled in when the
  config has none). A ``LaplaceBNN`` has no GPyTorch likelihood and is fitted by its
  own marginal likelihood, so the handler ignores the MLL class, builds no MLL and
  calls ``lapbo.training.fit_laplace_bnn`` (MAP training, Laplace posterior, refit of
  prior precision and noise). Ax calls it whenever the data changed, i.e. at every
  generation; cross-validation folds load the full model's ``state_dict`` instead (a
  random-feature network's weights are then conditioned on the fold's data);
* ``LaplaceBNN`` in Ax's storage registries, so experiments and generation strategies
  that use it save to and load from JSON (import ``lapbo.ax`` before loading).

``laplace_generation_strategy`` is the one-call entry point::

    from ax.api.client import Client
    from lapbo.ax import laplace_generation_strategy

    client = Client()
    client.configure_experiment(...)
    client.configure_optimization(objective="-loss")
    client.set_generation_strategy(laplace_generation_strategy(n_sobol=5, width=32))
"""

from __future__ import annotations

import inspect
import math
from typing import Any

import torch
from ax.adapter.registry import Generators
from ax.api.utils.generation_strategy_dispatch import choose_generation_strategy
from ax.api.utils.structs import GenerationStrategyDispatchStruct
from ax.core.search_space import SearchSpaceDigest
from ax.exceptions.core import UserInputError
from ax.generation_strategy.generation_strategy import GenerationStrategy
from ax.generators.torch.botorch_modular.surrogate import (
    Surrogate,
    _make_botorch_input_transform,
    _make_botorch_outcome_transform,
    submodel_input_constructor,
)
from ax.generators.torch.botorch_modular.utils import ModelConfig, fit_botorch_model
from ax.storage.botorch_modular_registry import register_model
from botorch.acquisition.acquisition import AcquisitionFunction
from botorch.exceptions.errors import UnsupportedError
from botorch.models.transforms.input import InputTransform
from botorch.optim import optimize_acqf
from botorch.utils.datasets import MultiTaskDataset, SupervisedDataset
from botorch.utils.types import DEFAULT, _DefaultType
from gpytorch.mlls import ExactMarginalLogLikelihood

from lapbo import training
from lapbo.model import LaplaceBNN
from lapbo.validation import check_bool, check_integer, check_positive

__all__ = [
    "LAPLACE_MODEL_OPTIONS",
    "check_search_space_digest",
    "laplace_generation_strategy",
    "laplace_model_config",
    "validate_model_options",
]

#: ``LaplaceBNN`` keyword options that can go in ``ModelConfig.model_options``: those
#: with JSON-serialisable values (numbers, strings, booleans, ``None``, torch dtypes).
#: ``net``, ``warm_start`` and ``backend`` take Python objects and are excluded;
#: transforms are set through ``ModelConfig.input/outcome_transform_classes``.
LAPLACE_MODEL_OPTIONS: frozenset[str] = frozenset(
    name
    for name, p in inspect.signature(LaplaceBNN.__init__).parameters.items()
    if p.kind is inspect.Parameter.KEYWORD_ONLY
    and name not in ("net", "warm_start", "backend", "input_transform", "outcome_transform")
)

_OPTION_TYPES = (bool, int, float, str, type(None), torch.dtype)

_CHOICE_HELP = (
    "LaplaceBNN models numeric inputs only, but the search space reached the model with "
    "categorical features {names}. Ax's default transforms for BOTORCH_MODULAR one-hot "
    "encode unordered choice parameters (keep OneHot in the generation strategy's "
    "transforms); otherwise encode the choice numerically yourself: an ordered choice of "
    "numbers (ChoiceParameterConfig(..., is_ordered=True) with int/float values) or an "
    "integer range parameter becomes an ordinal input, and a choice among k unordered "
    "values can be written as k range parameters on [0, 1] (one-hot)."
)


# ----------------------------------------------------------------- options
def validate_model_options(model_options: dict[str, Any]) -> dict[str, Any]:
    """Check ``model_options`` for a ``LaplaceBNN`` ``ModelConfig``; returns a copy.

    Raises:
        ValueError: an unknown option, or an option whose value Ax's JSON storage
            cannot save (e.g. an ``nn.Module`` for ``net``).
    """
    if model_options is None:
        return {}
    if not isinstance(model_options, dict):
        raise ValueError(f"model_options must be a dict, not {type(model_options).__name__}.")
    options = {name: _plain(value) for name, value in model_options.items()}
    unknown = sorted(set(options) - LAPLACE_MODEL_OPTIONS)
    if unknown:
        raise ValueError(
            f"Unknown or unsupported LaplaceBNN model_options {unknown}; allowed: "
            f"{sorted(LAPLACE_MODEL_OPTIONS)}. Network objects, warm starts and "
            "curvature backends cannot be stored in an Ax experiment; transforms go in "
            "ModelConfig.input_transform_classes / outcome_transform_classes."
        )
    for name, value in options.items():
        if not _storable(value):
            raise ValueError(
                f"LaplaceBNN model option {name}={value!r} is not JSON-serialisable; "
                "use numbers, strings, booleans, None, a torch dtype, or tuples/lists "
                "and string-keyed dicts of those (candidates=[{...}, ...])."
            )
        if not _finite(value):
            raise ValueError(f"LaplaceBNN model option {name}={value!r} must be finite.")
    _check_option_values(options)
    return options


def _check_option_values(options: dict[str, Any]) -> None:
    """Run ``LaplaceBNN``'s own argument checks on the options now (a model on three
    one-input points, not fitted: milliseconds), not at the first BO step after the
    Sobol trials."""
    X = torch.tensor([[0.0], [0.5], [1.0]], dtype=torch.float64)
    try:
        LaplaceBNN(X, X.square(), **options)
    except (ValueError, TypeError, UnsupportedError) as error:
        raise ValueError(f"LaplaceBNN model_options {options}: {error}") from error


def _plain(value: Any) -> Any:
    """A numpy scalar as the Python number it holds, a list as a tuple (Ax's JSON store
    gives tuples back as lists; ``LaplaceBNN`` takes either), inside dicts too."""
    if hasattr(value, "item") and getattr(value, "shape", None) == ():
        return value.item()
    if isinstance(value, list | tuple):
        return tuple(_plain(v) for v in value)
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def _storable(value: Any) -> bool:
    """``value`` is made of what Ax's JSON store saves: plain scalars, torch dtypes, and
    tuples and string-keyed dicts of those (the dicts of ``candidates``)."""
    if isinstance(value, tuple):
        return all(_storable(v) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and _storable(v) for k, v in value.items())
    return isinstance(value, _OPTION_TYPES)


def _finite(value: Any) -> bool:
    if isinstance(value, tuple):
        return all(_finite(v) for v in value)
    if isinstance(value, dict):
        return all(_finite(v) for v in value.values())
    return not (isinstance(value, float) and not math.isfinite(value))


def laplace_model_config(
    name: str = "LaplaceBNN", *,
    input_transform_classes: list[type[InputTransform]] | _DefaultType | None = DEFAULT,
    input_transform_options: dict[str, dict[str, Any]] | None = None, **model_options: Any,
) -> ModelConfig:
    """``ModelConfig(botorch_model_class=LaplaceBNN, model_options=...)`` with checked
    options (see ``LAPLACE_MODEL_OPTIONS``). ``input_transform_classes`` and
    ``input_transform_options`` are ``ModelConfig``'s (Ax's default: ``Normalize`` where
    the search space is not the unit box); e.g. ``[Warp]`` learns an input warp by the
    evidence (``lapbo.warping``), with the search space's bounds."""
    if input_transform_classes is not DEFAULT and input_transform_classes is not None and (
        not isinstance(input_transform_classes, list) or not all(
            isinstance(c, type) and issubclass(c, InputTransform)
            for c in input_transform_classes)):
        raise ValueError("input_transform_classes must be a list of BoTorch InputTransform "
                         f"classes, DEFAULT or None, not {input_transform_classes!r}.")
    return ModelConfig(
        botorch_model_class=LaplaceBNN,
        model_options=validate_model_options(model_options),
        input_transform_classes=input_transform_classes,
        input_transform_options=input_transform_options or {},
        name=name,
    )


def laplace_generation_strategy(
    n_sobol: int = 5, *, sobol_seed: int | None = None,
    botorch_acqf_class: type[AcquisitionFunction] | None = None,
    optimizer_options: dict[str, Any] | None = None, refit_on_cv: bool = False,
    input_transform_classes: list[type[InputTransform]] | _DefaultType | None = DEFAULT,
    input_transform_options: dict[str, dict[str, Any]] | None = None, **model_options: Any,
) -> GenerationStrategy:
    """Sobol initialisation, then ``BOTORCH_MODULAR`` with a ``LaplaceBNN`` surrogate.

    Use with ``Client.set_generation_strategy``. The strategy is Ax's own "custom"
    dispatch (the same nodes and transition criteria as ``method="fast"``, without a
    center point): ``n_sobol`` Sobol trials, at least ``max(1, n_sobol // 2)`` of them
    completed, then one ``LaplaceBNN`` per metric refit at every generation with the
    acquisition function Ax chooses (qLogNEI, qLogNEHVI for several objectives).

    Args:
        n_sobol: number of Sobol trials (``0``: Bayesian optimisation from the start;
            Ax needs at least one observation to fit the model).
        sobol_seed: seed of the Sobol sequence.
        botorch_acqf_class: optional BoTorch acquisition function class.
        optimizer_options: optional ``optimize_acqf`` keyword arguments for the BO
            step, e.g. ``{"num_restarts": 4, "raw_samples": 128}`` to make it cheaper.
        refit_on_cv: refit every cross-validation fold model (warm-started from the
            full model, ``n_epochs_warm_start`` epochs). Ax's default (``False``) only
            loads the full model's ``state_dict`` into each fold model. For the default
            random-feature networks that is a GP's fold: the loaded weights are
            conditioned on the fold's data at the full model's hyperparameters
            (``LaplaceBNN.load_state_dict``). An MLP's trained weights have seen the
            held-out point, so its fold means are optimistic (near-interpolating) and
            Ax's diagnostics, its best-point fit check and its model selection then
            overstate the fit (leave-one-out rank correlation 0.7-0.8 on pure noise):
            set ``True`` for MLPs, at one warm refit per fold and metric each time Ax
            cross-validates.
        input_transform_classes, input_transform_options: the model's input transforms,
            as in ``laplace_model_config`` (e.g. ``[Warp]``).
        **model_options: ``LaplaceBNN`` keyword options (``n_epochs``, ``width``,
            ``depth``, ``hessian_structure``, ``seed``, ...; see
            ``LAPLACE_MODEL_OPTIONS``).
    """
    _check_strategy_arguments(n_sobol, sobol_seed, botorch_acqf_class, optimizer_options,
                              refit_on_cv)
    struct = GenerationStrategyDispatchStruct(
        method="custom", initialization_budget=n_sobol,
        initialization_random_seed=sobol_seed, initialize_with_center=False,
    )
    gs = choose_generation_strategy(
        struct, model_config=laplace_model_config(
            input_transform_classes=input_transform_classes,
            input_transform_options=input_transform_options, **model_options),
        botorch_acqf_class=botorch_acqf_class,
    )
    for node in gs.nodes_by_name.values():
        for spec in node.generator_specs:
            if spec.generator_enum != Generators.BOTORCH_MODULAR:
                continue
            if refit_on_cv:
                spec.generator_kwargs["refit_on_cv"] = True
            if optimizer_options:
                spec.generator_gen_kwargs = {
                    "model_gen_options": {"optimizer_kwargs": dict(optimizer_options)}
                }
    return gs


def _check_strategy_arguments(n_sobol: Any, sobol_seed: Any, botorch_acqf_class: Any,
                              optimizer_options: Any, refit_on_cv: Any) -> None:
    """``laplace_generation_strategy``'s own arguments, checked before Ax sees them (a bad
    one otherwise fails only at the first BO step, after the Sobol trials ran)."""
    check_integer("n_sobol", n_sobol, minimum=0)
    if sobol_seed is not None:
        check_integer("sobol_seed", sobol_seed, minimum=-2**63, maximum=2**64 - 1)
    check_bool("refit_on_cv", refit_on_cv)
    if botorch_acqf_class is not None and not (
            isinstance(botorch_acqf_class, type)
            and issubclass(botorch_acqf_class, AcquisitionFunction)):
        raise ValueError("botorch_acqf_class must be a BoTorch AcquisitionFunction class "
                         f"(e.g. qLogNoisyExpectedImprovement), not {botorch_acqf_class!r}.")
    if optimizer_options is None:
        return
    if not isinstance(optimizer_options, dict):
        raise ValueError("optimizer_options must be a dict of optimize_acqf keyword "
                         f"arguments, not {optimizer_options!r}.")
    unknown = sorted(set(optimizer_options) - _OPTIMIZER_OPTIONS)
    if unknown:
        raise ValueError(f"Unknown optimizer_options {unknown}; optimize_acqf takes "
                         f"{sorted(_OPTIMIZER_OPTIONS)} (q, bounds and the acquisition "
                         "function are set by Ax).")
    for name in ("num_restarts", "raw_samples"):
        if name in optimizer_options:
            check_positive(f"optimizer_options[{name!r}]", optimizer_options[name],
                           integer=True)


#: ``optimize_acqf`` keywords a user may set through ``optimizer_options``.
_OPTIMIZER_OPTIONS = frozenset(inspect.signature(optimize_acqf).parameters) - {
    "acq_function", "bounds", "q"}


# ------------------------------------------------------- Ax dispatchers
def check_search_space_digest(ssd: SearchSpaceDigest) -> None:
    """Raise ``ValueError`` for search-space features a ``LaplaceBNN`` cannot model."""
    names = ssd.feature_names

    def _named(idx: list[int]) -> list[str]:
        return [names[i] if 0 <= i < len(names) else str(i) for i in idx]

    if ssd.categorical_features:
        raise ValueError(_CHOICE_HELP.format(names=_named(ssd.categorical_features)))
    if ssd.task_features:
        raise ValueError(
            f"LaplaceBNN is not a multi-task model (task features "
            f"{_named(ssd.task_features)}); use a multi-task GP for this experiment."
        )
    if ssd.fidelity_features:
        raise ValueError(
            f"LaplaceBNN is not a multi-fidelity model (fidelity features "
            f"{_named(ssd.fidelity_features)}); remove is_fidelity from the parameters."
        )
    if ssd.hierarchical_dependencies:
        raise ValueError(
            "LaplaceBNN does not support hierarchical search spaces; flatten the "
            "search space (all parameters always active)."
        )


@submodel_input_constructor.register(LaplaceBNN)
def _laplace_bnn_inputs(
    botorch_model_class: type[LaplaceBNN], model_config: ModelConfig,
    dataset: SupervisedDataset, search_space_digest: SearchSpaceDigest, surrogate: Surrogate,
) -> dict[str, Any]:
    """``LaplaceBNN`` keyword arguments from an Ax ``ModelConfig``.

    Replaces Ax's generic constructor, which looks the transform arguments up among the
    positional parameters of ``__init__`` (``LaplaceBNN`` takes them keyword-only) and
    passes search-space kwargs (``categorical_features``, ...) the model does not take.
    Without ``outcome_transform_classes`` the model keeps its default ``Standardize``.
    """
    check_search_space_digest(search_space_digest)
    if isinstance(dataset, MultiTaskDataset):
        raise ValueError("LaplaceBNN does not support multi-task datasets.")
    for attr in ("covar_module_class", "likelihood_class"):
        if getattr(model_config, attr) is not None:
            raise UserInputError(
                f"LaplaceBNN has no GP kernel or GPyTorch likelihood: leave "
                f"ModelConfig.{attr} unset."
            )
    if model_config.mll_class not in (None, ExactMarginalLogLikelihood):
        raise UserInputError(
            f"LaplaceBNN is fitted by its own Laplace marginal likelihood: leave "
            f"ModelConfig.mll_class unset (got {model_config.mll_class.__name__})."
        )
    if model_config.mll_options:
        raise UserInputError(
            "LaplaceBNN is fitted by its own marginal likelihood and takes no "
            "mll_options; put training options (n_epochs, marglik_steps, ...) in "
            "ModelConfig.model_options."
        )
    inputs = botorch_model_class.construct_inputs(
        training_data=dataset, **validate_model_options(model_config.model_options)
    )
    if model_config.input_transform_classes is not None:
        inputs["input_transform"] = _make_botorch_input_transform(
            input_transform_classes=model_config.input_transform_classes,
            input_transform_options=model_config.input_transform_options or {},
            dataset=dataset, search_space_digest=search_space_digest,
        )
    if model_config.outcome_transform_classes is not None:
        inputs["outcome_transform"] = _make_botorch_outcome_transform(
            outcome_transform_classes=model_config.outcome_transform_classes,
            outcome_transform_options=model_config.outcome_transform_options,
            dataset=dataset, search_space_digest=search_space_digest,
        )
    return inputs


@fit_botorch_model.register(LaplaceBNN)
def _fit_laplace_bnn(
    model: LaplaceBNN, mll_class: Any = None, mll_options: dict[str, Any] | None = None,
) -> None:
    """Ax's fit step for ``LaplaceBNN``: ``lapbo.training.fit_laplace_bnn(model)``.

    ``mll_class`` (Ax fills in ``ExactMarginalLogLikelihood``) is ignored: no GPyTorch
    MLL is built. The Laplace marginal likelihood refits prior precision and noise.

    At every generation Ax builds a fresh model (``state_dict=None``) and this trains it
    from scratch with ``n_epochs``. A model that already holds a fitted state was loaded
    by Ax from a previous model (cross-validation with ``refit_on_cv=True``, the only
    warm-started refit Ax does): it is refit as a warm start, ``n_epochs_warm_start``
    epochs from the loaded weights and hyperparameters.
    """
    warm = bool(getattr(model, "is_fitted", False)) and hasattr(model, "_warm")
    if warm:
        was_warm, model._warm = model._warm, True
        try:
            training.fit_laplace_bnn(model)
        finally:
            model._warm = was_warm
    else:
        training.fit_laplace_bnn(model)


register_model(LaplaceBNN)
