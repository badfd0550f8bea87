"""Each surrogate's acquisition evaluated at every surrogate's batch: why two models batch
in different places in the first round of a large-N run.

On a problem's ``N``-point Sobol design (the first round of ``benchmarks/large_n.py``'s run
with the same seed: the same design, fits, sampler and optimiser settings), each method is
fitted, its ``qLogNoisyExpectedImprovement`` batch of ``q`` points found, and then every
method's acquisition is evaluated at every method's batch. A method whose acquisition is
higher at another method's batch than at its own has an optimiser failure; otherwise the
batches differ because the models do, and each model's posterior at the problem's
optimiser and at the incumbent shows how; its predictive at its own batch, against the
batch's true values, shows whether it was surprised there::

    .venv/bin/python benchmarks/acquisition_cross.py --problem levy7 --seed 4 \\
        --output benchmarks/results/acquisition_cross_levy7_seed4

prints a table and writes ``<output>.md`` and ``<output>.json`` (information for a
development cycle: use development seeds).
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch
from botorch.acquisition.logei import qLogNoisyExpectedImprovement
from botorch.optim import optimize_acqf
from botorch.sampling import SobolQMCNormalSampler
from torch import Tensor

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks import large_n  # noqa: E402

DEFAULT_METHODS = ("laplace", "laplace_notrend", "gp")


def first_round(method: str, problem_name: str, n: int, q: int,
                seed: int) -> tuple[Any, qLogNoisyExpectedImprovement, Tensor, float, int]:
    """``method``'s model, acquisition, batch ``(q, d)``, acquisition CPU seconds and number
    of acquisition calls in the first round on the seed's ``n``-point design, as
    ``large_n.run`` makes them."""
    torch.manual_seed(seed)
    problem = large_n.PROBLEMS[problem_name]()
    bounds = problem.bounds.to(large_n.DTYPE)
    X = large_n.sobol_design(problem, n, seed)
    Y = problem(X).unsqueeze(-1)
    model = large_n.fit(method, X, Y, bounds, None)
    acqf = qLogNoisyExpectedImprovement(model, X_baseline=X, prune_baseline=True,
                                        sampler=SobolQMCNormalSampler(torch.Size([128])))
    calls, forward = [0], acqf.forward

    def counted(x: Tensor) -> Tensor:
        calls[0] += 1
        return forward(x)

    acqf.forward = counted  # the instance's own: counts the optimiser's calls only
    t0 = time.process_time()
    batch, _ = optimize_acqf(acqf, bounds=bounds, q=q, num_restarts=2, raw_samples=256)
    seconds = time.process_time() - t0
    acqf.forward = forward
    return model, acqf, batch.detach(), seconds, calls[0]


def batch_prediction(model: Any, batch: Tensor, values: Tensor, outcome_sd: float
                     ) -> dict[str, float]:
    """How well ``model`` predicted the batch it chose, before seeing it (the one-step-ahead,
    prequential check): mean ``|z|`` of the true ``values`` ``(q,)`` under its predictive
    with observation noise at ``batch`` ``(q, d)``, and their mean log predictive density
    in units of ``outcome_sd`` (the design's outcome standard deviation)."""
    with torch.no_grad():
        post = model.posterior(batch, observation_noise=True)
        mean, sd = post.mean.reshape(-1), post.variance.clamp_min(0).sqrt().reshape(-1)
    z = (values - mean) / sd
    density = torch.distributions.Normal(mean, sd).log_prob(values) + math.log(outcome_sd)
    return {"batch_mean_abs_z": float(z.abs().mean()), "batch_lpd": float(density.mean())}


def cross_table(problem_name: str, n: int, q: int, seed: int,
                methods: tuple[str, ...] = DEFAULT_METHODS) -> list[dict[str, Any]]:
    """One row per method: its acquisition at every method's batch, its posterior (mean,
    SD) at the problem's first optimiser and at the incumbent, and what its own batch
    achieves (the best true value, the distance of its nearest point to the optimiser) and
    how well it predicted that batch (``batch_prediction``)."""
    problem = large_n.PROBLEMS[problem_name]()
    X = large_n.sobol_design(problem, n, seed)
    Y = problem(X).unsqueeze(-1)
    incumbent = X[int(Y.argmax())].unsqueeze(0)
    x_star = problem.optimizers[0].to(large_n.DTYPE).unsqueeze(0)
    rounds = {m: first_round(m, problem_name, n, q, seed) for m in methods}
    rows = []
    for method, (model, acqf, batch, acq_s, acq_calls) in rounds.items():
        with torch.no_grad():
            at_star, at_incumbent = model.posterior(x_star), model.posterior(incumbent)
            row = {
                "method": method, "acq_cpu_s": acq_s, "acq_calls": acq_calls,
                "baseline_points": int(acqf.X_baseline.shape[-2]),
                "acquisition_at": {b: float(acqf(other[2].unsqueeze(0)))
                                   for b, other in rounds.items()},
                "mean_at_optimum": float(at_star.mean), "sd_at_optimum":
                    float(at_star.variance.sqrt()),
                "mean_at_incumbent": float(at_incumbent.mean),
                "sd_at_incumbent": float(at_incumbent.variance.sqrt()),
                "batch_best": float(problem(batch).max()),
                **batch_prediction(model, batch, problem(batch), float(Y.std())),
                "batch_to_optimum": float((batch - x_star).norm(dim=-1).min())}
        row.update(large_n.chosen_candidate(model))
        rows.append(row)
    return rows


def markdown(rows: list[dict[str, Any]], problem_name: str, n: int, seed: int,
             command: str, commit: str) -> str:
    """The rows of ``cross_table`` as a table, the optimum's and incumbent's values above."""
    problem = large_n.PROBLEMS[problem_name]()
    X = large_n.sobol_design(problem, n, seed)
    f_star, f_inc = float(problem.optimal_value), float(problem(X).max())
    names = [r["method"] for r in rows]
    lines = [f"# Acquisitions crossed: {problem_name}, seed {seed}, the {n}-point design", "",
             f"`{command}` at commit {commit}. Optimum {f_star:.4g}, incumbent {f_inc:.4g} "
             "(maximised). Each row's acquisition (log qNEI) at each method's batch; a row "
             "whose own batch is not its highest value is an optimiser failure.", "",
             "| method | chosen trend | " + " | ".join(f"acq at {b}'s batch" for b in names)
             + " | posterior at optimum | posterior at incumbent | batch's best value "
             "| batch to optimum | batch mean \\|z\\| | batch log density | acq CPU s "
             "| acq calls | baseline points |",
             "|---|---|" + "---:|" * len(names) + "---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        acq = " | ".join(f"{r['acquisition_at'][b]:.3f}" for b in names)
        lines.append(
            f"| {r['method']} | {r.get('chosen_trend', '')} | {acq} | "
            f"{r['mean_at_optimum']:.4g} ± {r['sd_at_optimum']:.3g} | "
            f"{r['mean_at_incumbent']:.4g} ± {r['sd_at_incumbent']:.3g} | "
            f"{r['batch_best']:.4g} | {r['batch_to_optimum']:.2f} | "
            f"{r['batch_mean_abs_z']:.2f} | {r['batch_lpd']:.2f} | {r['acq_cpu_s']:.1f} | "
            f"{r['acq_calls']} | {r['baseline_points']} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--problem", default=large_n.DEFAULT_PROBLEM,
                        choices=sorted(large_n.PROBLEMS))
    parser.add_argument("--seed", type=int, required=True)
    parser.add_argument("--n", type=int, default=1000, help="design size (default 1,000)")
    parser.add_argument("--q", type=int, default=10)
    parser.add_argument("--methods", nargs="+", default=list(DEFAULT_METHODS),
                        choices=[m for m in large_n.METHODS if m != "svgp"])
    parser.add_argument("--output", required=True, help="path stem of the .md and .json")
    args = parser.parse_args()
    if args.q < 1 or args.n <= args.q:
        raise ValueError(f"--n ({args.n}) must exceed --q ({args.q}), and --q be positive")
    rows = cross_table(args.problem, args.n, args.q, args.seed, tuple(args.methods))
    command = "benchmarks/acquisition_cross.py " + " ".join(sys.argv[1:])
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip()
    text = markdown(rows, args.problem, args.n, args.seed, command, commit)
    print(text)
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(
        {"command": command, "commit": commit, "rows": rows}, indent=1))
    out.with_suffix(".md").write_text(text)


if __name__ == "__main__":
    main()
