"""The refit machinery of ``LaplaceBNN``: the Gram-spectrum evidence against the Laplace
library, per-tensor priors, the hyperparameter optimisers and the output-layer
Jacobians."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
from torch import Tensor, nn

from lapbo import LaplaceBNN, networks, training
from laplace import Laplace
from laplace.curvature import (
    jacobians_by_autodiff,
    network_jacobians,
    output_layer_jacobians,
)

SMALL = {"width": 16, "n_epochs": 100, "marglik_every": 50, "marglik_steps": 10,
         "final_marglik_steps": 30, "n_epochs_warm_start": 30}


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def problem(n: int = 15, d: int = 2) -> tuple[nn.Module, Tensor, Tensor, list[Tensor]]:
    """A trained small network, data ``(n, d)``/``(n, 1)`` and a prior mean per tensor."""
    g = torch.Generator().manual_seed(3)
    X = torch.rand(n, d, generator=g, dtype=torch.float64)
    Y = torch.sin(4 * X[:, :1]) + X[:, 1:].square()
    torch.manual_seed(0)
    net = networks.default_network(d, 1, width=8, activation=("gauss", "tanh"), init_scale=1.0)
    theta0 = [p.detach().clone() for p in net.parameters()]
    training.train_map(net, X, Y, torch.tensor(0.05), torch.tensor(1.0), 60, 1e-2,
                       prior_mean=theta0)
    return net, X, Y, theta0


def laplace_lml(net: nn.Module, X: Tensor, Y: Tensor, theta0: list[Tensor],
                prior: Tensor, sigma: float) -> float:
    la = Laplace(net, "regression", subset_of_weights="all", hessian_structure="full",
                 sigma_noise=sigma,
                 prior_precision=prior, prior_mean=torch.cat([t.reshape(-1) for t in theta0]))
    la.fit(training.make_loader(X, Y))
    return float(la.log_marginal_likelihood())


@pytest.mark.parametrize("prior", [[0.7], [0.3, 2.0, 1.1, 0.5, 4.0, 0.9]])
def test_gram_evidence_equals_full_laplace(prior: list[float]) -> None:
    """Scalar and per-tensor priors: the refit evidence (``laplace.SampleSpaceEvidence``)
    = ``FullLaplace`` evidence."""
    net, X, Y, theta0 = problem()
    prior_t = torch.tensor(prior, dtype=torch.float64)
    layerwise = len(prior) > 1
    lml = training.network_evidence(net, X, Y, None, None, theta0, layerwise=layerwise)
    sigma = torch.tensor(0.2, dtype=torch.float64)
    ours = float(lml(prior_t if layerwise else prior_t.reshape(()), sigma))
    ref = laplace_lml(net, X, Y, theta0, prior_t, 0.2)
    assert ours == pytest.approx(ref, rel=1e-10)


def test_gram_evidence_with_more_rows_than_weights() -> None:
    """``N > P``: the evidence from the ``N × N`` spectrum equals ``FullLaplace``'s."""
    g = torch.Generator().manual_seed(4)
    X = torch.rand(80, 2, generator=g, dtype=torch.float64)
    Y = torch.sin(4 * X[:, :1]) + X[:, 1:].square()
    torch.manual_seed(0)
    net = networks.default_network(2, 1, width=4, depth=1, random_features=0, trend=None)
    net = net.double()
    theta0 = [p.detach().clone() for p in net.parameters()]
    training.train_map(net, X, Y, torch.tensor(0.05), torch.tensor(1.0), 60, 1e-2,
                       prior_mean=theta0)
    P = sum(p.numel() for p in net.parameters())
    assert P < 80
    lml = training.network_evidence(net, X, Y, None, None, theta0)
    assert lml.n_rows == 80 and lml.n_params == P
    prior, sigma = torch.tensor(0.7, dtype=torch.float64), torch.tensor(0.2, dtype=torch.float64)
    ref = laplace_lml(net, X, Y, theta0, prior.reshape(1), 0.2)
    assert float(lml(prior, sigma)) == pytest.approx(ref, rel=1e-10)


@pytest.mark.parametrize("linearized", [False, True])
def test_grouped_evidence_with_equal_precisions_is_scalar(linearized: bool) -> None:
    net, X, Y, theta0 = problem()
    scalar = training.network_evidence(net, X, Y, None, None, theta0, linearized)
    grouped = training.network_evidence(net, X, Y, None, None, theta0, linearized, layerwise=True)
    sigma, delta = torch.tensor(0.15, dtype=torch.float64), torch.tensor(1.7, dtype=torch.float64)
    assert float(grouped(delta.repeat(6), sigma)) == pytest.approx(
        float(scalar(delta, sigma)), rel=1e-11)


def test_lbfgs_and_adam_reach_the_same_optimum() -> None:
    net, X, Y, theta0 = problem()
    lml = training.network_evidence(net, X, Y, None, None, theta0)
    start = (torch.tensor(0.5, dtype=torch.float64), torch.tensor(1.0, dtype=torch.float64))
    lbfgs = training.TrainingOptions(marglik_optimizer="lbfgs")
    adam = training.TrainingOptions(marglik_optimizer="adam", marglik_lr=0.05)
    s1, p1 = training.maximize_marglik(lml, *start, 50, lbfgs, tune_noise=True)
    s2, p2 = training.maximize_marglik(lml, *start, 1500, adam, tune_noise=True)
    assert float(s1) == pytest.approx(float(s2), rel=1e-3)
    assert float(p1) == pytest.approx(float(p2), rel=1e-3)
    assert float(lml(p1, s1)) >= float(lml(p2, s2)) - 1e-8
    # the gradient vanishes at the L-BFGS optimum (an interior point here)
    lp, ls = p1.log().requires_grad_(), s1.log().requires_grad_()
    grads = torch.autograd.grad(lml(lp.exp(), ls.exp()), [lp, ls])
    assert max(abs(float(g)) for g in grads) < 1e-4
    with pytest.raises(ValueError, match="marglik_optimizer"):
        training.maximize_marglik(lml, *start, 5, training.TrainingOptions(
            marglik_optimizer="sgd"), tune_noise=True)


def test_lbfgs_respects_bounds() -> None:
    """An evidence that increases with ``δ`` forever stops at the upper bound."""
    opts = training.TrainingOptions(max_prior_precision=100.0)
    sigma, prior = training.maximize_marglik(
        lambda p, s: p.log() - s.square(), torch.tensor(1.0, dtype=torch.float64),
        torch.tensor(1.0, dtype=torch.float64), 30, opts, True)
    assert float(prior) == pytest.approx(100.0, rel=1e-9)
    assert float(sigma) == pytest.approx(opts.min_noise_std, rel=1e-9)


def test_layerwise_model_matches_laplace_predictive() -> None:
    g = torch.Generator().manual_seed(0)
    X = torch.rand(12, 2, generator=g, dtype=torch.float64)
    Y = torch.sin(5 * X[:, :1]) + X[:, 1:]
    model = LaplaceBNN(X, Y, prior_structure="layerwise", subset_of_weights="all", seed=0,
                       outcome_transform=None, candidates=None, **SMALL).fit()
    assert model.prior_precision.shape == (6,)
    assert bool((model.prior_precision > 0).all())
    assert len(set(model.prior_precision.tolist())) > 1  # refit per tensor
    Xt = torch.rand(5, 2, generator=g, dtype=torch.float64)
    f_mu, f_var = model.la(Xt, joint=True)
    post = model.posterior(Xt)
    assert torch.allclose(post.mean.reshape(-1), f_mu.reshape(-1), atol=1e-9)
    cov = post.distribution.covariance_matrix
    assert torch.allclose(cov, f_var.reshape(cov.shape), rtol=1e-6, atol=1e-9)
    warm = LaplaceBNN(X, Y, prior_structure="layerwise", subset_of_weights="all",
                      warm_start=model, **SMALL)
    assert torch.equal(warm.prior_precision, model.prior_precision)
    with pytest.raises(Exception, match="layerwise"):
        LaplaceBNN(X, Y, prior_structure="layerwise", subset_of_weights="last_layer")
    with pytest.raises(ValueError, match="prior_structure"):
        LaplaceBNN(X, Y, prior_structure="diag")


@pytest.mark.parametrize("bases", [{}, {"trend": "quadratic", "random_features": 7}])
def test_output_layer_jacobians_equal_autodiff(bases: dict) -> None:
    """The closed-form output-layer Jacobian equals ``vmap(jacrev)``, gradients w.r.t. X
    included; a network that transforms the layer's output falls back to autodiff."""
    net = networks.default_network(3, 2, width=5, activation="gauss", **bases)
    names = training.posterior_parameter_names(net, "last_layer")
    X = torch.rand(4, 3, dtype=torch.float64, requires_grad=True)
    J, f = network_jacobians(net, X, names)
    J_ref, f_ref = jacobians_by_autodiff(net, X, names)
    assert J.shape == J_ref.shape == (4, 2, 2 * (5 + (6 + 7 if bases else 0) + 1))
    assert torch.allclose(J, J_ref, atol=1e-14) and torch.allclose(f, f_ref, atol=1e-14)
    g, = torch.autograd.grad((J.square().sum() + f.sum()), X)
    g_ref, = torch.autograd.grad((J_ref.square().sum() + f_ref.sum()), X)
    assert torch.allclose(g, g_ref, atol=1e-12)
    squashed = nn.Sequential(net, nn.Tanh())
    names = [f"0.{n}" for n in names]
    assert output_layer_jacobians(squashed, X, names) is None
    J2, _ = network_jacobians(squashed, X, names)
    assert torch.allclose(J2, jacobians_by_autodiff(squashed, X, names)[0])


def test_keep_best_restores_the_network_of_highest_evidence_on_the_path(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # the refit objective is replaced by one that scores the k-th evidence check −|k − 2|:
    # the network after the second training chunk must come back, with its (σ, δ)
    g = torch.Generator().manual_seed(5)
    X = torch.rand(30, 2, generator=g, dtype=torch.float64)
    Y = torch.sin(3 * X[:, :1])
    torch.manual_seed(0)
    net = networks.default_network(2, 1, width=8)
    snapshots: list[list[Tensor]] = []
    train = training.train_map

    def recording_train(net: nn.Module, *args: object, **kwargs: object) -> None:
        train(net, *args, **kwargs)
        snapshots.append([p.detach().clone() for p in net.parameters()])

    checks = iter(range(100))

    def scored(*args: object, **kwargs: object) -> object:
        k = next(checks)
        return lambda prior, sigma: prior.sum() * 0 - abs(k - 1) * (1.0 + 0 * sigma)

    monkeypatch.setattr(training, "train_map", recording_train)
    monkeypatch.setattr(training, "network_evidence", scored)
    options = training.TrainingOptions(marglik_every=10, marglik_steps=3, final_marglik_steps=3,
                                       keep_best=True, noise_prior=None)
    one = torch.tensor(1.0, dtype=torch.float64)
    training._fit_full_ggn(net, X, Y, None, one, one, 40, options, "all", True)
    assert len(snapshots) == 4  # 4 chunks: checks 0, 1, 2 online and 3 at the end
    for p, saved in zip(net.parameters(), snapshots[1]):
        assert torch.equal(p.detach(), saved)
    assert not torch.equal(snapshots[1][0], snapshots[3][0])


def test_better_state_keeps_the_highest_score() -> None:
    net = nn.Linear(2, 1).double()
    options = training.TrainingOptions()
    one = torch.tensor(1.0, dtype=torch.float64)
    first = training._better_state(None, net, lambda p, s: -p, one, one, options, False)
    with torch.no_grad():
        net.weight.add_(1.0)
    kept = training._better_state(first, net, lambda p, s: -p, one, 2 * one, options, False)
    assert kept is first  # score −2 < −1
    newer = training._better_state(first, net, lambda p, s: -p, one, 0.5 * one, options,
                                   False)
    assert newer[0] == -0.5
    assert torch.equal(newer[1][0], net.weight.detach())


@pytest.mark.parametrize("per_tensor", [False, True])
@pytest.mark.parametrize("centred", [False, True])
def test_closed_form_prior_gradient_equals_autograd(per_tensor: bool, centred: bool) -> None:
    """The L-BFGS closure differentiates the data term by autograd and adds the prior's
    gradient in closed form: loss and gradients equal autograd's on ``_map_loss``, and a
    frozen weight gets no gradient."""
    torch.manual_seed(0)
    net = networks.default_network(3, 2, activation=("gauss", "gauss"), trend="quadratic",
                                   random_features=20, init_scale=1.25)
    net.head.bias.requires_grad_(False)
    X, Y = torch.rand(9, 3, dtype=torch.float64), torch.randn(9, 2, dtype=torch.float64)
    params = list(net.parameters())
    mean = [p.detach() + 0.1 * torch.randn_like(p) for p in params] if centred else None
    prior = (torch.rand(len(params), dtype=torch.float64) + 0.5 if per_tensor
             else torch.tensor(2.5, dtype=torch.float64))
    noise = torch.tensor(0.3, dtype=torch.float64)
    loss = training._map_loss(net, X, Y, noise, prior, mean)
    expected = torch.autograd.grad(loss, [p for p in params if p.requires_grad])
    closed = training._map_loss_backward(net, params, X, Y, noise, prior, mean)
    assert not closed.requires_grad
    assert torch.allclose(closed, loss.detach(), rtol=1e-14, atol=0)
    got = [p.grad for p in params if p.requires_grad]
    assert all(torch.allclose(g, e, rtol=1e-13, atol=1e-16) for g, e in zip(got, expected))
    assert net.head.bias.grad is None


@pytest.mark.parametrize("keep_best", [False, True])
def test_the_evidence_of_the_last_refit_is_reused_and_equals_a_fresh_one(keep_best: bool) -> None:
    """``fit()`` keeps the ``SampleSpaceEvidence`` of the returned weights (built by the
    last refit, or by the refit of the restored state with ``keep_best``), and
    ``log_marginal_likelihood()`` evaluates it: bit-equal to building it again."""
    torch.manual_seed(0)
    X = torch.rand(12, 2, dtype=torch.float64)
    Y = torch.sin(6 * X[:, :1]) + 0.1 * torch.randn(12, 1, dtype=torch.float64)
    model = LaplaceBNN(X, Y, n_epochs=60, marglik_every=20, candidates=None, seed=0,
                       keep_best=keep_best).fit()
    assert model._evidence is not None
    cached = model.log_marginal_likelihood()
    Xt, Yt, Yvar = model._training_data()
    fresh = training.network_evidence(model.net, Xt, Yt, Yvar, model._param_names,
                                      model._prior_mean_list())
    assert torch.equal(cached, fresh(model.prior_precision, model.sigma_noise).detach())
    model.load_state_dict(model.state_dict())
    assert model._evidence is None
    assert torch.equal(model.log_marginal_likelihood(), cached)
