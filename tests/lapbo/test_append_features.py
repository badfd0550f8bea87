"""``AppendFeatures`` (BO with environmental variables, risk-averse BO): the model is
trained on ``(x, w)`` inputs and queried at ``x`` alone, every query point becoming its
``n_f`` copies with the feature set appended, as in BoTorch's models. A fitted model with
the transform must predict, condition and sample exactly as the same fit without it at
the explicitly appended points."""

from __future__ import annotations

import pytest
import torch
from botorch.acquisition import qSimpleRegret
from botorch.acquisition.risk_measures import VaR
from botorch.models import SingleTaskGP
from botorch.models.transforms.input import AppendFeatures, InteractionFeatures
from botorch.optim import optimize_acqf
from botorch.sampling import SobolQMCNormalSampler
from botorch.sampling.pathwise import draw_matheron_paths

from lapbo import LaplaceBNN
from lapbo.sampling import PathwiseSamples, draw_pathwise_samples

DT = torch.float64
N_F = 3


def _data() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """14 observations of ``(x1, x2, w)`` and the feature set ``W`` ``(n_f, 1)`` of ``w``."""
    g = torch.Generator().manual_seed(0)
    XW = torch.rand(14, 3, generator=g, dtype=DT)
    Y = (torch.sin(4 * XW[:, :2]).sum(-1) + XW[:, 2] * XW[:, 0]).unsqueeze(-1)
    W = torch.rand(N_F, 1, generator=g, dtype=DT)
    return XW, Y, W


def _appended(X: torch.Tensor, W: torch.Tensor) -> torch.Tensor:
    """``(*b, q, d)`` → ``(*b, q·n_f, d + 1)``: each point with each row of ``W``."""
    expanded = X.unsqueeze(-2).expand(*X.shape[:-1], len(W), X.shape[-1])
    rows = torch.cat([expanded, W.expand(*expanded.shape[:-1], 1)], dim=-1)
    return rows.reshape(*X.shape[:-2], -1, X.shape[-1] + 1)


@pytest.fixture(scope="module")
def pair() -> tuple[LaplaceBNN, LaplaceBNN, torch.Tensor]:
    """The same fit with and without the transform, and the feature set."""
    XW, Y, W = _data()
    appended = LaplaceBNN(XW, Y, input_transform=AppendFeatures(feature_set=W), seed=0).fit()
    plain = LaplaceBNN(XW, Y, seed=0).fit()
    return appended, plain, W


def test_training_uses_the_observed_features(pair):
    appended, plain, _ = pair
    torch.testing.assert_close(appended.log_marginal_likelihood(),
                               plain.log_marginal_likelihood(), rtol=0, atol=0)
    torch.testing.assert_close(appended.train_inputs[0], plain.train_inputs[0], rtol=0, atol=0)


@pytest.mark.parametrize("batch", [(), (5,)])
def test_posterior_is_the_joint_over_the_appended_points(pair, batch):
    appended, plain, W = pair
    Xq = torch.rand(*batch, 4, 2, generator=torch.Generator().manual_seed(1), dtype=DT)
    got, want = appended.posterior(Xq), plain.posterior(_appended(Xq, W))
    assert got.mean.shape == (*batch, 4 * N_F, 1)
    torch.testing.assert_close(got.mean, want.mean, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(got.distribution.covariance_matrix,
                               want.distribution.covariance_matrix, rtol=1e-12, atol=1e-14)


def test_the_shapes_are_the_gps():
    XW, Y, W = _data()
    gp = SingleTaskGP(XW, Y, input_transform=AppendFeatures(feature_set=W))
    model = LaplaceBNN(XW, Y, input_transform=AppendFeatures(feature_set=W), seed=0).fit()
    Xq = torch.rand(2, 4, 2, generator=torch.Generator().manual_seed(2), dtype=DT)
    gp.eval()
    assert model.posterior(Xq).mean.shape == gp.posterior(Xq).mean.shape == (2, 4 * N_F, 1)
    paths, gp_paths = draw_matheron_paths(model, torch.Size([3])), draw_matheron_paths(
        gp, torch.Size([3]))
    assert paths(Xq[0]).shape == gp_paths(Xq[0]).shape == (3, 4 * N_F)


def test_a_query_with_the_features_already_appended_is_refused(pair):
    appended, _, _ = pair
    with pytest.raises(ValueError, match=r"maps X \(4, 3\) to \(12, 4\), but the network "
                                         r"takes 3 inputs"):
        appended.posterior(torch.rand(4, 3, dtype=DT))


def test_conditioning_and_fantasies_use_the_observed_points(pair):
    appended, plain, W = pair
    g = torch.Generator().manual_seed(3)
    XW_new, Xq = torch.rand(2, 3, generator=g, dtype=DT), torch.rand(3, 2, generator=g, dtype=DT)
    Y_new = torch.tensor([[0.5], [1.5]], dtype=DT)
    got = appended.condition_on_observations(XW_new, Y_new).posterior(Xq)
    want = plain.condition_on_observations(XW_new, Y_new).posterior(_appended(Xq, W))
    torch.testing.assert_close(got.mean, want.mean)
    torch.testing.assert_close(got.variance, want.variance)
    # AppendFeatures leaves fantasy points alone (transform_on_fantasize=False): (x, w)
    sampler = SobolQMCNormalSampler(torch.Size([4]), seed=4)
    fantasy = appended.fantasize(XW_new, sampler)
    assert fantasy.posterior(Xq).mean.shape == (4, 3 * N_F, 1)
    assert fantasy.train_inputs[0].shape == (4, 16, 3)


def test_pathwise_samples_are_paths_at_the_appended_points(pair):
    appended, plain, W = pair
    paths = draw_pathwise_samples(appended, 6)
    Xq = torch.rand(4, 2, generator=torch.Generator().manual_seed(5), dtype=DT)
    same = PathwiseSamples(plain, paths.offsets)
    torch.testing.assert_close(paths(Xq), same(_appended(Xq, W)))


def test_a_risk_measure_over_the_features_optimises_with_gradients(pair):
    appended, _, _ = pair
    acqf = qSimpleRegret(appended, objective=VaR(alpha=0.5, n_w=N_F))
    Xq = torch.rand(1, 2, 2, generator=torch.Generator().manual_seed(6), dtype=DT)
    Xq.requires_grad_(True)
    value = acqf(Xq)
    value.sum().backward()
    assert value.shape == (1,) and torch.isfinite(value).all()
    assert torch.isfinite(Xq.grad).all() and Xq.grad.abs().sum() > 0
    bounds = torch.tensor([[0.0, 0.0], [1.0, 1.0]], dtype=DT)
    candidate, _ = optimize_acqf(acqf, bounds=bounds, q=2, num_restarts=2, raw_samples=16)
    assert candidate.shape == (2, 2)


def test_features_appended_in_training_too():
    """``InteractionFeatures`` (``transform_on_train=True``): ``train_X`` and queries have
    ``d`` columns and the network takes ``d`` plus the ``d(d-1)/2`` products."""
    XW, Y, _ = _data()
    products = torch.stack([XW[:, 0] * XW[:, 1], XW[:, 0] * XW[:, 2], XW[:, 1] * XW[:, 2]], -1)
    model = LaplaceBNN(XW, Y, input_transform=InteractionFeatures(), seed=0).fit()
    plain = LaplaceBNN(torch.cat([XW, products], -1), Y, seed=0).fit()
    Xq = torch.rand(4, 3, generator=torch.Generator().manual_seed(7), dtype=DT)
    q_products = torch.stack([Xq[:, 0] * Xq[:, 1], Xq[:, 0] * Xq[:, 2], Xq[:, 1] * Xq[:, 2]], -1)
    got, want = model.posterior(Xq), plain.posterior(torch.cat([Xq, q_products], -1))
    torch.testing.assert_close(got.mean, want.mean, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(got.variance, want.variance, rtol=1e-10, atol=1e-14)
    with pytest.raises(ValueError, match=r"X must have shape \(\*batch, q, 3\)"):
        model.posterior(torch.rand(4, 6, dtype=DT))


def test_a_transform_left_in_eval_mode_still_preprocesses_the_training_inputs(pair):
    """A transform shared with a GP that was put in eval mode: the training inputs are the
    observed ones (train mode), not their ``n_f`` appended copies."""
    appended, _, _ = pair
    XW, Y, W = _data()
    shared = AppendFeatures(feature_set=W)
    SingleTaskGP(XW, Y, input_transform=shared).eval()
    assert not shared.training
    model = LaplaceBNN(XW, Y, input_transform=shared, seed=0).fit()
    torch.testing.assert_close(model.log_marginal_likelihood(),
                               appended.log_marginal_likelihood(), rtol=0, atol=0)
