"""The probe of ``laplace_torch_diff.py``: the same calls to whichever ``laplace`` is
importable, summarised as JSON.

Run as a script (``python benchmarks/laplace_torch_probe.py``) it prints ``probe()`` as one
JSON line. It imports nothing from this repository, so that under laplace-torch's
interpreter ``import laplace`` is laplace-torch (the script's folder, not the repository
root, is on ``sys.path``).
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from laplace import Laplace, marglik_training

try:  # run as a script from this folder (either interpreter), or imported from the repository
    from laplace_torch_probe_common import Problem, _net, _Positions, _read_into, _record
    from laplace_torch_probe_options import OPTION_GROUPS
except ImportError:
    from benchmarks.laplace_torch_probe_common import (
        Problem,
        _net,
        _Positions,
        _read_into,
        _record,
    )
    from benchmarks.laplace_torch_probe_options import OPTION_GROUPS


def _before_fit(la: Any) -> dict[str, Callable[[], Any]]:
    """The reads of an LA before ``fit``."""
    return {"class": lambda: type(la).__name__,
            "prior_precision before fit": lambda: la.prior_precision,
            "sigma_noise before fit": lambda: la.sigma_noise}


def _cases(la: Any, X: Any, classification: bool, all_weights: bool
           ) -> dict[str, Callable[[], Any]]:
    """The reads of one fitted LA (``X`` ``(n, 3)``), in the order they run."""
    dt = X.dtype
    cases: dict[str, Callable[[], Any]] = {
        "n_params": lambda: la.n_params, "n_layers": lambda: la.n_layers,
        "loss": lambda: la.loss, "n_data": lambda: la.n_data,
        "log_likelihood": lambda: la.log_likelihood, "scatter": lambda: la.scatter,
        "log_det_prior_precision": lambda: la.log_det_prior_precision,
        "log_det_posterior_precision": lambda: la.log_det_posterior_precision,
        "log_marginal_likelihood()": lambda: la.log_marginal_likelihood(),
        "log_marginal_likelihood(0.5, σ)": lambda: la.log_marginal_likelihood(
            torch.tensor(0.5, dtype=dt), None if classification else torch.tensor(0.7, dtype=dt)),
        "prior_precision_diag": lambda: la.prior_precision_diag,
        "la(x)": lambda: la(X[:3]),
        "la(x, joint=True)": lambda: la(X[:3], joint=True),
        "sample(4).shape": lambda: list(la.sample(4).shape),
        "predictive_samples(x, 4).shape": lambda: list(la.predictive_samples(
            X[:3], n_samples=4).shape),
        "predictive_samples(x, nn, 4).shape": lambda: list(la.predictive_samples(
            X[:3], pred_type="nn", n_samples=4).shape),
        "type(posterior_precision)": lambda: type(la.posterior_precision).__name__,
        "sorted(state_dict())": lambda: sorted(la.state_dict()),
    }
    if classification:
        for link in ("probit", "bridge", "bridge_norm"):
            cases[f"la(x, link_approx={link!r})"] = (
                lambda link=link: la(X[:3], link_approx=link))
    if all_weights:
        cases["functional_variance(J)"] = lambda: la.functional_variance(
            la.backend.jacobians(X[:2])[0])

    def tuned(structure: str) -> Any:
        la.optimize_prior_precision(n_steps=20, prior_structure=structure)
        return la.prior_precision

    cases["optimize_prior_precision(scalar)"] = lambda: tuned("scalar")
    cases["optimize_prior_precision(layerwise)"] = lambda: tuned("layerwise")
    return cases


def probe() -> dict[str, Any]:
    """``{"likelihood/subset/structure read": summary or "error: Type"}`` for whichever
    ``laplace`` is importable."""
    out: dict[str, Any] = {}

    def read(key: str, fn: Callable[[], Any]) -> None:
        _read_into(out, key, fn)

    g = torch.Generator().manual_seed(0)
    X = torch.randn(24, 3, generator=g, dtype=torch.float64)
    for likelihood in ("regression", "classification"):
        k = 1 if likelihood == "regression" else 2
        y = X.sin().sum(-1, keepdim=True) if k == 1 else (X[:, 0] > 0).long()
        for subset in ("all", "last_layer"):
            for structure in ("full", "kron", "diag"):
                tag = f"{likelihood}/{subset}/{structure} "
                model = _net(k)
                la = Laplace(model, likelihood, subset_of_weights=subset,
                             hessian_structure=structure)
                for name, fn in _before_fit(la).items():
                    read(tag + name, fn)
                la.fit(DataLoader(TensorDataset(X, y), batch_size=8))
                for name, fn in _cases(la, X, k == 2, subset == "all").items():
                    read(tag + name, fn)
    for name, fn in _other_variants(X).items():
        try:
            reads = fn()
        except Exception as e:  # noqa: BLE001
            out[name] = f"error: {type(e).__name__}"
            continue
        out.update(reads if isinstance(reads, dict) else {name: _record(reads)})
    return out


def _gradients(p: Problem) -> dict[str, Any]:
    """Gradients of the GLM predictive w.r.t. the inputs (``enable_backprop=True``) and
    functional-sample shapes."""
    out: dict[str, Any] = {}
    for subset, structure in [("all", "full"), ("all", "kron"), ("all", "diag"),
                              ("last_layer", "kron"), ("last_layer", "full")]:
        la = p.fitted(subset, structure, enable_backprop=True)
        tag = f"enable_backprop {subset}/{structure}"

        def gradient(la: Any = la) -> Any:
            x = p.X[:3].clone().requires_grad_(True)
            mean, var = la(x)
            (mean.sum() + var.sum()).backward()
            return x.grad

        _read_into(out, f"{tag} d(mean + var)/dx", gradient)
        _read_into(out, f"{tag} functional_samples(x, glm, 5).shape",
                   lambda la=la: list(la.functional_samples(p.X[:3], "glm", n_samples=5).shape))
    return out


def _float32(p: Problem) -> dict[str, Any]:
    """A float32 network and data: evidence, predictive and their dtypes."""
    out: dict[str, Any] = {}
    X, y = p.X.float(), p.y.float()
    for subset, structure in [("all", "full"), ("all", "kron"), ("all", "diag"),
                              ("last_layer", "kron")]:
        la = Laplace(_net(1).float(), "regression", subset_of_weights=subset,
                     hessian_structure=structure)
        la.fit(DataLoader(TensorDataset(X, y), batch_size=8))
        tag = f"float32 {subset}/{structure}"
        _read_into(out, f"{tag} log_marginal_likelihood()", la.log_marginal_likelihood)
        _read_into(out, f"{tag} la(x)", lambda la=la: la(X[:3]))
    return out


def _other_variants(X: Any) -> dict[str, Callable[[], Any]]:
    """Reads beyond the main grid: the low-rank, function-space and subnetwork LAs, tuning,
    ``marglik_training``, options, classification, reward modeling, the backends and more
    models, each group run (and failing) on its own."""
    p = Problem(X)
    return {
        "float32": lambda: _float32(p),
        "gradients": lambda: _gradients(p),
        "more": lambda: _more(p),
        "models": lambda: _models(p),
        "backends": lambda: _backends(p),
        "classification": lambda: _classification(p),
        "reward_modeling": lambda: _reward_modeling(p),
        "options": lambda: _options(p),
        "regression/all/lowrank": lambda: p.reads(p.fitted("all", "lowrank"), "lowrank"),
        "regression/all/gp": lambda: p.reads(p.fitted("all", "gp", n_subset=8), "gp"),
        "regression/last_layer/gp": lambda: p.reads(
            p.fitted("last_layer", "gp", n_subset=8), "gp(last layer)"),
        "regression/subnetwork/full": lambda: p.reads(p.fitted(
            "subnetwork", "full", subnetwork_indices=torch.arange(0, 26, 3)), "subnetwork"),
        "regression/all/kron gridsearch": lambda: _gridsearch(p),
        "marglik_training(4 epochs)": lambda: _trained(p),
        **{name: (lambda group=group: group(p)) for name, group in OPTION_GROUPS.items()},
    }


def _gridsearch(p: Problem) -> Any:
    loader, fitted = p.loader, p.fitted
    la = fitted("all", "kron")
    la.optimize_prior_precision(method="gridsearch", val_loader=loader(), grid_size=9)
    return la.prior_precision


def _trained(p: Problem) -> Any:
    loader = p.loader
    model = _net(1)
    la, _, margliks, _ = marglik_training(model, loader(), likelihood="regression",
                                          n_epochs=4, n_hypersteps=5)
    return [la.prior_precision, la.sigma_noise, margliks[-1]]


def _options(p: Problem) -> dict[str, Any]:
    """Non-default constructor options, a two-output network and posterior reads."""
    X, y, fitted = p.X, p.y, p.fitted
    out: dict[str, Any] = {}
    for name, kwargs in [("prior_mean=0.3", {"prior_mean": 0.3}),
                         ("temperature=0.5", {"temperature": 0.5}),
                         ("sigma_noise=0.3", {"sigma_noise": 0.3}),
                         ("layerwise prior", {"prior_precision": torch.tensor(
                             [0.5, 1.0, 2.0, 4.0], dtype=X.dtype)})]:
        for structure in ("full", "diag"):
            la = fitted("all", structure, **kwargs)
            out[f"{structure} {name} log_marginal_likelihood()"] = _record(
                la.log_marginal_likelihood())
            out[f"{structure} {name} la(x)"] = _record(la(X[:3]))
    la = fitted("all", "kron", damping=True)
    out["kron damping=True log_marginal_likelihood()"] = _record(
        la.log_marginal_likelihood())
    la = fitted("all", "full")
    out["full posterior_covariance"] = _record(la.posterior_covariance)
    out["full log_prob(mean)"] = _record(la.log_prob(la.mean))
    out["full log_prob(mean + 0.1, normalized=False)"] = _record(
        la.log_prob(la.mean + 0.1, normalized=False))
    out["full square_norm(mean + 0.1)"] = _record(la.square_norm(la.mean + 0.1))
    out["diag posterior_variance"] = _record(fitted("all", "diag").posterior_variance)
    two = _net(2)
    la = Laplace(two, "regression", subset_of_weights="all", hessian_structure="kron")
    la.fit(DataLoader(TensorDataset(X, torch.cat([y, X[:, :1]], -1)), batch_size=8))
    out["two outputs kron log_marginal_likelihood()"] = _record(la.log_marginal_likelihood())
    out["two outputs kron la(x)"] = _record(la(X[:3]))
    out["two outputs kron la(x, joint=True)"] = _record(la(X[:3], joint=True))
    return out


def _classification(p: Problem) -> dict[str, Any]:
    """Function-space classification, sampled predictives' shapes, grid search with
    probit and a per-weight prior."""
    X = p.X
    c = (X[:, 0] > 0).long()
    out: dict[str, Any] = {}

    def classifier(subset: str, structure: str, **kwargs: Any) -> Any:
        model = _net(2)
        la = Laplace(model, "classification", subset_of_weights=subset,
                     hessian_structure=structure, **kwargs)
        la.fit(DataLoader(TensorDataset(X, c), batch_size=8))
        return la

    la = classifier("all", "gp", n_subset=8)
    out["classification gp la(x)"] = _record(la(X[:3]))
    out["classification gp log_marginal_likelihood()"] = _record(
        la.log_marginal_likelihood())
    la = classifier("all", "kron")
    out["classification kron la(x, mc).shape"] = list(
        la(X[:3], link_approx="mc", n_samples=5).shape)
    out["classification kron la(x, nn, mc).shape"] = list(
        la(X[:3], pred_type="nn", link_approx="mc", n_samples=5).shape)
    out["classification kron predictive_samples(x, 5).shape"] = list(
        la.predictive_samples(X[:3], n_samples=5).shape)
    la.optimize_prior_precision(method="gridsearch", grid_size=9, val_loader=DataLoader(
        TensorDataset(X, c), batch_size=8))
    out["classification kron gridsearch(probit)"] = _record(la.prior_precision)
    la = classifier("all", "diag", prior_precision=torch.linspace(
        0.5, 2.0, 32, dtype=X.dtype))  # 3·5 + 5 + 5·2 + 2 weights
    out["classification diag per-weight prior log_marginal_likelihood()"] = _record(
        la.log_marginal_likelihood())
    return out


def _reward_modeling(p: Problem) -> dict[str, Any]:
    """Reward modeling (pairs ``(n, 2, 3)``, which item wins) for every structure over all
    weights (the network's last ``Linear`` is followed by a ``Flatten``, so both packages
    refuse its last-layer LA): the evidence, the reward predictive and the pair predictive
    of ``fitting``."""
    X = p.X
    pairs = torch.stack([X, X.flip(0)], 1)
    wins = (X[:, 0] > X.flip(0)[:, 0]).long()
    out: dict[str, Any] = {}
    for subset in ("all",):
        for structure in ("full", "kron", "diag"):
            def fitted(subset: str = subset, structure: str = structure) -> Any:
                torch.manual_seed(1)
                reward = nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, 1),
                                       nn.Flatten(1)).double()  # (n, 2, 3) -> (n, 2)
                la = Laplace(reward, "reward_modeling", subset_of_weights=subset,
                             hessian_structure=structure)
                la.fit(DataLoader(TensorDataset(pairs, wins), batch_size=8))
                return la

            tag = "reward_modeling" if (subset, structure) == ("all", "full") else (
                f"reward_modeling {subset}/{structure}")
            _read_into(out, f"{tag} log_marginal_likelihood()",
                       lambda f=fitted: f().log_marginal_likelihood())
            _read_into(out, f"{tag} la(x)" if subset != "all" or structure != "full" else
                       "reward_modeling full la(x)", lambda f=fitted: f()(X[:3]))
            _read_into(out, f"{tag} la(pairs, fitting=True)",
                       lambda f=fitted: f()(pairs[:3], fitting=True))
    out["reward_modeling full log_marginal_likelihood()"] = out.pop(
        "reward_modeling log_marginal_likelihood()")
    return out


def _backends(p: Problem) -> dict[str, Any]:
    """The curvature backends called directly (laplace-torch's backend API)."""
    X, y = p.X, p.y
    import laplace.curvature as curvature

    out: dict[str, Any] = {}
    for name in ("BackPackGGN", "CurvlinopsGGN", "AsdlGGN", "BackPackEF", "CurvlinopsEF",
                 "AsdlEF"):
        for call, fn in [
            ("full", lambda b: b.full(X[:8], y[:8])),
            ("diag", lambda b: b.diag(X[:8], y[:8])),
            ("kron factors", lambda b: b.kron(X[:8], y[:8], N=24)[1].kfacs[0]),
            ("kron loss", lambda b: b.kron(X[:8], y[:8], N=24)[0]),
            ("jacobians", lambda b: b.jacobians(X[:4])),
            ("gradients", lambda b: b.gradients(X[:4], y[:4])),
        ]:
            model = _net(1)  # a fresh backend per call: laplace-torch's keep state
            model.output_size = 1  # laplace-torch's backends read it (its fit sets it)
            _read_into(out, f"{name}.{call}",
                       lambda fn=fn, model=model, name=name: fn(
                           getattr(curvature, name)(model, "regression")))
    return out


def _models(p: Problem) -> dict[str, Any]:
    """Subnetwork masks, frozen weights, three classes, a named last layer before
    ``fit`` and a sequence model read at its last position."""
    from laplace.utils import LargestMagnitudeSubnetMask, ModuleNameSubnetMask

    X, y = p.X, p.y

    out: dict[str, Any] = {}

    def put(key: str, fn: Callable[[], Any]) -> None:
        _read_into(out, key, fn)

    net = _net

    put("subnet mask LargestMagnitude(7)",
        lambda: LargestMagnitudeSubnetMask(net(), 7).select())
    put("subnet mask ModuleName(['2'])", lambda: ModuleNameSubnetMask(net(), ["2"]).select())

    def fitted(model: nn.Module, likelihood: str, targets: Any, **kwargs: Any) -> Any:
        la = Laplace(model, likelihood, hessian_structure="full", **kwargs)
        la.fit(DataLoader(TensorDataset(X if X.shape[0] == len(targets) else
                                        X.reshape(6, 4, 3), targets), batch_size=8))
        return la

    frozen = net()
    frozen[0].weight.requires_grad_(False)
    la = fitted(frozen, "regression", y, subset_of_weights="all")
    put("frozen first weight n_params", lambda: la.n_params)
    put("frozen first weight log_marginal_likelihood()", la.log_marginal_likelihood)
    put("frozen first weight la(x)", lambda: la(X[:3]))
    three = fitted(net(3), "classification", (X[:, 0] > 0).long() + (X[:, 1] > 0).long(),
                   subset_of_weights="all")
    put("three classes log_marginal_likelihood()", three.log_marginal_likelihood)
    put("three classes la(x)", lambda: three(X[:3]))
    named = Laplace(net(), "regression", subset_of_weights="last_layer",
                    hessian_structure="full", last_layer_name="2")
    put("named last layer before fit n_params", lambda: named.n_params)
    put("named last layer before fit la(x)", lambda: named(X[:3]))

    seq_y = X.reshape(6, 4, 3).sum((1, 2))[:, None]
    put("feature_reduction=pick_last log_marginal_likelihood()",
        lambda: fitted(_Positions("last"), "regression", seq_y, subset_of_weights="last_layer",
                       feature_reduction="pick_last").log_marginal_likelihood())
    return out


def _more(p: Problem) -> dict[str, Any]:
    """A joint classification predictive, dict (Hugging Face-style) batches, a dropout
    network and a classification ``marglik_training`` with a diagonal Hessian."""
    X, y, loader = p.X, p.y, p.loader
    out: dict[str, Any] = {}

    def put(key: str, fn: Callable[[], Any]) -> None:
        _read_into(out, key, fn)

    c = (X[:, 0] > 0).long()

    net = _net

    la = Laplace(net(2), "classification", subset_of_weights="all", hessian_structure="kron")
    la.fit(DataLoader(TensorDataset(X, c), batch_size=8))
    put("classification kron la(x, joint=True)", lambda: la(X[:3], joint=True))

    class DictModel(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = net(1)

        def forward(self, batch: Any) -> Any:
            return self.net(batch["input_ids"])

    rows = [{"input_ids": X[i], "labels": y[i]} for i in range(len(X))]
    dict_la = Laplace(DictModel(), "regression", subset_of_weights="all",
                      hessian_structure="full")
    put("dict batches fit", lambda: dict_la.fit(DataLoader(rows, batch_size=8)))
    put("dict batches log_marginal_likelihood()", dict_la.log_marginal_likelihood)
    put("dict batches la(x)", lambda: dict_la({"input_ids": X[:3]}))
    dropout = Laplace(net(1, nn.Dropout(0.3)), "regression", subset_of_weights="all",
                      hessian_structure="full")
    put("dropout network fit", lambda: dropout.fit(loader()))
    put("dropout network log_marginal_likelihood()", dropout.log_marginal_likelihood)

    def trained() -> Any:
        lap, _, margliks, losses = marglik_training(
            net(2), DataLoader(TensorDataset(X, c), batch_size=8),
            likelihood="classification", hessian_structure="diag",
            prior_structure="scalar", n_epochs=4, n_hypersteps=5)
        return [lap.prior_precision, margliks[-1], losses[-1]]

    put("marglik_training classification diag scalar (4 epochs)", trained)
    return out

if __name__ == "__main__":
    warnings.filterwarnings("ignore")
    print(json.dumps(probe()))
