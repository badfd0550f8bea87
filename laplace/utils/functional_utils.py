"""The input and sampling helpers that laplace-torch 0.3 exports from ``laplace.utils``.

Code written against laplace-torch imports them (``from laplace.utils import
split_batch, draw_gaussian``); the estimators of this package use ``laplace.utils.data``
and their own samplers. Batches are tensors with the data along dimension 0, dict-like
(Hugging Face) batches of them, or lists/tuples with one entry per row.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import (
    DataLoader,
    RandomSampler,
    SequentialSampler,
    Subset,
    SubsetRandomSampler,
)

from laplace.utils import checks, data

__all__ = [
    "batch_size",
    "classification_targets",
    "concatenate_rows",
    "draw_gaussian",
    "preserve_model_gradients",
    "regression_targets",
    "same_configuration",
    "select_rows",
    "split_batch",
    "subset_loader",
    "to_device",
    "training_indices",
]


def preserve_model_gradients(method: Callable[..., Any]) -> Callable[..., Any]:
    """Decorate a method of an object with a ``model`` so that the ``.grad`` of every
    model parameter (``None`` included) is the same after the call as before, whether
    it returns or raises (Jacobian computations accumulate into them)."""

    @functools.wraps(method)
    def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
        saved = [(p, None if p.grad is None else p.grad.detach().clone())
                 for p in self.model.parameters()]
        try:
            return method(self, *args, **kwargs)
        finally:
            for p, grad in saved:
                p.grad = grad

    return wrapper


def same_configuration(left: Any, right: Any) -> bool:
    """Whether two (nested) settings are equal: tensors by ``torch.equal``, mappings by
    keys and values, lists/tuples of the same type element by element, else ``==``."""
    if isinstance(left, Tensor) or isinstance(right, Tensor):
        return isinstance(left, Tensor) and isinstance(right, Tensor) \
            and torch.equal(left, right)
    if isinstance(left, Mapping) and isinstance(right, Mapping):
        return left.keys() == right.keys() and all(
            same_configuration(left[k], right[k]) for k in left)
    if isinstance(left, (list, tuple)) and isinstance(right, type(left)):
        return len(left) == len(right) and all(map(same_configuration, left, right))
    return bool(left == right)


def _psd_root(covariance: Tensor) -> Tensor:
    """``L`` with ``L Lᵀ = covariance`` for a symmetric positive semi-definite batch
    ``(*b, n, n)``: Cholesky; for a singular one without gradients the eigenvector root,
    for one that needs gradients a Cholesky factor after a jitter of a few ε.

    Raises:
        torch.linalg.LinAlgError: an eigenvalue below ``−10·n·ε·λmax`` (not rounding).
        RuntimeError: no jitter up to ``100 ε`` of the diagonal made it factorisable.
    """
    chol, info = torch.linalg.cholesky_ex(covariance)
    if not bool((info != 0).any()):
        return chol
    eps = torch.finfo(covariance.dtype).eps
    lam, Q = torch.linalg.eigh(covariance.detach())
    tolerance = 10 * eps * covariance.shape[-1] * lam.abs().amax(-1, keepdim=True)
    if bool((lam < -tolerance).any()):
        raise torch.linalg.LinAlgError(
            f"draw_gaussian: the covariance is not positive semi-definite (eigenvalue "
            f"{float(lam.min()):.3g})."
        )
    if not covariance.requires_grad:
        return Q * lam.clamp(min=0).sqrt().unsqueeze(-2)
    scale = covariance.detach().diagonal(dim1=-2, dim2=-1).abs().amax(-1)
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    shift = (-lam.amin(-1)).clamp(min=0)  # lift the rounding negatives first
    eye = torch.eye(covariance.shape[-1], dtype=covariance.dtype, device=covariance.device)
    for multiple in (1.0, 10.0, 100.0):
        jitter = (shift + multiple * eps * scale)[..., None, None]
        chol, info = torch.linalg.cholesky_ex(covariance + jitter * eye)
        if not bool((info != 0).any()):
            return chol
    raise RuntimeError("draw_gaussian: could not factorise a covariance that requires "
                       "gradients, even with a jitter of 100 ε.")


def draw_gaussian(mean: Tensor, covariance: Tensor, n_samples: int,
                  generator: torch.Generator | None) -> Tensor:
    """Draws from ``N(mean, covariance)``, which may be singular.

    Args:
        mean: ``(B, C)`` with covariances ``(B, C, C)``, or a joint ``(B·C,)`` with
            ``(B·C, B·C)``.
        generator: for the standard-normal draws (on ``mean``'s device).

    Returns:
        ``(n_samples, B, C)`` or ``(n_samples, B·C)``; differentiable in ``mean`` and
        ``covariance``.
    """
    n_samples = checks.positive_int(n_samples, "n_samples")
    expected = (mean.shape[0], mean.shape[0]) if mean.ndim == 1 else (*mean.shape, mean.shape[-1])
    if mean.ndim not in (1, 2) or tuple(covariance.shape) != expected:
        raise ValueError(f"draw_gaussian: covariance of shape {tuple(covariance.shape)} does "
                         f"not match mean of shape {tuple(mean.shape)} (expected {expected}).")
    root = _psd_root((covariance + covariance.mT) / 2)
    noise = torch.randn(n_samples, *mean.shape, generator=generator, device=mean.device,
                        dtype=mean.dtype)
    if mean.ndim == 1:
        return mean + noise @ root.mT
    return mean + torch.einsum("bij,sbj->sbi", root, noise)


def to_device(value: Any, device: torch.device, dtype: torch.dtype) -> Any:
    """``value`` (a tensor, or mappings/lists/tuples of them) on ``device``, its
    floating-point tensors in ``dtype`` (integer tensors keep theirs; other values pass)."""
    if isinstance(value, Tensor):
        return value.to(device=device, dtype=dtype if value.is_floating_point() else None)
    if isinstance(value, Mapping):
        return {k: to_device(v, device, dtype) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(to_device(v, device, dtype) for v in value)
    return value


def split_batch(batch: Any, dict_key_y: str) -> tuple[Any, Tensor]:
    """``(inputs, targets)`` of a loader batch: an ``(X, y)`` pair, or a dict-like batch
    (the model's input, whole) with its targets under ``dict_key_y``."""
    return data.split_batch(batch, "input_ids", dict_key_y)


def regression_targets(targets: Tensor, outputs: Tensor) -> Tensor:
    """``targets`` shaped as ``outputs`` ``(B, C)``: ``(B,)`` targets of a one-output
    model become ``(B, 1)``; any other mismatch raises ``ValueError`` (no broadcasting)."""
    if targets.ndim == 1 and outputs.ndim == 2 and outputs.shape[1] == 1:
        targets = targets[:, None]
    if targets.shape != outputs.shape:
        raise ValueError(f"Regression targets of shape {tuple(targets.shape)} do not match "
                         f"model outputs of shape {tuple(outputs.shape)}.")
    return targets


def classification_targets(targets: Tensor) -> Tensor:
    """Class indices ``(B,)`` (``long``) from indices ``(B,)``, a column ``(B, 1)`` or
    one-hot rows ``(B, C)``; ``ValueError`` for other shapes."""
    if targets.ndim == 2:
        targets = targets[:, 0] if targets.shape[1] == 1 else targets.argmax(-1)
    if targets.ndim != 1:
        raise ValueError(f"Classification targets must have shape (B,) or (B, C), not "
                         f"{tuple(targets.shape)}.")
    return targets.long()


def _sampled_rows(loader: DataLoader) -> list[int]:
    """The dataset rows ``loader`` visits, read without drawing from its generator
    where the sampler says which rows they are."""
    batches = loader.batch_sampler
    sampler = loader.sampler if batches is None else getattr(batches, "sampler", None)
    n = len(loader.dataset)
    if sampler is None:  # a custom batch sampler: iterate it once
        return [int(i) for batch in batches for i in batch]
    if isinstance(sampler, SequentialSampler):
        if not getattr(batches, "drop_last", False):
            return list(range(n))
        size = getattr(batches, "batch_size", None)
        if isinstance(size, bool) or not isinstance(size, int) or size <= 0:
            raise ValueError("A batch sampler with drop_last needs a positive batch_size.")
        return list(range(len(batches) * size))
    if isinstance(sampler, RandomSampler) and not sampler.replacement \
            and sampler.num_samples == n:
        return list(range(n))  # every row, in an order that does not matter here
    if isinstance(sampler, SubsetRandomSampler):
        return [int(i) for i in sampler.indices]
    return [int(i) for i in sampler]


def training_indices(loader: DataLoader) -> Tensor:
    """The dataset indices ``(n,)`` (``long``) a training loader's sampler can visit.

    Raises:
        ValueError: the sampler visits no row, or an index outside the dataset.
    """
    indices = torch.as_tensor(_sampled_rows(loader), dtype=torch.long).reshape(-1)
    if indices.numel() == 0:
        raise ValueError("The training loader's sampler visits no rows.")
    if bool((indices < 0).any()) or bool((indices >= len(loader.dataset)).any()):
        raise ValueError("The training loader's sampler yields an index outside its "
                         f"dataset of {len(loader.dataset)} rows.")
    return indices


def subset_loader(loader: DataLoader, indices: Tensor) -> DataLoader:
    """A loader over the rows ``indices`` of ``loader``'s dataset, in that order, with
    its batch size and ``collate_fn`` (not shuffled)."""
    size = loader.batch_size or getattr(loader.batch_sampler, "batch_size", 1)
    return DataLoader(Subset(loader.dataset, [int(i) for i in indices.reshape(-1)]),
                      batch_size=size, shuffle=False, collate_fn=loader.collate_fn)


def batch_size(inputs: Any, dict_key_x: str) -> int:
    """The number of rows of a tensor batch, or of ``inputs[dict_key_x]``."""
    return int(data.batch_size(inputs, dict_key_x))


def concatenate_rows(chunks: list[Any]) -> Any:
    """The batches ``chunks`` joined row-wise: tensors along dimension 0, mappings key by
    key, lists/tuples (one entry per row) end to end; other values must agree and are
    kept once.

    Raises:
        ValueError: mappings with different keys, or constant values that differ.
    """
    if not chunks:
        raise ValueError("concatenate_rows needs at least one batch.")
    first = chunks[0]
    if isinstance(first, Tensor):
        return torch.cat(list(chunks), dim=0)
    if isinstance(first, Mapping):
        if any(c.keys() != first.keys() for c in chunks):
            raise ValueError("concatenate_rows: the mapping batches have different keys.")
        return {k: concatenate_rows([c[k] for c in chunks]) for k in first}
    if isinstance(first, (list, tuple)):
        return type(first)(row for c in chunks for row in c)
    if any(c != first for c in chunks[1:]):
        raise ValueError("concatenate_rows: a value without rows differs between batches.")
    return first


def select_rows(inputs: Any, indices: Tensor, batch_size: int) -> Any:
    """The rows ``indices`` of a batch of ``batch_size`` rows: tensors and lists/tuples
    whose leading length is ``batch_size`` are indexed (mappings key by key); other
    values are kept as they are."""
    if isinstance(inputs, Mapping):
        return {k: select_rows(v, indices, batch_size) for k, v in inputs.items()}
    if isinstance(inputs, Tensor):
        return inputs[indices] if inputs.ndim and inputs.shape[0] == batch_size else inputs
    if isinstance(inputs, (list, tuple)) and len(inputs) == batch_size:
        return type(inputs)(inputs[int(i)] for i in indices.reshape(-1))
    return inputs
