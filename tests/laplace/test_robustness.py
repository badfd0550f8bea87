"""One sweep of bad inputs over every structure and weight subset.

Each case is one line in ``INIT_CASES`` (constructor keyword arguments, also assigned
through the setter of a fitted LA), ``FITTED_CASES`` (a call on a fitted LA) or
``FIT_CASES`` (a fit on bad data); every case asserts the error type and a message
naming the argument. The next edge case is one more line.
"""

from __future__ import annotations

from collections.abc import Mapping

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from laplace import ELLA, Laplace, VaLLA
from laplace.utils.errors import MissingKeyError

torch.set_num_threads(1)
DT = torch.float64
NAN, INF = float("nan"), float("inf")

VARIANTS = [
    ("all", "full"), ("all", "kron"), ("all", "diag"), ("all", "lowrank"), ("all", "gp"),
    ("last_layer", "full"), ("last_layer", "kron"), ("last_layer", "diag"),
    ("last_layer", "gp"), ("subnetwork", "full"), ("subnetwork", "diag"),
]
IDS = ["-".join(v) for v in VARIANTS]
PARAMETRIC = [v for v in VARIANTS if v[1] != "gp"]


# ------------------------------------------------------------------- builders
class Net(nn.Module):
    """``3 → 6 → K`` MLP; takes a tensor or a dict ``{"input_ids": x}``."""

    def __init__(self, n_out: int) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.body = nn.Sequential(nn.Linear(3, 6), nn.Tanh())
        self.head = nn.Linear(6, n_out)
        self.to(DT)

    def forward(self, x):
        if isinstance(x, Mapping):
            x = x["input_ids"]
        return self.head(self.body(x))


def data(likelihood: str, n: int = 10):
    X = torch.randn(n, 3, generator=torch.Generator().manual_seed(1), dtype=DT)
    if likelihood == "regression":
        return X, torch.sin(X[:, :1])
    return X, (X[:, 0] > 0).long() + (X[:, 1] > 0).long()


def loader(X, y, batch_size: int = 5) -> DataLoader:
    return DataLoader(TensorDataset(X, y), batch_size=batch_size)


def build(variant, likelihood: str = "regression", n_out: int | None = None, **kwargs):
    subset, structure = variant
    n_out = n_out or (1 if likelihood == "regression" else 3)
    extra = {}
    if subset == "subnetwork":
        extra["subnetwork_indices"] = torch.tensor([0, 5, 18, 24, 30])
    if structure == "gp":
        extra["n_subset"] = 6
    if structure == "lowrank":
        extra["n_eigenvalues"] = 4
    return Laplace(Net(n_out), likelihood, subset_of_weights=subset, hessian_structure=structure,
                   **extra, **kwargs)


def fitted(variant, likelihood: str = "regression"):
    la = build(variant, likelihood)
    la.fit(loader(*data(likelihood)))
    return la


def posterior_dim(la) -> int:
    return getattr(la, "n_params_subnet", la.n_params)


# ------------------------------------------------------------- the cases
# (id, keyword arguments given the posterior dimension P, error type, message pattern)
INIT_CASES = [
    ("sigma-negative", lambda P: {"sigma_noise": -1.0}, ValueError,
     r"sigma_noise must be positive, got -1"),
    ("sigma-zero", lambda P: {"sigma_noise": 0.0}, ValueError,
     r"sigma_noise must be positive, got 0"),
    ("sigma-nan", lambda P: {"sigma_noise": NAN}, ValueError, r"sigma_noise must be finite"),
    ("sigma-vector", lambda P: {"sigma_noise": torch.ones(2, dtype=DT)}, ValueError,
     r"sigma_noise must be a scalar .*got shape \(2,\)"),
    ("sigma-2d", lambda P: {"sigma_noise": torch.ones(1, 1, dtype=DT)}, ValueError,
     r"sigma_noise must be a scalar .*got shape \(1, 1\)"),
    ("sigma-string", lambda P: {"sigma_noise": "1"}, ValueError,
     r"sigma_noise must be a float or a torch.Tensor, got str"),
    ("temperature-zero", lambda P: {"temperature": 0.0}, ValueError,
     r"temperature must be positive, got 0"),
    ("temperature-negative", lambda P: {"temperature": -2}, ValueError,
     r"temperature must be positive, got -2"),
    ("temperature-nan", lambda P: {"temperature": NAN}, ValueError,
     r"temperature must be finite"),
    ("prior-negative", lambda P: {"prior_precision": -1.0}, ValueError,
     r"prior_precision must be non-negative, got -1"),
    ("prior-inf", lambda P: {"prior_precision": INF}, ValueError,
     r"prior_precision must be finite, got inf"),
    ("prior-string", lambda P: {"prior_precision": "1"}, ValueError,
     r"prior_precision must be a float or a torch.Tensor, got str"),
    ("prior-list", lambda P: {"prior_precision": [1.0]}, ValueError,
     r"prior_precision must be a float or a torch.Tensor, got list"),
    ("prior-bool", lambda P: {"prior_precision": True}, ValueError,
     r"prior_precision must be a float or a torch.Tensor, got bool"),
    ("prior-matrix", lambda P: {"prior_precision": torch.ones(2, 2, dtype=DT)}, ValueError,
     r"prior_precision of shape \(2, 2\) must be a scalar"),
    ("prior-length", lambda P: {"prior_precision": torch.ones(P + 1, dtype=DT)}, ValueError,
     r"prior_precision of shape \(\d+,\) must be a scalar"),
    ("mean-column", lambda P: {"prior_mean": torch.zeros(P, 1, dtype=DT)}, ValueError,
     r"prior_mean of shape \(\d+, 1\) must be a scalar or a vector of one value per "
     r"parameter"),
    ("mean-length", lambda P: {"prior_mean": torch.zeros(P + 1, dtype=DT)}, ValueError,
     r"prior_mean of shape \(\d+,\) must be a scalar or a vector"),
    ("mean-nan", lambda P: {"prior_mean": NAN}, ValueError, r"prior_mean must be finite"),
]


# Cases whose check needs the number of parameters: a last layer found at ``fit`` is
# unknown at construction, so they are refused by ``fit`` (laplace-torch's order) and by
# the constructor only when ``last_layer_name`` is given.
NEEDS_THE_LAYER = {"prior-length", "mean-length"}


@pytest.mark.parametrize("case", INIT_CASES, ids=[c[0] for c in INIT_CASES])
@pytest.mark.parametrize("variant", VARIANTS, ids=IDS)
def test_bad_hyperparameters(variant, case):
    """Refused by the constructor, by the setter of a fitted LA (which keeps its value)
    and, for the two tunable ones, by ``log_marginal_likelihood``."""
    case_id, kwargs_of, error, pattern = case
    la = fitted(variant)
    kwargs = kwargs_of(posterior_dim(la))
    if variant[0] == "last_layer":
        with pytest.raises(error, match=pattern):
            build(variant, last_layer_name="head", **kwargs)
    if variant[0] == "last_layer" and case_id in NEEDS_THE_LAYER:
        found_at_fit = build(variant, **kwargs)
        with pytest.raises(error, match=pattern):
            found_at_fit.fit(loader(*data("regression")))
    else:
        with pytest.raises(error, match=pattern):
            build(variant, **kwargs)
    (name, value), = kwargs.items()
    before = getattr(la, name)
    with pytest.raises(error, match=pattern):
        setattr(la, name, value)
    assert torch.equal(torch.as_tensor(getattr(la, name)), torch.as_tensor(before))
    if name in ("sigma_noise", "prior_precision"):
        with pytest.raises(error, match=pattern):
            la.log_marginal_likelihood(**kwargs)


def x_with(value: float, n: int = 4) -> torch.Tensor:
    x = torch.randn(n, 3, dtype=DT)
    x[2, 1] = value
    return x


# (id, likelihood, call on a fitted LA, error type, message pattern, variants or None = all)
FITTED_CASES = [
    ("predict-nan-input", "regression", lambda la: la(x_with(NAN)), ValueError,
     r"Input x contains NaN or inf \(1 of 12 entries\)", None),
    ("predict-inf-input", "classification", lambda la: la(x_with(-INF)), ValueError,
     r"Input x contains NaN or inf", None),
    ("predict-dict-nan-input", "regression", lambda la: la({"input_ids": x_with(NAN)}),
     ValueError, r"Input x\['input_ids'\] contains NaN or inf", None),
    ("predict-1d-input", "regression", lambda la: la(torch.randn(3, dtype=DT)), ValueError,
     r"Input x of shape \(3,\) gave a model output of shape \(1,\): the first dimension of "
     r"x is the batch", None),
    ("samples-nan-input", "regression", lambda la: la.predictive_samples(x_with(NAN)),
     ValueError, r"Input x contains NaN", None),
    ("mc-link-zero-samples", "classification",
     lambda la: la(x_with(0.0), link_approx="mc", n_samples=0), ValueError,
     r"n_samples must be a positive integer, got 0", None),
    ("predictive-samples-negative", "regression",
     lambda la: la.predictive_samples(x_with(0.0), n_samples=-3), ValueError,
     r"n_samples must be a positive integer, got -3", None),
    ("nn-predictive-zero-samples", "classification",
     lambda la: la(x_with(0.0), pred_type="nn", link_approx="mc", n_samples=0), ValueError,
     r"n_samples must be a positive integer, got 0", PARAMETRIC),
    ("sample-zero", "regression", lambda la: la.sample(0), ValueError,
     r"n_samples must be a positive integer, got 0", PARAMETRIC),
    ("sample-float", "regression", lambda la: la.sample(2.5), ValueError,
     r"n_samples must be a positive integer, got 2.5", PARAMETRIC),
    ("sample-bool", "regression", lambda la: la.sample(True), ValueError,
     r"n_samples must be a positive integer, got True", PARAMETRIC),
    ("lml-sigma-negative", "regression", lambda la: la.log_marginal_likelihood(
        sigma_noise=torch.tensor(-0.5, dtype=DT)), ValueError,
     r"sigma_noise must be positive, got -0.5", None),
    ("lml-sigma-classification", "classification",
     lambda la: la.log_marginal_likelihood(sigma_noise=0.5), ValueError,
     r"sigma_noise can only be set for regression", None),
    ("square-norm-length", "regression", lambda la: la.square_norm(torch.zeros(2, dtype=DT)),
     ValueError, r"value of shape \(2,\) must be a tensor \(\.\.\., \d+\)", PARAMETRIC),
    ("log-prob-length", "regression", lambda la: la.log_prob(torch.zeros(2, dtype=DT)),
     ValueError, r"value of shape \(2,\) must be a tensor", PARAMETRIC),
    ("functional-variance-2d", "regression",
     lambda la: la.functional_variance(torch.zeros(2, posterior_dim(la), dtype=DT)),
     ValueError, r"Js(_star)? of shape \(2, \d+\) must be a tensor \(n, K, \d+\)", None),
    ("functional-variance-width", "regression",
     lambda la: la.functional_variance(torch.zeros(2, 1, 3, dtype=DT)), ValueError,
     r"Js(_star)? of shape \(2, 1, 3\) must be a tensor \(n, K, \d+\)", None),
    ("functional-covariance-width", "regression",
     lambda la: la.functional_covariance(torch.zeros(2, 1, 3, dtype=DT)), ValueError,
     r"Js(_star)? of shape \(2, 1, 3\) must be a tensor \(n, K, \d+\)", None),
    ("functional-variance-dtype", "regression",
     lambda la: la.functional_variance(torch.zeros(2, 1, posterior_dim(la))), ValueError,
     r"Js(_star)? is torch.float32, the posterior torch.float64", None),
    ("tune-unknown-method", "regression",
     lambda la: la.optimize_prior_precision(method="bayes"), ValueError,
     r"Unknown method 'bayes'", None),
    ("tune-zero-steps", "regression",
     lambda la: la.optimize_prior_precision(n_steps=0), ValueError,
     r"n_steps must be a positive integer, got 0", None),
    ("tune-unknown-structure", "regression",
     lambda la: la.optimize_prior_precision(prior_structure="blocks"), ValueError,
     r"Unknown prior_structure 'blocks'", PARAMETRIC),
    ("gridsearch-nan-targets", "regression", lambda la: la.optimize_prior_precision(
        method="gridsearch", grid_size=3, val_loader=loader(x_with(0.0),
                                                            torch.full((4, 1), NAN))),
     ValueError, r"Validation batch 0: targets contain NaN or inf", None),
    ("gridsearch-empty-loader", "regression", lambda la: la.optimize_prior_precision(
        method="gridsearch", grid_size=3,
        val_loader=loader(torch.zeros(0, 3, dtype=DT), torch.zeros(0, 1, dtype=DT))),
     ValueError, r"The validation loader yielded no batches", None),
    ("gridsearch-nan-inputs", "regression", lambda la: la.optimize_prior_precision(
        method="gridsearch", grid_size=3, val_loader=loader(x_with(NAN), torch.zeros(4, 1))),
     ValueError, r"Input x contains NaN or inf", None),
    ("gridsearch-no-loader", "regression",
     lambda la: la.optimize_prior_precision(method="gridsearch"), ValueError,
     r"gridsearch needs a val_loader", None),
]


def fitted_cases():
    for case in FITTED_CASES:
        for variant in case[5] or VARIANTS:
            yield pytest.param(variant, case, id=f"{case[0]}-{'-'.join(variant)}")


@pytest.mark.parametrize(("variant", "case"), list(fitted_cases()))
def test_bad_calls_on_a_fitted_la(variant, case):
    _, likelihood, call, error, pattern, _ = case
    la = fitted(variant, likelihood)
    with pytest.raises(error, match=pattern):
        call(la)


def dict_loader(key_x: str, key_y: str) -> list[dict]:
    X, y = data("regression")
    return DataLoader([{key_x: X[i], key_y: y[i]} for i in range(len(X))], batch_size=5)


# (id, likelihood, constructor kwargs, loader, error type, pattern, variants or None = all)
FIT_CASES = [
    ("dict-batch-missing-target-key", "regression", {}, dict_loader("input_ids", "target"),
     MissingKeyError, r"Dict-like batch has no target key 'labels' \(keys: \['input_ids', "
     r"'target'\]\); pass dict_key_y=\.\.\. to Laplace", None),
    ("dict-batch-missing-input-key", "regression", {}, dict_loader("x", "labels"),
     MissingKeyError, r"Dict-like input has no key 'input_ids' \(keys: \['labels', 'x'\]\); "
     r"pass dict_key_x=\.\.\. to Laplace", [v for v in PARAMETRIC if v[0] != "last_layer"]),
    ("nan-inputs", "regression", {}, loader(x_with(NAN, 10), torch.zeros(10, 1, dtype=DT)),
     ValueError, r"Input x contains NaN or inf", None),
    ("reward-not-pairs", "reward_modeling", {"n_out": 1},
     loader(x_with(0.0), torch.tensor([0, 1, 1, 0])), ValueError,
     r"reward_modeling fits on pair batches: x of shape \(4, 3\) gave a model output of "
     r"shape \(4, 1\), not \(batch, 2\)", PARAMETRIC),
]


def fit_cases():
    for case in FIT_CASES:
        for variant in case[6] or VARIANTS:
            yield pytest.param(variant, case, id=f"{case[0]}-{'-'.join(variant)}")


@pytest.mark.parametrize(("variant", "case"), list(fit_cases()))
def test_bad_training_data(variant, case):
    _, likelihood, kwargs, data_loader, error, pattern, _ = case
    la = build(variant, likelihood, **kwargs)
    with pytest.raises(error, match=pattern):
        la.fit(data_loader)


@pytest.mark.parametrize("variant", VARIANTS, ids=IDS)
def test_dict_keys_assigned_after_construction_are_checked_and_used(variant):
    """``dict_key_x``/``dict_key_y`` are checked when assigned, as at construction, and a
    new key reaches the curvature backend (rebuilt with it)."""
    la = fitted(variant)
    for name in ("dict_key_x", "dict_key_y"):
        with pytest.raises(ValueError, match=name):
            setattr(la, name, 3)
    assert (la.dict_key_x, la.dict_key_y) == ("input_ids", "labels")
    la.dict_key_x, la.dict_key_y = "x", "y"
    assert (la.backend.dict_key_x, la.backend.dict_key_y) == ("x", "y")


@pytest.mark.parametrize("variant", VARIANTS, ids=IDS)
def test_nan_weights_are_named_as_nan_outputs(variant):
    """A network whose weights diverged to NaN gives NaN outputs at finite inputs: every
    variant says so (the last-layer ones said "an operation follows" the layer, since NaN
    outputs never equal ``last_layer(φ)``)."""
    la = build(variant)
    first = next(m for m in la.model.modules() if isinstance(m, nn.Linear))
    with torch.no_grad():
        first.weight.fill_(NAN)
    with pytest.raises(ValueError, match=r"(output|loss).*(contains|contain) NaN or inf") as e:
        la.fit(loader(*data("regression")))
    assert "operation follows" not in str(e.value)


@pytest.mark.parametrize("cls", [ELLA, VaLLA], ids=["ELLA", "VaLLA"])
def test_ella_valla_check_jacobians(cls):
    """ELLA's and VaLLA's ``functional_variance`` name a Jacobian of the wrong shape or dtype
    (a matmul error before)."""
    kwargs = {"subsample_size": 6, "n_eigenvalues": 3} if cls is ELLA else {"n_inducing": 4}
    la = cls(Net(1), "regression", **kwargs)
    la.fit(loader(*data("regression")))
    P = sum(p.numel() for p in la.model.parameters())
    torch.testing.assert_close(  # the check passes the right shape through
        la.functional_variance(torch.zeros(2, 1, P, dtype=DT)), torch.zeros(2, 1, 1, dtype=DT))
    with pytest.raises(ValueError, match=r"jacobians of shape \(2, 1, 3\) must be a tensor "
                                         rf"\(n, K, {P}\)"):
        la.functional_variance(torch.zeros(2, 1, 3, dtype=DT))
    with pytest.raises(ValueError, match=r"jacobians is torch.float32, the posterior "
                                         r"torch.float64"):
        la.functional_covariance(torch.zeros(2, 1, P))
