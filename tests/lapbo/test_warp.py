"""A learnable ``Warp`` input transform (``lapbo.warping``): its concentrations are fitted
by the evidence of the random-feature networks, as a GP fits them by its marginal
likelihood; a fixed warp is an ordinary transform."""

from __future__ import annotations

import pytest
import torch
from botorch.exceptions.warnings import InputDataWarning
from botorch.models.transforms.input import Normalize, Warp
from botorch.models.transforms.utils import kumaraswamy_warp

from lapbo import LaplaceBNN

DT = torch.float64
UNIT = torch.tensor([[0.0], [1.0]], dtype=DT)


def _warped_data(c0: float, c1: float, n: int = 30) -> tuple[torch.Tensor, torch.Tensor]:
    """``sin(8 K(x))`` at ``n`` even points, ``K`` the Kumaraswamy CDF of ``(c0, c1)``."""
    X = torch.linspace(0, 1, n, dtype=DT).unsqueeze(-1)
    K = kumaraswamy_warp(X, torch.tensor([c0], dtype=DT), torch.tensor([c1], dtype=DT))
    return X, torch.sin(8 * K)


def _warp(c0: float = 1.0, c1: float = 1.0, learn: bool = True) -> Warp:
    warp = Warp(d=1, indices=[0], bounds=UNIT).to(DT)
    with torch.no_grad():
        warp.concentration0.fill_(c0)
        warp.concentration1.fill_(c1)
    return warp.requires_grad_(learn)


def _fit(X: torch.Tensor, Y: torch.Tensor, warp: Warp, **options) -> LaplaceBNN:
    return LaplaceBNN(X, Y, input_transform=warp, net="random_features", seed=0,
                      **options).fit()


def test_the_fit_finds_the_warp_of_the_data():
    """Data of a known warp: the fitted concentrations are close to it and the evidence
    at least that of the true warp held fixed, far above the identity's."""
    X, Y = _warped_data(2.0, 0.5)
    warp = _warp()
    fitted = float(_fit(X, Y, warp).log_marginal_likelihood())
    true = float(_fit(X, Y, _warp(2.0, 0.5, learn=False)).log_marginal_likelihood())
    identity = float(_fit(X, Y, _warp(learn=False)).log_marginal_likelihood())
    torch.testing.assert_close(warp.concentration0.detach(), torch.tensor([2.0], dtype=DT),
                               rtol=0.05, atol=0)
    torch.testing.assert_close(warp.concentration1.detach(), torch.tensor([0.5], dtype=DT),
                               rtol=0.05, atol=0)
    assert fitted >= true - 0.5
    assert fitted > identity + 100


def test_a_fixed_warp_is_an_ordinary_transform():
    X, Y = _warped_data(0.5, 2.0)
    fixed = _warp(0.7, 1.3, learn=False)
    model = _fit(X, Y, fixed)
    assert float(fixed.concentration0) == 0.7 and float(fixed.concentration1) == 1.3
    pre = kumaraswamy_warp(X, torch.tensor([0.7], dtype=DT), torch.tensor([1.3], dtype=DT),
                           eps=fixed._eps)
    plain = LaplaceBNN(pre, Y, net="random_features", seed=0).fit()
    torch.testing.assert_close(model.log_marginal_likelihood(), plain.log_marginal_likelihood(),
                               rtol=1e-9, atol=1e-9)


def test_the_default_family_adopts_the_chosen_candidates_warp():
    X, Y = _warped_data(2.0, 0.5, n=20)
    warp = _warp()
    model = LaplaceBNN(X, Y, input_transform=warp, seed=0).fit()
    chosen = [c for c, s in zip(model._candidate_models, model.selection) if s.chosen][0]
    assert float(warp.concentration0.detach()) != 1.0
    for name in ("concentration0", "concentration1"):
        torch.testing.assert_close(getattr(warp, name), getattr(chosen.input_transform, name),
                                   rtol=0, atol=0)
    Xq = torch.rand(7, 1, generator=torch.Generator().manual_seed(0), dtype=DT)
    torch.testing.assert_close(model.posterior(Xq).mean, chosen.posterior(Xq).mean,
                               rtol=0, atol=0)


def test_a_warm_start_starts_from_the_last_warp():
    X, Y = _warped_data(2.0, 0.5)
    first = _fit(X, Y, _warp())
    warp = _warp()
    LaplaceBNN(X[::2], Y[::2], input_transform=warp, net="random_features", warm_start=first)
    torch.testing.assert_close(warp.concentration0, first.input_transform.concentration0,
                               rtol=0, atol=0)


def test_gradients_flow_through_the_fitted_warp():
    X, Y = _warped_data(2.0, 0.5)
    model = _fit(X, Y, _warp())
    Xq = torch.tensor([[0.3], [0.71]], dtype=DT, requires_grad=True)
    grad = torch.autograd.grad(model.posterior(Xq).mean.sum(), Xq)[0]
    h = 1e-6
    with torch.no_grad():
        fd = (model.posterior(Xq + h).mean - model.posterior(Xq - h).mean) / (2 * h)
    torch.testing.assert_close(grad, fd, rtol=1e-5, atol=1e-6)


def test_a_chain_with_normalize_warps_the_normalized_inputs():
    X, Y = _warped_data(2.0, 0.5)
    chain_warp = _warp()
    from botorch.models.transforms.input import ChainedInputTransform
    chain = ChainedInputTransform(
        normalize=Normalize(d=1, bounds=torch.tensor([[0.0], [10.0]], dtype=DT)),
        warp=chain_warp)
    model = _fit(10 * X, Y, chain)
    alone = _fit(X, Y, _warp())
    torch.testing.assert_close(model.log_marginal_likelihood(), alone.log_marginal_likelihood(),
                               rtol=1e-6, atol=1e-6)


def test_unsupported_warps_are_named():
    X, Y = _warped_data(2.0, 0.5, n=12)
    with pytest.raises(ValueError, match="random-feature networks.*net=None"):
        LaplaceBNN(X, Y, input_transform=_warp(), net=None, candidates=None)
    with pytest.raises(ValueError, match=r"candidates\[0\] has net=None"):
        LaplaceBNN(X, Y, input_transform=_warp(), width=16)
    with pytest.raises(ValueError, match="batch_shape or reverse"):
        LaplaceBNN(X, Y, input_transform=Warp(d=1, indices=[0], bounds=UNIT, reverse=True))
    with pytest.warns(InputDataWarning, match="Warp has no bounds"):
        LaplaceBNN(X, Y, input_transform=Warp(d=1, indices=[0]))


def test_a_float32_query_enters_the_float64_warp_in_float64():
    """A query enters the transform in the promoted dtype: a float32 query of a float64
    model with a warp (whose parameters stay float64, also after ``.to(torch.float32)``)
    is answered in float64, as without the warp."""
    X, Y = _warped_data(2.0, 0.5)
    model = _fit(X, Y, _warp())
    Xq = torch.tensor([[0.3], [0.71]])
    want = model.posterior(Xq.double()).mean
    for m in (model, model.to(torch.float32)):
        got = m.posterior(Xq).mean
        assert got.dtype == DT
        torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_the_learned_warp_is_state():
    """``state_dict`` carries the concentrations: a fresh model loads the fitted one."""
    X, Y = _warped_data(2.0, 0.5)
    model = _fit(X, Y, _warp())
    fresh = LaplaceBNN(X, Y, input_transform=_warp(), net="random_features", seed=0)
    fresh.load_state_dict(model.state_dict())
    torch.testing.assert_close(fresh.input_transform.concentration1,
                               model.input_transform.concentration1, rtol=0, atol=0)
    Xq = torch.tensor([[0.3], [0.71]], dtype=DT)
    torch.testing.assert_close(fresh.posterior(Xq).mean, model.posterior(Xq).mean,
                               rtol=0, atol=0)
