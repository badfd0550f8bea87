"""Validation of user-supplied arguments: each check names the argument it refuses.

Hyperparameters are checked on their detached values, so tensors that carry
gradients (marginal-likelihood tuning) pass through unchanged.
"""

from __future__ import annotations

import numbers
import warnings
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from laplace.utils.errors import MissingKeyError


def _is_real_number(value: Any) -> bool:
    """A real Python/NumPy number that is not a ``bool``."""
    if isinstance(value, (bool, np.bool_)):
        return False
    return isinstance(value, numbers.Real)


def _as_real_tensor(value: Any, name: str, device: torch.device, dtype: torch.dtype) -> Tensor:
    """``value`` as a real floating tensor on ``device``; numbers give 0-d tensors.

    Raises:
        ValueError: ``value`` is neither a real number nor a real tensor.
    """
    if isinstance(value, Tensor):
        if value.dtype == torch.bool or value.is_complex():
            raise ValueError(f"{name} must be a real tensor, got dtype {value.dtype}.")
        return value.to(device=device, dtype=dtype)
    if _is_real_number(value):
        return torch.tensor(float(value), device=device, dtype=dtype)
    raise ValueError(f"{name} must be a float or a torch.Tensor, got {type(value).__name__}.")


def _require_positive(value: Tensor, name: str, allow_zero: bool = False) -> None:
    v = value.detach()
    if not bool(torch.isfinite(v).all()):
        raise ValueError(f"{name} must be finite, got {_show(v)}.")
    bad = (v < 0) if allow_zero else (v <= 0)
    if bool(bad.any()):
        kind = "non-negative" if allow_zero else "positive"
        raise ValueError(f"{name} must be {kind}, got {_show(v)}.")


def _show(v: Tensor) -> str:
    if v.numel() == 1:
        return f"{v.item():.4g}"
    return f"a tensor with entries {v.flatten()[:4].tolist()}"


def positive_scalar(
    value: Any, name: str, device: torch.device, dtype: torch.dtype
) -> Tensor:
    """A positive finite scalar as a 0-d tensor (from a number, 0-d or ``(1,)`` tensor)."""
    t = _as_real_tensor(value, name, device, dtype)
    if t.ndim > 1 or t.numel() != 1:
        raise ValueError(
            f"{name} must be a scalar (a float, 0-d or one-element tensor), got shape "
            f"{tuple(t.shape)}."
        )
    t = t.reshape(())
    _require_positive(t, name)
    return t


def positive_float(value: Any, name: str) -> float:
    """A positive finite Python float (from a number or a one-element tensor)."""
    t = _as_real_tensor(value, name, torch.device("cpu"), torch.float64)
    if t.numel() != 1:
        raise ValueError(f"{name} must be a scalar, got shape {tuple(t.shape)}.")
    _require_positive(t, name)
    return float(t)


def precision_vector(
    value: Any, name: str, lengths: list[tuple[int, str]], device: torch.device,
    dtype: torch.dtype, note: str = "",
) -> Tensor:
    """A non-negative finite vector ``(L,)`` whose length ``L`` is one of ``lengths``.

    Args:
        lengths: allowed ``(length, meaning)`` pairs, the scalar ``(1, "a scalar")`` first.
        note: appended to the error message (why other lengths are refused).
    """
    t = _as_real_tensor(value, name, device, dtype)
    if t.ndim == 0:
        t = t.reshape(1)
    if t.ndim != 1 or t.numel() not in {n for n, _ in lengths}:
        parts = [what if n == 1 else f"{what} ({n})" for n, what in lengths]
        choices = parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " or " + parts[-1]
        raise ValueError(f"{name} of shape {tuple(t.shape)} must be {choices}{note}.")
    _require_positive(t, name, allow_zero=True)
    return t


def mean_vector(
    value: Any, name: str, length: int, device: torch.device, dtype: torch.dtype
) -> Tensor:
    """A finite scalar (returned 0-d) or a vector of exactly ``length`` values ``(length,)``."""
    t = _as_real_tensor(value, name, device, dtype)
    if t.ndim > 1 or t.numel() not in (1, length):
        raise ValueError(
            f"{name} of shape {tuple(t.shape)} must be a scalar or a vector of one value "
            f"per parameter ({length},)."
        )
    if not bool(torch.isfinite(t.detach()).all()):
        raise ValueError(f"{name} must be finite.")
    return t.reshape(()) if t.numel() == 1 else t


def positive_int(value: Any, name: str) -> int:
    """A Python ``int`` ≥ 1 (integral NumPy/tensor scalars accepted, ``bool`` refused)."""
    if isinstance(value, Tensor) and value.numel() == 1 and not value.is_floating_point():
        value = int(value)
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        raise ValueError(f"{name} must be a positive integer, got {value!r}.")
    if int(value) < 1:
        raise ValueError(f"{name} must be a positive integer, got {int(value)}.")
    return int(value)


def flag(value: Any, name: str) -> bool:
    """A bool (NumPy bools and the integers 0 and 1 accepted): ``"no"`` is not true."""
    if isinstance(value, (bool, np.bool_)) or (isinstance(value, numbers.Integral)
                                                and int(value) in (0, 1)):
        return bool(value)
    raise ValueError(f"{name} must be a bool, got {value!r}.")


def fit_flags(override: Any, progress_bar: Any) -> tuple[bool, bool]:
    """``fit``'s ``override`` and ``progress_bar``, each a bool (``flag``)."""
    return flag(override, "override"), flag(progress_bar, "progress_bar")


def torch_module(model: Any, name: str = "model") -> None:
    """Refuse a ``model`` that is not an ``nn.Module`` (before its methods are used)."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"{name} must be a torch.nn.Module, got {type(model).__name__}.")


def dict_key(key: Any, name: str) -> str:
    """A key of dict-like (Hugging Face) batches: a string."""
    if not isinstance(key, str):
        raise ValueError(f"{name} must be a string (a key of dict-like batches), got {key!r}.")
    return key


def keyword_dict(value: Any, name: str) -> dict[str, Any]:
    """A copy of keyword arguments passed on (``None``: none)."""
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ValueError(f"{name} must be a dict of keyword arguments, got {value!r}.")
    return dict(value)


def ignored_keywords(kwargs: dict[str, Any], where: str) -> None:
    """Warn about keyword arguments that ``where`` accepts for compatibility but does
    not use (a misspelt ``n_sample=10`` would otherwise fall back to the default)."""
    if kwargs:
        warnings.warn(f"{where} ignores the keyword arguments {sorted(kwargs)}.",
                      UserWarning, stacklevel=3)


def random_generator(generator: Any, device: torch.device) -> None:
    """``generator`` is ``None`` or a ``torch.Generator`` on ``device``'s type (laplace-torch's
    message)."""
    if generator is None:
        return
    if not isinstance(generator, torch.Generator) or \
            generator.device.type != torch.device(device).type:
        raise ValueError("Invalid random generator (check type and device): generator must "
                         f"be a torch.Generator on {torch.device(device).type}, not "
                         f"{generator!r}.")


def finite_outputs(out: Tensor, what: str = "The model's output at x") -> None:
    """Refuse NaN/inf in model outputs computed from finite inputs (a network that is not
    defined there, e.g. ``sqrt`` of a negative input): its predictive would be NaN."""
    bad = ~torch.isfinite(out.detach())
    if bool(bad.any()):
        raise ValueError(f"{what} contains NaN or inf ({int(bad.sum())} of {out.numel()} "
                         "entries) although the inputs are finite.")


def finite_loss(loss: Tensor, index: int | None) -> None:
    """Refuse a non-finite loss of fit batch ``index`` (``None``: of all batches) (the
    model's outputs are NaN/inf at finite inputs): its curvature would be NaN too."""
    if not bool(torch.isfinite(torch.as_tensor(loss)).all()):
        where = "The training" if index is None else f"Batch {index}: the"
        raise ValueError(f"{where} loss is {float(loss)}: the model's outputs "
                         "contain NaN or inf at finite inputs.")


def class_logits(n_outputs: int) -> None:
    """Classification needs one logit per class: a single output is a one-class softmax
    (every prediction 1), not a sigmoid."""
    if n_outputs < 2:
        raise ValueError(f"classification needs one logit per class (at least 2 model "
                         f"outputs), the model gives {n_outputs}: for a binary task use two "
                         "logits.")


def class_labels(y: Tensor, index: int) -> Tensor:
    """Integer class labels as ``long`` (the losses need it); ``bool`` labels refused."""
    if y.dtype == torch.bool:
        raise ValueError(f"Batch {index}: classification targets must be integer class "
                         "indices, got torch.bool.")
    return y if y.is_floating_point() or y.dtype == torch.long else y.long()


def finite_inputs(X: Any, name: str = "x") -> None:
    """Refuse NaN/inf in a floating input tensor (or in the tensors of a dict input)."""
    tensors = X.items() if isinstance(X, Mapping) else [(None, X)]
    for key, t in tensors:
        if isinstance(t, Tensor) and t.is_floating_point():
            bad = ~torch.isfinite(t.detach())
            if bool(bad.any()):
                where = name if key is None else f"{name}[{key!r}]"
                raise ValueError(
                    f"Input {where} contains NaN or inf ({int(bad.sum())} of {t.numel()} "
                    "entries)."
                )


def jacobians(Js: Any, n_params: int, dtype: torch.dtype, name: str = "Js") -> None:
    """``functional_variance``/``functional_covariance`` take one ``(K, P)`` Jacobian per
    point, ``(n, K, P)`` in the LA's dtype (a reshape or matmul error otherwise)."""
    if not isinstance(Js, Tensor) or Js.ndim != 3 or Js.shape[-1] != n_params:
        shape = tuple(Js.shape) if isinstance(Js, Tensor) else type(Js).__name__
        raise ValueError(f"{name} of shape {shape} must be a tensor (n, K, {n_params}): one "
                         f"(outputs, parameters) Jacobian per point.")
    if Js.dtype != dtype:
        raise ValueError(f"{name} is {Js.dtype}, the posterior {dtype}: pass Jacobians in "
                         "the model's dtype.")


def _leading_size(X: Any, dict_key_x: str) -> int | None:
    t = X.get(dict_key_x) if isinstance(X, Mapping) else X
    return t.shape[0] if isinstance(t, Tensor) and t.ndim > 0 else None


def batch_output(X: Any, out: Tensor, dict_key_x: str = "input_ids") -> None:
    """The model output ``out`` must have the batch size of ``X`` as its first dimension.

    Raises:
        ValueError: e.g. a single point ``(d,)`` given without its batch dimension.
    """
    n = _leading_size(X, dict_key_x)
    if n is not None and (out.ndim == 0 or out.shape[0] != n):
        shape = tuple(X.shape) if isinstance(X, Tensor) else f"{dict_key_x}={n}"
        raise ValueError(
            f"Input x of shape {shape} gave a model output of shape {tuple(out.shape)}: the "
            f"first dimension of x is the batch ({n} points), the output must have it too. "
            "Pass one point as x[None]."
        )


def pair_output(X: Any, out: Tensor) -> None:
    """``reward_modeling`` fits on pair batches: the output is ``(batch, 2)``, one reward
    per item of each pair (the two-class logits of the preference)."""
    if out.ndim != 2 or out.shape[1] != 2:
        shape = tuple(X.shape) if isinstance(X, Tensor) else "a dict"
        raise ValueError(
            f"reward_modeling fits on pair batches: x of shape {shape} gave a model output "
            f"of shape {tuple(out.shape)}, not (batch, 2) (one reward per item of each "
            "pair); pass x of shape (batch, 2, ...) with labels in {0, 1}."
        )


def _prod(shape: tuple[int, ...]) -> int:
    out = 1
    for s in shape:
        out *= s
    return out


def fit_targets(y: Tensor, n: int, output_shape: tuple[int, ...], regression: bool,
                index: int) -> None:
    """The targets ``y`` of fit batch ``index`` for ``n`` inputs whose model output per
    input has shape ``output_shape`` (``(K,)`` or ``(..., K)``): finite regression targets
    with one value per output, or integer class labels in ``[0, K)`` (one per input, or
    one per position of a sequence output).

    Raises:
        ValueError: naming the batch and what does not match.
    """
    if y.shape[0] != n:
        raise ValueError(f"Batch {index}: {y.shape[0]} targets for {n} inputs.")
    if regression:
        if not bool(torch.isfinite(y).all()):
            raise ValueError(f"Batch {index}: regression targets contain NaN or inf.")
        expected = (n, *output_shape)
        if y.numel() != n * _prod(output_shape) or (y.ndim > 1 and tuple(y.shape) != expected):
            raise ValueError(f"Batch {index}: targets of shape {tuple(y.shape)} do not match "
                             f"model outputs of shape {expected}.")
        return
    if y.is_floating_point() or y.dtype == torch.bool:
        raise ValueError(f"Batch {index}: classification targets must be integer class "
                         f"indices, got {y.dtype} (NaN-free integer labels expected).")
    if y.numel() != n * _prod(output_shape[:-1]):
        raise ValueError(f"Batch {index}: targets of shape {tuple(y.shape)} do not match "
                         f"logits of shape {(n, *output_shape)}.")
    if bool((y < 0).any()) or bool((y >= output_shape[-1]).any()):
        raise ValueError(f"Batch {index}: class labels must lie in [0, {output_shape[-1] - 1}].")


def validation_targets(y: Tensor, prediction: Tensor, regression: bool, index: int) -> None:
    """Targets of validation batch ``index`` against the predictive mean (``regression``)
    or class probabilities ``prediction`` ``(n, ...)``: one row per input; finite
    regression targets with one value per output; integer class labels within the
    classes (float targets, e.g. soft labels for a custom loss, pass).

    Raises:
        ValueError: naming the validation batch and what does not match.
    """
    n = prediction.shape[0]
    if y.ndim == 0 or y.shape[0] != n:
        raise ValueError(f"Validation batch {index}: targets of shape {tuple(y.shape)} for "
                         f"{n} inputs.")
    if y.is_floating_point() and not bool(torch.isfinite(y).all()):
        raise ValueError(f"Validation batch {index}: targets contain NaN or inf.")
    if regression:
        if y.numel() != prediction.numel():
            raise ValueError(f"Validation batch {index}: targets of shape {tuple(y.shape)} do "
                             f"not match predictions of shape {tuple(prediction.shape)}.")
        return
    if not y.is_floating_point() and prediction.ndim > 1 and (
            bool((y < 0).any()) or bool((y >= prediction.shape[-1]).any())):
        raise ValueError(f"Validation batch {index}: class labels must lie in "
                         f"[0, {prediction.shape[-1] - 1}].")


def state_fit_record(state: Mapping[str, Any], into: str) -> None:
    """A saved state's record of its fit: a finite scalar ``loss``, a positive integer
    ``n_data`` and ``n_outputs``, and an ``output_shape`` (where present) of positive
    integers ending in ``n_outputs``; ``ValueError`` naming the entry otherwise (a wrong
    count scales the prior and the evidence, a NaN loss makes the evidence NaN)."""
    loss = state["loss"]
    numeric = isinstance(loss, (Tensor, int, float)) and not isinstance(loss, bool)
    if not numeric or torch.as_tensor(loss).numel() != 1 \
            or not bool(torch.isfinite(torch.as_tensor(loss))):
        raise ValueError(f"The state's loss must be a finite scalar, not {loss!r}: cannot be "
                         f"loaded into {into}.")
    for name in ("n_data", "n_outputs"):
        value = state[name]
        if isinstance(value, Tensor) and value.numel() == 1 and not value.is_floating_point():
            value = int(value)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"The state's {name} must be a positive integer, not {value!r}: "
                             f"cannot be loaded into {into}.")
    shape = state.get("output_shape")
    if shape is not None and (not isinstance(shape, (list, tuple)) or not shape
                              or not all(isinstance(k, int) and k >= 1 for k in shape)
                              or shape[-1] != int(state["n_outputs"])):
        raise ValueError(f"The state's output_shape {shape!r} must be positive integers ending "
                         f"in n_outputs = {state['n_outputs']}: cannot be loaded into {into}.")


def state_keys(state: Any, keys: tuple[str, ...], into: str) -> None:
    """``state`` is a ``state_dict`` (a mapping) with ``keys``, to be loaded into ``into``."""
    if not isinstance(state, Mapping):
        raise ValueError(f"state_dict must be a dict saved by state_dict(), not "
                         f"{type(state).__name__}, to load into {into}.")
    missing = [k for k in keys if k not in state]
    if missing:
        raise MissingKeyError(f"The state lacks {missing}: not a state_dict() of a Laplace "
                              f"approximation, cannot be loaded into {into}.")
