"""Per-sample maps: ``vmap`` where ``torch.func`` can batch the model, a loop where not.

``torch.func`` has no batching rule for the fused recurrent kernels of ``nn.RNN``,
``nn.GRU`` and ``nn.LSTM``, and ``vmap`` refuses models whose forward branches on tensor
values (Hugging Face transformers inspect the attention mask with ``.item()``/``if``,
GPT-2 among them). For such models the per-sample Jacobians and gradients are computed one
sample at a time (same numbers, slower): recurrent models from the start, with cuDNN off
(its fused RNN kernels have no backward pass in eval mode), the others once ``vmap`` has
refused them (remembered per model).
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn
from torch.func import vmap
from torch.utils._pytree import tree_flatten, tree_unflatten


def needs_loop(model: nn.Module) -> bool:
    """Whether ``model`` holds a module that ``vmap`` cannot batch (recurrent layers)."""
    return any(isinstance(m, nn.RNNBase) for m in model.modules())


def per_sample(fn: Callable[..., Any], in_dims: tuple[Any, ...], model: nn.Module) -> Callable:
    """``vmap(fn, in_dims)``, or an equivalent loop over dimension 0 for the models
    ``vmap`` cannot batch (recurrent layers; a forward that ``vmap`` refuses).

    ``in_dims`` entries are ``None`` (shared), ``0`` (batched) or, for dict inputs, a
    dict of those per key (as ``vmap`` takes them).
    """

    def looped(*args: Any) -> Any:
        n = _batch_size(args, in_dims)
        # cuDNN's fused RNN has no backward in eval mode: use the native kernels.
        with torch.backends.cudnn.flags(enabled=False):
            outs = [fn(*(_take(a, d, i) for a, d in zip(args, in_dims))) for i in range(n)]
        leaves, spec = zip(*(tree_flatten(o) for o in outs))
        return tree_unflatten([torch.stack(ls) for ls in zip(*leaves)], spec[0])

    if needs_loop(model):
        return looped
    batched = vmap(fn, in_dims=in_dims)

    def vmapped_or_looped(*args: Any) -> Any:
        if model not in _UNBATCHABLE:
            try:
                return batched(*args)
            except RuntimeError as error:
                if not _refused_by_vmap(error):
                    raise
                _UNBATCHABLE.add(model)
        return looped(*args)

    return vmapped_or_looped


#: Models whose forward ``vmap`` refused (data-dependent control flow): looped from then on.
_UNBATCHABLE: weakref.WeakSet[nn.Module] = weakref.WeakSet()


def _refused_by_vmap(error: RuntimeError) -> bool:
    """Whether ``error`` is ``vmap`` refusing the forward, not an error of the model."""
    message = str(error)
    return message.startswith("vmap:") or "data-dependent control flow" in message


def _take(arg: Any, dim: Any, i: int) -> Any:
    if dim is None:
        return arg
    if isinstance(dim, Mapping):
        return {k: _take(arg[k], d, i) for k, d in dim.items()}
    return arg.select(dim, i)


def _batch_size(args: tuple[Any, ...], in_dims: tuple[Any, ...]) -> int:
    for arg, dim in zip(args, in_dims):
        if isinstance(dim, Mapping):
            for k, d in dim.items():
                if d is not None:
                    return arg[k].shape[d]
        elif dim is not None:
            return arg.shape[dim]
    raise ValueError("per_sample: no batched argument.")
