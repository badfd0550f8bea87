"""Layers under which the layer-wise curvature routes used to return wrong numbers.

Found by a session-20 sweep of the backends: the native diagonal GGN of a model with
``(n, T, K)`` outputs summed each sample's positions before squaring (2.7× off), every
backend treated ``padding_mode="reflect"`` as zero padding (7–12% off), tied weights were
counted once per owning module, and ASDL's diagonal was wrong on ``nn.Embedding`` with a
repeated token and on grouped convolutions. Each case is now exact (the native diagonal
falls back to per-sample Jacobians) or refused with an error that names the layer.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.func import functional_call, jacrev
from torch.utils.data import DataLoader, TensorDataset

import laplace.curvature as C

DT = torch.float64


def exact_ggn(model: nn.Module, x: torch.Tensor, likelihood: str) -> torch.Tensor:
    """``Σ Jᵀ Λ J`` over every output row, from ``torch.func`` Jacobians ``(P, P)``."""
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    params = {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}

    def f(theta: dict) -> torch.Tensor:
        out = functional_call(model, theta, (x,))
        return out.reshape(-1, out.shape[-1])

    jac = jacrev(f)(params)
    J = torch.cat([jac[n].flatten(2) for n in names], dim=-1)  # (rows, K, P)
    out = f(params)
    if likelihood == "regression":
        lam = torch.eye(out.shape[-1], dtype=DT).expand(len(out), -1, -1)
    else:
        p = torch.softmax(out, -1)
        lam = torch.diag_embed(p) - p[:, :, None] * p[:, None, :]
    return torch.einsum("nkp,nkl,nlq->pq", J, lam, J)


def targets(likelihood: str, shape: tuple[int, ...], classes: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(3)
    if likelihood == "regression":
        return torch.randn(*shape, classes, generator=g, dtype=DT)
    return torch.randint(0, classes, shape, generator=g)


@pytest.mark.parametrize("likelihood", ["regression", "classification"])
@pytest.mark.parametrize("backend", ["TorchFuncGGN", "CurvlinopsGGN"])
def test_diagonal_ggn_of_sequence_outputs_is_exact(likelihood, backend):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, 2)).to(DT)
    x = torch.randn(6, 4, 3, dtype=DT)  # outputs (6, 4, 2): 24 data points
    y = targets(likelihood, (6, 4), 2)
    _, diag = getattr(C, backend)(model, likelihood).diag(x, y)
    torch.testing.assert_close(diag, exact_ggn(model, x, likelihood).diagonal(),
                               rtol=1e-10, atol=1e-12)


def conv_net(padding_mode: str) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 2, 3, padding=1, padding_mode=padding_mode), nn.Tanh(),
                         nn.Flatten(), nn.Linear(2 * 5 * 5, 3)).to(DT)


@pytest.mark.parametrize("padding_mode", ["reflect", "circular", "replicate"])
def test_non_zero_padding(padding_mode):
    model = conv_net(padding_mode)
    x = torch.randn(4, 1, 5, 5, dtype=DT, generator=torch.Generator().manual_seed(1))
    y = targets("classification", (4,), 3)
    # the native diagonal is exact (per-sample Jacobians) ...
    _, diag = C.TorchFuncGGN(model, "classification").diag(x, y)
    torch.testing.assert_close(diag, exact_ggn(model, x, "classification").diagonal(),
                               rtol=1e-10, atol=1e-12)
    # ... the layer-wise routes refuse, naming the layer
    with pytest.raises(ValueError, match="numeric zero padding"):
        C.TorchFuncGGN(model, "classification").kron(x, y, N=4)
    with pytest.raises(ValueError, match=f"padding_mode='{padding_mode}'"):
        C.CurvlinopsGGN(model, "classification").kron(x, y, N=4)
    for backend in ("AsdlGGN", "BackPackGGN"):
        with pytest.raises(ValueError, match=f"padding_mode='{padding_mode}'"):
            getattr(C, backend)(model, "classification").diag(x, y)


class Tied(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.l1, self.l2, self.out = nn.Linear(3, 3), nn.Linear(3, 3), nn.Linear(3, 2)
        self.l2.weight = self.l1.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(torch.tanh(self.l2(torch.tanh(self.l1(x)))))


def test_tied_weights():
    model = Tied().to(DT)
    x = torch.randn(5, 3, dtype=DT, generator=torch.Generator().manual_seed(2))
    y = targets("regression", (5,), 2)
    _, diag = C.TorchFuncGGN(model, "regression").diag(x, y)  # a shape error before
    torch.testing.assert_close(diag, exact_ggn(model, x, "regression").diagonal(),
                               rtol=1e-10, atol=1e-12)
    with pytest.raises(ValueError, match="l1.weight = l2.weight"):
        C.TorchFuncGGN(model, "regression").kron(x, y, N=5)
    for backend in ("AsdlGGN", "AsdlEF", "BackPackEF"):
        with pytest.raises(ValueError, match="tied weights"):
            getattr(C, backend)(model, "regression").diag(x, y)


def test_asdl_refuses_embeddings_and_grouped_convolutions():
    torch.manual_seed(0)
    emb = nn.Sequential(nn.Embedding(7, 3), nn.Flatten(), nn.Linear(12, 2)).to(DT)
    tokens = torch.tensor([[6, 0, 2, 0], [4, 2, 4, 3]])  # repeated tokens
    with pytest.raises(ValueError, match="nn.Embedding"):
        C.AsdlGGN(emb, "classification").diag(tokens, torch.tensor([0, 1]))
    grouped = nn.Sequential(nn.Conv2d(2, 2, 3, groups=2), nn.Flatten(),
                            nn.Linear(2 * 3 * 3, 2)).to(DT)
    x = torch.randn(3, 2, 5, 5, dtype=DT)
    with pytest.raises(ValueError, match="grouped"):
        C.AsdlGGN(grouped, "classification").diag(x, torch.tensor([0, 1, 0]))


def test_curvlinops_hessian_refuses_an_affine_layer_norm():
    # torch.func's forward-over-reverse Hessian through an affine LayerNorm is 2 % off an
    # autograd double backward (and not symmetric); ASDL's Hessian uses double backward
    torch.manual_seed(0)
    norm = nn.LayerNorm(6)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
        norm.bias.uniform_(-0.5, 0.5)
    model = nn.Sequential(nn.Linear(4, 6), norm, nn.Tanh(), nn.Linear(6, 2)).to(DT)
    x = torch.randn(8, 4, dtype=DT, generator=torch.Generator().manual_seed(1))
    y = torch.randn(8, 2, dtype=DT, generator=torch.Generator().manual_seed(2))
    with pytest.raises(ValueError, match="LayerNorm with elementwise_affine=True"):
        C.CurvlinopsHessian(model, "regression").full(x, y)
    params = [p for p in model.parameters()]
    loss = 0.5 * (model(x) - y).square().sum()  # factor·MSE(sum) of the regression loss
    grads = torch.cat([g.flatten() for g in torch.autograd.grad(loss, params, create_graph=True)])
    rows = [torch.cat([h.flatten() for h in torch.autograd.grad(g, params, retain_graph=True)])
            for g in grads]
    _, H = C.AsdlHessian(model, "regression").full(x, y)
    torch.testing.assert_close(H, torch.stack(rows), rtol=1e-8, atol=1e-10)


def test_backpack_ggn_rows_through_average_pooling_in_float64():
    """BackPACK's square root through ``nn.AvgPool2d`` builds float32 tensors and fails on
    a float64 model; the exact rows then come from the native route (warned)."""
    from laplace import Laplace
    from laplace.curvature import BackPackGGN, TorchFuncGGN

    torch.manual_seed(0)
    cnn = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.AvgPool2d(2), nn.Flatten(),
                        nn.Linear(8, 3)).double()
    X = torch.randn(12, 1, 6, 6, dtype=torch.float64)
    y = torch.randint(0, 3, (12,))
    loader = DataLoader(TensorDataset(X, y), batch_size=6)
    exact = Laplace(cnn, "classification", "all", "full", backend=TorchFuncGGN)
    exact.fit(loader)
    la = Laplace(cnn, "classification", "all", "full", backend=BackPackGGN)
    with pytest.warns(UserWarning, match="native torch.func route"):
        la.fit(loader)
    torch.testing.assert_close(la.H, exact.H, rtol=1e-12, atol=1e-14)


def test_kron_of_an_embedding_is_laplace_torchs_not_implemented_error():
    from laplace import Laplace

    class Bag(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed, self.head = nn.Embedding(10, 4), nn.Linear(4, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(self.embed(x).mean(1))

    X, y = torch.randint(0, 10, (8, 3)), torch.randint(0, 2, (8,))
    for error in (NotImplementedError, ValueError):
        with pytest.raises(error, match="module 'embed' of type Embedding"):
            Laplace(Bag(), "classification", "all", "kron").fit(
                DataLoader(TensorDataset(X, y), batch_size=4))
