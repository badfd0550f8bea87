"""Argument checks of ``LaplaceBNN``: each raises ``ValueError`` naming the argument (the
warm-start and network checks return or raise the message that names what differs)."""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch
from botorch.exceptions.errors import BotorchTensorDimensionError, UnsupportedError
from botorch.exceptions.warnings import InputDataWarning
from botorch.models.transforms.input import AppendFeatures, InputTransform, Warp
from botorch.models.transforms.outcome import OutcomeTransform
from botorch.utils.types import DEFAULT
from torch import Tensor, nn

from lapbo import networks

if TYPE_CHECKING:
    from lapbo.training import TrainingOptions


def check_finite(name: str, value: Tensor | None) -> None:
    """``value`` has no NaN or infinite entry (``None`` passes)."""
    if value is None:
        return
    if not bool(torch.isfinite(value).all()):
        bad = int((~torch.isfinite(value)).sum())
        raise ValueError(f"{name} contains {bad} NaN or infinite value(s).")


def check_positive(name: str, value: Any, *, integer: bool = False) -> None:
    """``value`` is a finite number > 0 (an ``int`` with ``integer``)."""
    if integer and (isinstance(value, bool) or not isinstance(value, int)):
        raise ValueError(f"{name} must be a positive integer, not {value!r}.")
    if isinstance(value, (str, bytes)):  # float("0.1") parses, torch.full does not
        raise ValueError(f"{name} must be a positive number, not the string {value!r}.")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a positive number, not {value!r}.") from None
    if not math.isfinite(number) or number <= 0:
        kind = "integer" if integer else "finite number"
        raise ValueError(f"{name} must be a positive {kind}, not {value!r}.")


def check_non_negative(name: str, value: Tensor | float | None) -> None:
    """``value`` (a noise variance, or a tensor of them) is finite and ≥ 0."""
    if value is None or isinstance(value, bool):
        return
    tensor = torch.as_tensor(value)
    check_finite(name, tensor)
    if bool((tensor < 0).any()):
        raise ValueError(f"{name} must be non-negative (noise variances); got a minimum of "
                         f"{float(tensor.min()):.3g}.")


def check_training_data(train_X: Tensor, train_Y: Tensor, train_Yvar: Tensor | None) -> None:
    """``train_X`` ``(n, d)``, ``train_Y`` ``(n, m)`` and ``train_Yvar`` ``(n, m)``: finite,
    matching ``n``, non-negative variances, at least one point."""
    if train_X.ndim != 2:
        raise ValueError(f"train_X must be (n, d); got shape {tuple(train_X.shape)}.")
    if train_Y.ndim != 2:
        raise ValueError(f"train_Y must be (n, m); got shape {tuple(train_Y.shape)}.")
    if train_X.shape[0] != train_Y.shape[0]:
        raise ValueError(f"train_X has {train_X.shape[0]} points but train_Y has "
                         f"{train_Y.shape[0]}.")
    if train_X.shape[0] == 0:
        raise ValueError("train_X is empty: LaplaceBNN needs at least one training point.")
    if train_X.shape[1] == 0 or train_Y.shape[1] == 0:
        raise ValueError(f"train_X {tuple(train_X.shape)} and train_Y {tuple(train_Y.shape)} "
                         "need at least one input and one output column.")
    if train_Yvar is not None and train_Yvar.shape != train_Y.shape:
        raise ValueError(f"train_Yvar has shape {tuple(train_Yvar.shape)}; train_Y has "
                         f"{tuple(train_Y.shape)}.")
    check_floating("train_X", train_X)
    check_floating("train_Y", train_Y)
    if train_Yvar is not None:
        check_floating("train_Yvar", train_Yvar)
    for name, value in (("train_X", train_X), ("train_Y", train_Y), ("train_Yvar", train_Yvar)):
        if value is not None and value.dtype in (torch.float16, torch.bfloat16):
            raise ValueError(f"{name} is {value.dtype}: LaplaceBNN fits and predicts in "
                             "float32 or float64 (BoTorch's samplers do not run in half "
                             "precision).")
    check_finite("train_X", train_X)
    check_finite("train_Y", train_Y)
    check_non_negative("train_Yvar", train_Yvar)


class TensorShapeError(BotorchTensorDimensionError, ValueError):
    """A tensor of the wrong shape: BoTorch's ``BotorchTensorDimensionError`` (which its
    models raise for such inputs) and a ``ValueError`` (which this package raised before)."""


def check_query(name: str, X: Tensor, d: int | None) -> None:
    """A query ``(*b, q, d)``: at least one point, ``d`` features (any number for
    ``d=None``: the width is checked after the input transform), finite."""
    if X.ndim < 2 or (d is not None and X.shape[-1] != d):
        raise TensorShapeError(f"{name} must have shape (*batch, q, {'d' if d is None else d});"
                               f" got {tuple(X.shape)}.")
    if X.shape[-2] == 0:
        raise ValueError(f"{name} has no points (q = 0): shape {tuple(X.shape)}.")
    if X.numel() == 0:
        raise ValueError(f"{name} has an empty batch: shape {tuple(X.shape)}.")
    check_floating(name, X)
    if X.dtype in (torch.float16, torch.bfloat16):
        raise ValueError(f"{name} is {X.dtype}: LaplaceBNN predicts in float32 or float64.")
    check_finite(name, X)


def check_floating(name: str, value: Tensor) -> None:
    """``value`` is a floating-point tensor (integer inputs would be truncated)."""
    if not value.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor, not {value.dtype}.")


def check_integer(name: str, value: Any, minimum: int, maximum: int | None = None) -> None:
    """``value`` is an ``int`` (not a ``bool``) in ``[minimum, maximum]``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum \
            or (maximum is not None and value > maximum):
        upper = "" if maximum is None else f" and <= {maximum}"
        raise ValueError(f"{name} must be an integer >= {minimum}{upper}, not {value!r}.")


def check_bool(name: str, value: Any) -> None:
    """``value`` is ``True`` or ``False`` (not merely truthy)."""
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be True or False, not {value!r}.")


def check_generator(name: str, generator: Any, device: torch.device) -> None:
    """``None`` or a ``torch.Generator`` on ``device``'s type."""
    if generator is not None and not (isinstance(generator, torch.Generator)
                                      and generator.device.type == device.type):
        raise ValueError(f"{name} must be None or a torch.Generator on {device.type}, "
                         f"not {generator!r}.")


def check_seed(value: Any) -> None:
    """``seed`` is ``None`` or an integer that ``torch.manual_seed`` accepts."""
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or not -2**63 <= value < 2**64:
        raise ValueError(f"seed must be None or an integer in [-2**63, 2**64), not {value!r}.")


def check_noise_prior(value: Any) -> None:
    """``noise_prior`` is ``None``, ``(loc, scale)`` (log-normal: a finite location and
    scale > 0) or ``("gamma", α, β)``."""
    if value is None:
        return
    if not isinstance(value, (str, bytes)) and hasattr(value, "__len__") and len(value) == 3:
        check_hyperprior("noise_prior", value, ("gamma",))
        return
    if isinstance(value, (str, bytes)) or not hasattr(value, "__len__") or len(value) != 2:
        raise ValueError(f"noise_prior must be (loc, scale), ('gamma', α, β) or None, not "
                         f"{value!r}.")
    try:
        loc = float(value[0])
    except (TypeError, ValueError):
        raise ValueError(f"noise_prior loc must be a finite number, not {value[0]!r}.") from None
    if not math.isfinite(loc):
        raise ValueError(f"noise_prior loc must be a finite number, not {value[0]!r}.")
    check_positive("noise_prior scale", value[1])


def check_hyperprior(name: str, value: Any, families: Sequence[str]) -> tuple[Any, ...] | None:
    """A hyperprior option ``(family, a, b)`` with ``family`` in ``families``:
    ``("gamma", α > 0, β > 0)`` or ``("lognormal", finite loc, scale > 0)``; ``None``
    passes. Returns it as a tuple of the family and two floats."""
    if value is None:
        return None
    if isinstance(value, (str, bytes)) or not hasattr(value, "__len__") or len(value) != 3 \
            or value[0] not in families:
        forms = " or ".join(f"({f!r}, {'α, β' if f == 'gamma' else 'loc, scale'})"
                            for f in families)
        raise ValueError(f"{name} must be {forms} or None, not {value!r}.")
    if value[0] == "gamma":
        check_positive(f"{name} concentration", value[1])
    else:
        try:
            ok = math.isfinite(float(value[1]))
        except (TypeError, ValueError):
            ok = False
        if not ok:
            raise ValueError(f"{name} loc must be a finite number, not {value[1]!r}.")
    check_positive(f"{name} {'rate' if value[0] == 'gamma' else 'scale'}", value[2])
    return (value[0], float(value[1]), float(value[2]))


def check_outcome_transform(transform: Any) -> None:
    """``outcome_transform``: a BoTorch ``OutcomeTransform``, ``None`` or the default."""
    if transform is not None and transform is not DEFAULT and not isinstance(
            transform, OutcomeTransform):
        raise ValueError("outcome_transform must be a BoTorch OutcomeTransform or None, not "
                         f"{type(transform).__name__}.")


def transform_parts(transform: InputTransform) -> list[InputTransform]:
    """The transforms of a ``ChainedInputTransform``, or ``[transform]``."""
    return list(transform.values()) if hasattr(transform, "values") and callable(
        transform.values) else [transform]


def check_input_transform(transform: Any) -> None:
    """``LaplaceBNN`` transforms training inputs with ``preprocess_transform`` and queries
    as BoTorch's models do at evaluation, so transforms applied only at evaluation work:
    ``InputPerturbation`` (``q`` points become ``q·n_w``) and ``AppendFeatures`` (``q``
    points become ``q·n_f``, each with the feature set appended; with
    ``transform_on_train=False`` ``train_X`` carries those features already and a query
    does not: ``appends_features_at_evaluation``). Learnable parameters are refused but
    for a ``Warp``'s concentrations, which ``lapbo.warping`` fits."""
    if transform is None:
        return
    if not isinstance(transform, InputTransform):
        raise ValueError("input_transform must be a BoTorch InputTransform or None, not "
                         f"{type(transform).__name__}.")
    for part in transform_parts(transform):
        learnable = [n for n, p in part.named_parameters() if p.requires_grad] \
            if isinstance(part, nn.Module) else []
        if learnable and isinstance(part, Warp):
            if len(part.batch_shape) or part.reverse:
                raise ValueError(
                    "input_transform Warp with a batch_shape or reverse=True: LaplaceBNN "
                    "learns one forward warp of its inputs (lapbo.warping).")
        elif learnable:
            raise ValueError(
                f"input_transform {type(part).__name__} has learnable parameters "
                f"{learnable}, which LaplaceBNN would leave at their initial values (it fits "
                "the network, its Laplace hyperparameters and a Warp's concentrations, not "
                "this transform's): fix them (requires_grad_(False)) or use a transform "
                "without parameters.")


def appends_features_at_evaluation(transform: InputTransform | None) -> bool:
    """Whether ``transform`` widens queries but not the training inputs
    (``AppendFeatures(transform_on_train=False)``: ``train_X`` holds the appended columns,
    e.g. environmental variables, and a query ``(*b, q, d)`` has only the others)."""
    return transform is not None and any(
        isinstance(part, AppendFeatures) and part.transform_on_eval
        and not part.transform_on_train for part in transform_parts(transform))


def check_transformed_query(X: Tensor, X_tf: Tensor, width: int) -> None:
    """The input transform maps a query ``X`` ``(*b, q, d)`` to ``(*b, q', width)`` points
    (``width``: the network's inputs, the transformed training inputs' width)."""
    if X_tf.ndim != X.ndim or X_tf.shape[:-2] != X.shape[:-2]:
        raise ValueError(f"The input transform maps X {tuple(X.shape)} to "
                         f"{tuple(X_tf.shape)}; LaplaceBNN needs points with the batch "
                         "shape of X, (*batch, q', d').")
    if X_tf.shape[-1] != width:
        raise TensorShapeError(
            f"The input transform maps X {tuple(X.shape)} to {tuple(X_tf.shape)}, but the "
            f"network takes {width} inputs (the width of the transformed training inputs): "
            "query X with as many features as that needs.")
    bad = ~torch.isfinite(X_tf)
    if bool(bad.any()):
        raise ValueError(f"The input transform maps X to {int(bad.sum())} NaN or infinite "
                         "value(s) (e.g. Log10 at inputs <= 0): query X within the "
                         "transform's domain.")


def check_candidate_features(candidates: list[dict[str, Any]], net: Any,
                             random_features: int) -> None:
    """Every candidate that is a ``net="random_features"`` network has an even number of
    features > 0 (the option may come from the parent, e.g. the default family's)."""
    for i, options in enumerate(candidates):
        count = options.get("random_features", random_features)
        if options.get("net", net) == "random_features" and (count == 0 or count % 2):
            source = "" if "random_features" in options else (
                " (set on the model, it holds for every candidate of the default family)")
            raise ValueError(f"candidates[{i}] is a net='random_features' network, which needs "
                             f"an even random_features > 0 (cosine and sine pairs), not "
                             f"{count!r}{source}.")


def check_in_range(name: str, value: float, low: float, high: float) -> None:
    """``low ≤ value ≤ high`` (the bounds that the hyperparameter fits keep)."""
    if not low <= float(value) <= high:
        raise ValueError(f"{name} must lie in [{low:g}, {high:g}] (the bounds of its fit), "
                         f"not {value!r}.")


def check_hyperparameter(name: str, value: Any, shape: torch.Size, low: float,
                         high: float) -> Tensor:
    """A value assigned to ``LaplaceBNN.sigma_noise`` or ``prior_precision``: a real number
    or a tensor of ``shape`` (one value stands for all), finite, positive and within
    ``[low, high]`` (the bounds of its fit). Returned as a float64 tensor of ``shape``."""
    if isinstance(value, bool) or not isinstance(value, (int, float, Tensor)):
        raise ValueError(f"{name} must be a positive number or tensor, not {value!r}.")
    t = value.detach() if isinstance(value, Tensor) else torch.tensor(float(value),
                                                                   dtype=torch.float64)
    if t.is_complex() or t.dtype == torch.bool:
        raise ValueError(f"{name} must be real, not of dtype {t.dtype}.")
    t = t.to(torch.float64)
    if t.numel() != 1 and tuple(t.shape) != tuple(shape):
        raise ValueError(f"{name} must be one value or a tensor of shape {tuple(shape)}, "
                         f"not one of shape {tuple(t.shape)}.")
    if not bool(torch.isfinite(t).all()):
        raise ValueError(f"{name} must be finite, not {value!r}.")
    if float(t.min()) <= 0 or float(t.min()) < low or float(t.max()) > high:
        raise ValueError(f"{name} must be positive and lie in [{low:g}, {high:g}] (the "
                         f"bounds of its fit), not {value!r}.")
    return t.reshape(()).expand(shape).clone() if t.numel() == 1 else t.clone()


def check_output_indices(name: str, indices: Any, m: int) -> list[int]:
    """``indices``: a non-empty sequence of distinct output indices in ``[0, m)``."""
    try:
        out = [int(i) for i in indices]
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a list of output indices, not {indices!r}.") from None
    if not out:
        raise ValueError(f"{name} is empty: select at least one of the {m} output(s).")
    if any(i < 0 or i >= m for i in out) or any(float(a) != b for a, b in zip(indices, out)):
        raise ValueError(f"{name} must be indices in [0, {m}), not {list(indices)!r}.")
    if len(set(out)) != len(out):
        raise ValueError(f"{name} has repeated outputs: {out!r}.")
    return out


#: Network options that only initialise the weights: a warm start, which copies its
#: network's weights, may differ in them.
INITIALIZATION_OPTIONS = ("init_scale", "lengthscale_prior")


def architecture_mismatch(old: Any, new: Any) -> str:
    """The error for a ``warm_start`` whose network was built from other options."""
    if old is None:
        return ("warm_start's network was given as a module or factory (net=...); pass the "
                "same net, or no warm_start, to build a default network.")
    if old[0] != new[0]:
        return f"warm_start was built with net={old[0]!r}, this model with net={new[0]!r}."
    differ = {k: (old[1].get(k), v) for k, v in new[1].items() if old[1].get(k) != v}
    return ("warm_start's network was built with other options: "
            + ", ".join(f"{k}={a!r} there, {b!r} here" for k, (a, b) in differ.items())
            + " (a warm start copies its network).")


def check_network_options(init_scale: Any, lengthscale: Any, variance: Any,
                           activation: Any) -> None:
    """``init_scale``, ``random_feature_lengthscale`` (a number or ``(low, high)``),
    ``random_feature_variance`` and ``activation`` (a name or a sequence of names)."""
    if init_scale is not None:
        check_positive("init_scale", init_scale)
    scales = lengthscale if isinstance(lengthscale, (tuple, list)) else (lengthscale,)
    if len(scales) not in (1, 2):
        raise ValueError("random_feature_lengthscale must be a number or (low, high), not "
                         f"{lengthscale!r}.")
    for value in scales:
        check_positive("random_feature_lengthscale", value)
    check_positive("random_feature_variance", variance)
    names = (activation,) if isinstance(activation, str) else activation
    if not isinstance(names, (tuple, list)) or not all(isinstance(a, str) for a in names):
        raise ValueError(f"activation must be a name or a sequence of names, not {activation!r}.")


def check_bounds(options: TrainingOptions, prior_precision: float,
                  sigma_noise: float) -> None:
    """The starting hyperparameters and ``min_noise_std`` within the bounds of the fits."""
    check_in_range("min_noise_std", options.min_noise_std, 0.0,
                              options.max_noise_std)
    check_in_range("sigma_noise", sigma_noise, 0.0, options.max_noise_std)
    check_in_range("prior_precision", prior_precision,
                              options.min_prior_precision, options.max_prior_precision)


def check_network_outputs(net: nn.Module, X: Tensor, m: int) -> None:
    """``net`` maps ``X[:1]`` ``(1, d)`` to ``(1, m)`` outputs (one per column of
    ``train_Y``); run in eval mode and without gradients, so nothing it holds changes."""
    param = next(iter(net.parameters()), None)
    if param is None:
        raise ValueError("net has no parameters: LaplaceBNN needs trainable weights.")
    modes = [module.training for module in net.modules()]
    try:
        net.eval()
        with torch.no_grad():
            out = net(X[:1].to(param))
    except RuntimeError as error:  # e.g. a first layer of another input width
        raise ValueError(f"net cannot take the (n, {X.shape[-1]}) inputs of this model (after "
                         f"its input transform): {error}") from error
    finally:
        for module, mode in zip(net.modules(), modes):
            module.training = mode
    if not isinstance(out, Tensor) or out.shape != (1, m):
        shape = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
        raise ValueError(f"net must map (n, d) inputs to (n, {m}) outputs, one per column of "
                         f"train_Y; on one input it returns {shape}.")


def warn_small_known_noise(Yvar: Tensor | None, min_noise_std: float) -> None:
    """An ``InputDataWarning`` when a known noise variance ``(n, m)`` (standardized units,
    after the outcome transform) is below ``min_noise_std²``, to which the fits raise it
    (``training.floor_known_noise``)."""
    floor = min_noise_std**2
    if Yvar is not None and bool((Yvar < floor).any()):
        warnings.warn(f"train_Yvar has values below min_noise_std² = {floor:.3g} (in "
                      "standardized units); the model raises them to it, as GPyTorch "
                      "raises a fixed noise below settings.min_fixed_noise.",
                      InputDataWarning, stacklevel=3)


def check_model_options(options: dict[str, Any]) -> dict[str, Any]:
    """``LaplaceBNN``'s keyword options (name → value, as passed) checked by name; returns
    the ones a check normalises (``lengthscale_prior``, ``outputscale_prior``,
    ``prior_precision_reference``). ``UnsupportedError`` for a likelihood, weight subset or
    Hessian structure it does not offer, ``ValueError`` otherwise."""
    if options["likelihood"] != "regression":
        raise UnsupportedError("LaplaceBNN supports likelihood='regression' only.")
    if options["subset_of_weights"] not in ("all", "last_layer"):
        raise UnsupportedError(f"Unsupported subset_of_weights {options['subset_of_weights']!r}"
                               ": use 'all' or 'last_layer'.")
    if options["hessian_structure"] not in ("full", "kron", "diag"):
        raise UnsupportedError(
            f"Unsupported hessian_structure {options['hessian_structure']!r}.")
    for name in ("prior_precision", "sigma_noise", "min_noise_std", "lr", "trend_scale",
                 "marglik_lr"):
        check_positive(name, options[name])
    if options["prior_precision_prior"] is not None:
        check_positive("prior_precision_prior", options["prior_precision_prior"])
    reference = options["prior_precision_reference"]
    if isinstance(reference, (list, tuple)):
        reference = tuple(reference)
        for value in reference:
            check_positive("prior_precision_reference", value)
    elif reference is not None:
        check_positive("prior_precision_reference", reference)
    if options["reference_dim"] is not None:
        check_positive("reference_dim", options["reference_dim"])
    for name in ("keep_best", "model_averaging", "tune_noise"):
        check_bool(name, options[name])
    check_seed(options["seed"])
    check_network_options(options["init_scale"], options["random_feature_lengthscale"],
                          options["random_feature_variance"], options["activation"])
    if options["compute_dtype"] not in (torch.float32, torch.float64):
        raise ValueError(f"compute_dtype must be torch.float32 or torch.float64, not "
                         f"{options['compute_dtype']!r}.")
    for name in ("n_epochs", "n_epochs_warm_start", "width", "depth"):
        check_positive(name, options[name], integer=True)
    if options["net"] is None:  # the default network's architecture (built at fit)
        networks.hidden_activations(options["activation"], options["depth"])
        if options["input_map"] not in networks.InputMap.kinds:
            raise ValueError(f"Unknown input map {options['input_map']!r}; choose from "
                             f"{networks.InputMap.kinds}.")
    for name in ("marglik_every", "marglik_steps", "final_marglik_steps", "random_features"):
        value = options[name]
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"{name} must be a non-negative integer, not {value!r}.")
    if options["optimizer"] not in ("lbfgs", "adam"):
        raise ValueError(f"optimizer must be 'lbfgs' or 'adam', not {options['optimizer']!r}.")
    check_noise_prior(options["noise_prior"])
    normalised = {
        "lengthscale_prior": check_hyperprior("lengthscale_prior",
                                              options["lengthscale_prior"],
                                              ("gamma", "lognormal")),
        "outputscale_prior": check_hyperprior("outputscale_prior",
                                              options["outputscale_prior"], ("gamma",)),
        "prior_precision_reference": reference,
    }
    net = options["net"]
    if isinstance(net, str) and net != "random_features":
        raise ValueError(f"net must be an nn.Module, a factory, None or "
                         f"'random_features', not {net!r}.")
    if options["random_feature_kernel"] not in networks.RANDOM_FEATURE_KERNELS:
        raise ValueError(f"random_feature_kernel must be one of "
                         f"{list(networks.RANDOM_FEATURE_KERNELS)}, not "
                         f"{options['random_feature_kernel']!r}.")
    if options["trend"] not in (None, "quadratic"):
        raise ValueError(f"trend must be None or 'quadratic', not {options['trend']!r}.")
    features = options["random_features"]
    if net == "random_features" and (features == 0 or features % 2):
        raise ValueError("net='random_features' needs an even random_features > 0 (cosine "
                         f"and sine pairs), not {features!r}.")
    for name, allowed in (("mean", ("map", "linearized")),
                          ("prior_structure", ("scalar", "layerwise")),
                          ("prior_mean", ("zero", "init"))):
        if options[name] not in allowed:
            raise ValueError(f"{name} must be {' or '.join(map(repr, allowed))}, not "
                             f"{options[name]!r}.")
    return normalised
