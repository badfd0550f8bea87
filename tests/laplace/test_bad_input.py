"""Bad input fails early with an error that names the problem."""

from __future__ import annotations

import re

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from laplace import Laplace
from laplace.precision import (
    DensePrecision,
    DiagPrecision,
    KronPrecision,
    NotPositiveDefiniteError,
)
from laplace.utils.matrix import KronDecomposed

STRUCTURES = ("full", "kron", "diag")
DT = torch.float64


# ------------------------------------------------------------------- builders
def mlp(n_out: int = 1, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(3, 8), nn.Tanh(), nn.Linear(8, n_out)).to(DT)


def make_la(model, likelihood="regression", structure="full", **kwargs):
    return Laplace(model, likelihood, subset_of_weights="all", hessian_structure=structure,
                   **kwargs)


def inputs(n: int = 12, seed: int = 1) -> torch.Tensor:
    return torch.randn(n, 3, generator=torch.Generator().manual_seed(seed), dtype=DT)


def loader(X, y, batch_size=8, **kwargs) -> DataLoader:
    return DataLoader(TensorDataset(X, y), batch_size=batch_size, **kwargs)


def reg_loader(n: int = 12) -> DataLoader:
    X = inputs(n)
    return loader(X, torch.sin(X[:, :1]))


def cls_loader(n: int = 12) -> DataLoader:
    X = inputs(n)
    return loader(X, (X[:, 0] > 0).long() + (X[:, 1] > 0).long())


class Body(nn.Module):
    """A network whose unsupported module sits at a nested path."""

    def __init__(self, norm: nn.Module) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(3, 8), norm, nn.Tanh())
        self.head = nn.Linear(8, 1)

    def forward(self, x):
        return self.head(self.body(x))


# ------------------------------------------------------------------- targets
@pytest.mark.parametrize("structure", STRUCTURES)
def test_nan_regression_targets(structure):
    X = inputs()
    y = torch.sin(X[:, :1])
    y[10, 0] = float("nan")
    la = make_la(mlp(), structure=structure)
    with pytest.raises(ValueError, match=r"Batch 1: regression targets contain NaN"):
        la.fit(loader(X, y))


def test_inf_regression_targets():
    X = inputs()
    y = torch.sin(X[:, :1])
    y[0, 0] = float("inf")
    with pytest.raises(ValueError, match=r"Batch 0: regression targets contain NaN or inf"):
        make_la(mlp()).fit(loader(X, y))


@pytest.mark.parametrize("structure", STRUCTURES)
@pytest.mark.parametrize(
    ("n_out", "y_shape"),
    [(1, (12, 2)), (2, (12,)), (2, (12, 1)), (2, (12, 3)), (2, (12, 2, 1)), (1, (12, 1, 1))],
)
def test_regression_target_shape_mismatch(structure, n_out, y_shape):
    X = inputs()
    y = torch.zeros(y_shape, dtype=DT)
    la = make_la(mlp(n_out), structure=structure)
    batch_shape = re.escape(str((8, *y_shape[1:])))
    expected = rf"Batch 0: targets of shape {batch_shape} do not match model outputs of shape "
    expected += rf"\(8, {n_out}\)"
    with pytest.raises(ValueError, match=expected):
        la.fit(loader(X, y))


def test_vector_targets_for_one_output_are_accepted():
    # (n,) targets for an (n, 1) output are the usual convention, not an error
    X = inputs()
    y = torch.sin(X[:, 0])
    a, b = make_la(mlp()), make_la(mlp())
    a.fit(loader(X, y))
    b.fit(loader(X, y[:, None]))
    assert float(a.log_marginal_likelihood()) == pytest.approx(
        float(b.log_marginal_likelihood()), rel=1e-12
    )


@pytest.mark.parametrize("structure", STRUCTURES)
def test_float_labels_for_classification(structure):
    X = inputs()
    y = (X[:, 0] > 0).to(DT)
    la = make_la(mlp(3), "classification", structure)
    with pytest.raises(ValueError, match=r"classification targets must be integer class indices"):
        la.fit(loader(X, y))


@pytest.mark.parametrize("structure", STRUCTURES)
@pytest.mark.parametrize("bad", [3, -1])
def test_labels_out_of_range(structure, bad):
    X = inputs()
    y = torch.zeros(12, dtype=torch.long)
    y[5] = bad
    la = make_la(mlp(3), "classification", structure)
    with pytest.raises(ValueError, match=r"class labels must lie in \[0, 2\]"):
        la.fit(loader(X, y))


def test_one_hot_labels_for_classification():
    X = inputs()
    y = torch.nn.functional.one_hot((X[:, 0] > 0).long(), 3)
    with pytest.raises(ValueError, match=r"targets of shape \(8, 3\) do not match logits"):
        make_la(mlp(3), "classification").fit(loader(X, y))


# ---------------------------------------------------------------------- data
@pytest.mark.parametrize("structure", STRUCTURES)
def test_empty_loader(structure):
    empty = loader(torch.zeros(0, 3, dtype=DT), torch.zeros(0, 1, dtype=DT))
    la = make_la(mlp(), structure=structure)
    with pytest.raises(ValueError, match=r"data loader is empty"):
        la.fit(empty)
    with pytest.raises(ValueError, match=r"not fitted"):
        la.log_marginal_likelihood()


def test_loader_without_batches():
    X = inputs(5)
    no_batches = loader(X, X[:, :1], batch_size=8, drop_last=True)
    with pytest.raises(ValueError, match=r"yielded no batches|drops its only, partial batch"):
        make_la(mlp()).fit(no_batches)


def test_loader_without_dataset():
    X = inputs()
    with pytest.raises(ValueError, match=r"len\(loader.dataset\)"):
        make_la(mlp()).fit([(X, X[:, :1])])


# ---------------------------------------------------------------- KFAC modules
@pytest.mark.parametrize(
    ("norm", "type_name"),
    [(nn.LayerNorm(8), "LayerNorm"), (nn.BatchNorm1d(8), "BatchNorm1d")],
)
def test_kron_rejects_normalization_layer(norm, type_name):
    model = Body(norm).to(DT).eval()
    la = make_la(model, structure="kron")
    with pytest.raises(ValueError, match=rf"module 'body\.1' of type {type_name}"):
        la.fit(reg_loader())


def test_kron_rejects_embedding():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Embedding(10, 4), nn.Flatten(), nn.Linear(8, 3)).to(DT)
    X = torch.randint(0, 10, (12, 2), generator=torch.Generator().manual_seed(0))
    y = X[:, 0] % 3
    la = make_la(model, "classification", "kron")
    with pytest.raises(ValueError, match=r"module '0' of type Embedding"):
        la.fit(loader(X, y))
    # freezing the unsupported module is the documented way out
    model[0].weight.requires_grad_(False)
    la = make_la(model, "classification", "kron")
    la.fit(loader(X, y))
    assert la.n_params == 8 * 3 + 3
    assert torch.isfinite(la.log_marginal_likelihood())


@pytest.mark.parametrize("structure", ["full", "diag"])
def test_full_and_diag_accept_normalization_layer(structure):
    model = Body(nn.LayerNorm(8)).to(DT).eval()
    la = make_la(model, structure=structure)
    la.fit(reg_loader())
    assert la.n_params == 3 * 8 + 8 + 8 + 8 + 8 + 1
    assert torch.isfinite(la.log_marginal_likelihood())


# ---------------------------------------------------------- prior precision
@pytest.mark.parametrize("structure", STRUCTURES)
@pytest.mark.parametrize("shape", [(5,), (2, 2), (40,), (42,)])
def test_prior_precision_of_wrong_length(structure, shape):
    model = mlp()  # 4 parameter tensors, 41 parameters
    bad = torch.ones(shape, dtype=DT)
    pattern = r"prior_precision of shape .* must be a scalar, one value per parameter tensor " \
              r"\(4\) or per parameter \(41\)"
    if structure == "kron":
        pattern = r"prior_precision of shape .* must be a scalar or one value per parameter " \
                  r"tensor \(4\) \(a Kronecker posterior takes no per-parameter prior\)"
    with pytest.raises(ValueError, match=pattern):
        make_la(model, structure=structure, prior_precision=bad)
    la = make_la(model, structure=structure)
    la.fit(reg_loader())
    with pytest.raises(ValueError, match=pattern):
        la.prior_precision = bad
    with pytest.raises(ValueError, match=pattern):
        la.log_marginal_likelihood(prior_precision=bad)
    # a failed assignment leaves the previous value in place
    torch.testing.assert_close(la.prior_precision, torch.ones(1, dtype=DT))


@pytest.mark.parametrize(("value", "pattern"), [
    (-1.0, r"prior_precision must be non-negative, got -1"),
    (float("nan"), r"prior_precision must be finite, got nan"),
    (float("inf"), r"prior_precision must be finite, got inf"),
])
def test_prior_precision_negative_or_not_finite(value, pattern):
    with pytest.raises(ValueError, match=pattern):
        make_la(mlp(), prior_precision=value)


@pytest.mark.parametrize("subset", ["all", "last_layer"])
def test_kron_rejects_per_parameter_prior_at_assignment(subset):
    """Refused at assignment once the parameters are known; a last layer found at
    ``fit`` is known only there, so its prior is refused by ``fit``."""
    named = {"last_layer_name": "2"} if subset == "last_layer" else {}
    la = Laplace(mlp(), "regression", subset_of_weights=subset, hessian_structure="kron",
                 **named)
    P = la.n_params
    pattern = rf"prior_precision of shape \({P},\) must be a scalar or one value per " \
              r"parameter tensor \(2\) \(a Kronecker posterior takes no per-parameter prior\)"
    if subset == "all":
        pattern = pattern.replace(r"\(2\)", r"\(4\)")
    with pytest.raises(ValueError, match=pattern):
        la.prior_precision = torch.ones(P, dtype=DT)
    with pytest.raises(ValueError, match=pattern):
        Laplace(mlp(), "regression", subset_of_weights=subset, hessian_structure="kron",
                prior_precision=torch.ones(P, dtype=DT), **named)
    if subset == "last_layer":
        found = Laplace(mlp(), "regression", subset_of_weights=subset, hessian_structure="kron",
                        prior_precision=torch.ones(P, dtype=DT))
        with pytest.raises(ValueError, match=pattern):
            found.fit(reg_loader())


# ------------------------------------------------- not positive definite
def few_points_zero_prior(structure, zero_unit=False):
    """N = 5 points, P = 41 parameters, prior precision 0: a singular precision."""
    model = mlp()
    if zero_unit:  # hidden unit 2 has no effect: exact zero rows/columns in the GGN
        with torch.no_grad():
            model[2].weight[0, 2] = 0.0
    la = make_la(model, structure=structure, prior_precision=0.0)
    la.fit(reg_loader(5))
    return la


def assert_not_pd(fn):
    with pytest.raises(NotPositiveDefiniteError, match=r"not positive definite") as info:
        value = fn()
        print("returned instead of raising:", value)
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize("spectrum", [False, True])
def test_full_rank_deficient_precision_raises(spectrum):
    la = few_points_zero_prior("full")
    if spectrum:
        la.spectrum  # noqa: B018  (eigenvalue path of the log-determinant)
    X = inputs(4)
    assert_not_pd(la.log_marginal_likelihood)
    assert_not_pd(lambda: la(X))
    assert_not_pd(lambda: la(X, joint=True))
    assert_not_pd(lambda: la.sample(3))
    # with gradients requested (marglik tuning) it must raise too
    assert_not_pd(lambda: la.log_marginal_likelihood(
        prior_precision=torch.zeros(1, dtype=DT, requires_grad=True)))


@pytest.mark.parametrize("structure", STRUCTURES)
def test_exactly_singular_precision_raises(structure):
    la = few_points_zero_prior(structure, zero_unit=True)
    X = inputs(4)
    assert_not_pd(la.log_marginal_likelihood)
    assert_not_pd(lambda: la(X))
    assert_not_pd(lambda: la.sample(3))


@pytest.mark.parametrize("structure", STRUCTURES)
def test_nan_inputs_raise_instead_of_returning_nan(structure):
    # a NaN input makes the curvature NaN: fitting, the marginal likelihood or the
    # predictive must say so (a ValueError naming NaN, e.g. NotPositiveDefiniteError's
    # "check the curvature for NaN/inf values"), never hand back NaN.
    X = inputs()
    y = torch.sin(X[:, :1])
    X[3, 1] = float("nan")
    la = make_la(mlp(), structure=structure)
    with pytest.raises(ValueError, match=r"NaN"):
        la.fit(loader(X, y, batch_size=5))
        lml = la.log_marginal_likelihood()
        print("log_marginal_likelihood returned", lml)
        _, f_var = la(inputs(2))
        print("predictive variance returned", f_var)


def nan_precision(kind: str):
    one, prior = torch.ones((), dtype=DT), torch.tensor([0.5], dtype=DT)
    h = torch.tensor([1.0, float("nan"), 2.0], dtype=DT)
    if kind == "dense-cholesky":
        return DensePrecision(torch.diag(h), one, prior)
    if kind == "dense-spectrum":
        return DensePrecision(torch.diag(h), one, prior, spectrum=h)
    if kind == "diag":
        return DiagPrecision(h, one, prior)
    Q = torch.eye(3, dtype=DT)
    return KronPrecision(KronDecomposed([[Q, Q]], [[h, h.nan_to_num(1.0)]]), one, prior)


@pytest.mark.parametrize("kind", ["dense-cholesky", "dense-spectrum", "diag", "kron"])
def test_precision_with_nan_curvature_is_not_positive_definite(kind):
    def logdet():
        return nan_precision(kind).logdet()

    assert_not_pd(logdet)


@pytest.mark.parametrize("structure", STRUCTURES)
def test_positive_prior_makes_it_positive_definite(structure):
    # the same curvature with a positive prior is fine: the errors above are about PD-ness
    la = few_points_zero_prior(structure, zero_unit=True)
    la.prior_precision = 1e-3
    assert torch.isfinite(la.log_marginal_likelihood())
    _, f_var = la(inputs(4))
    assert bool((f_var > 0).all())


# ------------------------------------------------------------- options
@pytest.mark.parametrize(
    ("kwargs", "pattern"),
    [
        ({"hessian_structure": "fancy"},
         r"Unknown hessian_structure 'fancy'; choose one of 'full', 'kron', 'diag'"),
        ({"likelihood": "poisson"},
         r"Unknown likelihood 'poisson'; choose one of 'regression', 'classification'"),
        ({"subset_of_weights": "some"},
         r"Unknown subset_of_weights 'some'; choose one of 'all', 'last_layer'"),
    ],
)
def test_unknown_option_strings(kwargs, pattern):
    args = {"likelihood": "regression", "subset_of_weights": "all", "hessian_structure": "full"}
    args.update(kwargs)
    with pytest.raises(ValueError, match=pattern):
        Laplace(mlp(), args.pop("likelihood"), **args)


def test_unknown_prediction_options():
    la = make_la(mlp(3), "classification")
    la.fit(cls_loader())
    with pytest.raises(ValueError, match=r"Unknown pred_type 'bayes'"):
        la(inputs(3), pred_type="bayes")
    with pytest.raises(ValueError, match=r"Unknown link_approx 'logit'"):
        la(inputs(3), link_approx="logit")


@pytest.mark.parametrize("structure", STRUCTURES)
def test_sigma_noise_for_classification(structure):
    with pytest.raises(ValueError, match=r"sigma_noise must be 1 for classification"):
        make_la(mlp(3), "classification", structure, sigma_noise=0.5)
    la = make_la(mlp(3), "classification", structure, sigma_noise=1.0)
    la.fit(cls_loader())
    with pytest.raises(ValueError, match=r"sigma_noise must be 1 for classification .*got 2\)"):
        la.sigma_noise = 2.0
    with pytest.raises(ValueError, match=r"sigma_noise can only be set for regression"):
        la.log_marginal_likelihood(sigma_noise=torch.tensor(0.5, dtype=DT))
    assert float(la.sigma_noise) == 1.0


def test_sigma_noise_must_be_scalar():
    la = make_la(mlp(2))
    with pytest.raises(ValueError, match=r"sigma_noise must be a scalar .*got shape \(2,\)"):
        la.sigma_noise = torch.ones(2, dtype=DT)


# ------------------------------------------------------------- not fitted
@pytest.mark.parametrize("structure", STRUCTURES)
def test_use_before_fit(structure):
    """What needs data raises ``NotFittedError`` (an ``AttributeError``, laplace-torch's
    type, and a ``ValueError``); full and diag predict with the prior before ``fit``
    (tests/laplace/test_before_fit.py), a Kronecker posterior does not exist yet."""
    la = make_la(mlp(), structure=structure)
    X = inputs(3)
    name = {"full": "FullLaplace", "kron": "KronLaplace", "diag": "DiagLaplace"}[structure]
    pattern = rf"{name} is not fitted: call fit\(train_loader\)"
    calls = {
        "lml": la.log_marginal_likelihood,
        "state_dict": la.state_dict,
    }
    if structure == "kron":
        calls.update({
            "predict": lambda: la(X),
            "predict_nn": lambda: la(X, pred_type="nn"),
            "sample": lambda: la.sample(2),
            "posterior_precision": lambda: la.posterior_precision,
            "posterior_variance": lambda: la.posterior_variance,
        })
    for what, call in calls.items():
        for error in (ValueError, AttributeError):
            with pytest.raises(error, match=pattern):
                call()
                pytest.fail(f"{what} did not raise")


def test_model_without_trainable_parameters():
    model = mlp().requires_grad_(False)
    with pytest.raises(ValueError, match=r"no trainable parameters"):
        make_la(model)


# ------------------------------------------------------------- state dicts
@pytest.mark.parametrize("structure", ["full", "kron", "diag", "lowrank"])
def test_state_dict_of_another_architecture_with_the_same_parameter_count(structure):
    """3→8→1 and 6→5→1 both have 41 parameters in 4 tensors: the count agrees, the
    shapes do not (for kron the Kronecker factors would be silently misread)."""
    torch.manual_seed(0)
    other = nn.Sequential(nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 1)).to(DT)
    kwargs = {"n_eigenvalues": 3} if structure == "lowrank" else {}
    la = make_la(mlp(), structure=structure, **kwargs)
    la.fit(reg_loader())
    state = la.state_dict()
    target = make_la(other, structure=structure, **kwargs)
    assert target.n_params == la.n_params == 41
    with pytest.raises(ValueError, match=r"State was saved for parameter tensors of shapes "
                                         r"\[\[8, 3\], \[8\], \[1, 8\], \[1\]\], this model has "
                                         r"\[\[5, 6\], \[5\], \[1, 5\], \[1\]\]"):
        target.load_state_dict(state)


def test_kron_state_dict_checks_factor_shapes():
    """Without the parameter shapes (a state saved by an older version) the Kronecker
    factor shapes are still checked."""
    torch.manual_seed(0)
    other = nn.Sequential(nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 1)).to(DT)
    la = make_la(mlp(), structure="kron")
    la.fit(reg_loader())
    state = la.state_dict()
    del state["param_shapes"]
    with pytest.raises(ValueError, match=r"State's curvature H has shapes \[\[\(8, 8\), "
                                         r"\(3, 3\)\].* this KronLaplace expects \[\[\(5, 5\), "
                                         r"\(6, 6\)\]"):
        make_la(other, structure="kron").load_state_dict(state)


def test_zero_prior_precision_is_a_flat_prior():
    # accepted as in laplace-torch: with a full-rank curvature the posterior is proper
    la = make_la(mlp(), prior_precision=0.0)
    la.fit(reg_loader(60))
    assert float(la.prior_precision) == 0.0
    _, f_var = la(inputs(3))
    assert bool((f_var > 0).all())
    assert float(la.log_marginal_likelihood()) == float("-inf")  # an improper prior
