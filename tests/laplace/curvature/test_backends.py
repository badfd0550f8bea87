"""The BackPACK, Curvlinops and ASDL adapters against the native backend (float64).

* Cross-backend: GGN and EF ``full``/``diag``/``kron``/``sqrt_rows``/``gradients`` of
  every adapter equal the native ``TorchFuncGGN``/``TorchFuncEF`` to 1e-10 relative on
  small MLPs and a small CNN (Kronecker factors compared as ``kron(B, A)``; BackPACK's
  ``nn.Conv2d`` factors against their documented convention). Hessians against
  ``torch.func.hessian``. Also with ``last_layer=True`` and subnetwork indices.
* Errors: every unsupported case raises naming the backend and what is missing.
* Hygiene: adapters leave no hooks, gradients or buffers on the model.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.func import functional_call, hessian
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
from laplace.curvature.curvature import _targets
from laplace.precision import NotPositiveDefiniteError

RTOL = 1e-10
GGNS = (BackPackGGN, CurvlinopsGGN, AsdlGGN, AsdfghjklGGN)
EFS = (BackPackEF, CurvlinopsEF, AsdlEF, AsdfghjklEF)
HESSIANS = (CurvlinopsHessian, AsdlHessian, AsdfghjklHessian)
N_DATA = 40  # the data set size passed to kron


# -------------------------------------------------------------------- problems
def mlp(K: int, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, 4), nn.ReLU(),
                         nn.Linear(4, K)).double()


def cnn(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Conv2d(2, 2, 2, padding=1),
                         nn.Tanh(), nn.Flatten(), nn.Linear(2 * 5 * 5, 3)).double()


def problem(kind: str):
    """``(model, likelihood, X, y)`` with 12 points."""
    g = torch.Generator().manual_seed(1)
    if kind == "regression":
        X = torch.randn(12, 3, generator=g, dtype=torch.float64)
        return mlp(2, 0), "regression", X, torch.randn(12, 2, generator=g, dtype=torch.float64)
    if kind == "classification":
        X = torch.randn(12, 3, generator=g, dtype=torch.float64)
        return mlp(3, 2), "classification", X, torch.randint(0, 3, (12,), generator=g)
    X = torch.randn(12, 1, 6, 6, generator=g, dtype=torch.float64)
    return cnn(3), "classification", X, torch.randint(0, 3, (12,), generator=g)


KINDS = ("regression", "classification", "cnn")


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach(), b.detach()
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-300))


def products(kron) -> list[torch.Tensor]:
    return [F[0] if len(F) == 1 else torch.kron(F[0], F[1]) for F in kron.kfacs]


def assert_same(ours, native) -> None:
    (l1, H1), (l2, H2) = ours, native
    assert rel(torch.as_tensor(l1), torch.as_tensor(l2)) <= RTOL
    if hasattr(H1, "kfacs"):
        assert len(H1.kfacs) == len(H2.kfacs)
        for a, b in zip(products(H1), products(H2)):
            assert a.dtype == torch.float64
            assert rel(a, b) <= RTOL
    else:
        assert H1.dtype == torch.float64 and H1.shape == H2.shape
        assert rel(H1, H2) <= RTOL


def exact_hessian(model, likelihood, X, y, params_of=None):
    """Hessian of ``factor·lossfunc`` w.r.t. the (given) parameters, by torch.func."""
    named = dict(model.named_parameters()) if params_of is None else params_of
    factor = 0.5 if likelihood == "regression" else 1.0
    lossfunc = (nn.MSELoss(reduction="sum") if likelihood == "regression"
                else nn.CrossEntropyLoss(reduction="sum"))
    names = list(named)

    def loss(flat):
        ps, start = {}, 0
        for n in names:
            k = named[n].numel()
            ps[n] = flat[start:start + k].reshape(named[n].shape)
            start += k
        f = functional_call(model, ps, (X,))
        return factor * lossfunc(f, _targets(y, f, likelihood))

    flat = torch.cat([named[n].detach().flatten() for n in names])
    return hessian(loss)(flat)


# --------------------------------------------------------------- cross-backend
# BackPACK's Conv2d Kronecker factors follow their own convention:
# test_backpack_conv2d_kron_convention checks them.
NATIVE_CASES = [
    (b, k, s) for b in GGNS + EFS for k in KINDS for s in ("full", "diag", "kron")
    if not (s == "kron" and b is BackPackGGN and k == "cnn")
]


@pytest.mark.parametrize("backend,kind,structure", NATIVE_CASES,
                         ids=[f"{b.__name__}-{k}-{s}" for b, k, s in NATIVE_CASES])
def test_matches_native(backend, kind, structure):
    model, lik, X, y = problem(kind)
    native = TorchFuncEF if backend in EFS else TorchFuncGGN
    ours = backend(model, lik)
    if structure == "kron" and backend is BackPackEF:
        with pytest.raises(NotImplementedError, match="BackPackEF.*Kronecker"):
            ours.kron(X, y, N=N_DATA)
        return
    assert_same(getattr(ours, structure)(X, y, N=N_DATA),
                getattr(native(model, lik), structure)(X, y, N=N_DATA))


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("backend", GGNS + EFS, ids=lambda c: c.__name__)
def test_sqrt_rows_and_gradients(backend, kind):
    model, lik, X, y = problem(kind)
    native = (TorchFuncEF if backend in EFS else TorchFuncGGN)(model, lik)
    ours = backend(model, lik)
    R, loss = ours.sqrt_rows(X, y)
    _, H = native.full(X, y, N=N_DATA)
    assert rel(R.T @ R, H) <= RTOL
    assert rel(loss, native.sqrt_rows(X, y)[1]) <= RTOL
    if backend in EFS:
        (G1, l1), (G2, l2) = ours.gradients(X, y), native.gradients(X, y)
        assert rel(G1, G2) <= RTOL and rel(l1, l2) <= RTOL
    # Jacobians for prediction are the native ones, never a slower override.
    assert type(ours).jacobians is TorchFuncGGN.jacobians


def test_backpack_conv2d_kron_convention():
    """BackPACK's Conv2d block is ``kron(B_bias, T·A_expand)``: ``B`` is the exact GGN
    of the bias (square roots summed over the ``T`` output positions first) and ``A``
    sums the unfolded patches over positions instead of averaging them."""
    from laplace.curvature.kfac import _as_rows

    model, lik, X, y = problem("cnn")
    _, ours = BackPackGGN(model, lik).kron(X, y, N=N_DATA)
    _, H = TorchFuncGGN(model, lik).full(X, y, N=N_DATA)
    _, native = TorchFuncGGN(model, lik).kron(X, y, N=N_DATA)
    sizes = [p.numel() for p in model.parameters()]
    offsets = torch.tensor([0, *sizes]).cumsum(0)
    inputs = {}
    handle = model[2].register_forward_hook(lambda m, i, o: inputs.__setitem__(2, i[0]))
    handle0 = model[0].register_forward_hook(lambda m, i, o: inputs.__setitem__(0, i[0]))
    with torch.no_grad():
        model(X)
    handle.remove()
    handle0.remove()
    for conv, w_i in ((0, 0), (2, 2)):
        b_i = w_i + 1
        bias_block = H[offsets[b_i]:offsets[b_i + 1], offsets[b_i]:offsets[b_i + 1]]
        assert rel(ours.kfacs[b_i][0], bias_block) <= RTOL  # exact bias GGN
        a, T = _as_rows(model[conv], inputs[conv], is_input=True)
        A_sum = a.T @ a / N_DATA  # Σₙ Σₜ aₙₜaₙₜᵀ / N = T · A_expand
        assert rel(A_sum, T * native.kfacs[w_i][1]) <= RTOL
        assert rel(torch.kron(*ours.kfacs[w_i]), torch.kron(bias_block, A_sum)) <= RTOL
    # Linear layers follow the native convention.
    assert rel(products(ours)[4], products(native)[4]) <= RTOL


# AsdfghjklHessian runs AsdlHessian's code path (checked on the CNN there); row by row
# on a CNN it is slow, so it is checked on the MLPs only.
HESSIAN_CASES = [(b, k) for b in HESSIANS for k in KINDS
                 if not (b is AsdfghjklHessian and k == "cnn")]


@pytest.mark.parametrize("backend,kind", HESSIAN_CASES,
                         ids=[f"{b.__name__}-{k}" for b, k in HESSIAN_CASES])
def test_hessian_full_and_diag(backend, kind):
    model, lik, X, y = problem(kind)
    H = exact_hessian(model, lik, X, y)
    ours = backend(model, lik)
    loss, H1 = ours.full(X, y, N=N_DATA)
    assert rel(H1, H) <= RTOL and rel(H1, H1.T) == 0
    assert rel(loss, TorchFuncGGN(model, lik).full(X, y, N=N_DATA)[0]) <= RTOL
    if backend is CurvlinopsHessian:
        with pytest.raises(NotImplementedError, match="CurvlinopsHessian.*diagonal"):
            ours.diag(X, y, N=N_DATA)
    else:
        # ASDL's diag is the diagonal of its layer-wise blocks: that of the Hessian.
        assert rel(ours.diag(X, y, N=N_DATA)[1], H.diagonal()) <= RTOL
    with pytest.raises(NotImplementedError, match=f"{backend.__name__}.*Kronecker"):
        ours.kron(X, y, N=N_DATA)


@pytest.mark.parametrize("backend", GGNS + EFS + HESSIANS, ids=lambda c: c.__name__)
@pytest.mark.parametrize("kind", ["regression", "classification"])
def test_last_layer(backend, kind):
    """``last_layer=True`` (on a plain model and through LLLaplace's FeatureExtractor):
    curvature of the last layer only. Fixes laplace-torch 0.3's crash of the ASDL EF
    and zero diagonal of the Curvlinops EF there."""
    model, lik, X, y = problem(kind)
    layer = model[-1]
    ours = backend(model, lik, last_layer=True)
    if backend in HESSIANS:
        H = exact_hessian(model, lik, X, y, params_of={f"4.{n}": p for n, p in
                                                     layer.named_parameters()})
        assert rel(ours.full(X, y, N=N_DATA)[1], H) <= RTOL
        if backend is not CurvlinopsHessian:
            assert rel(ours.diag(X, y, N=N_DATA)[1], H.diagonal()) <= RTOL
        return
    native = (TorchFuncEF if backend in EFS else TorchFuncGGN)(model, lik, last_layer=True)
    P = sum(p.numel() for p in layer.parameters())
    for structure in ("full", "diag", "kron"):
        if structure == "kron" and backend is BackPackEF:
            continue
        result = getattr(ours, structure)(X, y, N=N_DATA)
        assert_same(result, getattr(native, structure)(X, y, N=N_DATA))
        if structure == "diag":
            assert result[1].shape == (P,) and bool((result[1] > 0).any())


@pytest.mark.parametrize("backend", GGNS + EFS + HESSIANS, ids=lambda c: c.__name__)
def test_subnetwork(backend):
    model, lik, X, y = problem("classification")
    idx = torch.tensor([0, 3, 17, 30, 31, 44, 50, 58])
    ours = backend(model, lik, subnetwork_indices=idx)
    if backend in HESSIANS:
        H = exact_hessian(model, lik, X, y)[idx][:, idx]
        assert rel(ours.full(X, y, N=N_DATA)[1], H) <= RTOL
    else:
        full = (TorchFuncEF if backend in EFS else TorchFuncGGN)(model, lik).full(X, y, N=1)[1]
        assert rel(ours.full(X, y, N=N_DATA)[1], full[idx][:, idx]) <= RTOL
        assert rel(ours.diag(X, y, N=N_DATA)[1], full.diagonal()[idx]) <= RTOL
    with pytest.raises((ValueError, NotImplementedError), match=backend.__name__):
        ours.kron(X, y, N=N_DATA)


@pytest.mark.parametrize("backend", [BackPackGGN, CurvlinopsGGN, AsdlGGN],
                         ids=lambda c: c.__name__)
@pytest.mark.parametrize("structure", ["full", "diag", "kron"])
def test_stochastic_ggn_estimates_the_ggn(backend, structure):
    """Monte Carlo GGN (``stochastic=True``): unbiased, so many samples come close."""
    torch.manual_seed(0)
    model, lik, X, y = problem("classification")
    exact = getattr(TorchFuncGGN(model, lik), structure)(X, y, N=N_DATA)[1]
    _, H = getattr(backend(model, lik, stochastic=True, num_samples=100), structure)(
        X, y, N=N_DATA)
    if structure == "kron":
        H, exact = torch.cat([p.flatten() for p in products(H)]), \
            torch.cat([p.flatten() for p in products(exact)])
    assert rel(H, exact) < 0.15  # about 0.03 at 100 samples


# ------------------------------------------------------------------ via Laplace
@pytest.mark.parametrize("backend", GGNS + EFS, ids=lambda c: c.__name__)
def test_laplace_factory_uses_the_backend(backend):
    model, lik, X, y = problem("classification")
    loader = DataLoader(TensorDataset(X, y), batch_size=5)
    structure = "diag" if backend is BackPackEF else "kron"
    la = Laplace(model, lik, subset_of_weights="all", hessian_structure=structure,
                 backend=backend)
    la.fit(loader)
    assert type(la.backend) is backend
    ref = Laplace(model, lik, subset_of_weights="all", hessian_structure=structure,
                  backend=TorchFuncEF if backend in EFS else TorchFuncGGN)
    ref.fit(loader)
    assert rel(la.log_marginal_likelihood(), ref.log_marginal_likelihood()) <= RTOL
    probs = la(X, link_approx="probit")
    assert rel(probs, ref(X, link_approx="probit")) <= RTOL


@pytest.mark.parametrize("backend", HESSIANS, ids=lambda c: c.__name__)
def test_indefinite_hessian_raises_instead_of_nan(backend):
    """A Hessian away from a minimum is indefinite: lml, predictive and sampling raise
    ``NotPositiveDefiniteError``; a large enough prior makes the posterior usable."""
    model, lik, X, y = problem("classification")
    H = exact_hessian(model, lik, X, y)
    assert torch.linalg.eigvalsh(H).min() < 0
    loader = DataLoader(TensorDataset(X, y), batch_size=6)
    la = Laplace(model, lik, subset_of_weights="all", hessian_structure="full",
                 prior_precision=1e-4, backend=backend)
    la.fit(loader)
    with pytest.raises(NotPositiveDefiniteError, match="not positive definite"):
        la.log_marginal_likelihood()
    with pytest.raises(NotPositiveDefiniteError):
        la(X)
    with pytest.raises(NotPositiveDefiniteError):
        la.sample(3)
    la.prior_precision = float(-torch.linalg.eigvalsh(H).min()) + 1.0
    assert torch.isfinite(la.log_marginal_likelihood())
    assert torch.isfinite(la(X)).all()


def test_asdfghjkl_hessian_low_rank_eigenpairs():
    model, lik, X, y = problem("regression")
    loader = DataLoader(TensorDataset(X, y), batch_size=5)
    torch.manual_seed(0)
    (U, lam), loss = AsdfghjklHessian(model, lik, low_rank=2, max_iters=500).eig_lowrank(loader)
    H = exact_hessian(model, lik, X, y)
    top = torch.linalg.eigvalsh(H)[-2:].flip(0)
    assert lam.shape == (2,) and U.shape == (H.shape[0], 2)
    assert rel(lam, top) < 1e-4
    assert float(((H @ U) - U * lam).norm() / lam.max()) < 1e-2
    assert rel(loss, TorchFuncGGN(model, lik).full(X, y, N=1)[0]) <= RTOL
    with pytest.raises(NotImplementedError, match="last-layer or subnetwork"):
        AsdfghjklHessian(model, lik, last_layer=True).eig_lowrank(loader)


# ---------------------------------------------------------------------- errors
class Residual(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(3, 3), nn.Linear(3, 2)

    def forward(self, x):
        return self.b(torch.tanh(self.a(x)) + x)


def small(*layers: nn.Module) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(*layers).double()


X3 = torch.randn(6, 3, dtype=torch.float64)
Y2 = torch.randn(6, 2, dtype=torch.float64)


@pytest.mark.parametrize("method", ["diag", "kron"])
def test_backpack_second_order_needs_a_chain_of_layers(method):
    with pytest.raises(ValueError, match="BackPackGGN.*chain of layers.*nn.Sequential"):
        getattr(BackPackGGN(Residual().double(), "regression"), method)(X3, Y2, N=6)


def nested_residual() -> nn.Module:
    """A residual block inside an ``nn.Sequential``: the outer container is sequential,
    the model is not a chain."""
    torch.manual_seed(0)
    return nn.Sequential(Residual(), nn.Tanh(), nn.Linear(2, 2)).double()


@pytest.mark.parametrize("method", ["diag", "kron"])
def test_backpack_checks_containers_nested_in_a_sequential(method):
    with pytest.raises(ValueError, match="BackPackGGN.*chain of layers"):
        getattr(BackPackGGN(nested_residual(), "regression"), method)(X3, Y2, N=6)


@pytest.mark.parametrize("model", [Residual, "functional", "nested"])
def test_backpack_full_ggn_of_any_container_is_the_native_one(model):
    """laplace-torch's full GGN comes from Jacobians and takes any container; here the
    exact rows of a model that is not a chain come from the native route, with a
    warning; the Monte Carlo square root has no such route and is refused."""
    net = {Residual: lambda: Residual().double(), "functional": FunctionalBetween,
           "nested": nested_residual}[model]()
    with pytest.warns(UserWarning, match="chain of layers.*native"):
        ours = BackPackGGN(net, "regression").full(X3, Y2, N=6)
    assert_same(ours, TorchFuncGGN(net, "regression").full(X3, Y2, N=6))
    with pytest.raises(ValueError, match="chain of layers"):
        BackPackGGN(net, "regression", stochastic=True).full(X3, Y2, N=6)


class Chain(nn.Module):
    """A custom container whose forward calls its layers one after the other."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.body = nn.Sequential(nn.Linear(3, 4), nn.Tanh())
        self.head = nn.Linear(4, 2)
        self.double()

    def forward(self, x):
        return self.head(self.body(x))


class FunctionalBetween(Chain):
    """The same layers with a functional operation between them: not a chain."""

    def forward(self, x):
        return self.head(torch.sin(self.body(x)))


@pytest.mark.parametrize("method", ["full", "diag", "kron"])
def test_backpack_second_order_takes_a_custom_chain(method):
    """A custom module is accepted when its output is its layers applied in order, and
    equals the native GGN (laplace-torch's BackPACK fails on the container for diag and
    kron); one with a functional operation between its layers is refused."""
    model = Chain()
    assert_same(getattr(BackPackGGN(model, "regression"), method)(X3, Y2, N=6),
                getattr(TorchFuncGGN(model, "regression"), method)(X3, Y2, N=6))
    if method != "full":
        with pytest.raises(ValueError, match="BackPackGGN.*chain of layers"):
            getattr(BackPackGGN(FunctionalBetween(), "regression"), method)(X3, Y2, N=6)


def test_backpack_ef_accepts_any_container():
    model = Residual().double()
    assert_same(BackPackEF(model, "regression").full(X3, Y2, N=6),
                TorchFuncEF(model, "regression").full(X3, Y2, N=6))


@pytest.mark.parametrize("layer,method,match", [
    (nn.LayerNorm(3), "diag", "DiagGGNExact has no extension for LayerNorm"),
    (nn.BatchNorm1d(3), "kron", "KFLR has no extension for BatchNorm1d"),
])
def test_backpack_unsupported_layers(layer, method, match):
    model = small(nn.Linear(3, 3), layer, nn.Linear(3, 2)).eval()
    with pytest.raises(ValueError, match=f"BackPackGGN: BackPACK's {match}"):
        getattr(BackPackGGN(model, "regression"), method)(X3, Y2, N=6)
    with pytest.raises(ValueError, match="BackPackEF: BackPACK's BatchGrad has no extension"):
        BackPackEF(small(nn.Linear(3, 3), nn.LayerNorm(3), nn.Linear(3, 2)),
                   "regression").full(X3, Y2, N=6)


def test_backpack_dict_inputs_and_sequence_outputs():
    model = small(nn.Linear(3, 2))
    with pytest.raises(ValueError, match="BackPackGGN: BackPACK does not support dict-like"):
        BackPackGGN(model, "regression").diag({"input_ids": X3}, Y2, N=6)
    for method in ("diag", "kron"):  # the input error before kron's "no Kronecker EF"
        with pytest.raises(ValueError, match="BackPackEF: BackPACK does not support dict"):
            getattr(BackPackEF(model, "regression"), method)({"input_ids": X3}, Y2, N=6)
    seq = torch.randn(6, 4, 3, dtype=torch.float64)
    with pytest.raises(ValueError, match="BackPackGGN: .*outputs of shape \\(n, K\\)"):
        BackPackGGN(model, "regression").diag(seq, torch.randn(6, 4, 2).double(), N=6)


def test_unsupported_kfac_modules():
    model = small(nn.Linear(3, 3), nn.LayerNorm(3), nn.Linear(3, 2))
    with pytest.raises(ValueError, match="CurvlinopsGGN: Curvlinops' KFAC supports"):
        CurvlinopsGGN(model, "regression").kron(X3, Y2, N=6)
    with pytest.raises(ValueError, match="AsdlGGN: ASDL computes no Kronecker factors"):
        AsdlGGN(model, "regression").kron(X3, Y2, N=6)
    with pytest.raises(ValueError, match="AsdlEF: ASDL computes no curvature for module"):
        AsdlEF(small(nn.Linear(3, 3), nn.GroupNorm(1, 3), nn.Linear(3, 2)),
               "regression").diag(X3, Y2, N=6)


def test_asdl_needs_matrix_outputs():
    seq = torch.randn(6, 4, 3, dtype=torch.float64)
    with pytest.raises(ValueError, match="AsdlGGN: ASDL needs model outputs of shape"):
        AsdlGGN(small(nn.Linear(3, 2)), "regression").diag(seq, torch.randn(6, 4, 2), N=6)


def test_curvlinops_sequence_outputs():
    """Curvlinops' KFAC on ``(n, m, K)`` outputs treats positions as extra data points."""
    model = small(nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, 3))
    seq = torch.randn(6, 4, 3, dtype=torch.float64)
    labels = torch.randint(0, 3, (6, 4))
    for lik, y in (("classification", labels), ("regression", torch.randn(6, 4, 3).double())):
        assert_same(CurvlinopsGGN(model, lik).kron(seq, y, N=6),
                    TorchFuncGGN(model, lik).kron(seq, y, N=6))


# ---------------------------------------------------------------------- hygiene
def test_adapters_leave_the_model_untouched():
    model, lik, X, y = problem("cnn")
    for backend in (BackPackGGN, BackPackEF, CurvlinopsGGN, CurvlinopsEF, AsdlGGN, AsdlEF):
        for method in ("full", "diag", "kron"):
            if backend is not BackPackEF or method != "kron":
                getattr(backend(model, lik), method)(X, y, N=N_DATA)
    BackPackEF(model, lik).gradients(X, y)
    AsdlEF(model, lik).gradients(X, y)
    X, y = X[:2], y[:2]  # ASDL's Hessian takes one backward pass per parameter
    for backend in (CurvlinopsHessian, AsdlHessian):
        backend(model, lik).full(X, y, N=N_DATA)
    AsdlHessian(model, lik).diag(X, y, N=N_DATA)
    for m in model.modules():
        assert not m._forward_hooks and not m._backward_hooks and not m._forward_pre_hooks
        assert not hasattr(m, "input0") and not hasattr(m, "output") and not hasattr(m, "fisher")
    for p in model.parameters():
        assert p.grad is None and p.requires_grad
    # BackPACK still works after ASDL hooked the same modules (and vice versa).
    assert_same(BackPackGGN(model, lik).diag(X, y, N=N_DATA),
                TorchFuncGGN(model, lik).diag(X, y, N=N_DATA))


@pytest.mark.parametrize("backend", [BackPackGGN, CurvlinopsGGN, AsdlGGN, CurvlinopsHessian],
                         ids=lambda c: c.__name__)
def test_float32(backend):
    model, lik, X, y = problem("classification")
    model, X = model.float(), X.float()
    loss, H = backend(model, lik).full(X, y, N=N_DATA)
    assert H.dtype == torch.float32 and loss.dtype == torch.float32


class DictModel(nn.Module):
    """A model taking a dict-like (Hugging Face style) batch."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 3)).double()

    def forward(self, batch):
        return self.net(batch["input_ids"])


@pytest.mark.parametrize("backend", [CurvlinopsGGN, CurvlinopsEF, AsdlGGN, AsdlEF],
                         ids=lambda c: c.__name__)
def test_dict_inputs(backend):
    model = DictModel()
    X = {"input_ids": torch.randn(7, 3, dtype=torch.float64)}
    y = torch.randint(0, 3, (7,))
    native = (TorchFuncEF if backend in EFS else TorchFuncGGN)(model, "classification")
    for structure in ("full", "diag", "kron"):
        assert_same(getattr(backend(model, "classification"), structure)(X, y, N=7),
                    getattr(native, structure)(X, y, N=7))
    H = exact_hessian(model, "classification", X, y)
    assert rel(CurvlinopsHessian(model, "classification").full(X, y, N=7)[1], H) <= RTOL
