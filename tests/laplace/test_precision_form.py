"""``FullLaplace`` / ``FullLLLaplace`` in the sample-space form equal the dense form.

Every public method is run on a ``precision_form="sample"`` and a ``"dense"`` posterior
of the same network and data (float64) and compared to 1e-8; ``"auto"`` picks the sample
space when there are fewer square-root rows than parameters, dense otherwise.
"""

from __future__ import annotations

import io
import warnings

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import laplace.posterior.full as full_module
from laplace import FullLaplace, Laplace
from laplace.curvature.torchfunc import TorchFuncGGN

DT = torch.float64
TOL = dict(rtol=1e-8, atol=1e-10)
CASES = [(lik, subset) for lik in ("regression", "classification")
         for subset in ("all", "last_layer")]
IDS = [f"{a}-{b}" for a, b in CASES]


def mlp(K: int) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 6), nn.Tanh(), nn.Linear(6, K)).to(DT)


def data(likelihood: str, n: int, seed: int, K: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, 3, generator=g, dtype=DT)
    if likelihood == "regression":
        return X, torch.randn(n, K, generator=g, dtype=DT)
    return X, torch.randint(0, K, (n,), generator=g)


def loader(X: torch.Tensor, y: torch.Tensor) -> DataLoader:
    return DataLoader(TensorDataset(X, y), batch_size=3)


def pair(likelihood: str, subset: str, n: int = 5, **kwargs) -> tuple:
    """A sample-space and a dense LA of one network, fitted on the same ``n`` points."""
    model = mlp(2)
    X, y = data(likelihood, n, 1)
    las = []
    for form in ("sample", "dense"):
        la = Laplace(model, likelihood, subset, "full", precision_form=form, **kwargs)
        la.fit(loader(X, y))
        las.append(la)
    assert las[0].uses_sample_space and not las[1].uses_sample_space
    return las


def priors(la) -> list:
    return [torch.tensor([0.7], dtype=DT),
            torch.linspace(0.5, 2.0, la.n_layers, dtype=DT),
            torch.linspace(0.3, 3.0, la.n_params, dtype=DT)]


def close(a, b) -> None:
    if isinstance(a, tuple):
        for u, v in zip(a, b):
            close(u, v)
        return
    torch.testing.assert_close(a, b, **TOL)


@pytest.mark.parametrize("likelihood,subset", CASES, ids=IDS)
def test_predictive_evidence_and_matrices_equal_the_dense_form(likelihood, subset):
    sample, dense = pair(likelihood, subset)
    Xt, _ = data(likelihood, 4, 7)
    for prior in priors(sample):
        for la in (sample, dense):
            la.prior_precision = prior
        close(sample(Xt), dense(Xt))
        if likelihood == "regression":
            close(sample(Xt, joint=True), dense(Xt, joint=True))
            close(sample(Xt, diagonal_output=True), dense(Xt, diagonal_output=True))
        else:
            for link in ("bridge", "mc"):
                g1, g2 = (torch.Generator().manual_seed(3) for _ in range(2))
                close(sample(Xt, link_approx=link, generator=g1),
                      dense(Xt, link_approx=link, generator=g2))
        for name in ("H", "posterior_precision", "posterior_covariance", "posterior_variance",
                     "log_det_posterior_precision", "spectrum"):
            close(getattr(sample, name), getattr(dense, name))
        theta = sample.mean + 0.1
        close(sample.log_prob(theta), dense.log_prob(theta))
        grads = []
        for la in (sample, dense):
            log_prior = prior.log().clone().requires_grad_(True)
            log_sigma = torch.zeros((), dtype=DT, requires_grad=True)
            sigma = log_sigma.exp() * 0.8 if likelihood == "regression" else None
            lml = la.log_marginal_likelihood(log_prior.exp(), sigma)
            lml.backward()
            grads.append((lml.detach(), log_prior.grad,
                          log_sigma.grad if sigma is not None else log_prior.grad))
        close(grads[0], grads[1])


def _draws_covariance(la, P: int) -> torch.Tensor:
    """``S Sᵀ`` of the draws ``S ε``: ``P`` draws of known ``ε`` give ``S`` exactly."""
    eps = torch.randn(P, P, generator=torch.Generator().manual_seed(5), dtype=DT)
    Z = la.sample(P, generator=torch.Generator().manual_seed(5)) - la.mean  # ε Sᵀ
    St = torch.linalg.solve(eps, Z)
    return St.T @ St


@pytest.mark.parametrize("likelihood,subset", CASES, ids=IDS)
def test_samples_have_the_dense_covariance_and_drive_the_nn_predictive(likelihood, subset):
    sample, dense = pair(likelihood, subset)
    P = sample.n_params
    close(_draws_covariance(sample, P), dense.posterior_covariance)
    close(_draws_covariance(dense, P), dense.posterior_covariance)
    Xt, _ = data(likelihood, 4, 7)
    for la in (sample, dense):
        g1, g2 = (torch.Generator().manual_seed(2) for _ in range(2))
        f = la.predictive_samples(Xt, pred_type="nn", n_samples=6, generator=g1)
        if likelihood == "regression":
            close(la(Xt, pred_type="nn", n_samples=6, generator=g2)[0], f.mean(0))
        else:
            close(la(Xt, pred_type="nn", link_approx="mc", n_samples=6, generator=g2), f.mean(0))


@pytest.mark.parametrize("structure", ["scalar", "layerwise", "diag"])
@pytest.mark.parametrize("likelihood,subset", CASES, ids=IDS)
def test_prior_tuning_equals_the_dense_form(likelihood, subset, structure):
    sample, dense = pair(likelihood, subset)
    for la in (sample, dense):
        la.optimize_prior_precision(method="marglik", n_steps=15, prior_structure=structure)
    close(sample.prior_precision, dense.prior_precision)
    if structure != "scalar":
        return
    Xv, yv = data(likelihood, 6, 9)
    for la in (sample, dense):
        la.optimize_prior_precision(method="gridsearch", val_loader=loader(Xv, yv),
                                    grid_size=7)
    close(sample.prior_precision, dense.prior_precision)


@pytest.mark.parametrize("likelihood,subset", CASES, ids=IDS)
def test_state_dict_round_trip_and_accumulation(likelihood, subset):
    sample, dense = pair(likelihood, subset)
    X2, y2 = data(likelihood, 4, 11)
    X3, y3 = data(likelihood, 2, 12)
    for la in (sample, dense):
        la.fit(loader(X2, y2), override=False)
    assert sample.uses_sample_space
    close(sample.H, dense.H)
    Xt, _ = data(likelihood, 4, 7)
    buffer = io.BytesIO()
    torch.save(sample.state_dict(), buffer)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)
    assert state["precision_form"] == "sample"
    dense.fit(loader(X3, y3), override=False)
    for form in ("auto", "dense"):
        fresh = Laplace(mlp(2), likelihood, subset, "full", precision_form=form)
        fresh.load_state_dict(state)
        fewer_rows = state["H"].shape[0] < fresh.n_params  # False for the last layer
        assert fresh.uses_sample_space == (form == "auto" and fewer_rows)
        close(fresh(Xt), sample(Xt))
        fresh.fit(loader(X3, y3), override=False)  # accumulation after a round trip
        close(fresh.H, dense.H)
        close(fresh(Xt), dense(Xt))


def test_auto_turns_dense_with_more_rows_than_parameters():
    model = mlp(2)  # P = 38
    X, y = data("regression", 12, 1)  # 24 rows: sample space
    la = FullLaplace(model, "regression")
    la.fit(loader(X, y))
    assert la.uses_sample_space
    X2, y2 = data("regression", 9, 2)  # 42 rows in all: dense from the batch that crosses
    la.fit(loader(X2, y2), override=False)
    dense = FullLaplace(model, "regression", precision_form="dense")
    dense.fit(loader(X, y))
    dense.fit(loader(X2, y2), override=False)
    assert not la.uses_sample_space
    close(la.H, dense.H)
    close(la.log_det_posterior_precision, dense.log_det_posterior_precision)


class NoRows(TorchFuncGGN):
    """A backend without square-root rows (as ASDL's stochastic Fisher)."""

    sqrt_rows = None


def test_backend_without_rows_means_dense():
    model = mlp(2)
    X, y = data("regression", 5, 1)
    la = FullLaplace(model, "regression", backend=NoRows)
    la.fit(loader(X, y))
    assert not la.uses_sample_space
    forced = FullLaplace(model, "regression", backend=NoRows, precision_form="sample")
    with pytest.raises(ValueError, match=r"precision_form='sample' needs square-root curvature "
                                         r"rows, which the backend NoRows does not give"):
        forced.fit(loader(X, y))


def test_precision_form_is_validated_and_read_only():
    with pytest.raises(ValueError, match=r"precision_form must be one of \('auto', 'dense', "
                                         r"'sample'\), got 'woodbury'"):
        FullLaplace(mlp(2), "regression", precision_form="woodbury")
    la = FullLaplace(mlp(2), "regression")
    with pytest.raises(AttributeError):
        la.precision_form = "dense"


def test_materialising_warns_above_the_threshold(monkeypatch):
    sample, dense = pair("regression", "all")
    monkeypatch.setattr(full_module, "MATERIALIZE_WARNING_BYTES", 38 * 38 * 8 - 1)
    for name in ("H", "posterior_precision", "posterior_covariance"):
        with pytest.warns(UserWarning, match=r"Materialising the 38 x 38 .* \(1\.08e-05 GiB\)"):
            getattr(sample, name)
    monkeypatch.setattr(full_module, "MATERIALIZE_WARNING_BYTES", 38 * 38 * 8)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        sample.H  # noqa: B018
        dense.H  # noqa: B018
