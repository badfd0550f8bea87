"""Batches and data loaders: ``(X, y)`` tuples or dict-like (Hugging Face) batches."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader

from laplace.utils.checks import finite_inputs
from laplace.utils.errors import MissingKeyError

Inputs = Tensor | Mapping[str, Any]


def split_batch(batch: Any, dict_key_x: str, dict_key_y: str) -> tuple[Inputs, Tensor]:
    """Return ``(X, y)`` of one batch.

    A dict-like batch (e.g. a Hugging Face ``BatchEncoding``) is passed to the model
    whole, as the model's input, and its targets are read from ``dict_key_y``.
    """
    if isinstance(batch, Mapping):
        if dict_key_y not in batch:
            raise MissingKeyError(
                f"Dict-like batch has no target key {dict_key_y!r} "
                f"(keys: {sorted(batch.keys())}); pass dict_key_y=... to Laplace."
            )
        return batch, batch[dict_key_y]
    if isinstance(batch, (tuple, list)) and len(batch) == 2:
        return batch[0], batch[1]
    if isinstance(batch, (tuple, list)):
        raise ValueError(
            f"Each batch must be an (X, y) pair; got {len(batch)} elements (as in "
            "laplace-torch, extra elements such as sample weights are not supported).")
    raise ValueError(
        "Each batch must be an (X, y) pair or a dict-like object with keys "
        f"{dict_key_x!r} and {dict_key_y!r}; got {type(batch).__name__}."
    )


def batch_size(X: Inputs, dict_key_x: str = "input_ids") -> int:
    """Number of data points in ``X`` (its leading dimension)."""
    if isinstance(X, Mapping):
        if dict_key_x not in X:
            raise MissingKeyError(
                f"Dict-like input has no key {dict_key_x!r} (keys: {sorted(X.keys())}); "
                "pass dict_key_x=... to Laplace."
            )
        return len(X[dict_key_x])
    return X.shape[0]


def inputs_to(X: Inputs, device: torch.device, name: str = "x") -> Inputs:
    """Move a tensor, or the tensors of a dict-like input, to ``device``.

    Raises:
        ValueError: a floating input holds NaN or inf (the error names ``name``).
    """
    if not isinstance(X, (Tensor, Mapping)):
        raise TypeError(f"{name} must be a tensor or a dict-like batch, got "
                        f"{type(X).__name__}.")
    finite_inputs(X, name)
    if isinstance(X, Mapping):
        return {k: (v.to(device) if isinstance(v, Tensor) else v) for k, v in X.items()}
    return X.to(device)


def state_to(state: Any, device: torch.device, dtype: torch.dtype) -> Any:
    """Move the tensors of a saved state (nested in lists, tuples and dicts) to ``device``,
    casting floating ones to ``dtype``, as ``nn.Module.load_state_dict`` copies a float64
    state into float32 parameters; integer tensors (indices, token ids) keep theirs."""
    if isinstance(state, Tensor):
        return state.to(device, dtype) if state.is_floating_point() else state.to(device)
    if isinstance(state, Mapping):
        return {k: state_to(v, device, dtype) for k, v in state.items()}
    if isinstance(state, (list, tuple)):
        return [state_to(s, device, dtype) for s in state]
    return state


def dataset_size(loader: Any) -> int:
    """The number of data points an epoch of ``loader`` yields: ``len(loader.dataset)``,
    or fewer for a torch ``DataLoader`` whose sampler covers part of the data (a
    ``SubsetRandomSampler``, a ``RandomSampler`` with ``num_samples``) or that drops the
    last partial batch (``drop_last=True``). laplace-torch counts ``len(dataset)`` in
    those cases too, which scales the prior against more data than the curvature holds.
    A clear error when the loader has no sized dataset or yields nothing."""
    try:
        n = len(loader.dataset)
    except (AttributeError, TypeError):
        raise ValueError(
            "The data loader must expose the number of data points as "
            "len(loader.dataset) (use a torch DataLoader)."
        ) from None
    if n == 0:
        raise ValueError("The data loader is empty: it has no data points to fit on.")
    if isinstance(loader, DataLoader) and loader.batch_size is not None:
        try:
            n = len(loader.sampler)
        except TypeError:  # an unsized sampler: only the data set's size is known
            return n
        if loader.drop_last:
            n -= n % loader.batch_size
        if n == 0:
            raise ValueError("The data loader yields no data points (its sampler covers none, "
                             "or drop_last drops its only, partial batch).")
    return n
