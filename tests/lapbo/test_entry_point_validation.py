"""Bad input at the BO loop, the test problems, the command line and the Ax helpers is
refused where it enters, with an error that names it (a sweep of session 19 found these
ignored, silently replaced, or failing late inside torch, BoTorch or Ax)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ax.core.search_space import SearchSpaceDigest
from ax.exceptions.core import UserInputError
from ax.generators.torch.botorch_modular.utils import ModelConfig
from botorch.utils.datasets import SupervisedDataset
from gpytorch.mlls import LeaveOneOutPseudoLikelihood

from lapbo import LaplaceBNN
from lapbo.__main__ import parse_args
from lapbo.ax import laplace_generation_strategy, laplace_model_config, validate_model_options
from lapbo.loop import MAX_SEED, fit_surrogate, propose, run_bo
from lapbo.problems import get_problem

BRANIN = get_problem("branin")


@pytest.mark.parametrize("kwargs, message", [
    ({"surrogate": "gp", "n_iterations": 1, "wdth": 10}, r"\['wdth'\] apply to"),
    ({"surrogate": "sobol", "n_iterations": 1, "width": 8}, "apply to surrogate='laplace'"),
    ({"surrogate": "foo", "n_iterations": 0}, "Unknown surrogate 'foo'"),
    ({"surrogate": "gp", "n_iterations": -2}, "n_iterations must be an integer >= 0"),
    ({"surrogate": "gp", "n_iterations": 1, "n_init": 0}, "n_init must be an integer >= 1"),
    ({"surrogate": "gp", "n_iterations": 1, "n_init": 2.5}, "n_init must be an integer"),
    ({"surrogate": "gp", "n_iterations": 1, "seed": None}, "seed must be an integer"),
    ({"surrogate": "gp", "n_iterations": 1, "seed": 2**62}, "seed must be an integer"),
    ({"surrogate": "laplace", "n_iterations": 1, "warm_start": None}, "set by the loop"),
])
def test_run_bo_checks_its_arguments_before_evaluating(kwargs, message):
    calls = []

    class Counting:  # the problem's interface; counts evaluations
        dim, bounds, optimum = BRANIN.dim, BRANIN.bounds, BRANIN.optimum

        def __call__(self, X):
            calls.append(len(X))
            return BRANIN(X)

    with pytest.raises(ValueError, match=message):
        run_bo(Counting(), **kwargs)
    assert calls == []  # nothing evaluated


def test_fit_surrogate_and_propose_check_bounds_and_incumbent():
    X = torch.rand(6, 2, dtype=torch.float64) * 15 - torch.tensor([5.0, 0.0], dtype=torch.float64)
    Y = BRANIN(X)
    flat = torch.tensor([[0.0, 0.0], [0.0, 15.0]], dtype=torch.float64)
    for name in ("laplace", "gp"):
        with pytest.raises(ValueError, match="lower < upper in every input"):
            fit_surrogate(name, X, Y, flat)
    model = fit_surrogate("gp", X, Y, BRANIN.bounds)
    with pytest.raises(ValueError, match="Y must be a non-empty tensor of finite"):
        propose(model, torch.full_like(Y, float("nan")), BRANIN.bounds)
    with pytest.raises(ValueError, match="num_restarts must be an integer >= 1"):
        propose(model, Y, BRANIN.bounds, num_restarts=0)


def test_problem_takes_a_batch_of_points():
    assert BRANIN(torch.tensor([[1.0, 2.0]], dtype=torch.float64)).shape == (1, 1)
    with pytest.raises(ValueError, match=r"takes points as an \(n, 2\) tensor, not \(2,\)"):
        BRANIN(torch.tensor([1.0, 2.0], dtype=torch.float64))


def test_cli_checks_seed_and_output_before_the_runs(tmp_path):
    a_file = tmp_path / "a_file"
    a_file.write_text("")
    with pytest.raises(SystemExit):
        parse_args(["--output", str(a_file)])
    with pytest.raises(SystemExit):
        parse_args(["--seed", str(2**62)])
    for seed in (-1, 2**32, MAX_SEED + 1):  # they would repeat others in torch's generator
        with pytest.raises(SystemExit):
            parse_args(["--seed", str(seed)])
    (tmp_path / "taken" / "summary.json").mkdir(parents=True)  # would fail after the runs
    with pytest.raises(SystemExit):
        parse_args(["--output", str(tmp_path / "taken")])
    with pytest.raises(SystemExit):
        parse_args(["--output", ""])
    assert parse_args(["--output", str(tmp_path / "new")]).output.is_dir()
    assert parse_args(["--seed", str(MAX_SEED), "--output", str(tmp_path)]).seed == MAX_SEED


@pytest.mark.parametrize("kwargs, message", [
    ({"refit_on_cv": "no"}, "refit_on_cv must be True or False"),
    ({"n_sobol": 1.5}, "n_sobol must be an integer >= 0"),
    ({"n_sobol": True}, "n_sobol must be an integer >= 0"),
    ({"n_sobol": "5"}, "n_sobol must be an integer >= 0"),
    ({"sobol_seed": "a"}, "sobol_seed must be an integer"),
    ({"botorch_acqf_class": "qLogNoisyExpectedImprovement"}, "AcquisitionFunction class"),
    ({"optimizer_options": "fast"}, "optimizer_options must be a dict"),
    ({"optimizer_options": {"num_restart": 2}}, r"Unknown optimizer_options \['num_restart'\]"),
    ({"optimizer_options": {"q": 2}}, r"Unknown optimizer_options \['q'\]"),
    ({"optimizer_options": {"num_restarts": 0}}, "'num_restarts'\\] must be a positive"),
    ({"optimizer_options": {"raw_samples": 0}}, "'raw_samples'\\] must be a positive"),
])
def test_generation_strategy_checks_its_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        laplace_generation_strategy(**kwargs)


def test_model_options_take_lists_tuples_and_numpy_scalars():
    config = laplace_model_config(noise_prior=[-8.0, 2.0], width=np.int64(32),
                                  prior_structure="layerwise",
                                  prior_precision_reference=[1.0, 0.01])
    assert config.model_options == {"noise_prior": (-8.0, 2.0), "width": 32,
                                    "prior_structure": "layerwise",
                                    "prior_precision_reference": (1.0, 0.01)}
    assert type(config.model_options["width"]) is int
    assert validate_model_options(None) == {}
    with pytest.raises(ValueError, match="must be finite"):
        validate_model_options({"noise_prior": [float("nan"), 1.0]})


def test_an_mll_class_is_refused_and_a_transform_that_makes_nan_is_named():
    from ax.generators.torch.botorch_modular.surrogate import submodel_input_constructor

    X = torch.rand(5, 2, dtype=torch.float64)
    Y = torch.randn(5, 1, dtype=torch.float64)
    dataset = SupervisedDataset(X, Y, feature_names=["a", "b"], outcome_names=["y"])
    config = ModelConfig(botorch_model_class=LaplaceBNN, mll_class=LeaveOneOutPseudoLikelihood)
    with pytest.raises(UserInputError, match="leave ModelConfig.mll_class unset"):
        submodel_input_constructor(
            LaplaceBNN, model_config=config, dataset=dataset, surrogate=None,
            search_space_digest=SearchSpaceDigest(feature_names=["a", "b"],
                                                  bounds=[(0.0, 1.0), (0.0, 1.0)]))
    from botorch.models.transforms.outcome import ChainedOutcomeTransform, Log, Standardize

    log_after_standardize = ChainedOutcomeTransform(s=Standardize(m=1), log=Log())
    with pytest.raises(ValueError, match="outcome transform ChainedOutcomeTransform maps"):
        LaplaceBNN(X, Y, outcome_transform=log_after_standardize)


@pytest.mark.parametrize("options, message", [
    ({"width": -1}, "width must be a positive integer"),
    ({"hessian_structure": "bogus"}, "Unsupported hessian_structure 'bogus'"),
    ({"compute_dtype": torch.float16}, "compute_dtype must be torch.float32"),
    ({"n_epochs": 1.5}, "n_epochs must be a positive integer"),
])
def test_model_option_values_are_checked_when_the_strategy_is_built(options, message):
    # before: accepted here, refused only at the first BO step after the Sobol trials
    with pytest.raises(ValueError, match=message):
        laplace_generation_strategy(n_sobol=2, **options)


def test_train_targets_serves_botorch_input_constructors():
    # Ax's qNegIntegratedPosteriorVariance step failed on a missing train_targets.
    from botorch.acquisition.active_learning import qNegIntegratedPosteriorVariance
    from botorch.acquisition.input_constructors import get_acqf_input_constructor

    X = torch.rand(8, 2, dtype=torch.float64)
    Y = torch.stack([X.sum(-1), X.prod(-1)], -1)
    model = LaplaceBNN(X, Y[:, :1], seed=0).fit()
    standardized = (Y[:, 0] - Y[:, 0].mean()) / Y[:, 0].std()
    torch.testing.assert_close(model.train_targets, standardized)
    assert LaplaceBNN(X, Y).train_targets.shape == (2, 8)
    build = get_acqf_input_constructor(qNegIntegratedPosteriorVariance)
    acqf = qNegIntegratedPosteriorVariance(**build(model, bounds=[(0.0, 1.0)] * 2))
    value = acqf(torch.rand(3, 1, 2, dtype=torch.float64))
    assert value.shape == (3,) and bool((value < 0).all())
