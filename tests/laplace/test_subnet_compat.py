"""Subnetwork Laplace as in laplace-torch 0.3: ``mean`` and ``sample`` over all ``P``
parameters (the others at their MAP values), ``mean_subnet``, ``assemble_full_samples``,
and strict ``subnetwork_indices`` / backend checks."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.func import functional_call
from torch.nn.utils import parameters_to_vector
from torch.utils.data import DataLoader, TensorDataset

from laplace import Laplace
from laplace.curvature.asdl import AsdlHessian
from laplace.curvature.curvlinops import CurvlinopsHessian
from laplace.curvature.torchfunc import TorchFuncEF

DT = torch.float64
INDICES = torch.tensor([0, 3, 7, 20, 33, 40])


def problem():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 8), nn.Tanh(), nn.Linear(8, 2)).to(DT)  # P = 50
    g = torch.Generator().manual_seed(1)
    X = torch.randn(24, 3, generator=g, dtype=DT)
    y = torch.stack([X.sin().sum(-1), X[:, 0] * X[:, 1]], -1)
    return model, DataLoader(TensorDataset(X, y), batch_size=8), X


def fitted(structure: str, indices=INDICES, **kwargs):
    model, loader, X = problem()
    la = Laplace(model, "regression", "subnetwork", structure, subnetwork_indices=indices,
                 sigma_noise=0.3, prior_precision=2.0, **kwargs)
    la.fit(loader)
    return la, model, X


@pytest.mark.parametrize("structure", ["full", "diag"])
def test_mean_and_samples_are_full_network(structure):
    la, model, _ = fitted(structure)
    theta = parameters_to_vector(model.parameters()).detach()
    assert la.n_params == 50 and la.n_params_subnet == 6
    torch.testing.assert_close(la.mean, theta, rtol=0, atol=0)
    torch.testing.assert_close(la.mean_subnet, theta[INDICES], rtol=0, atol=0)
    draws = la.sample(40000, generator=torch.Generator().manual_seed(2))
    assert draws.shape == (40000, 50)
    fixed = torch.ones(50, dtype=torch.bool)
    fixed[INDICES] = False
    torch.testing.assert_close(draws[:, fixed], theta[fixed].expand(40000, -1), rtol=0, atol=0)
    sub = draws[:, INDICES]
    cov = torch.cov(sub.T)
    if structure == "diag":
        Sigma = torch.diag(1 / la.posterior_precision)
    else:
        Sigma = torch.linalg.inv(la.posterior_precision)
    scale = Sigma.diagonal().max()
    torch.testing.assert_close(cov, Sigma, rtol=0, atol=0.03 * scale)
    torch.testing.assert_close(sub.mean(0), la.mean_subnet, rtol=0, atol=0.03 * scale.sqrt())


def test_assemble_full_samples():
    la, model, _ = fitted("full")
    subnet = torch.arange(12, dtype=DT).reshape(2, 6)
    full = la.assemble_full_samples(subnet)
    expected = la.mean.repeat(2, 1)
    expected[:, INDICES] = subnet
    torch.testing.assert_close(full, expected, rtol=0, atol=0)


def test_nn_predictive_runs_the_full_samples():
    la, model, X = fitted("full")
    thetas = la.sample(15, generator=torch.Generator().manual_seed(3))
    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for p in model.parameters()]
    outs = []
    for theta in thetas:
        chunks = theta.split([s.numel() for s in shapes])
        params = {n: c.reshape(s) for n, c, s in zip(names, chunks, shapes)}
        outs.append(functional_call(model, params, (X[:4],)))
    outs = torch.stack(outs)
    f_mu, f_var = la(X[:4], pred_type="nn", n_samples=15,
                     generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(f_mu, outs.mean(0), rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(f_var, outs.var(0), rtol=1e-12, atol=1e-14)


def test_all_indices_equal_the_full_laplace():
    """A subnetwork of every parameter is the all-weights Laplace (mean, scatter, lml)."""
    la, _, X = fitted("full", indices=torch.arange(50))
    model, loader, _ = problem()
    full = Laplace(model, "regression", "all", "full", sigma_noise=0.3, prior_precision=2.0)
    full.fit(loader)
    torch.testing.assert_close(la.mean, full.mean)
    torch.testing.assert_close(la.scatter, full.scatter)
    torch.testing.assert_close(la.log_marginal_likelihood(), full.log_marginal_likelihood())
    for a, b in zip(la(X[:5]), full(X[:5])):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_state_dict_round_trip_with_full_mean():
    la, _, X = fitted("diag")
    model, _, _ = problem()
    fresh = Laplace(model, "regression", "subnetwork", "diag", subnetwork_indices=INDICES)
    fresh.load_state_dict(la.state_dict())
    torch.testing.assert_close(fresh.mean, la.mean)
    for a, b in zip(la(X[:3]), fresh(X[:3])):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)


BAD_INDICES = [
    (None, r"subnetwork_indices cannot be None"),
    (torch.tensor([], dtype=torch.long), r"non-empty 1-D integer tensor, got shape \(0,\)"),
    (torch.tensor([[0, 1], [2, 3]]), r"non-empty 1-D integer tensor, got shape \(2, 2\)"),
    (torch.tensor([0.0, 1.0]), r"non-empty 1-D integer tensor, got torch.float32"),
    (torch.tensor([True, False]), r"non-empty 1-D integer tensor, got torch.bool"),
    ([0, 1], r"non-empty 1-D integer tensor, got list"),
    (torch.tensor([0, 50]), r"subnetwork_indices must lie in \[0, 50\)"),
    (torch.tensor([-1, 3]), r"subnetwork_indices must lie in \[0, 50\)"),
    (torch.tensor([3, 4, 3]), r"subnetwork_indices must not contain duplicates"),
]


@pytest.mark.parametrize("indices,message", BAD_INDICES,
                         ids=[m.split(",")[0][:30] for _, m in BAD_INDICES])
def test_bad_subnetwork_indices(indices, message):
    model, _, _ = problem()
    with pytest.raises(ValueError, match=message):
        Laplace(model, "regression", "subnetwork", "full", subnetwork_indices=indices)


def test_missing_subnetwork_indices():
    """laplace-torch requires the argument (a ``TypeError``); the error is both."""
    model, _, _ = problem()
    for error in (TypeError, ValueError):
        with pytest.raises(error, match=r"subnetwork_indices cannot be None"):
            Laplace(model, "regression", "subnetwork", "diag")


def test_int32_indices_accepted():
    la, _, _ = fitted("diag", indices=INDICES.to(torch.int32))
    assert la.subnetwork_indices.dtype == torch.long


@pytest.mark.parametrize("backend", [CurvlinopsHessian, AsdlHessian, "ggn"])
def test_only_ggn_or_ef_backends(backend):
    model, _, _ = problem()
    name = getattr(backend, "__name__", backend)
    with pytest.raises(ValueError, match=rf"only be used with GGN and EF backends, got '{name}'"):
        Laplace(model, "regression", "subnetwork", "full", subnetwork_indices=INDICES,
                backend=backend)


def test_empirical_fisher_backend_accepted():
    la, _, X = fitted("full", backend=TorchFuncEF)
    assert la(X[:2])[1].shape == (2, 2, 2)


@pytest.mark.parametrize("backend", [None, "backpack"])
@pytest.mark.parametrize("structure", ["full", "diag"])
def test_unsorted_indices_order_the_posterior_as_given(structure, backend):
    # The native backend used to build the curvature in parameter order while the mean,
    # samples and per-entry priors followed the given order: each posterior entry then
    # described another parameter. Unsorted indices must give the sorted posterior,
    # permuted, with every backend.
    from laplace.curvature.backpack import BackPackGGN

    kwargs = {} if backend is None else {"backend": BackPackGGN}
    perm = torch.tensor([4, 0, 5, 2, 1, 3])
    ordered, _, X = fitted(structure, **kwargs)
    shuffled, _, _ = fitted(structure, indices=INDICES[perm], **kwargs)
    torch.testing.assert_close(shuffled.posterior_variance, ordered.posterior_variance[perm])
    torch.testing.assert_close(shuffled.mean_subnet, ordered.mean_subnet[perm])
    for a, b in zip(shuffled(X), ordered(X)):
        torch.testing.assert_close(a, b)
    prior = torch.ones(6, dtype=DT)
    prior[0] = 1e3  # on θ[INDICES[perm[0]]] = θ[33]
    shuffled.prior_precision = prior
    assert shuffled.posterior_variance[0] < 1e-3 < float(shuffled.posterior_variance[1:].min())


def test_masks_on_a_partly_frozen_model_index_the_trainable_parameters():
    # A subnetwork Laplace indexes the trainable parameters; masks used to index all of
    # them, so on a frozen model the Laplace covered other entries than those selected.
    from laplace.utils import LargestMagnitudeSubnetMask, ParamNameSubnetMask

    model, loader, _ = problem()
    model[0].bias.requires_grad_(False)  # 8 frozen entries after 0.weight's 24
    trainable = parameters_to_vector([p for p in model.parameters() if p.requires_grad])
    idx = LargestMagnitudeSubnetMask(model, 5).select()
    expected = trainable.abs().argsort(descending=True)[:5].sort().values
    assert idx.tolist() == expected.tolist()
    la = Laplace(model, "regression", "subnetwork", "diag", subnetwork_indices=idx)
    la.fit(loader)
    torch.testing.assert_close(la.mean_subnet, trainable[idx].detach())
    head = ParamNameSubnetMask(model, ["2.weight"]).select()
    assert head.tolist() == list(range(24, 40))  # after 0.weight, the frozen bias skipped
    with pytest.raises(ValueError, match=r"selects frozen parameters .*'0.bias'"):
        ParamNameSubnetMask(model, ["0.bias"]).select()


def test_utils_name_the_inputs_they_cannot_use():
    from laplace.utils import FeatureExtractor, LargestVarianceSWAGSubnetMask, RunningNLLMetric

    model, _, X = problem()
    for kwargs in ({"swag_n_snapshots": 1}, {"swag_lr": 0.0}, {"swag_lr": "0.01"}):
        with pytest.raises(ValueError, match="swag_n_snapshots must be|swag_lr must be"):
            LargestVarianceSWAGSubnetMask(model, 5, **kwargs)
    metric = RunningNLLMetric()
    probs = torch.tensor([[0.6, 0.4], [0.3, 0.7]])
    metric.update(probs, torch.tensor([0.0, 1.0]))  # integral floats are class indices
    with pytest.raises(ValueError, match="needs integer class targets"):
        metric.update(probs, torch.tensor([0.7, 1.9]))

    class TwoHeads(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body, self.head, self.aux_head = nn.Linear(3, 4), nn.Linear(4, 2), nn.Linear(4, 2)

        def forward(self, x):
            return self.head(self.body(x))

    with pytest.raises(ValueError, match="'aux_head' was not called in the model's forward"):
        FeatureExtractor(TwoHeads(), last_layer_name="aux_head").forward_features(X.float())
