"""The same BoTorch calls to ``LaplaceBNN`` and to ``SingleTaskGP``: where their contracts
differ.

An experienced BoTorch user expects a surrogate to behave as ``SingleTaskGP`` does wherever
BoTorch code touches it: posterior shapes for every batch layout, observation noise,
output indices, posterior transforms, conditioning (batched too), fantasies, output
subsets, pathwise samples, input gradients, and the errors raised on bad queries. For
four set-ups (one and two outputs, known noise, an input transform), each read is made on
both models and summarised by type, shape and dtype (or the error's type); reads whose
summaries differ are listed::

    .venv/bin/python benchmarks/botorch_contract_diff.py

prints the table and writes ``benchmarks/results/botorch_contract_diff.{md,json}``. Every
listed difference should be one that ``docs/differences.md`` explains (its section on
``LaplaceBNN`` and BoTorch).
"""

from __future__ import annotations

import copy
import json
import pickle
import subprocess
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from botorch.acquisition import (
    LogExpectedImprovement,
    PosteriorMean,
    qKnowledgeGradient,
    qLogNoisyExpectedImprovement,
    qLowerBoundMaxValueEntropy,
    qMaxValueEntropy,
    qNegIntegratedPosteriorVariance,
    qSimpleRegret,
    qUpperConfidenceBound,
)
from botorch.acquisition.analytic import UpperConfidenceBound
from botorch.acquisition.multi_objective.logei import qLogNoisyExpectedHypervolumeImprovement
from botorch.acquisition.multi_objective.predictive_entropy_search import (
    qMultiObjectivePredictiveEntropySearch,
)
from botorch.acquisition.multi_objective.utils import (
    random_search_optimizer,
    sample_optimal_points,
)
from botorch.acquisition.objective import ScalarizedPosteriorTransform
from botorch.acquisition.proximal import ProximalAcquisitionFunction
from botorch.models import ModelListGP, SingleTaskGP
from botorch.models.transforms.input import AppendFeatures, InputPerturbation, Normalize, Warp
from botorch.sampling import SobolQMCNormalSampler
from botorch.sampling.pathwise import draw_matheron_paths
from torch import Tensor

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from lapbo import LaplaceBNN  # noqa: E402

RESULTS = Path(__file__).parent / "results"
D, N = 2, 8
#: The set-ups: outputs, known noise, an input transform over a box other than [0, 1]²,
#: float32 data, no outcome transform, ``LaplaceBNN``'s evidence-weighted mixture, and its
#: MLP family (two outputs), over all weights and over the last layer; robust BO's input
#: perturbations, an environmental variable (``AppendFeatures``: the last of the ``D``
#: observed inputs, which queries leave out), and a learned input warp (``Warp``).
SETUPS: dict[str, dict[str, Any]] = {
    "one output": {"m": 1},
    "two outputs": {"m": 2},
    "known noise": {"m": 1, "yvar": True},
    "Normalize": {"m": 1, "normalize": True},
    "three outputs": {"m": 3},
    "float32": {"m": 1, "dtype": torch.float32},
    "no outcome transform": {"m": 1, "outcome_transform": None},
    "model averaging": {"m": 1, "laplace": {"model_averaging": True}},
    "MLP": {"m": 2, "laplace": {"width": 16, "n_epochs": 100}},
    "InputPerturbation": {"m": 1, "perturb": True},
    "MLP last layer": {"m": 1, "laplace": {"width": 16, "n_epochs": 100,
                                           "subset_of_weights": "last_layer"}},
    "AppendFeatures": {"m": 1, "append": True},
    "Warp": {"m": 1, "warp": True},
}


def summary(value: Any) -> Any:
    """A JSON-able summary: tensors by shape and dtype, models and posteriors by type,
    batch shape and outputs, sequences element-wise."""
    if isinstance(value, Tensor):
        return {"shape": list(value.shape), "dtype": str(value.dtype)}
    if isinstance(value, torch.Size):
        return list(value)
    if hasattr(value, "num_outputs") and hasattr(value, "batch_shape"):
        return {"model": True, "batch_shape": list(value.batch_shape),
                "num_outputs": value.num_outputs}
    if isinstance(value, (tuple, list)):
        return [summary(v) for v in value]
    return value if value is None or isinstance(value, (bool, int, float, str)) else type(
        value).__name__


def data(setup: dict[str, Any]) -> dict[str, Any]:
    """The set-up's training data (seed 0) and constructor options."""
    g = torch.Generator().manual_seed(0)
    lo, hi = (-1.0, 2.0) if setup.get("normalize") else (0.0, 1.0)
    dtype = setup.get("dtype", torch.float64)
    X = lo + (hi - lo) * torch.rand(N, D, generator=g, dtype=dtype)
    Y = torch.stack([torch.sin(3 * X).sum(-1), X.prod(-1), X.sum(-1)], -1)[:, : setup["m"]]
    kwargs: dict[str, Any] = {}
    if "outcome_transform" in setup:
        kwargs["outcome_transform"] = setup["outcome_transform"]
    if setup.get("yvar"):
        kwargs["train_Yvar"] = torch.full_like(Y, 1e-3)
    if setup.get("perturb"):
        kwargs["input_transform"] = InputPerturbation(
            perturbation_set=0.01 * torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, -1.0]],
                                                 dtype=dtype))
    if setup.get("append"):
        kwargs["input_transform"] = AppendFeatures(feature_set=torch.tensor(
            [[0.2], [0.5], [0.9]], dtype=dtype))
    if setup.get("warp"):
        kwargs["input_transform"] = Warp(d=D, indices=list(range(D)), bounds=torch.tensor(
            [[lo] * D, [hi] * D], dtype=dtype))
    if setup.get("normalize"):
        kwargs["input_transform"] = Normalize(d=D, bounds=torch.tensor(
            [[lo] * D, [hi] * D], dtype=dtype))
    return {"X": X, "Y": Y, "kwargs": kwargs, "lo": lo, "hi": hi}


def models(setup: dict[str, Any]) -> dict[str, Any]:
    """``SingleTaskGP`` (its default hyperparameters: shapes do not depend on a fit) and a
    fitted ``LaplaceBNN`` on the set-up's data."""
    d, own = data(setup), data(setup)  # each model its own transforms
    gp = SingleTaskGP(d["X"], d["Y"], **d["kwargs"])
    gp.eval()
    bnn = LaplaceBNN(own["X"], own["Y"], seed=0, **own["kwargs"],
                     **setup.get("laplace", {})).fit()
    return {"gp": gp, "laplace": bnn}


class _Reader:
    """One model's reads for one set-up: ``put`` records a summary under a key, ``x``
    draws query points in the set-up's box from a fixed generator (``d`` inputs), ``obs``
    observed points (``D`` inputs: ``d`` but for an appended environmental variable)."""

    def __init__(self, model: Any, setup: dict[str, Any]) -> None:
        d = data(setup)
        self.model, self.setup, self.m = model, setup, setup["m"]
        self.lo, self.hi, self.dtype = d["lo"], d["hi"], d["X"].dtype
        self.d = D - 1 if setup.get("append") else D
        self.g = torch.Generator().manual_seed(1)
        self.out: dict[str, Any] = {}

    def x(self, *shape: int) -> Tensor:
        return self.lo + (self.hi - self.lo) * torch.rand(*shape, self.d, generator=self.g,
                                                          dtype=self.dtype)

    def obs(self, *shape: int) -> Tensor:
        return self.lo + (self.hi - self.lo) * torch.rand(*shape, D, generator=self.g,
                                                          dtype=self.dtype)

    def put(self, key: str, fn: Callable[[], Any]) -> None:
        """``out[key]``: the summary of ``fn()``, or ``"error: Type"`` where it raises."""
        try:
            value = fn()
        except Exception as e:  # noqa: BLE001 (the error's type is the observation)
            self.out[key] = f"error: {type(e).__name__}"
        else:
            self.out[key] = summary(value)

    def noise(self, *shape: int) -> dict[str, Tensor]:
        """``noise=`` for conditioning a known-noise model, else nothing."""
        if not self.setup.get("yvar"):
            return {}
        return {"noise": torch.full(shape, 1e-3, dtype=self.dtype)}


def _posterior_reads(r: _Reader) -> None:
    model = r.model
    r.put("num_outputs", lambda: model.num_outputs)
    r.put("batch_shape", lambda: model.batch_shape)
    r.put("training after construction/fit", lambda: model.training)
    for shape in ((3,), (4, 3), (2, 4, 3)):
        X = r.x(*shape)
        tag = f"posterior(X {list(X.shape)}) "
        r.put(tag + "type", lambda X=X: model.posterior(X))
        r.put(tag + "distribution", lambda X=X: model.posterior(X).distribution)
        r.put(tag + "mean", lambda X=X: model.posterior(X).mean)
        r.put(tag + "variance", lambda X=X: model.posterior(X).variance)
        r.put(tag + "covariance_matrix", lambda X=X: model.posterior(
            X).distribution.covariance_matrix)
        r.put(tag + "rsample([5])", lambda X=X: model.posterior(X).rsample(torch.Size([5])))
        r.put(tag + "base_sample_shape", lambda X=X: model.posterior(X).base_sample_shape)
        r.put(tag + "batch_range", lambda X=X: model.posterior(X).batch_range)
    X, m = r.x(3), r.m
    r.put("observation_noise=True variance", lambda: model.posterior(
        X, observation_noise=True).variance)
    r.put("observation_noise=True adds noise", lambda: bool((model.posterior(
        X, observation_noise=True).variance > model.posterior(X).variance).all()))
    r.put("observation_noise=Tensor(3, m) variance", lambda: model.posterior(
        X, observation_noise=torch.full((3, m), 0.1, dtype=X.dtype)).variance)
    r.put("output_indices=[0] mean", lambda: model.posterior(X, output_indices=[0]).mean)
    r.put("ScalarizedPosteriorTransform mean", lambda: model.posterior(
        X, posterior_transform=ScalarizedPosteriorTransform(
            torch.ones(m, dtype=X.dtype))).mean)
    r.put("rsample_from_base_samples", lambda: model.posterior(X).rsample_from_base_samples(
        torch.Size([5]), torch.zeros(5, *model.posterior(X).base_sample_shape,
                                     dtype=X.dtype)))
    r.put("posterior quantile(0.5)", lambda: model.posterior(X).quantile(
        torch.tensor([0.5], dtype=X.dtype)))
    r.put("model(X (4, 3, d)) (forward)", lambda: [model(r.x(4, 3)).mean,
                                                   model(r.x(4, 3)).variance])
    r.put("train_inputs", lambda: [t for t in model.train_inputs])
    r.put("train_targets", lambda: model.train_targets)
    Xg = r.x(3).requires_grad_(True)
    r.put("mean gradient", lambda: torch.autograd.grad(model.posterior(Xg).mean.sum(), Xg)[0])
    r.put("variance gradient", lambda: torch.autograd.grad(
        model.posterior(Xg).variance.sum(), Xg)[0])


def _conditioning_reads(r: _Reader) -> None:
    model, m, X = r.model, r.m, r.obs(3)  # fantasy points are observed points too
    Xn, Yn = r.obs(2), torch.zeros(2, m, dtype=r.dtype)
    r.put("condition_on_observations", lambda: model.condition_on_observations(
        Xn, Yn, **r.noise(2, m)))
    r.put("condition_on_observations posterior mean", lambda: model.condition_on_observations(
        Xn, Yn, **r.noise(2, m)).posterior(X[..., :r.d]).mean)
    r.put("condition_on_observations without noise", lambda: model.condition_on_observations(
        Xn, Yn))
    Xb, Yb = r.obs(4, 2), torch.zeros(4, 2, m, dtype=r.dtype)
    r.put("batched condition_on_observations", lambda: model.condition_on_observations(
        Xb, Yb, **r.noise(4, 2, m)))
    r.put("batched condition_on_observations posterior mean",
          lambda: model.condition_on_observations(Xb, Yb, **r.noise(4, 2, m)).posterior(
              X[..., :r.d]).mean)

    def sampler() -> SobolQMCNormalSampler:
        return SobolQMCNormalSampler(torch.Size([4]), seed=0)

    r.put("fantasize(X (3, d), 4 samples)", lambda: model.fantasize(X, sampler()))
    r.put("fantasize train_inputs, train_targets", lambda: [
        *model.fantasize(X, sampler()).train_inputs, model.fantasize(X, sampler()).train_targets])
    r.put("batched condition_on_observations train_inputs, train_targets", lambda: [
        *model.condition_on_observations(Xb, Yb, **r.noise(4, 2, m)).train_inputs,
        model.condition_on_observations(Xb, Yb, **r.noise(4, 2, m)).train_targets])
    r.put("condition_on_observations train_inputs", lambda: model.condition_on_observations(
        Xn, Yn, **r.noise(2, m)).train_inputs)
    r.put("fantasize posterior(X (5, d)) mean", lambda: model.fantasize(
        X, sampler()).posterior(r.x(5)).mean)
    r.put("fantasize(X (2, 3, d))", lambda: model.fantasize(r.obs(2, 3), sampler()))
    r.put("fantasize(observation_noise=Tensor)", lambda: model.fantasize(
        X, sampler(), observation_noise=torch.full((3, m), 1e-3, dtype=X.dtype)))
    r.put("condition_on_observations then fantasize", lambda: model.condition_on_observations(
        Xn, Yn, **r.noise(2, m)).fantasize(X, sampler()))
    r.put("subset_output([0])", lambda: model.subset_output([0]))
    r.put("subset_output([0]) posterior mean",
          lambda: model.subset_output([0]).posterior(X[..., :r.d]).mean)
    r.put("ModelListGP of two posterior mean", lambda: ModelListGP(model, model).posterior(
        X[..., :r.d]).mean)
    r.put("draw_matheron_paths([4])(X (3, d))", lambda: draw_matheron_paths(
        model, sample_shape=torch.Size([4]))(X[..., :r.d]))


def _module_reads(r: _Reader) -> None:
    """What a model is as a ``torch.nn.Module``: copies, pickling, train mode, casts and
    ``state_dict`` into a fresh model on the same data."""
    model, X = r.model, r.x(3)
    r.put("deepcopy posterior mean", lambda: copy.deepcopy(model).posterior(X).mean)
    r.put("pickle round trip posterior mean", lambda: pickle.loads(pickle.dumps(
        model)).posterior(X).mean)

    def in_train_mode() -> Any:
        model.train()
        try:
            return model.posterior(X).mean
        finally:
            model.eval()

    r.put("posterior in train mode", in_train_mode)
    r.put("eval() returns", lambda: model.eval())
    r.put("fantasy posterior(observation_noise=True)", lambda: model.fantasize(
        r.obs(3), SobolQMCNormalSampler(torch.Size([4]), seed=0)).posterior(
            r.x(2), observation_noise=True).variance)

    def fresh_from_state() -> Any:
        d = data(r.setup)
        fresh = (SingleTaskGP(d["X"], d["Y"], **d["kwargs"]) if isinstance(model, SingleTaskGP)
                 else LaplaceBNN(d["X"], d["Y"], seed=0, **d["kwargs"],
                                 **r.setup.get("laplace", {})))
        fresh.load_state_dict(copy.deepcopy(model.state_dict()))
        fresh.eval()
        return fresh.posterior(X).mean

    r.put("load_state_dict into a fresh model, posterior mean", fresh_from_state)

    def cast() -> Any:
        other = copy.deepcopy(model).to(torch.float32)
        return other.posterior(X.float()).mean

    r.put("to(float32) copy, posterior(float32 X) mean", cast)


def _acquisition_reads(r: _Reader) -> None:
    model, m = r.model, r.m
    transform = (ScalarizedPosteriorTransform(torch.ones(m, dtype=r.dtype))
                 if m > 1 else None)
    r.put("ProximalAcquisitionFunction(UCB)", lambda: ProximalAcquisitionFunction(
        UpperConfidenceBound(model, 2.0, posterior_transform=transform),
        proximal_weights=torch.ones(D, dtype=r.dtype), beta=1.0)(r.x(5, 1)))
    if m > 1:
        r.put("qMultiObjectivePredictiveEntropySearch",
              lambda: _pes(model, r.lo, r.hi)(r.x(5, 1)))
    baseline = data(r.setup)["X"][..., :r.d]  # without an appended environmental variable
    sampler = SobolQMCNormalSampler(torch.Size([16]), seed=0)
    single = {"posterior_transform": transform}
    acquisitions: dict[str, Callable[[], Any]] = {
        "qLogNoisyExpectedImprovement": lambda: qLogNoisyExpectedImprovement(
            model, baseline, sampler=sampler, **single),
        "qKnowledgeGradient(4 fantasies)": lambda: qKnowledgeGradient(
            model, num_fantasies=4, **single),
        "qNegIntegratedPosteriorVariance": lambda: qNegIntegratedPosteriorVariance(
            model, mc_points=r.x(16), **single),
        "qSimpleRegret": lambda: qSimpleRegret(model, sampler=sampler, **single),
        "qUpperConfidenceBound": lambda: qUpperConfidenceBound(model, 2.0, sampler=sampler,
                                                               **single),
        "PosteriorMean": lambda: PosteriorMean(model, **single),
        "LogExpectedImprovement": lambda: LogExpectedImprovement(model, 0.5, **single),
    }
    if m == 1:
        acquisitions["qMaxValueEntropy"] = lambda: qMaxValueEntropy(model, r.x(50))
        acquisitions["qLowerBoundMaxValueEntropy"] = lambda: qLowerBoundMaxValueEntropy(
            model, r.x(50))
    else:
        acquisitions["qLogNoisyExpectedHypervolumeImprovement"] = (
            lambda: qLogNoisyExpectedHypervolumeImprovement(
                model, ref_point=[-1.0] * m, X_baseline=baseline, sampler=sampler))
    for name, build in acquisitions.items():
        q = 2 if name.startswith("q") and "Entropy" not in name else 1
        r.put(f"{name}(X (4, {q}, d))", lambda build=build, q=q: build()(r.x(4, q)))


def _error_reads(r: _Reader) -> None:
    model, m = r.model, r.m
    r.put("posterior(X (3, d + 1))", lambda: model.posterior(
        torch.rand(3, r.d + 1, dtype=r.dtype)))
    r.put("posterior(X (d,))", lambda: model.posterior(r.x(1)[0]))
    other = torch.float32 if r.dtype == torch.float64 else torch.float64
    r.put("posterior(X of the other float dtype)", lambda: model.posterior(
        r.x(3).to(other)).mean)
    r.put("posterior(X with NaN)", lambda: model.posterior(
        torch.full((3, r.d), float("nan"), dtype=r.dtype)).mean)
    r.put("condition_on_observations(Y of m + 1 outputs)",
          lambda: model.condition_on_observations(
              r.obs(2), torch.zeros(2, m + 1, dtype=r.dtype), **r.noise(2, m + 1)))


def reads(model: Any, setup: dict[str, Any]) -> dict[str, Any]:
    """Every read of one model (``{read: summary}``), in a fixed order and seed."""
    r = _Reader(model, setup)
    for group in (_posterior_reads, _conditioning_reads, _module_reads, _acquisition_reads,
                  _error_reads):
        group(r)
    return r.out


def _pes(model: Any, lo: float, hi: float) -> Any:
    """Multi-objective predictive entropy search on three sampled Pareto sets (seed 0)."""
    torch.manual_seed(0)
    bounds = torch.tensor([[lo] * D, [hi] * D], dtype=torch.float64)
    pareto_sets, _ = sample_optimal_points(
        model=model, bounds=bounds, num_samples=3, num_points=4,
        optimizer=random_search_optimizer, optimizer_kwargs={"pop_size": 500, "max_tries": 5})
    return qMultiObjectivePredictiveEntropySearch(model=model, pareto_sets=pareto_sets)


def compare(ours: dict[str, Any], theirs: dict[str, Any]) -> list[dict[str, Any]]:
    """The reads (in either) whose summaries differ: ``{"key", "laplace", "gp"}``."""
    return [{"key": k, "laplace": ours.get(k), "gp": theirs.get(k)}
            for k in sorted(set(ours) | set(theirs)) if ours.get(k) != theirs.get(k)]


def markdown(differences: list[dict[str, Any]], n_reads: int, commit: str) -> str:
    def cell(v: Any) -> str:
        text = json.dumps(v)
        return (text if len(text) <= 80 else text[:77] + "...").replace("|", "\\|")

    lines = ["# `LaplaceBNN` next to `SingleTaskGP`: BoTorch's calls", "",
             f"`benchmarks/botorch_contract_diff.py` at commit {commit or '?'}: {n_reads} "
             f"reads over {len(SETUPS)} set-ups ({', '.join(SETUPS)}), {len(differences)} "
             "differ (type, shape, dtype or error).", "",
             "| set-up: read | `LaplaceBNN` | `SingleTaskGP` |", "|---|---|---|"]
    lines += [f"| {d['key']} | {cell(d['laplace'])} | {cell(d['gp'])} |" for d in differences]
    return "\n".join(lines) + "\n"


def run() -> dict[str, Any]:
    """Both models' reads over every set-up: ``{"laplace": {...}, "gp": {...}}`` with keys
    ``"<set-up>: <read>"``."""
    out: dict[str, dict[str, Any]] = {"laplace": {}, "gp": {}}
    for name, setup in SETUPS.items():
        for which, model in models(setup).items():
            out[which].update({f"{name}: {k}": v for k, v in reads(model, setup).items()})
    return out


def main() -> None:
    warnings.filterwarnings("ignore")
    torch.set_num_threads(1)
    both = run()
    differences = compare(both["laplace"], both["gp"])
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True, cwd=Path(__file__).resolve().parent).stdout.strip()
    text = markdown(differences, len(both["gp"]), commit)
    print(text)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "botorch_contract_diff.md").write_text(text)
    (RESULTS / "botorch_contract_diff.json").write_text(json.dumps(
        {"commit": commit, "differences": differences, **both}, indent=1))


if __name__ == "__main__":
    main()
