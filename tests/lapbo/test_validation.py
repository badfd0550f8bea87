"""Bad input to ``LaplaceBNN`` gets a ``ValueError`` naming the argument, never a silently
wrong posterior: one parametrised place per entry point, so a new case is one line."""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor

from lapbo import LaplaceBNN

SMALL = {"width": 8, "n_epochs": 20, "marglik_every": 10, "marglik_steps": 5,
         "final_marglik_steps": 10, "n_epochs_warm_start": 5, "random_features": 10}


def data(n: int = 8, d: int = 2, m: int = 1) -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(0)
    X = torch.rand(n, d, generator=g, dtype=torch.float64)
    Y = torch.sin(4 * X.sum(-1, keepdim=True)).expand(n, m).clone()
    return X, Y


@pytest.fixture(scope="module")
def fitted() -> LaplaceBNN:
    X, Y = data()
    return LaplaceBNN(X, Y, seed=0, **SMALL).fit()


def _with(tensor: Tensor, index: tuple, value: float) -> Tensor:
    out = tensor.clone()
    out[index] = value
    return out


X0, Y0 = data()

CONSTRUCTOR_CASES = [
    ({"train_X": _with(X0, (0, 0), math.nan)}, "train_X contains 1 NaN or infinite"),
    ({"train_X": _with(X0, (1, 1), math.inf)}, "train_X contains 1 NaN or infinite"),
    ({"train_Y": _with(Y0, (2, 0), math.nan)}, "train_Y contains 1 NaN or infinite"),
    ({"train_Y": Y0[:5]}, "train_X has 8 points but train_Y has 5"),
    ({"train_Y": Y0.squeeze(-1)}, r"train_Y must be \(n, m\)"),
    ({"train_X": X0[:0], "train_Y": Y0[:0]}, "train_X is empty"),
    ({"train_X": X0[:, :0]}, "need at least one input and one output column"),
    ({"train_Y": Y0[:, :0]}, "need at least one input and one output column"),
    ({"train_Yvar": -torch.ones_like(Y0)}, "train_Yvar must be non-negative"),
    ({"train_Yvar": torch.full_like(Y0, math.nan)}, "train_Yvar contains 8 NaN"),
    ({"train_Yvar": torch.ones(8, 2, dtype=torch.float64)}, "train_Yvar has shape"),
    ({"prior_precision": 0.0}, "prior_precision must be a positive"),
    ({"prior_precision": -1.0}, "prior_precision must be a positive"),
    ({"sigma_noise": 0.0}, "sigma_noise must be a positive"),
    ({"sigma_noise": math.nan}, "sigma_noise must be a positive"),
    ({"min_noise_std": -1e-3}, "min_noise_std must be a positive"),
    ({"n_epochs": 0}, "n_epochs must be a positive integer"),
    ({"n_epochs": 2.5}, "n_epochs must be a positive integer"),
    ({"n_epochs_warm_start": -1}, "n_epochs_warm_start must be a positive integer"),
    ({"width": 0}, "width must be a positive integer"),
    ({"lr": 0.0}, "lr must be a positive"),
    ({"marglik_every": -1}, "marglik_every must be a non-negative integer"),
    ({"final_marglik_steps": 1.5}, "final_marglik_steps must be a non-negative integer"),
    ({"random_features": -5}, "random_features must be a non-negative integer"),
    ({"optimizer": "sgd"}, "optimizer must be 'lbfgs' or 'adam'"),
    ({"noise_prior": (-8.0, 0.0)}, "noise_prior scale must be a positive"),
    ({"noise_prior": (1.0,)}, r"noise_prior must be \(loc, scale\)"),
    ({"prior_precision_prior": 0.0}, "prior_precision_prior must be a positive"),
    ({"trend_scale": -1.0}, "trend_scale must be a positive"),
    ({"trend": "cubic"}, "trend must be None or 'quadratic'"),
    ({"random_feature_kernel": "cauchy"}, "random_feature_kernel must be one of"),
    ({"reference_dim": 0}, "reference_dim must be a positive"),
    ({"keep_best": "yes"}, "keep_best must be True or False"),
    ({"tune_noise": "no"}, "tune_noise must be True or False"),
    ({"train_X": X0.round().long()}, "train_X must be a floating-point tensor"),
    ({"train_Y": Y0.round().int()}, "train_Y must be a floating-point tensor"),
    ({"noise_prior": (math.nan, 1.0)}, "noise_prior loc must be a finite number"),
    ({"noise_prior": 5}, r"noise_prior must be \(loc, scale\)"),
    ({"min_noise_std": 100.0}, r"min_noise_std must lie in \[0, 10\]"),
    ({"sigma_noise": 50.0}, r"sigma_noise must lie in \[0, 10\]"),
    ({"prior_precision": 1e30}, r"prior_precision must lie in \[1e-06, 1e\+06\]"),
    ({"seed": 1.5}, "seed must be None or an integer"),
    ({"seed": "a"}, "seed must be None or an integer"),
    ({"init_scale": -1.0}, "init_scale must be a positive"),
    ({"random_feature_lengthscale": math.nan}, "random_feature_lengthscale must be a positive"),
    ({"random_feature_lengthscale": (0.1, 0.2, 0.3)}, "random_feature_lengthscale must be"),
    ({"random_feature_variance": math.nan}, "random_feature_variance must be a positive"),
    ({"activation": 5}, "activation must be a name or a sequence of names"),
    ({"compute_dtype": torch.float16}, "compute_dtype must be torch.float32 or torch.float64"),
    ({"compute_dtype": "float64"}, "compute_dtype must be torch.float32 or torch.float64"),
    ({"candidates": [{"foo": 1}]}, r"candidates\[0\] sets \['foo'\], which are not"),
    ({"sigma_noise": "0.1"}, "sigma_noise must be a positive number, not the string"),
    ({"prior_precision": "1"}, "prior_precision must be a positive number, not the string"),
    ({"train_X": X0.half(), "train_Y": Y0.half()}, "train_X is torch.float16"),
    ({"train_Y": Y0.bfloat16()}, "train_Y is torch.bfloat16"),
    ({"input_transform": 3}, "input_transform must be a BoTorch InputTransform or None"),
    ({"input_transform": "normalize"}, "input_transform must be a BoTorch InputTransform"),
    ({"outcome_transform": 3}, "outcome_transform must be a BoTorch OutcomeTransform or None"),
    ({"net": lambda: None}, None),  # TypeError: a factory must return a module
    # the default network's architecture and each candidate's values, at construction
    # (a candidate's were checked only when it was built at fit)
    ({"activation": "swish"}, r"Unknown activation 'swish'"),
    ({"depth": 3}, r"activation must be one name or 3 names \(one per hidden layer"),
    ({"input_map": "torus"}, r"Unknown input map 'torus'"),
    ({"candidates": [{"width": -1}]}, r"candidates\[0\]: width must be a positive integer"),
    ({"candidates": [{}, {"lr": math.nan}]}, r"candidates\[1\]: lr must be a positive"),
    ({"candidates": [{"activation": "swish"}]}, r"candidates\[0\]: Unknown activation"),
    ({"candidates": [{"depth": 3}]}, r"candidates\[0\]: activation must be one name or 3"),
    ({"candidates": [{"input_map": "torus"}]}, r"candidates\[0\]: Unknown input map"),
    ({"candidates": [{"optimizer": "sgd"}]}, r"candidates\[0\]: optimizer must be"),
]


@pytest.mark.parametrize(("change", "message"), CONSTRUCTOR_CASES)
def test_constructor_rejects(change: dict, message: str) -> None:
    kwargs = {"train_X": X0, "train_Y": Y0, **SMALL, **change}
    if message is None:
        with pytest.raises(TypeError, match="net, a factory, must return an nn.Module"):
            LaplaceBNN(**kwargs)
        return
    with pytest.raises(ValueError, match=message):
        LaplaceBNN(**kwargs)


def test_a_network_with_other_outputs_than_train_Y_is_rejected() -> None:
    # three outputs for one column of train_Y: each observation would count three times
    def net() -> torch.nn.Module:
        return torch.nn.Sequential(torch.nn.Linear(2, 4), torch.nn.Tanh(),
                                   torch.nn.Linear(4, 3)).double()

    with pytest.raises(ValueError, match=r"net must map \(n, d\) inputs to \(n, 1\) outputs"):
        LaplaceBNN(X0, Y0, net=net, candidates=None)
    with pytest.raises(ValueError, match="net has no parameters"):
        LaplaceBNN(X0, Y0, net=torch.nn.Identity(), candidates=None)
    with pytest.raises(ValueError, match=r"net cannot take the \(n, 2\) inputs"):
        LaplaceBNN(X0, Y0, net=torch.nn.Linear(3, 1).double(), candidates=None)


def test_random_features_zero_is_named_for_the_random_feature_family() -> None:
    # the default family is random-feature networks: 0 features is no network at all
    with pytest.raises(ValueError, match=r"candidates\[0\] is a net='random_features' "
                                         r"network.*not 0 \(set on the model"):
        LaplaceBNN(X0, Y0, random_features=0)
    LaplaceBNN(X0, Y0, random_features=0, width=8)  # an MLP without features: fine


def test_learnable_input_transforms_are_refused() -> None:
    from botorch.models.transforms.input import (
        ChainedInputTransform,
        InputTransform,
        Normalize,
        Warp,
    )

    class Shift(InputTransform, torch.nn.Module):
        """A transform with a learnable shift, which no fit would learn."""

        transform_on_train = transform_on_eval = transform_on_fantasize = True

        def __init__(self) -> None:
            super().__init__()
            self.shift = torch.nn.Parameter(torch.zeros(2, dtype=torch.float64))

        def transform(self, X: torch.Tensor) -> torch.Tensor:
            return X + self.shift

    with pytest.raises(ValueError, match=r"Shift has learnable parameters \['shift'\]"):
        LaplaceBNN(X0, Y0, input_transform=Shift(), **SMALL)
    # a Warp's concentrations are learned, but by the random-feature networks only
    with pytest.raises(ValueError, match="Warp with learnable concentrations"):
        LaplaceBNN(X0, Y0, input_transform=Warp(d=2, indices=[0, 1]), **SMALL)
    chain = ChainedInputTransform(n=Normalize(d=2), w=Warp(d=2, indices=[0]))
    with pytest.raises(ValueError, match="Warp with learnable concentrations"):
        LaplaceBNN(X0, Y0, input_transform=chain, **SMALL)
    fixed = Warp(d=2, indices=[0, 1]).requires_grad_(False)  # a fixed warp is a transform
    LaplaceBNN(X0, Y0, input_transform=fixed, **SMALL)


def test_warm_start_built_from_other_network_options_is_rejected(fitted: LaplaceBNN) -> None:
    with pytest.raises(ValueError, match="width=8 there, 64 here"):
        LaplaceBNN(X0, Y0, warm_start=fitted, **{**SMALL, "width": 64})
    with pytest.raises(ValueError, match="net=None, this model with net='random_features'"):
        LaplaceBNN(X0, Y0, warm_start=fitted, net="random_features", **SMALL)
    unfitted = LaplaceBNN(X0, Y0, seed=0, **SMALL)
    with pytest.raises(ValueError, match="warm_start is not fitted"):
        LaplaceBNN(X0, Y0, warm_start=unfitted, **SMALL)
    # an initialisation-only option may differ: the warm start's weights are copied
    warm = LaplaceBNN(X0, Y0, warm_start=fitted, **{**SMALL, "init_scale": 0.3})
    assert all(torch.equal(a, b) for a, b in zip(warm.net.parameters(),
                                                  fitted.net.parameters()))


def test_inputs_outside_the_unit_cube_warn_as_in_botorch() -> None:
    from botorch.exceptions.warnings import InputDataWarning

    with pytest.warns(InputDataWarning, match="not contained to the unit cube"):
        LaplaceBNN(100 * X0, Y0, **SMALL)


def test_warm_start_of_another_shape_is_rejected(fitted: LaplaceBNN) -> None:
    X3, Y3 = data(d=3)
    with pytest.raises(ValueError, match="warm_start was trained on 2 inputs and 1 outputs"):
        LaplaceBNN(X3, Y3, warm_start=fitted, **SMALL)
    X, Y2 = data(m=2)
    with pytest.raises(ValueError, match="this model has 2 inputs and 2 outputs"):
        LaplaceBNN(X, Y2, warm_start=fitted, **SMALL)
    with pytest.raises(ValueError, match="warm_start must be a LaplaceBNN"):
        LaplaceBNN(X0, Y0, warm_start="model", **SMALL)


@pytest.mark.parametrize("name", ["min_noise_std", "n_epochs", "keep_best", "trend",
                                  "input_transform"])
def test_a_constructor_option_set_after_construction_raises(fitted: LaplaceBNN,
                                                            name: str) -> None:
    # stored and ignored otherwise: the fitted model would not change
    with pytest.raises(AttributeError, match=f"{name} is a LaplaceBNN constructor option"):
        setattr(fitted, name, 1)
    assert name not in vars(fitted)


@pytest.mark.parametrize(("name", "value"), [
    ("candidates", None), ("candidates", "x"), ("subset_of_weights", "nope"),
    ("hessian_structure", "kron"), ("prior_structure", "nope"), ("likelihood", "regression"),
    ("backend", None)])
def test_an_option_the_candidates_were_built_from_is_fixed(fitted: LaplaceBNN, name: str,
                                                           value: object) -> None:
    """Options kept as attributes were assigned unchecked ("nope" fitted silently) and a
    new value was ignored by the candidates, which are built from the constructor's
    options: they are fixed after construction, with the message of the others."""
    before = getattr(fitted, name)
    with pytest.raises(AttributeError, match=f"{name} is a LaplaceBNN constructor option"):
        setattr(fitted, name, value)
    assert getattr(fitted, name) == before


def test_a_subclass_with_its_own_constructor_may_use_option_names() -> None:
    class Wider(LaplaceBNN):
        def __init__(self, *args, **kwargs) -> None:
            super().__init__(*args, **kwargs)
            self.width = 2 * kwargs.get("width", 50)  # its own meaning

    assert Wider(*data(), seed=0, **SMALL).width == 2 * SMALL.get("width", 50)


def test_attributes_that_are_options_stay_settable(fitted: LaplaceBNN) -> None:
    model = LaplaceBNN(*data(), seed=0, **SMALL)
    model.model_averaging = True  # a checked property
    model.prior_precision = 2.0  # a checked buffer
    assert model.model_averaging and float(model.prior_precision) == 2.0
    model.my_note = "anything else"  # not an option: set as usual
    assert model.my_note == "anything else"


def test_query_checks(fitted: LaplaceBNN) -> None:
    with pytest.raises(ValueError, match=r"X has no points \(q = 0\)"):
        fitted.posterior(torch.zeros(0, 2, dtype=torch.float64))
    with pytest.raises(ValueError, match="X contains 1 NaN"):
        fitted.posterior(_with(X0[:3], (0, 1), math.nan))
    with pytest.raises(ValueError, match=r"X must have shape \(\*batch, q, 2\)"):
        fitted.posterior(torch.zeros(4, 3, dtype=torch.float64))
    with pytest.raises(ValueError, match="observation_noise must be non-negative"):
        fitted.posterior(X0[:3], observation_noise=-torch.ones(3, 1, dtype=torch.float64))
    with pytest.raises(ValueError, match="observation_noise must be True, False or a"):
        fitted.posterior(X0[:3], observation_noise=0.5)
    with pytest.raises(ValueError, match="X must be a floating-point tensor"):
        fitted.posterior(torch.tensor([[0, 0], [1, 1]]))
    with pytest.raises(ValueError, match="X is torch.float16: LaplaceBNN predicts in float32"):
        fitted.posterior(X0[:3].half())
    with pytest.raises(ValueError, match="X has an empty batch"):
        fitted.posterior(torch.zeros(0, 3, 2, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"output_indices must be indices in \[0, 1\)"):
        fitted.posterior(X0[:3], output_indices=[5])
    with pytest.raises(ValueError, match="output_indices is empty"):
        fitted.posterior(X0[:3], output_indices=[])
    with pytest.raises(ValueError, match=r"idcs must be indices in \[0, 1\)"):
        fitted.subset_output([1])


def test_conditioning_checks(fitted: LaplaceBNN) -> None:
    X, Y = X0[:2] + 0.01, Y0[:2]
    with pytest.raises(ValueError, match="Y contains 1 NaN"):
        fitted.condition_on_observations(X, _with(Y, (0, 0), math.nan))
    with pytest.raises(ValueError, match="X contains 1 NaN"):
        fitted.condition_on_observations(_with(X, (0, 0), math.nan), Y)
    with pytest.raises(ValueError, match="noise must be non-negative"):
        fitted.condition_on_observations(X, Y, noise=-torch.ones_like(Y))
    with pytest.raises(ValueError, match=r"Y must have shape \(\*batch, 2, 1\)"):
        fitted.condition_on_observations(X, Y.squeeze(-1))
    batched = fitted.condition_on_observations(X.expand(3, 2, 2), Y.expand(3, 2, 1))
    with pytest.raises(ValueError, match=r"batch shape \(5,\) does not broadcast with"):
        batched.posterior(X0[:4].expand(5, 4, 2))
    assert batched.posterior(X0[:4].expand(7, 3, 4, 2)).mean.shape == (7, 3, 4, 1)
    with pytest.raises(ValueError, match=r"Y must have shape \(\*batch, 2, 1\)"):
        fitted.condition_on_observations(X, Y[:1])
    # a zero noise variance is legal (exact observations): the update still interpolates
    cond = fitted.condition_on_observations(X, Y, noise=torch.zeros_like(Y))
    mean = cond.posterior(X).mean
    assert torch.allclose(mean, Y, atol=1e-4)


def test_sample_paths_check_their_arguments_and_queries(fitted: LaplaceBNN) -> None:
    from botorch.sampling.pathwise import draw_matheron_paths

    from lapbo import draw_pathwise_samples, fit_laplace_bnn

    with pytest.raises(TypeError, match="model must be a fitted LaplaceBNN .* not str"):
        draw_pathwise_samples("model", 3)
    with pytest.raises(ValueError, match="generator must be None or a torch.Generator on cpu"):
        draw_pathwise_samples(fitted, 3, generator="seed")
    with pytest.raises(TypeError, match="model must be a LaplaceBNN, not str"):
        fit_laplace_bnn("model")
    paths = draw_pathwise_samples(fitted, 3, generator=torch.Generator().manual_seed(0))
    matheron = draw_matheron_paths(fitted, sample_shape=torch.Size([3]))
    for path in (paths, matheron):
        for X, message in [
            (torch.rand(4, 3, dtype=torch.float64), r"\(\*batch, q, 2\); got \(4, 3\)"),
            (torch.rand(2, dtype=torch.float64), r"\(\*batch, q, 2\); got \(2,\)"),
            (torch.full((4, 2), math.nan, dtype=torch.float64), "X contains 8 NaN"),
        ]:
            with pytest.raises(ValueError, match=message):
                path(X)
