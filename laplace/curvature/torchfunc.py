"""The native backend: everything with ``torch.func`` and autograd, no extra library.

Jacobians and per-sample gradients come from ``vmap`` over samples (never a
``jacrev`` over the whole batch); Kronecker factors from layer hooks
(:mod:`laplace.curvature.kfac`). Works in float32 and float64, on any device.
"""

from __future__ import annotations

from laplace.curvature.curvature import EFInterface, GGNInterface


class TorchFuncGGN(GGNInterface):
    """Native generalized Gauss-Newton backend (the library default).

    ``stochastic=True`` gives the Monte Carlo GGN (Fisher) with ``num_samples`` (or,
    per call, ``mc_samples``) sampled output gradients per point, as laplace-torch's
    native backend does.
    """


class TorchFuncEF(EFInterface):
    """Native empirical Fisher backend."""
