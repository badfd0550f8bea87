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


def _record(value: Any) -> Any:
    """A JSON-able summary: tensors as shape, dtype and their first six values."""
    if isinstance(value, torch.Tensor):
        value = value.detach()
        return {"shape": list(value.shape), "dtype": str(value.dtype),
                "values": [float(v) for v in value.flatten()[:6]]}
    if isinstance(value, (tuple, list)):
        return [_record(v) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return type(value).__name__


def _read_into(out: dict[str, Any], key: str, fn: Callable[[], Any]) -> None:
    """``out[key]``: the summary of ``fn()``, or ``"error: Type"`` where it raises."""
    try:
        out[key] = _record(fn())
    except Exception as e:  # noqa: BLE001 (the error's type is the observation)
        out[key] = f"error: {type(e).__name__}"


def _net(k: int = 1, *middle: nn.Module) -> nn.Module:
    """The probe's 3-5-k tanh network (seed 1, float64), ``middle`` modules before its head."""
    torch.manual_seed(1)
    return nn.Sequential(nn.Linear(3, 5), nn.Tanh(), *middle, nn.Linear(5, k)).double()


class _Positions(nn.Module):
    """A sequence model: ``(n, 4, 3)`` inputs, the 3-5-1 head at every position (seed 1),
    its outputs read at the last position or averaged over them: ``(n, 1)``."""

    def __init__(self, pool: str) -> None:
        super().__init__()
        torch.manual_seed(1)
        self.body, self.head, self.pool = nn.Linear(3, 5).double(), nn.Linear(5, 1).double(), pool

    def forward(self, x: Any) -> Any:
        out = self.head(torch.tanh(self.body(x)))
        return out[:, -1] if self.pool == "last" else out.mean(1)


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


def _gradients(p: _Problem) -> dict[str, Any]:
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


def _float32(p: _Problem) -> dict[str, Any]:
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
    p = _Problem(X)
    return {
        "float32": lambda: _float32(p),
        "gradients": lambda: _gradients(p),
        "more": lambda: _more(p),
        "models": lambda: _models(p),
        "backends": lambda: _backends(p),
        "classification": lambda: _classification(p),
        "reward_modeling": lambda: _reward_modeling(p),
        "options": lambda: _options(p),
        "fit backends": lambda: _fit_backends(p),
        "marglik_training options": lambda: _marglik_options(p),
        "tuning options": lambda: _tuning_options(p),
        "predictive options": lambda: _predictive_options(p),
        "fits and posteriors": lambda: _fits_and_posteriors(p),
        "utilities": lambda: _utilities(p),
        "ELLA": lambda: _ella(p),
        "regression/all/lowrank": lambda: p.reads(p.fitted("all", "lowrank"), "lowrank"),
        "regression/all/gp": lambda: p.reads(p.fitted("all", "gp", n_subset=8), "gp"),
        "regression/last_layer/gp": lambda: p.reads(
            p.fitted("last_layer", "gp", n_subset=8), "gp(last layer)"),
        "regression/subnetwork/full": lambda: p.reads(p.fitted(
            "subnetwork", "full", subnetwork_indices=torch.arange(0, 26, 3)), "subnetwork"),
        "regression/all/kron gridsearch": lambda: _gridsearch(p),
        "marglik_training(4 epochs)": lambda: _trained(p),
    }


class _Problem:
    """The regression data of the further variants and their small network."""

    def __init__(self, X: Any) -> None:
        self.X, self.y = X, X.sin().sum(-1, keepdim=True)

    def loader(self) -> Any:
        return DataLoader(TensorDataset(self.X, self.y), batch_size=8)

    def fitted(self, subset: str, structure: str, **kwargs: Any) -> Any:
        """A regression LA of the 3-5-1 tanh network (seed 1), fitted."""
        model = _net(1)
        la = Laplace(model, "regression", subset_of_weights=subset,
                     hessian_structure=structure, **kwargs)
        la.fit(self.loader())
        return la

    def reads(self, la: Any, name: str) -> dict[str, Any]:
        """Its evidence and predictives (``name`` prefixes the keys)."""
        return {f"{name} log_marginal_likelihood()": _record(la.log_marginal_likelihood()),
                f"{name} la(x)": _record(la(self.X[:3])),
                f"{name} la(x, joint=True)": _record(la(self.X[:3], joint=True))}


def _gridsearch(p: _Problem) -> Any:
    loader, fitted = p.loader, p.fitted
    la = fitted("all", "kron")
    la.optimize_prior_precision(method="gridsearch", val_loader=loader(), grid_size=9)
    return la.prior_precision


def _trained(p: _Problem) -> Any:
    loader = p.loader
    model = _net(1)
    la, _, margliks, _ = marglik_training(model, loader(), likelihood="regression",
                                          n_epochs=4, n_hypersteps=5)
    return [la.prior_precision, la.sigma_noise, margliks[-1]]


def _options(p: _Problem) -> dict[str, Any]:
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


def _classification(p: _Problem) -> dict[str, Any]:
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


def _reward_modeling(p: _Problem) -> dict[str, Any]:
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


def _backends(p: _Problem) -> dict[str, Any]:
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


def _fit_backends(p: _Problem) -> dict[str, Any]:
    """Each curvature backend named in ``Laplace(..., backend=...)``: the evidence of the
    fitted LA for regression and classification, every structure over all weights and a
    full last layer."""
    import laplace.curvature as curvature

    X, out = p.X, {}
    for likelihood, targets, k in (("regression", p.y, 1),
                                   ("classification", (X[:, 0] > 0).long(), 2)):
        for name in ("BackPackGGN", "BackPackEF", "CurvlinopsGGN", "CurvlinopsEF",
                     "CurvlinopsHessian", "AsdlGGN", "AsdlEF", "AsdlHessian"):
            for subset, structure in (("all", "full"), ("all", "kron"), ("all", "diag"),
                                      ("last_layer", "full")):
                def evidence(name: str = name, subset: str = subset,
                             structure: str = structure, likelihood: str = likelihood,
                             targets: Any = targets, k: int = k) -> Any:
                    la = Laplace(_net(k), likelihood, subset_of_weights=subset,
                                 hessian_structure=structure,
                                 backend=getattr(curvature, name))
                    la.fit(DataLoader(TensorDataset(X, targets), batch_size=8))
                    return la.log_marginal_likelihood()

                _read_into(out, f"backend={name} {likelihood}/{subset}/{structure} "
                                "log_marginal_likelihood()", evidence)
    return out


def _marglik_options(p: _Problem) -> dict[str, Any]:
    """``marglik_training`` with layerwise and diagonal priors over three structures, a
    fixed noise and a temperature (3 epochs each)."""
    out: dict[str, Any] = {}
    import laplace.curvature as curvature

    for prior, structure, extra in (
            ("layerwise", "kron", {}), ("layerwise", "diag", {}), ("diag", "full", {}),
            ("diag", "diag", {}), ("scalar", "full", {"fix_sigma_noise": True}),
            ("scalar", "diag", {"temperature": 0.5}),
            ("scalar", "full", {"n_epochs_burnin": 1, "marglik_frequency": 2}),
            ("scalar", "full", {"prior_prec_init": 3.0, "sigma_noise_init": 0.5}),
            ("layerwise", "full", {"backend": curvature.BackPackGGN}),
            ("layerwise", "diag", {"backend": curvature.CurvlinopsGGN}),
            ("scalar", "full", {"optimizer_cls": torch.optim.SGD,
                                "optimizer_kwargs": {"lr": 0.05}}),
            ("scalar", "full", {"scheduler_cls": torch.optim.lr_scheduler.StepLR,
                                "scheduler_kwargs": {"step_size": 1, "gamma": 0.5}})):
        def trained(prior: str = prior, structure: str = structure,
                    extra: dict[str, Any] = extra) -> Any:
            la, _, margliks, losses = marglik_training(
                _net(1), p.loader(), likelihood="regression", hessian_structure=structure,
                prior_structure=prior, n_epochs=3, n_hypersteps=5, **extra)
            return [la.prior_precision, la.sigma_noise, margliks[-1], losses[-1]]

        _read_into(out, f"marglik_training {prior} prior, {structure}, {sorted(extra)}",
                   trained)
    return out


def _tuning_options(p: _Problem) -> dict[str, Any]:
    """``optimize_prior_precision``: a per-weight (diag) prior by the evidence, its initial
    value and learning rate, and grid search by a given loss and grid."""
    out: dict[str, Any] = {}

    def tuned(structure: str, **kwargs: Any) -> Any:
        la = p.fitted("all", structure)
        la.optimize_prior_precision(**kwargs)
        return la.prior_precision

    def tuned_other(subset: str, structure: str, **kwargs: Any) -> Any:
        extra = ({"n_subset": 8} if structure == "gp" else
                 {"subnetwork_indices": torch.arange(0, 26, 3)} if subset == "subnetwork"
                 else {})
        la = p.fitted(subset, structure, **extra)
        la.optimize_prior_precision(**kwargs)
        return [la.prior_precision, la(p.X[:2])]

    for subset, structure in (("all", "gp"), ("last_layer", "gp"), ("subnetwork", "full")):
        _read_into(out, f"{subset}/{structure} optimize_prior_precision(marglik, 20 steps)",
                   lambda s=subset, h=structure: tuned_other(s, h, n_steps=20))
        _read_into(out, f"{subset}/{structure} optimize_prior_precision(gridsearch, 5)",
                   lambda s=subset, h=structure: tuned_other(
                       s, h, method="gridsearch", val_loader=p.loader(), grid_size=5))
    for structure in ("full", "diag"):
        _read_into(out, f"{structure} optimize_prior_precision(diag, 20 steps)",
                   lambda s=structure: tuned(s, prior_structure="diag", n_steps=20))
    _read_into(out, "full optimize_prior_precision(init 3.0, lr 0.5, 15 steps)",
               lambda: tuned("full", init_prior_prec=3.0, lr=0.5, n_steps=15))
    _read_into(out, "kron gridsearch(loss=MSE-like, log_prior_prec 5 points)", lambda: tuned(
        "kron", method="gridsearch", val_loader=p.loader(),
        log_prior_prec_min=-2, log_prior_prec_max=2, grid_size=5,
        loss=lambda f, y: ((f - y) ** 2).mean()))
    return out


def _predictive_options(p: _Problem) -> dict[str, Any]:
    """The predictive's options on a two-output regression (``diagonal_output``,
    ``fitting``, NN sampling with a generator, sample shapes), a classifier's Monte Carlo
    link with a generator, and the function-space LA's output and kernel options."""
    X, y = p.X, p.y
    two = torch.cat([y, X[:, :1]], -1)
    out: dict[str, Any] = {}

    def put(key: str, fn: Callable[[], Any]) -> None:
        _read_into(out, key, fn)

    for structure in ("full", "kron", "diag"):
        la = Laplace(_net(2), "regression", subset_of_weights="all", hessian_structure=structure)
        la.fit(DataLoader(TensorDataset(X, two), batch_size=8))
        tag = f"two outputs {structure} "
        put(tag + "la(x, diagonal_output=True)", lambda la=la: la(X[:3], diagonal_output=True))
        put(tag + "la(x, fitting=True)", lambda la=la: la(X[:3], fitting=True))
        put(tag + "la(x, nn, 7 samples).shape", lambda la=la: [list(t.shape) for t in la(
            X[:3], pred_type="nn", link_approx="mc", n_samples=7,
            generator=torch.Generator().manual_seed(0))])
        put(tag + "predictive_samples(x, 5, diagonal_output=True).shape",
            lambda la=la: list(la.predictive_samples(X[:3], n_samples=5,
                                                     diagonal_output=True).shape))
    c = (X[:, 0] > 0).long()
    la = Laplace(_net(2), "classification", subset_of_weights="all", hessian_structure="full")
    la.fit(DataLoader(TensorDataset(X, c), batch_size=8))
    put("classification full la(x, mc, 9 samples, generator).shape", lambda: list(la(
        X[:3], link_approx="mc", n_samples=9, generator=torch.Generator().manual_seed(0)).shape))
    put("classification full la(x, fitting=True)", lambda: la(X[:3], fitting=True))
    put("classification full la(x, diagonal_output=True)", lambda: la(X[:3],
                                                                      diagonal_output=True))
    for name, kwargs in (("independent_outputs", {"independent_outputs": True}),
                         ("diagonal_kernel", {"diagonal_kernel": True})):
        def functional(kwargs: dict[str, Any] = kwargs) -> Any:
            fla = Laplace(_net(2), "regression", subset_of_weights="all",
                          hessian_structure="gp", n_subset=8, **kwargs)
            fla.fit(DataLoader(TensorDataset(X, two), batch_size=8))
            return [*fla(X[:3]), fla.log_marginal_likelihood()]

        put(f"two outputs gp {name} la(x), log_marginal_likelihood()", functional)
    return out


def _fits_and_posteriors(p: _Problem) -> dict[str, Any]:
    """A second ``fit(override=False)`` on the same data, the posterior's matrices of the
    Kronecker and diagonal LAs, a layerwise Kronecker prior, a diagonal subnetwork and the
    last layer read at the first or the average position of a sequence."""
    X = p.X
    out: dict[str, Any] = {}

    def put(key: str, fn: Callable[[], Any]) -> None:
        _read_into(out, key, fn)

    for structure in ("full", "kron", "diag"):
        def twice(structure: str = structure) -> Any:
            la = p.fitted("all", structure)
            la.fit(p.loader(), override=False)
            return [la.n_data, la.log_marginal_likelihood(), la(X[:3])]

        put(f"{structure} fit twice (override=False)", twice)
    kron = p.fitted("all", "kron", prior_precision=torch.tensor([0.5, 1.0, 2.0, 4.0],
                                                                 dtype=X.dtype))
    put("kron layerwise prior prior_precision_diag", lambda: kron.prior_precision_diag)
    put("kron layerwise prior log_det_ratio", lambda: kron.log_det_ratio)
    put("kron layerwise prior posterior_precision.to_matrix()",
        lambda: kron.posterior_precision.to_matrix())
    put("kron layerwise prior la(x)", lambda: kron(X[:3]))
    diag = p.fitted("all", "diag")
    put("diag posterior_precision", lambda: diag.posterior_precision)
    put("diag posterior_scale", lambda: diag.posterior_scale)
    put("subnetwork diag log_marginal_likelihood()", lambda: p.fitted(
        "subnetwork", "diag", subnetwork_indices=torch.arange(0, 26, 3)
    ).log_marginal_likelihood())

    seqs = X.reshape(6, 4, 3)
    for reduction in ("pick_first", "average"):
        def reduced(reduction: str = reduction) -> Any:
            la = Laplace(_Positions("average"), "regression", subset_of_weights="last_layer",
                         hessian_structure="full", feature_reduction=reduction)
            la.fit(DataLoader(TensorDataset(seqs, seqs.sum((1, 2))[:, None]), batch_size=3))
            return [la.log_marginal_likelihood(), la(seqs[:2])]

        put(f"feature_reduction={reduction} log_marginal_likelihood(), la(x)", reduced)
    return out


def _utilities(p: _Problem) -> dict[str, Any]:
    """The public helpers of ``laplace.utils`` on fixed inputs: matrix and prior helpers,
    Kronecker factors, the NLL metrics, subnetwork masks and the feature extractor."""
    from laplace import utils

    X = p.X
    out: dict[str, Any] = {}

    def put(key: str, fn: Callable[[], Any]) -> None:
        _read_into(out, key, fn)

    A = X[:5].T @ X[:5] + torch.eye(3, dtype=X.dtype)  # 3 × 3, positive definite
    B = torch.tensor([[2.0, 0.5], [0.5, 1.0]], dtype=X.dtype)
    net = _net(2)
    put("parameters_per_layer", lambda: utils.parameters_per_layer(net))
    put("invsqrt_precision", lambda: utils.invsqrt_precision(A))
    put("symeig eigenvalues", lambda: utils.symeig(A)[0])
    put("block_diag", lambda: utils.block_diag([A, B]))
    put("diagonal_add_scalar", lambda: utils.diagonal_add_scalar(A, torch.tensor(0.5)))
    put("expand_prior_precision(layerwise)", lambda: utils.expand_prior_precision(
        torch.tensor([0.5, 1.0, 2.0, 4.0], dtype=X.dtype), net))
    for structure in ("scalar", "layerwise", "diag"):
        put(f"fix_prior_prec_structure({structure})", lambda s=structure: (
            utils.fix_prior_prec_structure(torch.tensor(2.0, dtype=X.dtype), s, 4, 32,
                                           torch.device("cpu"), X.dtype)))
    put("normal_samples(seeded)", lambda: utils.normal_samples(
        X[:3, :2], X[:3, :2].abs() + 0.1, 4, torch.Generator().manual_seed(0)))
    probs = torch.softmax(X[:6, :2], -1)
    labels = (X[:6, 0] > 0).long()
    put("get_nll", lambda: utils.get_nll(probs, labels))

    def running_nll() -> Any:
        metric = utils.RunningNLLMetric()
        metric.update(probs[:3], labels[:3])
        metric.update(probs[3:], labels[3:])
        return metric.compute()

    put("RunningNLLMetric over two batches", running_nll)
    kron = utils.Kron([[A, B], [B]])  # a layer with two factors (weight), one with one

    def decomposed() -> Any:
        return utils.Kron([[A, B], [B]]).decompose()

    put("Kron.to_matrix", lambda: kron.to_matrix())
    put("Kron.diag", lambda: kron.diag())
    put("Kron.logdet", lambda: kron.logdet())
    put("KronDecomposed.logdet", lambda: decomposed().logdet())
    put("KronDecomposed.to_matrix(exponent=-1)", lambda: decomposed().to_matrix(exponent=-1))
    put("(KronDecomposed + 0.5).logdet", lambda: (decomposed() + 0.5).logdet())
    put("(KronDecomposed * 2).to_matrix", lambda: (decomposed() * 2).to_matrix())
    put("KronDecomposed.bmm(W (2, 8), exponent=-1)", lambda: decomposed().bmm(
        torch.cat([X[:2], X[2:4], X[4:6, :2]], -1), exponent=-1))
    put("KronDecomposed.inv_square_form(W (2, 3, 8))", lambda: decomposed().inv_square_form(
        torch.cat([X[:6], X[6:12], X[12:18, :2]], -1).reshape(2, 3, 8)))
    put("Kron.init_from_model shapes", lambda: [[list(f.shape) for f in fs] for fs in
                                                utils.Kron.init_from_model(
                                                    net, torch.device("cpu"), X.dtype).kfacs])
    put("ParamNameSubnetMask(['0.weight'])",
        lambda: utils.ParamNameSubnetMask(net, ["0.weight"]).select())
    put("LastLayerSubnetMask", lambda: utils.LastLayerSubnetMask(_net(1)).select(p.loader()))

    def largest_variance() -> Any:
        model = _net(1)
        diag = Laplace(model, "regression", subset_of_weights="all", hessian_structure="diag")
        diag.fit(p.loader())
        return utils.LargestVarianceDiagLaplaceSubnetMask(model, 7, diag).select(p.loader())

    put("LargestVarianceDiagLaplaceSubnetMask(7)", largest_variance)

    def seeded(mask: Callable[[], Any]) -> Any:
        torch.manual_seed(0)
        return mask().select(p.loader())

    put("RandomSubnetMask(7) (torch seed 0)",
        lambda: seeded(lambda: utils.RandomSubnetMask(_net(1), 7)))
    put("LargestVarianceSWAGSubnetMask(7) (torch seed 0)", lambda: seeded(
        lambda: utils.LargestVarianceSWAGSubnetMask(_net(1), 7, likelihood="regression",
                                                    swag_n_snapshots=4)))
    put("FeatureExtractor.forward_with_features", lambda: utils.FeatureExtractor(
        _net(2)).forward_with_features(X[:3]))
    return out


def _ella(p: _Problem) -> dict[str, Any]:
    """``ELLA`` (its default seed) for regression and classification: the predictive."""
    from laplace import ELLA

    out: dict[str, Any] = {}
    X = p.X
    for likelihood, targets, k in (("regression", p.y, 1),
                                   ("classification", (X[:, 0] > 0).long(), 2)):
        def predictive(likelihood: str = likelihood, targets: Any = targets,
                       k: int = k) -> Any:
            la = ELLA(_net(k), likelihood, subsample_size=10, n_eigenvalues=6)
            la.fit(DataLoader(TensorDataset(X, targets), batch_size=8))
            return la(X[:3])

        _read_into(out, f"ELLA {likelihood} la(x)", predictive)
    return out


def _models(p: _Problem) -> dict[str, Any]:
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


def _more(p: _Problem) -> dict[str, Any]:
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
