"""Top-``k`` eigenpairs of a curvature from matrix-vector products (for ``LowRankLaplace``).

GGN products ``Σₙ Jₙᵀ Λₙ Jₙ v`` use one ``jvp`` and one ``vjp`` per batch, so neither
Jacobians nor the ``P×P`` matrix are formed; ARPACK (``scipy.sparse.linalg.eigsh``)
finds the largest eigenvalues. When ``k`` is a large fraction of ``P`` the dense
curvature is formed instead and fully decomposed (ARPACK needs ``k < P``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from scipy.sparse.linalg import LinearOperator, eigsh
from torch import Tensor
from torch.func import functional_call, jvp, vjp

from laplace.curvature.outputs import _targets
from laplace.utils import checks
from laplace.utils.data import dataset_size, inputs_to, split_batch
from laplace.utils.enums import Likelihood

if TYPE_CHECKING:
    from laplace.curvature.curvature import CurvatureInterface


def _batches(loader: Any, iface: CurvatureInterface, device: torch.device) -> list[tuple]:
    out = []
    for batch in loader:
        X, y = split_batch(batch, iface.dict_key_x, iface.dict_key_y)
        out.append((inputs_to(X, device), y.to(device)))
    return out


def ggn_matvec(iface: CurvatureInterface, batches: list[tuple], v: Tensor) -> Tensor:
    """``H v`` for the GGN of ``factor·loss`` over all batches: ``(P,)``."""
    params = {n: p.detach() for n, p in iface.named_params}
    names = list(params)
    shapes = [params[n].shape for n in names]
    tangent = dict(zip(names, (t.reshape(s) for t, s in zip(v.split([s.numel() for s in shapes]),
                                                             shapes))))
    out = torch.zeros_like(v)
    for X, _ in batches:
        def f(p: dict[str, Tensor], X: Any = X) -> Tensor:
            y = functional_call(iface.model, p, (X,))
            return y.reshape(-1, y.shape[-1])

        logits, Jv = jvp(f, (params,), (tangent,))
        if iface.likelihood == Likelihood.REGRESSION:
            u = 2 * iface.factor * Jv
        else:
            p = torch.softmax(logits, dim=-1)
            u = iface.factor * (p * Jv - p * (p * Jv).sum(-1, keepdim=True))
        _, pullback = vjp(f, params)
        (g,) = pullback(u)
        out += torch.cat([g[n].reshape(-1) for n in names])
    return out


def top_eigenpairs(
    iface: CurvatureInterface, loader: Any, k: int, device: torch.device, dtype: torch.dtype,
    n_params: int, dense_fraction: float = 0.3, N: int | None = None,
    reduce: Callable[[Any], Any] | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """``(U (P, k), λ (k,), loss)``: the largest eigenpairs of the curvature.

    Args:
        dense_fraction: form and fully decompose the dense curvature when
            ``k ≥ dense_fraction·P`` (or when the backend has no GGN products).
        N: the number of data points (default ``laplace.utils.data.dataset_size``).
        reduce: for a loader holding one shard of the data, the sum over all shards of
            a tensor or list of tensors (``laplace.utils.distributed.all_reduce_nested``):
            applied to the loss, the dense curvature and every curvature-vector
            product, so that the eigenpairs are those of the curvature of all the data.
    """
    reduce = reduce or (lambda state: state)
    if not 1 <= k <= n_params:
        raise ValueError(f"The rank k={k} must lie in [1, {n_params}] (the parameter count).")
    batches = _batches(loader, iface, device)
    if not batches:
        raise ValueError("The data loader yielded no batches: nothing to fit on.")
    N = dataset_size(loader) if N is None else N
    exact_ggn = hasattr(iface, "_sqrt_ggn_rows") and not getattr(iface, "stochastic", False)
    use_products = exact_ggn and k < dense_fraction * n_params
    if not use_products:
        H = torch.zeros(n_params, n_params, device=device, dtype=dtype)
        loss = 0.0
        for X, y in batches:
            loss_b, H_b = iface.full(X, y, N=N)
            loss, H = loss + loss_b, H + H_b
        loss, H = reduce([torch.as_tensor(loss, device=device, dtype=dtype), H])
        checks.finite_loss(loss, None)  # NaN outputs: say so, not LinAlgError
        lam, U = torch.linalg.eigh(H)
        return U[:, -k:].flip(-1), lam[-k:].flip(-1).clamp(min=0), torch.as_tensor(loss)
    loss = 0.0
    for X, y in batches:
        with torch.no_grad():
            f = iface.model(X)
        f = f.reshape(-1, f.shape[-1])
        loss = loss + iface.factor * iface.lossfunc(f, _targets(y, f, iface.likelihood))
    loss = reduce(torch.as_tensor(loss, device=device, dtype=dtype))
    checks.finite_loss(loss, None)  # NaN outputs: say so, not an ARPACK error

    def matvec(x: np.ndarray) -> np.ndarray:
        v = torch.as_tensor(np.asarray(x).reshape(-1), device=device, dtype=dtype)
        return reduce(ggn_matvec(iface, batches, v)).cpu().numpy()

    op = LinearOperator((n_params, n_params), matvec=matvec, dtype=np.float64)
    rng = np.random.default_rng(0)
    lam, U = eigsh(op, k=k, which="LA", v0=rng.standard_normal(n_params))
    order = np.argsort(lam)[::-1].copy()
    U = torch.as_tensor(U[:, order], device=device, dtype=dtype)
    lam = torch.as_tensor(lam[order], device=device, dtype=dtype).clamp(min=0)
    return U, lam, torch.as_tensor(loss).detach()
