"""A full-GGN ``FullLaplace`` over all weights of a 1M-parameter MLP (issue 12).

Protocol: an MLP ``d → w → w → 1`` (tanh) with ``d = 10``, ``w = 1000``
(1,013,001 weights), float32, trained briefly (Adam) on ``N = 100`` points of a smooth
regression function; then ``FullLaplace(model, "regression")`` with the default
``precision_form="auto"`` (sample space: 100 rows ≪ 10⁶ weights) is fitted, the prior
precision tuned by ``optimize_prior_precision(method="marglik", n_steps=50)`` and the
GLM predictive taken at 100 test points. Reported: wall seconds per stage, peak resident
memory (``ru_maxrss``) after each stage and peak traced Python/torch-CPU allocations
(``tracemalloc`` sees torch's CPU allocator only partly, so ``ru_maxrss`` is the figure
to read). The dense route would need ``H`` ``(P, P)``: 8 TB in float64, 4 TB in float32.

    .venv/bin/python -m benchmarks.full_laplace_million
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import resource
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from laplace import FullLaplace

RESULTS = Path(__file__).parent / "results"


def peak_rss_mib() -> float:
    """Peak resident memory of this process so far (Linux ``ru_maxrss`` is in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def make_problem(n: int, d: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    X = torch.rand(n, d, generator=g) * 2 - 1
    y = torch.sin(3 * X[:, :1]) + X[:, 1:2] ** 2 + 0.05 * torch.randn(n, 1, generator=g)
    return X, y


def run(width: int, n: int, d: int, train_steps: int, tune_steps: int) -> dict[str, Any]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(d, width), nn.Tanh(), nn.Linear(width, width), nn.Tanh(),
                          nn.Linear(width, 1))
    P = sum(p.numel() for p in model.parameters())
    X, y = make_problem(n, d, 0)
    Xt, _ = make_problem(100, d, 1)
    stages: list[dict[str, Any]] = []

    def stage(name: str, fn) -> Any:
        start = time.perf_counter()
        out = fn()
        stages.append({"stage": name, "seconds": time.perf_counter() - start,
                       "peak_rss_mib": peak_rss_mib()})
        return out

    def train() -> None:
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        for _ in range(train_steps):
            opt.zero_grad()
            nn.functional.mse_loss(model(X), y).backward()
            opt.step()

    stage("train MAP", train)
    la = FullLaplace(model, "regression", sigma_noise=0.1)
    stage("fit", lambda: la.fit(DataLoader(TensorDataset(X, y), batch_size=25)))
    stage("marglik (50 Adam steps)",
          lambda: la.optimize_prior_precision(method="marglik", n_steps=tune_steps))
    f_mu, f_var = stage("predict 100 points", lambda: la(Xt))
    rmse = float((f_mu - (torch.sin(3 * Xt[:, :1]) + Xt[:, 1:2] ** 2)).square().mean().sqrt())
    return {
        "n_params": P, "n_train": n, "n_rows": int(la._H_state().shape[0]),
        "sample_space": la.uses_sample_space, "dtype": str(model[0].weight.dtype),
        "prior_precision": float(la.prior_precision), "sigma_noise": float(la.sigma_noise),
        "log_marglik": float(la.log_marginal_likelihood().detach()),
        "test_rmse": rmse, "mean_predictive_std": float(f_var.squeeze().sqrt().mean()),
        "dense_H_bytes_float64": P * P * 8,
        "stages": stages, "total_seconds_after_training": sum(
            s["seconds"] for s in stages[1:]),
        "peak_rss_mib": peak_rss_mib(),
        "torch": torch.__version__, "threads": torch.get_num_threads(),
        "machine": platform.processor() or platform.machine(),
    }


def markdown(result: dict[str, Any]) -> str:
    lines = [
        f"FullLaplace over all {result['n_params']:,} weights, N = {result['n_train']} "
        f"({result['n_rows']} square-root rows, sample space: {result['sample_space']}, "
        f"{result['dtype']}, {result['threads']} threads). The dense route needs H of "
        f"{result['dense_H_bytes_float64'] / 1e12:.1f} TB (float64).",
        "",
        "| stage | seconds | peak RSS (MiB) |",
        "|---|---:|---:|",
    ]
    for s in result["stages"]:
        lines.append(f"| {s['stage']} | {s['seconds']:.2f} | {s['peak_rss_mib']:.0f} |")
    lines += [
        "",
        f"Fit + tune + predict: {result['total_seconds_after_training']:.1f} s; peak RSS "
        f"{result['peak_rss_mib']:.0f} MiB. Tuned δ = {result['prior_precision']:.4g}, "
        f"log marginal likelihood {result['log_marglik']:.2f}, test RMSE "
        f"{result['test_rmse']:.3f}, mean predictive std {result['mean_predictive_std']:.3f}.",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--width", type=int, default=1000)
    parser.add_argument("--n", type=int, default=100)
    parser.add_argument("--d", type=int, default=10)
    parser.add_argument("--train-steps", type=int, default=200)
    parser.add_argument("--tune-steps", type=int, default=50)
    parser.add_argument("--output", type=Path, default=RESULTS / "full_laplace_million")
    args = parser.parse_args()
    result = run(args.width, args.n, args.d, args.train_steps, args.tune_steps)
    assert math.isfinite(result["log_marglik"])
    table = markdown(result)
    print(table)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    args.output.with_suffix(".md").write_text(table)


if __name__ == "__main__":
    main()
