"""How far a random-feature network's accuracy is from the exact GP's at large N.

Issue 13's calibration table misses the GP's test NLL on Hartmann-6 at N = 1,000. This
separates the two possible causes: the hyperparameters (length scales, ``δ``, ``σ`` that
``LaplaceBNN`` fits by the evidence of a subset of features above 512 rows) and the
feature count itself. For each ``--features`` count it reports, on the calibration
benchmark's data (``benchmarks/calibration.py``: the same training and test draws):

* ``laplace``: ``LaplaceBNN(net="random_features", random_features=F, trend=None)`` with
  its own fitted hyperparameters;
* ``features_at_gp``: the same ``F`` features with ``SingleTaskGP``'s fitted length scales
  and noise, kernel variance 1 (as the GP's) and a broad constant (precision 0.01): the
  Bayesian linear regression that ``F`` features of the GP's kernel give;

next to the GP. Test RMSE in standardized outcome units (500 test points).

    .venv/bin/python benchmarks/feature_floor.py --problem hartmann6 --n 1000 --seed 0 \
        --features 4096 16384 --output benchmarks/results/feature_floor
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse  # noqa: E402
import json  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import torch  # noqa: E402
from botorch.models.transforms.input import Normalize  # noqa: E402
from torch import Tensor  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.calibration import DTYPE, N_TEST, fit_model, sample_data  # noqa: E402
from benchmarks.problems import PROBLEMS, make_problem  # noqa: E402
from lapbo import LaplaceBNN  # noqa: E402
from lapbo.networks import random_feature_layer  # noqa: E402

#: Prior precision of the constant's weight in ``features_at_gp`` (variance 100).
CONSTANT_PRECISION = 0.01


def rmse(mean: Tensor, Y: Tensor, scale: Tensor) -> float:
    """Root mean squared error of ``mean`` ``(n, 1)`` against ``Y`` in units of ``scale``."""
    return float((mean - Y).square().mean().sqrt() / scale)


def features_at_gp(model: LaplaceBNN, lengthscale: Tensor, noise: float, X: Tensor,
                   Y: Tensor, X_test: Tensor,
                   precision: tuple[float, float] = (1.0, CONSTANT_PRECISION)) -> Tensor:
    """The posterior mean ``(m, 1)`` at ``X_test`` of ``model``'s features at the GP's
    ``lengthscale`` ``(d,)`` and noise variance (standardized units): a Bayesian linear
    regression on ``Φ = [ψ(x), 1]`` with prior precisions ``precision`` (feature weights,
    constant)."""
    layer = random_feature_layer(model.net)
    transform = getattr(model, "input_transform", None)

    def design(x: Tensor) -> Tensor:  # (n, F + 1)
        feats = layer.features(x if transform is None else transform(x), lengthscale.to(x))
        return torch.cat([feats, torch.ones_like(feats[:, :1])], dim=-1)

    phi = design(X)
    y = (Y - Y.mean()) / Y.std()
    prior = torch.full((phi.shape[-1],), float(precision[0]), dtype=phi.dtype)
    prior[-1] = float(precision[1])
    weights = torch.linalg.solve(phi.mT @ phi / noise + torch.diag(prior),
                                 phi.mT @ y / noise)
    return design(X_test) @ weights * Y.std() + Y.mean()


def run(problem_name: str, n: int, seed: int, features: list[int]) -> list[dict[str, Any]]:
    problem = make_problem(problem_name)
    gen = torch.Generator().manual_seed(1000 * seed + n)  # the calibration benchmark's draws
    X, Y = sample_data(problem, n, gen)
    X_test, Y_test = sample_data(problem, N_TEST, gen)
    scale = Y.std()
    start = time.process_time()
    gp = fit_model("gp", X, Y, problem, {})
    rows = [{"model": "SingleTaskGP", "features": None, "fit_cpu_s": time.process_time() - start,
             "rmse": rmse(gp.posterior(X_test).mean.detach(), Y_test, scale),
             "lengthscale": gp.covar_module.lengthscale.detach().reshape(-1).tolist(),
             "noise_std": float(gp.likelihood.noise.detach().sqrt())}]
    lengthscale = gp.covar_module.lengthscale.detach().reshape(-1)
    noise = float(gp.likelihood.noise.detach())
    bounds = problem.bounds.to(DTYPE)
    for count in features:
        start = time.process_time()
        model = LaplaceBNN(X, Y, input_transform=Normalize(d=X.shape[-1], bounds=bounds),
                           seed=0, candidates=None, net="random_features",
                           random_features=count, trend=None).fit()
        cpu = time.process_time() - start
        with torch.no_grad():
            own = model.posterior(X_test).mean
            at_gp = features_at_gp(model, lengthscale, noise, X, Y, X_test)
        layer = random_feature_layer(model.net)
        rows.append({"model": "laplace", "features": count, "fit_cpu_s": cpu,
                     "rmse": rmse(own, Y_test, scale),
                     "lengthscale": layer.lengthscale.detach().reshape(-1).tolist(),
                     "noise_std": float(model.sigma_noise)})
        rows.append({"model": "features_at_gp", "features": count, "fit_cpu_s": None,
                     "rmse": rmse(at_gp, Y_test, scale), "lengthscale": None,
                     "noise_std": noise ** 0.5})
    return rows


def markdown(rows: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    lines = [f"# Random-feature floor: `{meta['command']}`", "",
             f"Commit {meta['commit']}; test RMSE in standardized outcome units "
             f"({N_TEST} test points); `features_at_gp`: the features with the GP's length "
             "scales and noise.", "",
             "| model | features | test RMSE | σ (standardized) | fit CPU s |",
             "|---|---:|---:|---:|---:|"]
    for r in rows:
        fit = "" if r["fit_cpu_s"] is None else f"{r['fit_cpu_s']:.1f}"
        feats = "exact kernel" if r["features"] is None else str(r["features"])
        lines.append(f"| {r['model']} | {feats} | {r['rmse']:.3f} | {r['noise_std']:.4f} "
                     f"| {fit} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--problem", choices=list(PROBLEMS), default="hartmann6")
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--features", nargs="+", type=int, default=[4096, 16384])
    parser.add_argument("--output", default="benchmarks/results/feature_floor")
    args = parser.parse_args()
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip()
    rows = run(args.problem, args.n, args.seed, args.features)
    meta = {"command": " ".join(["benchmarks/feature_floor.py", *sys.argv[1:]]),
            "commit": commit}
    text = markdown(rows, meta)
    print(text)
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    out.with_suffix(".md").write_text(text)


if __name__ == "__main__":
    main()
