"""``laplace.curvature.network_jacobians``: the closed-form output-layer Jacobian and the
``torch.func`` route against ``torch.autograd.functional.jacobian`` of one point at a
time, gradients w.r.t. the inputs included."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.func import functional_call

from laplace.curvature import (
    jacobians_by_autodiff,
    linear_layer_jacobians,
    network_jacobians,
    output_layer_jacobians,
)

DT = torch.float64


def mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).to(DT)


def reference(net: nn.Module, X: torch.Tensor, names: list[str]) -> torch.Tensor:
    """``(n, K, P)`` by differentiating each point's outputs w.r.t. the named weights."""
    params = dict(net.named_parameters())
    rows = []
    for x in X.detach():
        def out(*values: torch.Tensor, x: torch.Tensor = x) -> torch.Tensor:
            return functional_call(net, {**params, **dict(zip(names, values))}, (x[None],))[0]
        jac = torch.autograd.functional.jacobian(out, tuple(params[n] for n in names))
        rows.append(torch.cat([j.reshape(j.shape[0], -1) for j in jac], 1))
    return torch.stack(rows)


@pytest.mark.parametrize("subset", ["last", "all"])
def test_jacobians_equal_pointwise_autograd(subset: str) -> None:
    net = mlp()
    names = ["2.weight", "2.bias"] if subset == "last" else [n for n, _ in
                                                              net.named_parameters()]
    X = torch.rand(5, 3, dtype=DT, requires_grad=True)
    J, f = network_jacobians(net, X, names if subset == "last" else None)
    assert J.shape == (5, 2, 10 if subset == "last" else 26)
    assert torch.allclose(J, reference(net, X, names), atol=1e-13)
    assert torch.allclose(f, net(X), atol=1e-14)
    if subset == "last":  # the closed form, and the graph to X as in the autodiff route
        assert output_layer_jacobians(net, X, names) is not None
        J_ref, f_ref = jacobians_by_autodiff(net, X, names)
        g, = torch.autograd.grad(J.square().sum() + f.sum(), X)
        g_ref, = torch.autograd.grad(J_ref.square().sum() + f_ref.sum(), X)
        assert torch.allclose(g, g_ref, atol=1e-12)


def test_a_transformed_output_layer_falls_back_to_autodiff() -> None:
    net = nn.Sequential(mlp(), nn.Tanh())
    names = ["0.2.weight", "0.2.bias"]
    X = torch.rand(3, 3, dtype=DT)
    assert output_layer_jacobians(net, X, names) is None
    J, _ = network_jacobians(net, X, names)
    assert torch.allclose(J, reference(net, X, names), atol=1e-13)


def test_arguments_are_validated() -> None:
    net, X = mlp(), torch.rand(3, 3, dtype=DT)
    with pytest.raises(ValueError, match="net must be an nn.Module, got str"):
        network_jacobians("net", X)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"X must be a floating-point tensor \(n, d\), got \(3,\)"):
        network_jacobians(net, X[0])
    with pytest.raises(ValueError, match="names must be None or a non-empty list"):
        network_jacobians(net, X, ["nope"])


class Twice(nn.Module):
    """One ``nn.Linear`` applied twice: its Jacobian is not one outer product per point."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = nn.Linear(3, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(torch.tanh(self.layer(x)))[:, :2]


@pytest.mark.parametrize("subset", ["all", "body", "last"])
@pytest.mark.parametrize("grad_to_x", [False, True])
def test_linear_layer_jacobians_equal_pointwise_autograd(subset: str, grad_to_x: bool) -> None:
    net = mlp()
    every = [n for n, _ in net.named_parameters()]
    names = {"all": every, "body": every[:2], "last": every[2:]}[subset]
    X = torch.rand(6, 3, dtype=DT, requires_grad=grad_to_x)
    out = linear_layer_jacobians(net, X, None if subset == "all" else names)
    assert out is not None
    J, f = out
    assert torch.allclose(J, reference(net, X, names), atol=1e-13)
    assert torch.allclose(f, net(X), atol=1e-14)
    assert J.requires_grad == grad_to_x and all(p.grad is None for p in net.parameters())
    if grad_to_x:  # the graph reaches X as in the autodiff route, second order included
        J_ref, f_ref = jacobians_by_autodiff(net, X, names)
        g, = torch.autograd.grad(J.square().sum() + f.sum(), X)
        g_ref, = torch.autograd.grad(J_ref.square().sum() + f_ref.sum(), X)
        assert torch.allclose(g, g_ref, atol=1e-12)


def test_linear_layer_jacobians_under_no_grad() -> None:
    net, X = mlp(), torch.rand(4, 3, dtype=DT)
    with torch.no_grad():
        J, _ = network_jacobians(net, X, independent_samples=True)
    assert torch.allclose(J, reference(net, X, [n for n, _ in net.named_parameters()]),
                          atol=1e-13)


@pytest.mark.parametrize("net", [Twice(), nn.Sequential(nn.Linear(3, 2), nn.LayerNorm(2))],
                         ids=["shared-layer", "non-linear-parameter"])
def test_linear_layer_jacobians_decline_other_networks(net: nn.Module) -> None:
    net = net.to(DT)
    X = torch.rand(4, 3, dtype=DT)
    assert linear_layer_jacobians(net, X) is None
    names = [n for n, _ in net.named_parameters()]
    J, _ = network_jacobians(net, X, independent_samples=True)  # falls back to vmap
    assert torch.allclose(J, reference(net, X, names), atol=1e-13)


def test_more_rows_than_the_cutoff_go_through_vmap(monkeypatch: pytest.MonkeyPatch) -> None:
    from laplace.curvature import jacobians as module

    net, X = mlp(), torch.rand(5, 3, dtype=DT)
    calls = []
    monkeypatch.setattr(module, "LINEAR_LAYER_MAX_ROWS", 4)
    monkeypatch.setattr(module, "linear_layer_jacobians",
                        lambda *a: calls.append(a) or linear_layer_jacobians(*a))
    J, _ = network_jacobians(net, X, independent_samples=True)
    assert not calls
    assert torch.allclose(J, reference(net, X, [n for n, _ in net.named_parameters()]),
                          atol=1e-13)
    network_jacobians(net, X[:4], independent_samples=True)
    assert len(calls) == 1


def test_independent_samples_must_be_a_bool() -> None:
    with pytest.raises(ValueError, match="independent_samples"):
        network_jacobians(mlp(), torch.rand(2, 3, dtype=DT), independent_samples="yes")
