"""The native backend: everything with ``torch.func`` and autograd, no extra library.

Jacobians and per-sample gradients come from ``vmap`` over samples (never a
``jacrev`` over the whole batch); Kronecker factors from layer hooks
(:mod:`laplace.curvature.kfac`). Works in float32 and float64, on any device.
"""

from __future__ import annotations

from typing import Any

from laplace.curvature.curvature import EFInterface, GGNInterface


class TorchFuncGGN(GGNInterface):
    """Native generalized Gauss-Newton backend (the library default)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.stochastic:
            raise ValueError(
                f"{type(self).__name__}: the stochastic (Monte Carlo) GGN is not offered "
                "by the native backend; use stochastic=False or a library backend."
            )


class TorchFuncEF(EFInterface):
    """Native empirical Fisher backend."""
