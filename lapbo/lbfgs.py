"""``torch.optim.LBFGS`` without the one-off import of ``torch._dynamo``.

Constructing any ``torch.optim`` optimizer calls ``Optimizer.add_param_group``, which torch
wraps so that ``torch.compile`` does not trace it; the wrapper imports ``torch._dynamo``
on its first call (1.0–1.7 s of CPU, once per process: most of the first fit of
``LaplaceBNN``'s default family in a fresh process, whose GP counterpart, fitted by
scipy, never imports it). ``lbfgs`` gives the wrapper, for the duration of the
constructor, the plain function as its cached "disabled" version, so nothing is
imported; nothing is compiled here, so the constructor runs the same code. L-BFGS's
``step`` does not import ``torch._dynamo`` (Adam's does). Where torch's wrapper is not the
one this relies on (no ``__wrapped__``), or ``torch._dynamo`` is already imported, the
optimizer is constructed as usual.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor

_CACHE = "__dynamo_disable"  # torch._compile._disable_dynamo's cache attribute


def lbfgs(params: Iterable[Tensor], **options: Any) -> torch.optim.LBFGS:
    """``torch.optim.LBFGS(params, **options)``, without importing ``torch._dynamo``."""
    add = getattr(torch.optim.Optimizer.add_param_group, "__wrapped__", None)
    if add is None or "torch._dynamo" in sys.modules or hasattr(add, _CACHE):
        return torch.optim.LBFGS(params, **options)
    setattr(add, _CACHE, add)
    try:
        return torch.optim.LBFGS(params, **options)
    finally:
        if getattr(add, _CACHE, None) is add:
            delattr(add, _CACHE)
