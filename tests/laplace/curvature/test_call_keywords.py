"""Backend call signatures and keywords (laplace-torch 0.3's interface), float64.

* ``full(x, y, **kwargs)`` and ``diag(x, y, **kwargs)`` take ``N`` as an optional
  keyword in every backend; ``kron(x, y, N, **kwargs)`` keeps ``N``.
* ``mc_samples`` (alias ``n_mc_samples``) is honoured by every stochastic curvature:
  it changes the estimate and, with many samples, the estimate converges to the exact
  GGN. For a deterministic curvature, or an unknown keyword, ``ValueError``.
* ``functorch_jacobians`` is laplace-torch's name for ``jacobians``.
* BackPACK with inputs that require grad (``enable_backprop=True``, the BoTorch case)
  fits and agrees with the native backend to 1e-10.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from laplace import Laplace
from laplace.curvature import (
    AsdfghjklEF,
    AsdfghjklGGN,
    AsdfghjklHessian,
    AsdlEF,
    AsdlGGN,
    AsdlHessian,
    BackPackEF,
    BackPackGGN,
    CurvlinopsEF,
    CurvlinopsGGN,
    CurvlinopsHessian,
    TorchFuncEF,
    TorchFuncGGN,
)

GGNS = (TorchFuncGGN, BackPackGGN, CurvlinopsGGN, AsdlGGN, AsdfghjklGGN)
EFS = (TorchFuncEF, BackPackEF, CurvlinopsEF, AsdlEF, AsdfghjklEF)
HESSIANS = (CurvlinopsHessian, AsdlHessian, AsdfghjklHessian)
# AsdfghjklGGN is AsdlGGN under its legacy name (a subclass adding nothing).
MC_GGNS = (TorchFuncGGN, BackPackGGN, CurvlinopsGGN, AsdlGGN)
N_DATA = 40


def problem(seed: int = 0):
    """A 3-class MLP and 10 points."""
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 3)).double()
    g = torch.Generator().manual_seed(1)
    X = torch.randn(10, 3, generator=g, dtype=torch.float64)
    return model, X, torch.randint(0, 3, (10,), generator=g)


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


def dense(H) -> torch.Tensor:
    """A curvature result as one vector (Kronecker blocks multiplied out)."""
    if hasattr(H, "kfacs"):
        return torch.cat([(F[0] if len(F) == 1 else torch.kron(F[0], F[1])).flatten()
                          for F in H.kfacs])
    return H.flatten()


# ------------------------------------------------------------------ signatures
@pytest.mark.parametrize("backend", GGNS + EFS + HESSIANS, ids=lambda c: c.__name__)
def test_full_and_diag_take_N_as_optional_keyword(backend):
    model, X, y = problem()
    iface = backend(model, "classification")
    for structure in ("full", "diag"):
        if structure == "diag" and backend is CurvlinopsHessian:
            with pytest.raises(NotImplementedError, match="no exact Hessian diagonal"):
                iface.diag(X, y)
            continue
        loss, H = getattr(iface, structure)(X, y)
        loss_N, H_N = getattr(iface, structure)(X, y, N=N_DATA)
        assert torch.equal(loss, loss_N) and torch.allclose(H, H_N, rtol=1e-12, atol=0)
        assert H.shape == ((31, 31) if structure == "full" else (31,))


@pytest.mark.parametrize("backend", GGNS + EFS, ids=lambda c: c.__name__)
def test_kron_keeps_N(backend):
    model, X, y = problem()
    iface = backend(model, "classification")
    if backend is BackPackEF:
        with pytest.raises(NotImplementedError, match="no Kronecker-factored"):
            iface.kron(X, y, N_DATA)
        return
    _, H40 = iface.kron(X, y, N_DATA)
    _, H80 = iface.kron(X, y, N=2 * N_DATA)
    for F40, F80 in zip(H40.kfacs, H80.kfacs):  # only the input factors carry 1/N
        if len(F40) == 1:
            assert torch.allclose(F40[0], F80[0], rtol=1e-12, atol=0)
        else:
            assert torch.allclose(torch.kron(*F40), 2 * torch.kron(*F80), rtol=1e-12, atol=0)
    with pytest.raises(TypeError, match="N"):
        iface.kron(X, y)


# ---------------------------------------------------------------- mc_samples
@pytest.mark.parametrize("structure", ["full", "diag", "kron"])
@pytest.mark.parametrize("backend", MC_GGNS, ids=lambda c: c.__name__)
def test_mc_samples_is_honoured(backend, structure):
    """A call's ``mc_samples`` overrides ``num_samples``: one sample gives a poor
    estimate, many converge to the exact GGN (error ~ 1/√mc_samples)."""
    model, X, y = problem()
    exact = dense(getattr(TorchFuncGGN(model, "classification"), structure)(
        X, y, N=N_DATA)[1])
    iface = backend(model, "classification", stochastic=True, num_samples=1)
    errors = {}
    for mc in (1, 64):
        torch.manual_seed(0)
        H = getattr(iface, structure)(X, y, N=N_DATA, mc_samples=mc)[1]
        errors[mc] = rel(dense(H), exact)
    assert errors[64] < 0.25, errors
    assert errors[64] < errors[1] / 3, errors  # √64 = 8 in expectation
    if structure == "diag":  # ASDL's spelling too: the same draws, the same estimate
        torch.manual_seed(0)
        H_alias = iface.diag(X, y, N=N_DATA, n_mc_samples=64)[1]
        assert torch.equal(H_alias, H)


@pytest.mark.parametrize("backend", MC_GGNS, ids=lambda c: c.__name__)
def test_num_samples_of_the_backend_is_the_default(backend):
    model, X, y = problem()
    exact = TorchFuncGGN(model, "classification").diag(X, y)[1]
    iface = backend(model, "classification", stochastic=True, num_samples=100)
    torch.manual_seed(0)
    H = iface.diag(X, y)[1]
    torch.manual_seed(0)
    assert torch.equal(H, iface.diag(X, y, mc_samples=100)[1])
    assert rel(H, exact) < 0.2


def test_mc_samples_reach_the_laplace_fit():
    """``asdl_fisher_kwargs`` go to ``diag``/``kron`` (laplace-torch's route)."""
    model, X, y = problem()
    loader = DataLoader(TensorDataset(X, y), batch_size=5)
    exact = Laplace(model, "classification", subset_of_weights="all", hessian_structure="diag")
    exact.fit(loader)
    errors = []
    for mc in (1, 100):
        torch.manual_seed(0)
        la = Laplace(model, "classification", subset_of_weights="all",
                     hessian_structure="diag", backend=CurvlinopsGGN,
                     backend_kwargs={"stochastic": True}, asdl_fisher_kwargs={"mc_samples": mc})
        la.fit(loader)
        errors.append(rel(la.H, exact.H))
    assert errors[1] < 0.2 and errors[1] < errors[0] / 3, errors


@pytest.mark.parametrize("backend", GGNS + EFS + HESSIANS, ids=lambda c: c.__name__)
def test_mc_samples_of_a_deterministic_curvature_raise(backend):
    model, X, y = problem()
    iface = backend(model, "classification")
    for structure in ("full", "diag"):
        with pytest.raises(ValueError, match=rf"{backend.__name__}: mc_samples applies to a "
                                             r"stochastic \(Monte Carlo\) curvature only"):
            getattr(iface, structure)(X, y, mc_samples=10)


@pytest.mark.parametrize("backend", GGNS + EFS + HESSIANS, ids=lambda c: c.__name__)
def test_unknown_keywords_raise(backend):
    model, X, y = problem()
    iface = backend(model, "classification")
    pattern = rf"{backend.__name__}: unknown curvature keyword\(s\) \['mc_sample'\]"
    for call in (lambda: iface.full(X, y, mc_sample=3), lambda: iface.diag(X, y, mc_sample=3),
                 lambda: iface.kron(X, y, N_DATA, mc_sample=3)):
        with pytest.raises(ValueError, match=pattern):
            call()


@pytest.mark.parametrize("mc", [0, -2, 1.5, True])
def test_mc_samples_must_be_a_positive_integer(mc):
    model, X, y = problem()
    iface = TorchFuncGGN(model, "classification", stochastic=True)
    with pytest.raises(ValueError, match=r"mc_samples must be a positive integer"):
        iface.full(X, y, mc_samples=mc)


def test_backend_specific_keywords():
    """``kfac_approx`` for Curvlinops' ``kron``; ASDL's ``FisherConfig`` keywords."""
    model, X, y = problem()
    _, K = CurvlinopsGGN(model, "classification").kron(X, y, N_DATA, kfac_approx="reduce")
    _, K_ref = TorchFuncGGN(model, "classification").kron(X, y, N_DATA)
    assert rel(dense(K), dense(K_ref)) < 1e-10  # no weight sharing: reduce = expand
    with pytest.raises(ValueError, match=r"TorchFuncGGN: unknown curvature keyword\(s\) "
                                         r"\['kfac_approx'\]"):
        TorchFuncGGN(model, "classification").kron(X, y, N_DATA, kfac_approx="reduce")
    with pytest.raises(ValueError, match=r"unknown curvature keyword\(s\) \['kfac_approx'\]"):
        CurvlinopsGGN(model, "classification").full(X, y, kfac_approx="reduce")
    _, D = AsdlGGN(model, "classification").diag(X, y, seed=3)
    assert rel(D, TorchFuncGGN(model, "classification").diag(X, y)[1]) < 1e-10


# --------------------------------------------------------- functorch_jacobians
@pytest.mark.parametrize("backend", GGNS + EFS + HESSIANS, ids=lambda c: c.__name__)
def test_functorch_jacobians(backend):
    model, X, _ = problem()
    Js, f = backend(model, "classification").functorch_jacobians(X)
    Js_ref, f_ref = TorchFuncGGN(model, "classification").jacobians(X)
    assert Js.shape == (10, 3, 31) and f.shape == (10, 3)
    assert torch.equal(Js, Js_ref) and torch.equal(f, f_ref)
    Xg = X.clone().requires_grad_(True)
    Js, f = backend(model, "classification").functorch_jacobians(Xg, enable_backprop=True)
    (g,) = torch.autograd.grad(f.sum() + Js.sum(), Xg)
    assert g.shape == X.shape and bool(g.abs().sum() > 0)


# ------------------------------------------------ BackPACK with grad-requiring x
BACKPACK_CASES = [(b, s) for b in (BackPackGGN, BackPackEF) for s in ("full", "diag", "kron")
                  if (b, s) != (BackPackEF, "kron")]  # no Kronecker EF in BackPACK


@pytest.mark.parametrize("subset", ["all", "last_layer"])
@pytest.mark.parametrize("backend,structure", BACKPACK_CASES,
                         ids=[f"{b.__name__}-{s}" for b, s in BACKPACK_CASES])
def test_backpack_with_inputs_that_require_grad(backend, structure, subset):
    """Training inputs with ``requires_grad=True`` and ``enable_backprop=True``: the
    BackPACK fit equals the native one, and predictions carry gradients to ``x``."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, 2)).double()
    g = torch.Generator().manual_seed(2)
    X = torch.randn(16, 3, generator=g, dtype=torch.float64, requires_grad=True)
    y = torch.randn(16, 2, generator=g, dtype=torch.float64)
    loader = DataLoader(TensorDataset(X, y), batch_size=8)
    native = TorchFuncEF if backend is BackPackEF else TorchFuncGGN
    las = []
    for be in (backend, native):
        la = Laplace(model, "regression", subset_of_weights=subset, hessian_structure=structure,
                     backend=be, enable_backprop=True, sigma_noise=0.5)
        la.fit(loader)
        las.append(la)
    ours, ref = las
    assert rel(ours.log_marginal_likelihood().detach(),
               ref.log_marginal_likelihood().detach()) < 1e-10
    Xq = torch.randn(4, 3, generator=g, dtype=torch.float64, requires_grad=True)
    (mu, var), (mu_ref, var_ref) = ours(Xq), ref(Xq)
    assert rel(var.detach(), var_ref.detach()) < 1e-10
    (grad,) = torch.autograd.grad(var.sum() + mu.sum(), Xq)
    (grad_ref,) = torch.autograd.grad(var_ref.sum() + mu_ref.sum(), Xq)
    assert rel(grad, grad_ref) < 1e-10


@pytest.mark.parametrize("backend", [AsdlEF, AsdlHessian])
def test_asdl_ef_and_hessian_take_laplace_torchs_positional_order(backend):
    """laplace-torch 0.3's ``AsdlEF``/``AsdlHessian(model, likelihood, last_layer,
    dict_key_x, dict_key_y)`` (no subnetwork there): a fourth positional argument is the
    input key; ``subnetwork_indices`` is keyword-only and still reaches the curvature."""
    model = nn.Sequential(nn.Linear(3, 2)).double()
    b = backend(model, "regression", False, "features", "targets")
    assert (b.dict_key_x, b.dict_key_y, b.subnetwork_indices) == ("features", "targets", None)
    X, y = torch.randn(5, 3, dtype=torch.float64), torch.randn(5, 2, dtype=torch.float64)
    indices = torch.tensor([0, 4, 7])
    full = backend(model, "regression").full(X, y, N=5)[1]
    sub = backend(model, "regression", subnetwork_indices=indices).full(X, y, N=5)[1]
    torch.testing.assert_close(sub, full[indices][:, indices], rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("backend", GGNS, ids=lambda c: c.__name__)
@pytest.mark.parametrize("structure", ["full", "diag"])
def test_targets_of_another_shape_are_named(backend, structure):
    """A backend called directly with targets that do not match the outputs names both
    shapes (a reshape error before, in laplace-torch too)."""
    model, X, y = problem()
    with pytest.raises(ValueError, match=r"targets of shape \(10, 2\) do not match the "
                                         r"model's rows of logits \(10, 3\)"):
        getattr(backend(model, "classification"), structure)(X, y.reshape(5, 2).repeat(2, 1))
    reg = nn.Sequential(nn.Linear(3, 2)).double()
    with pytest.raises(ValueError, match=r"targets of shape \(10, 3\) do not match the "
                                         r"model's outputs \(10, 2\)"):
        getattr(backend(reg, "regression"), structure)(X, X)
