"""What BoTorch does to a fitted ``LaplaceBNN`` and the models derived from it.

Found by a session-20 sweep of the BoTorch contract: analytic acquisitions call
``model.to(X)`` on every evaluation, and a float32 ``X`` cast the network — shared with
the fantasy and subset models — to float32 (negative predictive variances; a parent that
raised dtype errors after a fantasy model was cast); conditioned models had no
``train_targets``; evaluation-only input transforms failed in ``fit`` (refused
until session 41, when ``InputPerturbation`` became supported).
"""

from __future__ import annotations

import pytest
import torch
from botorch.acquisition import LogExpectedImprovement
from botorch.models.transforms.input import FilterFeatures, Log10
from botorch.sampling import SobolQMCNormalSampler

from lapbo import LaplaceBNN

DT = torch.float64


def data(n: int = 12, m: int = 1, dtype: torch.dtype = DT) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    X = torch.rand(n, 2, generator=g, dtype=DT)
    Y = torch.stack([torch.sin(6 * X[:, 0]) + X[:, 1] ** (k + 1) for k in range(m)], -1)
    return X.to(dtype), Y.to(dtype)


@pytest.fixture(scope="module")
def fitted32() -> LaplaceBNN:
    model = LaplaceBNN(*data(dtype=torch.float32), seed=0)
    model.fit()
    return model


def test_model_to_a_float32_query_keeps_the_compute_dtype(fitted32):
    X = torch.rand(8, 1, 2, generator=torch.Generator().manual_seed(1))
    before = fitted32.posterior(X)
    LogExpectedImprovement(fitted32, best_f=0.5)(X)  # calls fitted32.to(X)
    assert next(fitted32.net.parameters()).dtype == DT
    after = fitted32.posterior(X)
    assert before.mean.dtype == torch.float32  # the query's dtype
    assert torch.equal(after.mean, before.mean) and torch.equal(after.variance, before.variance)


def test_casting_a_fantasy_model_leaves_its_parent_working(fitted32):
    X = torch.rand(3, 2, generator=torch.Generator().manual_seed(2))
    before = fitted32.posterior(X).mean
    fantasy = fitted32.fantasize(X[:1], SobolQMCNormalSampler(torch.Size([4])))
    fantasy.to(X)  # what BoTorch's value functions do with the fantasy model
    fitted32.subset_output([0]).to(torch.float32)
    assert next(fitted32.net.parameters()).dtype == DT
    assert torch.equal(fitted32.posterior(X).mean, before)
    fitted32.condition_on_observations(X[:1], torch.zeros(1, 1))  # a dtype error before


def test_conditioned_models_carry_train_targets():
    model = LaplaceBNN(*data(m=2), seed=0)
    model.fit()
    n = len(model._train_X)
    X_new = torch.rand(2, 2, generator=torch.Generator().manual_seed(3), dtype=DT)
    Y_new = torch.tensor([[1.0, 2.0], [3.0, 4.0]], dtype=DT)
    cond = model.condition_on_observations(X_new, Y_new)
    Y_tf, _ = model.outcome_transform(Y_new)
    expected = torch.cat([model.train_targets, Y_tf.mT], dim=-1)  # (m, n + 2)
    assert cond.train_targets.shape == (2, n + 2)
    torch.testing.assert_close(cond.train_targets, expected, rtol=0, atol=0)
    sub = cond.subset_output([1])
    torch.testing.assert_close(sub.train_targets, expected[1], rtol=0, atol=0)
    fantasy = model.subset_output([0]).fantasize(X_new[:1], SobolQMCNormalSampler(torch.Size([4])))
    assert fantasy.train_targets.shape == (4, n + 1)
    torch.testing.assert_close(fantasy.train_targets[:, :n],
                               model.train_targets[0].expand(4, n), rtol=0, atol=0)


def test_noise_of_the_wrong_shape_is_named():
    model = LaplaceBNN(*data(), seed=0)
    model.fit()
    X = torch.rand(3, 2, generator=torch.Generator().manual_seed(4), dtype=DT)
    with pytest.raises(ValueError, match=r"observation_noise must have shape \(\*batch, 3, 1\)"):
        model.posterior(X, observation_noise=torch.ones(3, 3, dtype=DT))
    with pytest.raises(ValueError, match=r"noise must have shape \(\*batch, 2, 1\)"):
        model.condition_on_observations(X[:2], torch.zeros(2, 1, dtype=DT),
                                        noise=torch.ones(3, 1, dtype=DT))
    # a broadcastable noise still adds to the variance
    plain = model.posterior(X).variance
    noisy = model.posterior(X, observation_noise=torch.full((1, 1), 0.1, dtype=DT)).variance
    scale = model.outcome_transform.stdvs.squeeze() ** 2  # noise is in the transformed space
    torch.testing.assert_close(noisy - plain, torch.full_like(plain, 0.1) * scale,
                               rtol=1e-6, atol=1e-9)


def test_a_transform_that_drops_inputs_everywhere_works():
    # FilterFeatures keeps inputs 0 of 2 for training and queries alike: the same fit as
    # a model of the first input alone
    X, Y = data()
    filtered = LaplaceBNN(X, Y, input_transform=FilterFeatures(torch.tensor([0])), seed=0).fit()
    alone = LaplaceBNN(X[:, :1], Y, seed=0).fit()
    Xq = torch.rand(4, 2, generator=torch.Generator().manual_seed(5), dtype=DT)
    torch.testing.assert_close(filtered.posterior(Xq).mean, alone.posterior(Xq[:, :1]).mean)


def test_inputs_the_transform_maps_outside_its_domain_are_named():
    X, Y = data()
    with pytest.raises(ValueError, match=r"input_transform\(train_X\) contains 1 NaN"):
        LaplaceBNN(X.index_fill(0, torch.tensor([0]), 0.0), Y,
                   input_transform=Log10(indices=[0]))
    model = LaplaceBNN(X + 1, Y, input_transform=Log10(indices=[0]), seed=0).fit()
    with pytest.raises(ValueError, match="maps X to 1 NaN or infinite"):
        model.posterior(torch.tensor([[0.0, 0.5], [1.5, 1.5]], dtype=DT))


def test_the_default_family_is_that_of_the_inputs_the_network_sees():
    # ten inputs of which FilterFeatures keeps two: the family of two inputs, not of ten
    g = torch.Generator().manual_seed(7)
    X = torch.rand(12, 10, generator=g, dtype=DT)
    Y = torch.sin(6 * X[:, :1]) + X[:, 1:2]
    filtered = LaplaceBNN(X, Y, input_transform=FilterFeatures(torch.tensor([0, 1])))
    assert filtered.candidates == list(LaplaceBNN(X[:, :2], Y).candidates)
    assert filtered.candidates != list(LaplaceBNN(X, Y).candidates)
