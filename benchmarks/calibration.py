"""Calibration of ``LaplaceBNN``'s posterior predictive next to ``SingleTaskGP``.

Protocol (issue 13): for each problem and ``N`` in ``--sizes``, ``N`` uniformly random
training points and 500 fresh uniformly random test points in the problem's box (noisy
problems observe ``f + ε`` in both); both models get ``Normalize`` with the box bounds and
standardized outcomes. Reported, in the units of the standardized training outcomes:

* ``rmse``: root mean squared error of the posterior mean on the test points;
* ``mean_abs_z``: mean of ``|y − μ| / s``, ``s² = var + σ²`` (the predictive with
  observation noise); a calibrated Gaussian gives ``√(2/π) ≈ 0.80``;
* ``nll``: mean Gaussian negative log predictive density per test point.

Seeds are split in advance: development seeds 0–9 for every choice, reporting seeds
100–109 run once after the choices are frozen (``--seeds``).

    .venv/bin/python benchmarks/calibration.py --seeds 0 --sizes 30 100
    .venv/bin/python benchmarks/calibration.py --seeds 100 101 102   # reporting
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "2")

import argparse  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import torch  # noqa: E402
from botorch.fit import fit_gpytorch_mll  # noqa: E402
from botorch.models import SingleTaskGP  # noqa: E402
from botorch.models.transforms.input import Normalize  # noqa: E402
from botorch.models.transforms.outcome import Standardize  # noqa: E402
from gpytorch.mlls import ExactMarginalLogLikelihood  # noqa: E402
from torch import Tensor  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.output import cpu_description, package_versions  # noqa: E402
from benchmarks.problems import DEVELOPMENT_PROBLEMS, PROBLEMS, make_problem  # noqa: E402
from lapbo import LaplaceBNN  # noqa: E402

DTYPE = torch.float64
N_TEST = 500


def sample_data(problem: Any, n: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """``n`` uniform points ``(n, d)`` in the box and their (noisy) values ``(n, 1)``."""
    lo, hi = problem.bounds.to(DTYPE)
    X = lo + (hi - lo) * torch.rand(n, lo.numel(), generator=generator, dtype=DTYPE)
    with torch.no_grad():
        f = problem.evaluate_true(X)
        if problem.noise_std:
            f = f + problem.noise_std * torch.randn(n, generator=generator, dtype=DTYPE)
    return X, f.unsqueeze(-1)


def fit_model(method: str, X: Tensor, Y: Tensor, problem: Any, options: dict[str, Any]) -> Any:
    """A fitted ``SingleTaskGP`` or ``LaplaceBNN`` on ``(X, Y)``."""
    bounds = problem.bounds.to(DTYPE)
    d = X.shape[-1]
    if method == "gp":
        model = SingleTaskGP(X, Y, input_transform=Normalize(d=d, bounds=bounds),
                             outcome_transform=Standardize(m=1))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fit_gpytorch_mll(ExactMarginalLogLikelihood(model.likelihood, model))
        return model
    return LaplaceBNN(X, Y, input_transform=Normalize(d=d, bounds=bounds), seed=0,
                      **options).fit()


def predictive_scores(model: Any, X: Tensor, Y: Tensor, Y_train: Tensor) -> dict[str, float]:
    """RMSE, mean ``|z|`` and NLL of the noisy predictive on ``(X, Y)`` in the units of the
    standardized training outcomes; also the mean ``|z|`` of the latent (noise-free)
    predictive, the one that measures calibration on a deterministic function once the
    error falls below the noise floor (``mean_abs_z_latent``)."""
    mu_y, sd_y = Y_train.mean(), Y_train.std()
    with torch.no_grad():
        post = model.posterior(X, observation_noise=True)
        mean = (post.mean.squeeze(-1) - mu_y) / sd_y
        var = post.variance.squeeze(-1) / sd_y**2
        latent_var = model.posterior(X).variance.squeeze(-1) / sd_y**2
    y = (Y.squeeze(-1) - mu_y) / sd_y
    resid = y - mean
    var = var.clamp_min(1e-30)
    nll = 0.5 * (resid.square() / var + var.log() + math.log(2 * math.pi))
    return {"rmse": float(resid.square().mean().sqrt()),
            "mean_abs_z": float((resid.abs() / var.sqrt()).mean()),
            "nll": float(nll.mean()),
            "mean_abs_z_latent": float((resid.abs() / latent_var.clamp_min(1e-30).sqrt()).mean())}


def run_one(problem_name: str, n: int, seed: int, method: str,
            options: dict[str, Any]) -> dict[str, Any]:
    """One (problem, N, seed, method) cell: fit on ``n`` points, score 500 test points."""
    problem = make_problem(problem_name)
    gen = torch.Generator().manual_seed(1000 * seed + n)
    X, Y = sample_data(problem, n, gen)
    X_test, Y_test = sample_data(problem, N_TEST, gen)
    start = time.process_time()
    model = fit_model(method, X, Y, problem, options)
    cpu = time.process_time() - start
    row = {"problem": problem_name, "n": n, "seed": seed, "method": method, "fit_cpu_s": cpu}
    row.update(predictive_scores(model, X_test, Y_test, Y))
    if method != "gp":
        row["sigma_noise"] = float(model.sigma_noise)
        row["prior_precision"] = float(model.prior_precision.mean())
        row["evidence_per_point"] = float(model.log_marginal_likelihood()) / n
        if model.selection:  # the family's evidences per point, and the one chosen
            row["candidate_evidence_per_point"] = [s.log_marginal_likelihood / n
                                                   for s in model.selection]
            row["chosen_candidate"] = next(i for i, s in enumerate(model.selection) if s.chosen)
    return row


def summarize(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Medians over seeds per (problem, n, method)."""
    keys = sorted({(r["problem"], r["n"], r["method"]) for r in rows},
                  key=lambda k: ([*PROBLEMS, *DEVELOPMENT_PROBLEMS].index(k[0]), k[1], k[2]))
    table = []
    for key in keys:
        cell = [r for r in rows if (r["problem"], r["n"], r["method"]) == key]
        entry = {"problem": key[0], "n": key[1], "method": key[2], "seeds": len(cell)}
        for metric in ("rmse", "mean_abs_z", "nll", "fit_cpu_s", "mean_abs_z_latent"):
            if all(metric in r for r in cell):  # (rows of older runs lack the last)
                entry[metric] = statistics.median(r[metric] for r in cell)
        table.append(entry)
    return table


def markdown(table: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    """The summary table, one row per (problem, n), methods side by side."""
    methods = sorted({r["method"] for r in table}, key=lambda m: (m != "laplace", m))
    head = "| problem | N | " + " | ".join(
        f"{m} RMSE | {m} mean abs z | {m} NLL | {m} fit s" for m in methods) + " |"
    lines = [f"# Calibration: {meta['command']}", "",
             f"seeds {meta['seeds']}, commit {meta['commit']}, medians over seeds; "
             "standardized outcome units; a calibrated Gaussian has mean |z| ≈ 0.80.", "",
             head, "|" + "---|" * (2 + 4 * len(methods))]
    for problem, n in dict.fromkeys((r["problem"], r["n"]) for r in table):
        cells = []
        for m in methods:
            r = next((r for r in table if (r["problem"], r["n"], r["method"]) == (problem, n, m)),
                     None)
            cells += (["–"] * 4 if r is None else
                      [f"{r['rmse']:.3f}", f"{r['mean_abs_z']:.2f}", f"{r['nll']:.2f}",
                       f"{r['fit_cpu_s']:.1f}"])
        lines.append(f"| {problem} | {n} | " + " | ".join(cells) + " |")
    lines += ["", targets_line(table)]
    return "\n".join(lines) + "\n"


def targets_line(table: list[dict[str, Any]]) -> str:
    """Issue 13's calibration targets over the cells with both methods: ``LaplaceBNN``'s
    test NLL ≤ the GP's + 0.1 nats per point, its mean |z| within 0.5–2."""
    by = {(r["problem"], r["n"], r["method"]): r for r in table}
    cells = [(k[0], k[1]) for k in by if k[2] == "laplace" and (k[0], k[1], "gp") in by]
    if not cells:
        return ""
    nll_ok = [c for c in cells if by[(*c, "laplace")]["nll"] <= by[(*c, "gp")]["nll"] + 0.1]
    z = [by[(*c, "laplace")]["mean_abs_z"] for c in cells]
    z_ok = sum(0.5 <= v <= 2.0 for v in z)
    missed = ", ".join(f"{p} N={n}" for p, n in cells if (p, n) not in nll_ok)
    return (f"Targets: NLL ≤ GP + 0.1 in {len(nll_ok)} of {len(cells)} cells"
            f"{' (not: ' + missed + ')' if missed else ''}; mean |z| {min(z):.2f}–{max(z):.2f}, "
            f"within 0.5–2 in {z_ok} of {len(cells)}.")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--problems", nargs="+", choices=[*PROBLEMS, *DEVELOPMENT_PROBLEMS],
                        default=list(PROBLEMS),
                        help="the ten problems, or development problems (development "
                             "seeds only)")
    parser.add_argument("--sizes", nargs="+", type=int, default=[30, 100, 1000])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--methods", nargs="+", default=["laplace", "gp"])
    parser.add_argument("--options", default="{}", help="LaplaceBNN keyword options (JSON)")
    parser.add_argument("--output", default="benchmarks/results/calibration")
    parser.add_argument("--from-logs", nargs="+", default=None, metavar="LOG",
                        help="only tabulate the JSON rows printed by earlier runs")
    args = parser.parse_args()
    if args.from_logs:
        rows = [json.loads(line) for path in args.from_logs for line in Path(path).open()
                if line.startswith("{")]
        meta = {"command": " + ".join(args.from_logs), "seeds": sorted({r["seed"] for r in rows}),
                "commit": "see the runs' logs", "options": {}}
        text = markdown(summarize(rows), meta)
        print(text)
        out = Path(args.output)
        out.with_suffix(".json").write_text(json.dumps(
            {"meta": meta, "table": summarize(rows), "runs": rows}, indent=1))
        out.with_suffix(".md").write_text(text)
        return
    options = json.loads(args.options)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip()  # the code that runs, read at the start
    rows = []
    for problem in args.problems:
        for n in args.sizes:
            for seed in args.seeds:
                for method in args.methods:
                    row = run_one(problem, n, seed, method, options)
                    rows.append(row)
                    print(json.dumps(row), flush=True)
    table = summarize(rows)
    meta = {"command": " ".join(["benchmarks/calibration.py", *sys.argv[1:]]),
            "seeds": args.seeds, "commit": commit, "options": options,
            "packages": package_versions(), "cpu": cpu_description()}
    text = markdown(table, meta)
    print(text)
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps({"meta": meta, "table": table, "runs": rows},
                                                   indent=1))
    out.with_suffix(".md").write_text(text)


if __name__ == "__main__":
    main()
