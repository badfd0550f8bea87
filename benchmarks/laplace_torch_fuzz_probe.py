"""One randomized configuration of a Laplace approximation, run through whichever ``laplace``
is importable (this package's or laplace-torch 0.3's): ``laplace_torch_fuzz.py`` runs it
under both and compares what a user reads.

    python laplace_torch_fuzz_probe.py configs.json results.pt

Each configuration (``laplace_torch_fuzz.configurations``) names a likelihood, a weight
subset, a Hessian structure, a backend, a dtype, the data and batch sizes, the prior
precision (scalar or per tensor), ``sigma_noise``, the temperature and optionally a tuning
run; the result of every call is kept as ``("T", tensor)``, ``("V", value)``,
``("L", [...])``, ``("O", type name)`` or ``("E", exception type, message)``.
"""

from __future__ import annotations

import json
import sys
import warnings
from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

D_IN, HIDDEN = 3, 6


def build(cfg: dict[str, Any]) -> tuple[nn.Module, DataLoader, torch.Tensor, torch.dtype]:
    """The network (``3 → 6 → 6 → k``), the training loader and 7 test inputs."""
    dtype = torch.float64 if cfg["dtype"] == "f64" else torch.float32
    g = torch.Generator().manual_seed(cfg["seed"])
    X = torch.randn(cfg["n"], D_IN, generator=g, dtype=dtype)
    X_test = torch.randn(7, D_IN, generator=g, dtype=dtype)
    torch.manual_seed(cfg["seed"])
    act = nn.Tanh() if cfg["act"] == "tanh" else nn.ReLU()
    model = nn.Sequential(nn.Linear(D_IN, HIDDEN), act, nn.Linear(HIDDEN, HIDDEN), nn.Tanh(),
                          nn.Linear(HIDDEN, cfg["k"])).to(dtype)
    f = X @ torch.randn(D_IN, cfg["k"], generator=g, dtype=dtype)
    if cfg["lik"] == "regression":
        y = f + 0.3 * torch.randn(f.shape, generator=g, dtype=dtype)
    else:
        y = f.argmax(-1)
    return model, DataLoader(TensorDataset(X, y), batch_size=cfg["bs"]), X_test, dtype


def record(x: Any) -> tuple:
    """A result as plain data (tensors as float64 on the CPU)."""
    if torch.is_tensor(x):
        return ("T", x.detach().double().cpu())
    if isinstance(x, (tuple, list)):
        return ("L", [record(a) for a in x])
    if isinstance(x, (int, float, bool, str)) or x is None:
        return ("V", x)
    return ("O", type(x).__name__)


def run(cfg: dict[str, Any]) -> dict[str, tuple]:
    """Construct, fit and read one configuration: ``{call: result}``."""
    import laplace.curvature as curvature
    from laplace import Laplace

    out: dict[str, tuple] = {}

    def call(name: str, fn: Callable[[], Any]) -> None:
        try:
            torch.manual_seed(123)
            out[name] = record(fn())
        except Exception as e:  # noqa: BLE001 (the error is the result)
            out[name] = ("E", type(e).__name__, str(e)[:200])

    model, loader, X_test, dtype = build(cfg)
    kwargs: dict[str, Any] = {"subset_of_weights": cfg["sw"], "hessian_structure": cfg["hs"]}
    if cfg["backend"]:
        kwargs["backend"] = getattr(curvature, cfg["backend"])
    for key in ("sigma_noise", "temperature"):
        if cfg.get(key) is not None:
            kwargs[key] = cfg[key]
    if cfg.get("pp") is not None:
        pp = cfg["pp"]
        kwargs["prior_precision"] = pp if isinstance(pp, float) else torch.tensor(pp, dtype=dtype)
    if cfg["hs"] == "gp":
        kwargs["n_subset"] = cfg["n"]
    if cfg["sw"] == "subnetwork":
        kwargs["subnetwork_indices"] = torch.arange(0, sum(p.numel()
                                                           for p in model.parameters()), 3)
    try:
        la = Laplace(model, cfg["lik"], **kwargs)
        out["construct"] = ("V", type(la).__name__)
    except Exception as e:  # noqa: BLE001
        out["construct"] = ("E", type(e).__name__, str(e)[:200])
        return out
    pred_type = "gp" if cfg["hs"] == "gp" else "glm"
    regression = cfg["lik"] == "regression"
    call("fit", lambda: la.fit(loader))
    call("n_data", lambda: la.n_data)
    call("log_marginal_likelihood", lambda: la.log_marginal_likelihood())
    call("log_det_ratio", lambda: la.log_det_ratio)
    call("scatter", lambda: la.scatter)
    call("log_likelihood", lambda: la.log_likelihood)
    call("predictive", lambda: la(X_test, pred_type=pred_type))
    if regression:
        call("predictive joint", lambda: la(X_test, pred_type=pred_type, joint=True))
    else:
        for link in ("bridge", "bridge_norm"):
            call(f"predictive {link}", lambda link=link: la(X_test, pred_type=pred_type,
                                                           link_approx=link))
    call("sample shape", lambda: tuple(la.sample(3).shape))
    call("predictive nn (shapes)", lambda: [tuple(t.shape) for t in _as_tuple(
        la(X_test, pred_type="nn", link_approx="mc", n_samples=4))])
    call("predictive_samples shape", lambda: tuple(la.predictive_samples(
        X_test, pred_type=pred_type, n_samples=4).shape))
    if cfg["hs"] in ("full", "diag", "kron") and cfg["sw"] == "all":
        call("log_prob(mean + 0.1)", lambda: la.log_prob(la.mean + 0.1))
        call("functional_variance", lambda: la.functional_variance(
            la.backend.jacobians(X_test)[0]))
    call("state_dict round trip", lambda: _round_trip(la, cfg, kwargs, X_test, pred_type))
    if regression:
        call("predictive after sigma_noise = 0.25", lambda: (
            setattr(la, "sigma_noise", 0.25), la(X_test, pred_type=pred_type))[1])
    call("fit(override=False) n_data", lambda: (la.fit(loader, override=False), la.n_data)[1])
    call("log_marginal_likelihood(0.7, σ)", lambda: la.log_marginal_likelihood(
        torch.tensor(0.7, dtype=dtype), torch.tensor(0.9, dtype=dtype) if regression else None))
    call("prior_precision after", lambda: la.prior_precision)
    if cfg.get("tune"):
        tune = cfg["tune"]
        call("optimize_prior_precision", lambda: la.optimize_prior_precision(
            pred_type=pred_type, method="marglik", n_steps=tune["n_steps"],
            prior_structure=tune["prior_structure"]))
        call("tuned prior_precision", lambda: la.prior_precision)
        call("tuned predictive", lambda: la(X_test, pred_type=pred_type))
    return out


def _as_tuple(x: Any) -> tuple:
    return x if isinstance(x, tuple) else (x,)


def _round_trip(la: Any, cfg: dict[str, Any], kwargs: dict[str, Any], X_test: torch.Tensor,
                pred_type: str) -> list[Any]:
    """The evidence and predictive of a fresh LA over the same network (rebuilt from the
    same seed) loading ``la.state_dict()``."""
    from laplace import Laplace

    fresh = Laplace(build(cfg)[0], cfg["lik"], **kwargs)
    fresh.load_state_dict(la.state_dict())
    return [fresh.log_marginal_likelihood(), fresh(X_test, pred_type=pred_type)]


def main(run_one: Callable[[dict[str, Any]], dict[str, tuple]] = run) -> None:
    """``probe.py configs.json results.pt``: ``run_one`` on every configuration."""
    warnings.filterwarnings("ignore")
    torch.set_num_threads(1)
    configs = json.loads(open(sys.argv[1]).read())
    torch.save([run_one(cfg) for cfg in configs], sys.argv[2])


if __name__ == "__main__":
    main()
