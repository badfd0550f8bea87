"""Per-point network Jacobians w.r.t. (a subset of) the weights, differentiable in the
inputs: what a linearized predictive ``f(x; θ*) + J(x)(θ − θ*)`` needs at query points
that an acquisition function optimises.

``network_jacobians`` reads the Jacobian of an output layer in closed form,
``J = [I_K ⊗ φ(x)ᵀ, I_K]`` from the layer input ``φ(x)`` of one forward pass, when the
requested weights are exactly that layer's (weight, bias) (a last-layer posterior, or the
fast path of a network whose output layer sees fixed features); any other subset goes
through ``torch.func`` (``vmap(jacrev)``). Unlike ``CurvatureInterface.jacobians`` it
takes a parameter subset by name and keeps the graph to ``X`` only (weights detached).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.func import functional_call, jacrev, vmap

#: Up to this many rows ``independent_samples=True`` takes ``linear_layer_jacobians``;
#: beyond, its per-row outer products cost more memory traffic than ``vmap``'s batched
#: products (``benchmarks/jacobians.py``: 3.3× faster at 1,000 rows of a 3,791-weight
#: network, no faster at 2,000).
LINEAR_LAYER_MAX_ROWS = 1024


def network_jacobians(
    net: nn.Module, X: Tensor, names: list[str] | None = None,
    independent_samples: bool = False,
) -> tuple[Tensor, Tensor]:
    """Per-point Jacobians w.r.t. the weights, differentiable w.r.t. ``X``.

    Args:
        net: maps ``(n, d)`` to ``(n, K)``.
        X: ``(n, d)``.
        names: the parameters to differentiate (``net.named_parameters()`` names, in
            that order; default all). The others are held fixed.
        independent_samples: the caller vouches that ``net``'s forward pass treats the
            rows of ``X`` independently (no batch statistics, no attention across rows).
            Then, if every requested weight belongs to an ``nn.Linear`` applied once
            and ``X`` has at most ``LINEAR_LAYER_MAX_ROWS`` rows, the Jacobians come
            from one forward and ``K`` backward passes
            (``linear_layer_jacobians``) instead of ``vmap(jacrev)``: the same numbers
            at a fraction of the per-call overhead.

    Returns:
        ``Js`` ``(n, K, P)`` (parameters in ``net.parameters()`` order, as ``la.mean``)
        and outputs ``f`` ``(n, K)``.

    When ``names`` are exactly the weight and bias of the ``nn.Linear`` whose output is
    the network's output, ``J = [I_K ⊗ φ(x)ᵀ, I_K]`` is read off the layer input ``φ(x)``
    of one forward pass (no per-sample autodiff); otherwise ``torch.func`` computes it.

    Raises:
        ValueError: ``net`` not an ``nn.Module``, ``X`` not a 2-D floating-point tensor, or
            ``names`` not a non-empty list of ``net``'s parameter names.
    """
    _check_arguments(net, X, names)
    if not isinstance(independent_samples, bool):
        raise ValueError(f"independent_samples must be True or False, got "
                         f"{independent_samples!r}.")
    if names is not None:
        fast = output_layer_jacobians(net, X, names)
        if fast is not None:
            return fast
    if independent_samples and X.shape[0] <= LINEAR_LAYER_MAX_ROWS:
        fast = linear_layer_jacobians(net, X, names)
        if fast is not None:
            return fast
    return jacobians_by_autodiff(net, X, names)


def linear_layer_jacobians(
    net: nn.Module, X: Tensor, names: list[str] | None = None
) -> tuple[Tensor, Tensor] | None:
    """``network_jacobians`` from the inputs and output gradients of ``nn.Linear`` layers.

    For a layer ``z = W a + b`` applied to rows that do not interact, the Jacobian of
    output ``k`` at sample ``n`` is ``∂f_nk/∂W = g_nk a_nᵀ`` and ``∂f_nk/∂b = g_nk`` with
    ``g_nk = ∂(Σ_m f_mk)/∂z_n``: one forward pass records every ``a_n``, one backward
    pass per output ``k`` gives every ``g_nk``. Valid only when the rows of ``X`` do not
    interact in ``net`` (the caller's promise, see ``network_jacobians``).

    Returns:
        ``(Js (n, K, P), f (n, K))`` as ``network_jacobians``, or ``None`` when a
        requested parameter is not the weight or bias of an ``nn.Linear``, a layer runs
        more than once or on other than ``(n, ·)`` rows, or the output is not ``(n, K)``.
    """
    all_params = dict(net.named_parameters())
    keys = list(all_params) if names is None else list(names)
    layers = {n: m for n, m in net.named_modules() if isinstance(m, nn.Linear)}
    owners: dict[str, str] = {}
    for key in keys:
        prefix, _, leaf = key.rpartition(".")
        if prefix not in layers or leaf not in ("weight", "bias"):
            return None
        owners[key] = prefix
    seen: dict[str, list[tuple[Tensor, Tensor]]] = {n: [] for n in set(owners.values())}
    handles = []

    def recorder(name: str):  # noqa: ANN202
        def hook(module: nn.Module, inputs: tuple[Tensor, ...], output: Tensor) -> Tensor:
            if not output.requires_grad:  # weights detached and X constant: track z here
                output = output.detach().requires_grad_()
            seen[name].append((inputs[0], output))
            return output
        return hook

    for name in seen:
        handles.append(layers[name].register_forward_hook(recorder(name)))
    try:
        detached = {k: v.detach() for k, v in all_params.items()}
        with torch.enable_grad():
            f = functional_call(net, detached, (X,))
    finally:
        for h in handles:
            h.remove()
    n = X.shape[0]
    if not isinstance(f, Tensor) or f.ndim != 2 or f.shape[0] != n:
        return None
    for records in seen.values():
        if len(records) != 1:
            return None
        a, z = records[0]
        if a.ndim != 2 or z.ndim != 2 or a.shape[0] != n:
            return None
    names_order = list(seen)
    outs = [seen[name][0][1] for name in names_order]
    create = X.requires_grad
    rows = []
    for k in range(f.shape[1]):
        with torch.enable_grad():
            total = f[:, k].sum()
        grads = torch.autograd.grad(total, outs, retain_graph=True,
                                    create_graph=create, allow_unused=True)
        g_by_layer = {name: (g if g is not None else torch.zeros_like(z))
                      for name, g, z in zip(names_order, grads, outs)}
        blocks = []
        for key in keys:
            name = owners[key]
            g = g_by_layer[name]
            if key.endswith(".bias"):
                blocks.append(g)
            else:
                a = seen[name][0][0]
                blocks.append((g.unsqueeze(-1) * a.unsqueeze(-2)).flatten(1))
        rows.append(torch.cat(blocks, dim=1))
    Js = rows[0].unsqueeze(1) if len(rows) == 1 else torch.stack(rows, dim=1)
    if not create:
        Js, f = Js.detach(), f.detach()
    return Js, f


def output_layer_jacobians(
    net: nn.Module, X: Tensor, names: list[str]
) -> tuple[Tensor, Tensor] | None:
    """``network_jacobians`` for the output layer's weights, or ``None`` if ``names`` are
    not (weight, bias) of an ``nn.Linear`` whose output tensor the network returns."""
    modules = dict(net.named_modules())
    prefix = names[0].rsplit(".", 1)[0]
    layer = modules.get(prefix)
    if not isinstance(layer, nn.Linear) or layer.bias is None or names != [
        f"{prefix}.weight", f"{prefix}.bias"
    ]:
        return None
    seen: dict[str, Tensor] = {}

    def hook(module: nn.Module, inputs: tuple[Tensor, ...], output: Tensor) -> None:
        seen["phi"], seen["out"] = inputs[0], output

    handle = layer.register_forward_hook(hook)
    try:  # detached weights: the graph reaches X only, as in the autodiff path
        f = functional_call(net, {k: v.detach() for k, v in net.named_parameters()}, (X,))
    finally:
        handle.remove()
    if seen.get("out") is not f or f.ndim != 2:
        return None  # the layer's output is transformed further: not linear in its weights
    phi = seen["phi"]
    n, K = f.shape
    eye = torch.eye(K, dtype=phi.dtype, device=phi.device)
    J_w = (eye.unsqueeze(-1) * phi[:, None, None, :]).reshape(n, K, -1)  # (n, K, K·F)
    Js = torch.cat([J_w, eye.expand(n, K, K)], dim=-1)
    return Js, f


def jacobians_by_autodiff(
    net: nn.Module, X: Tensor, names: list[str] | None = None
) -> tuple[Tensor, Tensor]:
    """``network_jacobians`` by ``vmap(jacrev)`` (any network, any parameter subset)."""
    all_params = {k: v.detach() for k, v in net.named_parameters()}
    keys = list(all_params) if names is None else list(names)
    if any(k not in all_params for k in keys):  # checked here: off the closed-form path
        raise ValueError(f"names must be None or a non-empty list of net's parameter names, "
                         f"got {names!r}.")
    params = {k: all_params[k] for k in keys}
    fixed = {k: v for k, v in all_params.items() if k not in params}

    def fn(p: dict[str, Tensor], x: Tensor) -> tuple[Tensor, Tensor]:
        out = functional_call(net, {**fixed, **p}, (x.unsqueeze(0),)).reshape(-1)
        return out, out

    jac, f = vmap(jacrev(fn, has_aux=True), in_dims=(None, 0))(params, X)
    Js = torch.cat([jac[k].flatten(start_dim=2) for k in keys], dim=2)
    return Js, f


def _check_arguments(net: nn.Module, X: Tensor, names: list[str] | None) -> None:
    if not isinstance(net, nn.Module):
        raise ValueError(f"net must be an nn.Module, got {type(net).__name__}.")
    if not isinstance(X, Tensor) or X.ndim != 2 or not X.is_floating_point():
        shape = tuple(X.shape) if isinstance(X, Tensor) else type(X).__name__
        raise ValueError(f"X must be a floating-point tensor (n, d), got {shape}.")
    if names is not None and (not isinstance(names, list) or not names):
        raise ValueError(f"names must be None or a non-empty list of net's parameter names, "
                         f"got {names!r}.")
