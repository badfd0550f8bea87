"""``LaplaceBNN`` in Ax: the Client API end to end (single objective, two objectives,
outcome constraints, batches), refits, cross-validation, analyses, JSON storage and the
errors Ax users hit."""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from ax.adapter.cross_validation import cross_validate
from ax.adapter.registry import Generators, Y_trans
from ax.adapter.transforms.choice_encode import ChoiceToNumericChoice
from ax.adapter.transforms.remove_fixed import RemoveFixed
from ax.analysis.diagnostics import DiagnosticAnalysis
from ax.analysis.plotly.surface.contour import ContourPlot
from ax.analysis.plotly.surface.slice import SlicePlot
from ax.analysis.results import ResultsAnalysis
from ax.api.client import Client
from ax.api.configs import ChoiceParameterConfig, RangeParameterConfig
from ax.core.analysis_card import AnalysisCardBase, ErrorAnalysisCard
from ax.core.search_space import SearchSpaceDigest
from ax.exceptions.core import UserInputError
from ax.generation_strategy.generation_node import GenerationNode
from ax.generation_strategy.generation_strategy import GenerationStrategy
from ax.generation_strategy.generator_spec import GeneratorSpec
from ax.generators.torch.botorch_modular.surrogate import (
    SurrogateSpec,
    submodel_input_constructor,
)
from ax.generators.torch.botorch_modular.utils import ModelConfig, fit_botorch_model
from ax.storage.botorch_modular_registry import CLASS_TO_REGISTRY, CLASS_TO_REVERSE_REGISTRY
from ax.storage.json_store.decoder import object_from_json
from ax.storage.json_store.encoder import object_to_json
from ax.storage.json_store.registry import (
    CORE_CLASS_DECODER_REGISTRY,
    CORE_CLASS_ENCODER_REGISTRY,
    CORE_DECODER_REGISTRY,
    CORE_ENCODER_REGISTRY,
)
from botorch.models.model import Model, ModelList
from botorch.test_functions import Branin
from botorch.test_functions.multi_objective import BraninCurrin
from botorch.utils.datasets import SupervisedDataset
from gpytorch.kernels import RBFKernel
from torch import nn

import lapbo.ax as lax
from lapbo import training
from lapbo.model import LaplaceBNN

SMALL: dict[str, Any] = {"width": 16, "n_epochs": 50, "n_epochs_warm_start": 20,
                         "marglik_every": 25, "marglik_steps": 5, "final_marglik_steps": 20,
                         "seed": 0}
CHEAP_ACQF = {"num_restarts": 2, "raw_samples": 64}
BRANIN = Branin()
BRANIN_PARAMS = [
    RangeParameterConfig(name="x1", bounds=(-5.0, 10.0), parameter_type="float"),
    RangeParameterConfig(name="x2", bounds=(0.0, 15.0), parameter_type="float"),
]


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    """Tiny matrices: OpenMP threads only contend on a shared machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class FitSpy:
    """Records every ``fit_laplace_bnn`` call Ax makes through the dispatcher."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, int, bool]] = []  # (class, n_train, warm start)
        self._fit = training.fit_laplace_bnn

    def __call__(self, model: LaplaceBNN, **kwargs: Any) -> LaplaceBNN:
        self.calls.append((type(model).__name__, model._train_X.shape[0], model._warm))
        return self._fit(model, **kwargs)


@pytest.fixture
def fit_spy(monkeypatch: pytest.MonkeyPatch) -> FitSpy:
    spy = FitSpy()
    monkeypatch.setattr(training, "fit_laplace_bnn", spy)
    return spy


def branin(p: dict[str, Any]) -> float:
    return float(BRANIN(torch.tensor([[p["x1"], p["x2"]]], dtype=torch.float64)))


def run(client: Client, evaluate: Any, n: int, batch: int = 1) -> list[dict[int, Any]]:
    """``n`` rounds of ``get_next_trials(batch)``, each trial completed with ``evaluate``."""
    rounds = []
    for _ in range(n):
        trials = client.get_next_trials(max_trials=batch)
        for index, params in trials.items():
            client.complete_trial(index, raw_data=evaluate(params))
        rounds.append(trials)
    return rounds


def branin_client(n_sobol: int, **kwargs: Any) -> Client:
    client = Client(random_seed=0)
    client.configure_experiment(parameters=BRANIN_PARAMS)
    client.configure_optimization(objective="-branin")
    client.set_generation_strategy(lax.laplace_generation_strategy(
        n_sobol=n_sobol, optimizer_options=CHEAP_ACQF, **kwargs, **SMALL))
    return client


def observed(client: Client, metric: str) -> list[float]:
    df = client._experiment.lookup_data().df
    return df[df["metric_name"] == metric]["mean"].tolist()


def node_names(client: Client) -> list[str]:
    return [t.generator_runs[0]._generation_node_name for t in client._experiment.trials.values()]


def surrogate_model(client: Client) -> Model:
    return client._generation_strategy.adapter.generator.surrogate.model


def flat_cards(cards: list[AnalysisCardBase]) -> list[AnalysisCardBase]:
    out = []
    for card in cards:
        out.append(card)
        out.extend(flat_cards(list(getattr(card, "children", None) or [])))
    return out


@pytest.fixture(scope="module")
def branin_run() -> tuple[Client, list[tuple[str, int, bool]]]:
    """Branin: 5 Sobol then 5 LaplaceBNN trials (the spy is module-scoped here)."""
    spy = FitSpy()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(training, "fit_laplace_bnn", spy)
        client = branin_client(n_sobol=5)
        run(client, lambda p: {"branin": branin(p)}, 10)
    return client, spy.calls


# ---------------------------------------------------------------- end to end
def test_branin_generation_strategy_uses_and_refits_laplace_bnn(
    branin_run: tuple[Client, list[tuple[str, int, bool]]],
) -> None:
    client, calls = branin_run
    trials = client._experiment.trials
    assert len(trials) == 10
    assert node_names(client) == ["Sobol"] * 5 + ["MBM"] * 5
    assert [t.generator_runs[0]._generator_key for t in trials.values()][5:] == ["BoTorch"] * 5
    gs = client._generation_strategy
    assert gs.name == "Sobol+MBM:LaplaceBNN"
    assert type(surrogate_model(client)) is LaplaceBNN
    # one full fit per BO trial, each on all data observed so far
    assert calls == [("LaplaceBNN", n, False) for n in range(5, 10)]
    values = observed(client, "branin")
    assert len(values) == 10 and all(math.isfinite(v) for v in values)
    params, prediction, index, _ = client.get_best_parameterization()
    assert -5 <= params["x1"] <= 10 and 0 <= params["x2"] <= 15
    assert math.isfinite(prediction["branin"][0]) and 0 <= index < 10


def test_cross_validation_folds_predict(
    branin_run: tuple[Client, list[tuple[str, int, bool]]], fit_spy: FitSpy,
) -> None:
    client, _ = branin_run
    results = cross_validate(client._generation_strategy.adapter)  # leave-one-out
    assert len(results) == 9  # the adapter was fit before the 10th trial completed
    for r in results:
        mean, var = float(r.predicted.means[0]), float(r.predicted.covariance[0, 0])
        assert math.isfinite(mean) and math.isfinite(var) and var > 0
    assert fit_spy.calls == []  # folds load the full model's state dict, no refit


def test_diagnostic_analyses_have_no_error_cards(
    branin_run: tuple[Client, list[tuple[str, int, bool]]],
) -> None:
    client, _ = branin_run
    cards = flat_cards(client.compute_analyses(analyses=[
        ResultsAnalysis(), DiagnosticAnalysis(), ContourPlot("x1", "x2", "branin"),
        SlicePlot("x1", "branin"),
    ], display=False))
    errors = [c for c in cards if isinstance(c, ErrorAnalysisCard)]
    assert errors == [], [c.title for c in errors]
    names = {c.name for c in cards}
    assert {"CrossValidationPlot", "ContourPlot", "SlicePlot"} <= names


@pytest.mark.slow
def test_default_analyses_have_no_error_cards(
    branin_run: tuple[Client, list[tuple[str, int, bool]]],
) -> None:
    """``compute_analyses()`` with Ax's defaults (~1 min: the sensitivity analysis
    evaluates the posterior on 4096-point batches)."""
    client, _ = branin_run
    cards = flat_cards(client.compute_analyses(display=False))
    assert [c.title for c in cards if isinstance(c, ErrorAnalysisCard)] == []
    assert {"CrossValidationPlot", "SensitivityAnalysisPlot"} <= {c.name for c in cards}


def test_json_roundtrip_and_continue(
    branin_run: tuple[Client, list[tuple[str, int, bool]]], tmp_path: Path, fit_spy: FitSpy,
) -> None:
    client, _ = branin_run
    path = tmp_path / "snapshot.json"
    client.save_to_json_file(str(path))
    loaded = Client.load_from_json_file(str(path))
    assert len(loaded._experiment.trials) == 10
    spec = loaded._generation_strategy.nodes_by_name["MBM"].generator_specs[0]
    config = spec.generator_kwargs["surrogate_spec"].model_configs[0]
    assert config.botorch_model_class is LaplaceBNN and config.model_options == SMALL
    assert spec.generator_gen_kwargs["model_gen_options"]["optimizer_kwargs"] == CHEAP_ACQF
    run(loaded, lambda p: {"branin": branin(p)}, 1)
    assert len(loaded._experiment.trials) == 11
    assert node_names(loaded)[-1] == "MBM"
    assert fit_spy.calls == [("LaplaceBNN", 10, False)]
    assert math.isfinite(observed(loaded, "branin")[-1])


def test_generation_strategy_json_roundtrip_with_dtype_option() -> None:
    gs = lax.laplace_generation_strategy(
        n_sobol=2, compute_dtype=torch.float32, hessian_structure="kron", refit_on_cv=True
    )
    kwargs = dict(encoder_registry=CORE_ENCODER_REGISTRY,
                  class_encoder_registry=CORE_CLASS_ENCODER_REGISTRY)
    blob = object_to_json(gs, **kwargs)
    decoded = object_from_json(blob, decoder_registry=CORE_DECODER_REGISTRY,
                               class_decoder_registry=CORE_CLASS_DECODER_REGISTRY)
    spec = decoded.nodes_by_name["MBM"].generator_specs[0]
    config = spec.generator_kwargs["surrogate_spec"].model_configs[0]
    assert config.botorch_model_class is LaplaceBNN
    assert config.model_options == {"compute_dtype": torch.float32, "hessian_structure": "kron"}
    assert spec.generator_kwargs["refit_on_cv"] is True


def test_candidates_go_through_ax_and_its_json_store() -> None:
    """A custom family (``candidates``, a list of dicts) was listed as an option but
    refused as not JSON-serialisable; it is stored and comes back as the same family."""
    family = [{"width": 16}, {"width": 32, "noise_prior": (-4.0, 1.0)}]
    gs = lax.laplace_generation_strategy(n_sobol=2, candidates=family)
    kwargs = dict(encoder_registry=CORE_ENCODER_REGISTRY,
                  class_encoder_registry=CORE_CLASS_ENCODER_REGISTRY)
    decoded = object_from_json(object_to_json(gs, **kwargs),
                               decoder_registry=CORE_DECODER_REGISTRY,
                               class_decoder_registry=CORE_CLASS_DECODER_REGISTRY)
    spec = decoded.nodes_by_name["MBM"].generator_specs[0]
    options = lax.validate_model_options(
        spec.generator_kwargs["surrogate_spec"].model_configs[0].model_options)
    X = torch.rand(6, 2, dtype=torch.float64)
    assert LaplaceBNN(X, X.sum(-1, keepdim=True), **options).candidates == family
    with pytest.raises(ValueError, match="JSON"):
        lax.laplace_model_config(candidates=[{"activation": nn.Tanh}])
    with pytest.raises(ValueError, match="finite"):
        lax.laplace_model_config(candidates=[{"prior_precision": float("inf")}])


# No objective thresholds on purpose (Ax infers them); Ax notes it winsorizes per objective.
@pytest.mark.filterwarnings("ignore:Encountered a `MultiObjective` without objective thresholds")
def test_branin_currin_two_objectives(fit_spy: FitSpy) -> None:
    problem = BraninCurrin()

    def evaluate(p: dict[str, Any]) -> dict[str, float]:
        y = problem(torch.tensor([[p["x1"], p["x2"]]], dtype=torch.float64))[0]
        return {"branin": float(y[0]), "currin": float(y[1])}

    client = Client(random_seed=0)
    client.configure_experiment(parameters=[
        RangeParameterConfig(name=n, bounds=(0.0, 1.0), parameter_type="float")
        for n in ("x1", "x2")])
    client.configure_optimization(objective="-branin, -currin")
    client.set_generation_strategy(lax.laplace_generation_strategy(
        n_sobol=5, optimizer_options=CHEAP_ACQF, **SMALL))
    run(client, evaluate, 8)
    assert node_names(client) == ["Sobol"] * 5 + ["MBM"] * 3
    model = surrogate_model(client)
    assert isinstance(model, ModelList)
    assert [type(m).__name__ for m in model.models] == ["LaplaceBNN", "LaplaceBNN"]
    # one model per metric per BO trial
    assert sorted(fit_spy.calls) == sorted([("LaplaceBNN", n, False)
                                            for n in (5, 6, 7) for _ in range(2)])
    assert all(math.isfinite(v) for m in ("branin", "currin") for v in observed(client, m))
    frontier = client.get_pareto_frontier()
    assert len(frontier) >= 1
    for _, prediction, _, _ in frontier:
        assert all(math.isfinite(prediction[m][0]) for m in ("branin", "currin"))


def test_outcome_constraint() -> None:
    def evaluate(p: dict[str, Any]) -> dict[str, float]:
        return {"branin": branin(p), "g": p["x1"] + p["x2"]}

    client = Client(random_seed=0)
    client.configure_experiment(parameters=BRANIN_PARAMS)
    client.configure_optimization(objective="-branin", outcome_constraints=["g <= 10"])
    client.set_generation_strategy(lax.laplace_generation_strategy(
        n_sobol=5, optimizer_options=CHEAP_ACQF, **SMALL))
    run(client, evaluate, 7)
    assert node_names(client) == ["Sobol"] * 5 + ["MBM"] * 2
    model = surrogate_model(client)
    assert isinstance(model, ModelList) and len(model.models) == 2
    assert all(type(m) is LaplaceBNN for m in model.models)
    assert client._generation_strategy.adapter.generator.surrogate.outcomes == ["branin", "g"]
    params, _, _, _ = client.get_best_parameterization(use_model_predictions=False)
    assert params["x1"] + params["x2"] <= 10 + 1e-9  # best point is feasible
    assert all(math.isfinite(v) for v in observed(client, "branin"))


def test_batch_trials(fit_spy: FitSpy) -> None:
    client = branin_client(n_sobol=4)
    rounds = run(client, lambda p: {"branin": branin(p)}, 2, batch=2)  # Sobol
    assert [len(r) for r in rounds] == [2, 2]
    run(client, lambda p: {"branin": branin(p)}, 1)  # first BO trial
    n_fits = len(fit_spy.calls)
    (batch,) = run(client, lambda p: {"branin": branin(p)}, 1, batch=2)
    assert len(batch) == 2
    arms = [(p["x1"], p["x2"]) for p in batch.values()]
    assert arms[0] != arms[1]
    assert node_names(client) == ["Sobol"] * 4 + ["MBM"] * 3
    assert fit_spy.calls[n_fits:] == [("LaplaceBNN", 5, False)]  # one fit, joint batch
    assert len(observed(client, "branin")) == 7
    assert all(math.isfinite(v) for v in observed(client, "branin"))


def test_refit_on_cv_warm_starts_every_fold(fit_spy: FitSpy) -> None:
    client = branin_client(n_sobol=5, refit_on_cv=True)
    run(client, lambda p: {"branin": branin(p)}, 6)
    assert fit_spy.calls == [("LaplaceBNN", 5, False)]
    results = cross_validate(client._generation_strategy.adapter)
    assert len(results) == 5
    assert fit_spy.calls[1:] == [("LaplaceBNN", 4, True)] * 5
    for r in results:
        assert math.isfinite(float(r.predicted.means[0]))
        assert float(r.predicted.covariance[0, 0]) > 0


# Ax's notice of the very default this test is about (string choices are unordered).
@pytest.mark.filterwarnings("ignore:`is_ordered` is not specified")
def test_unordered_choice_parameter_is_one_hot_encoded_by_default(fit_spy: FitSpy) -> None:
    client = Client(random_seed=0)
    client.configure_experiment(parameters=[
        RangeParameterConfig(name="x", bounds=(0.0, 1.0), parameter_type="float"),
        ChoiceParameterConfig(name="c", values=["a", "b", "c"], parameter_type="str"),
    ])
    client.configure_optimization(objective="y")
    client.set_generation_strategy(lax.laplace_generation_strategy(
        n_sobol=3, optimizer_options=CHEAP_ACQF, **SMALL))
    run(client, lambda p: {"y": p["x"] + {"a": 0.0, "b": 1.0, "c": 0.5}[p["c"]]}, 4)
    assert node_names(client)[-1] == "MBM"
    assert client._experiment.trials[3].arm.parameters["c"] in ("a", "b", "c")
    assert fit_spy.calls == [("LaplaceBNN", 3, False)]


# ----------------------------------------------------------- clear errors
# Ax's notice of its default (string choices are unordered).
@pytest.mark.filterwarnings("ignore:`is_ordered` is not specified")
def test_categorical_feature_reaching_the_model_raises() -> None:
    client = Client(random_seed=0)
    client.configure_experiment(parameters=[
        RangeParameterConfig(name="x", bounds=(0.0, 1.0), parameter_type="float"),
        ChoiceParameterConfig(name="c", values=["a", "b", "c"], parameter_type="str"),
    ])
    client.configure_optimization(objective="y")
    spec = GeneratorSpec(generator_enum=Generators.BOTORCH_MODULAR, generator_kwargs={
        "surrogate_spec": SurrogateSpec(model_configs=[lax.laplace_model_config(**SMALL)]),
        "transforms": [RemoveFixed, ChoiceToNumericChoice, *Y_trans],  # no OneHot
    })
    client.set_generation_strategy(
        GenerationStrategy(nodes=[GenerationNode(name="BO", generator_specs=[spec])]))
    for i, c in enumerate("abc"):
        client.attach_trial({"x": 0.3 * i, "c": c})
        client.complete_trial(i, raw_data={"y": float(i)})
    with pytest.raises(ValueError, match=r"categorical features \['c'\].*one-hot"):
        client.get_next_trials(max_trials=1)


def _ssd(**kwargs: Any) -> SearchSpaceDigest:
    return SearchSpaceDigest(feature_names=["a", "b"], bounds=[(0.0, 1.0), (0.0, 1.0)],
                             **kwargs)


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"categorical_features": [1]}, r"categorical features \['b'\]"),
    ({"task_features": [1], "target_values": {1: 0}}, "not a multi-task model"),
    ({"fidelity_features": [0], "target_values": {0: 1.0}}, "not a multi-fidelity model"),
    ({"hierarchical_dependencies": {0: {0: [1]}}}, "hierarchical"),
])
def test_search_space_digest_errors(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        lax.check_search_space_digest(_ssd(**kwargs))
    lax.check_search_space_digest(_ssd(ordinal_features=[1], discrete_choices={1: [0, 1]}))


def _inputs(config: ModelConfig) -> dict[str, Any]:
    X = torch.rand(6, 2, dtype=torch.float64)
    dataset = SupervisedDataset(X, X.sum(-1, keepdim=True), feature_names=["a", "b"],
                                outcome_names=["y"])
    return submodel_input_constructor(LaplaceBNN, model_config=config, dataset=dataset,
                                      search_space_digest=_ssd(), surrogate=None)


def test_input_constructor_builds_transforms_and_rejects_gp_options() -> None:
    inputs = _inputs(lax.laplace_model_config(width=8))
    assert set(inputs) == {"train_X", "train_Y", "width", "input_transform"}
    assert inputs["input_transform"] is None  # bounds are already [0, 1]
    model = LaplaceBNN(**inputs)
    assert model.net.features[0].out_features == 8
    config = ModelConfig(botorch_model_class=LaplaceBNN, mll_options={"x": 1})
    with pytest.raises(UserInputError, match="model_options"):
        _inputs(config)
    with pytest.raises(UserInputError, match="covar_module_class"):
        _inputs(ModelConfig(botorch_model_class=LaplaceBNN, covar_module_class=RBFKernel))
    with pytest.raises(ValueError, match="Unknown or unsupported"):
        _inputs(ModelConfig(botorch_model_class=LaplaceBNN, model_options={"widht": 8}))


def test_model_options_are_validated() -> None:
    with pytest.raises(ValueError, match="Unknown or unsupported.*n_epoch"):
        lax.laplace_generation_strategy(n_epoch=10)
    with pytest.raises(ValueError, match="net"):
        lax.laplace_generation_strategy(net=nn.Linear(2, 1))
    with pytest.raises(ValueError, match="JSON"):
        lax.laplace_model_config(activation=nn.Tanh)
    with pytest.raises(ValueError, match="finite"):
        lax.laplace_model_config(prior_precision=float("nan"))
    with pytest.raises(ValueError, match="n_sobol"):
        lax.laplace_generation_strategy(n_sobol=-1)
    assert "net" not in lax.LAPLACE_MODEL_OPTIONS and "n_epochs" in lax.LAPLACE_MODEL_OPTIONS


def test_registrations() -> None:
    assert fit_botorch_model.dispatch(LaplaceBNN) is lax._fit_laplace_bnn
    assert submodel_input_constructor.dispatch(LaplaceBNN) is lax._laplace_bnn_inputs
    assert CLASS_TO_REGISTRY[Model][LaplaceBNN] == "LaplaceBNN"
    assert CLASS_TO_REVERSE_REGISTRY[Model]["LaplaceBNN"] is LaplaceBNN
    gs = lax.laplace_generation_strategy(n_sobol=0)
    assert gs.name == "MBM:LaplaceBNN" and list(gs.nodes_by_name) == ["MBM"]


def test_ten_inputs_use_the_high_dimensional_family() -> None:
    """From ten inputs on the default family's chosen network has one ``δ`` per weight
    tensor; Ax's fits, predictions (which load the model's state) and the best-point
    report work with it."""
    client = Client(random_seed=0)
    client.configure_experiment(parameters=[
        RangeParameterConfig(name=f"x{i}", bounds=(0.0, 1.0), parameter_type="float")
        for i in range(10)])
    client.configure_optimization(objective="-loss")
    client.set_generation_strategy(lax.laplace_generation_strategy(
        n_sobol=12, optimizer_options=CHEAP_ACQF))
    run(client, lambda p: {"loss": sum((v - 0.3) ** 2 for v in p.values())}, 14)
    model = surrogate_model(client)
    assert type(model) is LaplaceBNN and model.prior_structure == "layerwise"
    assert len(model.selection) == 3
    params, prediction, index, _ = client.get_best_parameterization()
    assert len(params) == 10 and math.isfinite(prediction["loss"][0]) and 0 <= index < 14


def test_a_warp_in_the_model_config_is_learned_by_the_evidence() -> None:
    from botorch.models.transforms.input import Warp

    client = Client(random_seed=0)
    client.configure_experiment(parameters=BRANIN_PARAMS)
    client.configure_optimization(objective="-branin")
    client.set_generation_strategy(lax.laplace_generation_strategy(
        n_sobol=5, sobol_seed=0, optimizer_options=CHEAP_ACQF, seed=0,
        input_transform_classes=[Warp]))
    run(client, lambda p: {"branin": branin(p)}, 7)
    assert node_names(client) == ["Sobol"] * 5 + ["MBM"] * 2
    model = surrogate_model(client)
    warp = model.input_transform
    assert isinstance(warp, Warp) and not warp._normalize.learn_bounds  # Ax's bounds
    concentrations = torch.cat([warp.concentration0, warp.concentration1]).detach()
    assert not torch.allclose(concentrations, torch.ones_like(concentrations))
    with pytest.raises(ValueError, match="input_transform_classes must be a list"):
        lax.laplace_model_config(input_transform_classes=Warp)
