"""Bayesian optimization with ``LaplaceBNN`` against ``SingleTaskGP`` and Sobol.

Protocol (issue 5): Branin (2-D), Hartmann (6-D) and Ackley (10-D) from
``botorch.test_functions``, negated (maximised); an initial design of ``2d + 2`` scrambled
Sobol points shared by all methods of a seed (and, on noisy problems, the noise draws of
each step: ``observe``); then ``--iterations`` rounds of qLogEI
(``q = 1``, default 512 QMC samples) optimised by ``optimize_acqf(num_restarts=4,
raw_samples=128)``. Sobol continues the same Sobol sequence. ``LaplaceBNN`` is
warm-started from the previous round's model (``LaplaceBNN(X, Y, warm_start=old)``).
All models get ``Normalize`` with the known box bounds; outcomes are standardized
(``Standardize`` for the GP, ``LaplaceBNN``'s default).

Protocol of issue 13: the same loop on the ten problems of ``benchmarks/problems.py``
(``--problems ten``; d = 2…20, two observed with noise, whose regret uses the true
values). Seeds are split in advance: ``--seed-set dev`` (0–9) for every choice,
``--seed-set report`` (100–109) run once after the choices are frozen; the table records
the commit of the code that ran, the median and interquartile range of the final log10
regret, and the paired win count against the GP. What a method that *is* the GP scores in
that table (the null comparison): ``--variant 'gp2={"model": "gp", "acquisition_seed": 1}'
--methods gp gp2``, a ``SingleTaskGP`` on the same designs and noise whose acquisition
draws other random starts and QMC samples.

Before timing, every method runs one untimed BO round (one-time imports and
``torch.func`` set-up would otherwise land on the first timed fit). Reported per
(problem, method): the median over seeds of the final log10 simple regret
(``f* − max observed``) and of the mean CPU seconds per iteration (``time.process_time``,
one thread), split into fit (model construction and fitting) and acquisition
(``qLogEI`` construction and ``optimize_acqf``).

Posterior cost: a model trained on 29 Hartmann points (the last round of a run) answers
``posterior(X)`` on ``X`` of shape ``b × 4 × 6`` for several ``b``. Each
(model, b, mode) runs in a fresh subprocess that loads the trained state (no training);
peak memory is the growth of ``resource.getrusage(RUSAGE_SELF).ru_maxrss`` across the
call (resident memory, page granularity), next to the size of the largest tensor the
linearized predictive must hold (the whitened Jacobians ``b·4 × P`` in float64).

    .venv/bin/python benchmarks/bo.py                  # the issue protocol (~5 min on this machine)
    .venv/bin/python benchmarks/bo.py --quick          # smoke test: 1 seed, 3 iterations
    .venv/bin/python benchmarks/bo.py --problems hartmann --seeds 0 1 --iterations 5 \\
        --methods gp laplace --variant wide='{"width": 100}'

A variant's JSON holds ``LaplaceBNN`` keyword options, plus ``"warm": false`` (no warm
starts) or ``"warp": "bilog"`` (``Bilog`` then ``Standardize`` as the outcome transform;
it makes the posterior non-Gaussian, so only sample-based acquisitions work), and
``"input_warp": true`` (BoTorch's ``Warp`` on every input after the ``Normalize``, its
concentrations learned: ``lapbo.warping``), which a ``SingleTaskGP`` variant takes too.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import argparse  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import resource  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import torch  # noqa: E402
from botorch.acquisition import qLogExpectedImprovement  # noqa: E402
from botorch.fit import fit_gpytorch_mll  # noqa: E402
from botorch.models import SingleTaskGP  # noqa: E402
from botorch.models.transforms.input import ChainedInputTransform, Normalize, Warp  # noqa: E402
from botorch.models.transforms.outcome import (  # noqa: E402
    Bilog,
    ChainedOutcomeTransform,
    Standardize,
)
from botorch.optim import optimize_acqf  # noqa: E402
from botorch.test_functions import Ackley, Branin, Hartmann  # noqa: E402
from gpytorch.mlls import ExactMarginalLogLikelihood  # noqa: E402
from torch import Tensor  # noqa: E402
from torch.quasirandom import SobolEngine  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.output import cpu_description, package_versions  # noqa: E402
from benchmarks.problems import DEVELOPMENT_PROBLEMS  # noqa: E402
from benchmarks.problems import PROBLEMS as TEN_PROBLEMS  # noqa: E402
from lapbo import LaplaceBNN  # noqa: E402

torch.set_num_threads(1)
DTYPE = torch.float64

PROBLEMS = {  # the three problems of issue 5, then the ten of issue 13
    "branin": lambda: Branin(negate=True),
    "hartmann": lambda: Hartmann(dim=6, negate=True),
    "ackley": lambda: Ackley(dim=10, negate=True),
    **{name: factory for name, factory in TEN_PROBLEMS.items() if name != "branin"},
    **DEVELOPMENT_PROBLEMS,  # development seeds only
}
BASE_METHODS = {
    "laplace": {},  # LaplaceBNN defaults
    "laplace_last_layer": {"subset_of_weights": "last_layer"},
}
SEED_SETS = {"dev": list(range(10)), "report": list(range(100, 110))}
NOTES_MARKER = "<!-- notes: kept when the tables above are regenerated -->"
METHOD_LABELS = {
    "laplace": "LaplaceBNN (defaults)",
    "laplace_last_layer": "LaplaceBNN last layer",
    "gp": "SingleTaskGP",
    "sobol": "Sobol",
}


# ------------------------------------------------------------------------ BO runs
def sobol_points(problem: Any, n: int, seed: int) -> Tensor:
    """The first ``n`` points of a scrambled Sobol sequence in the problem's box."""
    d = problem.dim
    u = SobolEngine(d, scramble=True, seed=seed).draw(n).to(DTYPE)
    lo, hi = problem.bounds.to(DTYPE)
    return lo + (hi - lo) * u


def observe(problem: Any, X: Tensor, seed: int, step: int) -> tuple[Tensor, Tensor]:
    """``(Y, F)``, each of shape ``n``: the observations of ``problem`` at ``X`` (``n × d``)
    and its true values. A noisy problem's noise comes from a generator seeded by
    ``(seed, step)``, not the global one (which a method's fits consume), so that every
    method of a seed sees the same noise draws at step ``step`` (0: the initial design),
    whatever it and the runs before it in the process drew."""
    F = problem(X, noise=False)
    if problem.noise_std is None:
        return F.clone(), F
    generator = torch.Generator().manual_seed(1_000_003 * seed + step)
    noise = torch.randn(F.shape, generator=generator, dtype=F.dtype)
    return F + float(problem.noise_std) * noise.to(F.device), F


def fit_model(method: str, options: dict[str, Any], X: Tensor, Y: Tensor, problem: Any,
              previous: Any, seed: int) -> Any:
    bounds = problem.bounds.to(DTYPE)
    d = problem.dim
    if method == "gp" or options.get("model") == "gp":
        model = SingleTaskGP(X, Y, input_transform=input_transform(d, bounds, options),
                             outcome_transform=Standardize(m=1))
        fit_gpytorch_mll(ExactMarginalLogLikelihood(model.likelihood, model))
        return model
    kwargs = {k: v for k, v in options.items() if k != "acquisition_seed"}
    kwargs.setdefault("seed", seed)
    warp = kwargs.pop("warp", None)
    if warp == "bilog":
        kwargs["outcome_transform"] = ChainedOutcomeTransform(bilog=Bilog(),
                                                              standardize=Standardize(m=1))
    warm = kwargs.pop("warm", True)
    kwargs.pop("input_warp", None)
    model = LaplaceBNN(X, Y, input_transform=input_transform(d, bounds, options),
                       warm_start=previous if warm else None, **kwargs)
    return model.fit()


def input_transform(d: int, bounds: Tensor, options: dict[str, Any]) -> Any:
    """``Normalize`` to the unit box, then with ``"input_warp"`` a learned ``Warp``."""
    normalize = Normalize(d=d, bounds=bounds)
    if not options.get("input_warp"):
        return normalize
    unit = torch.stack([torch.zeros(d), torch.ones(d)]).to(bounds)
    return ChainedInputTransform(normalize=normalize,
                                 warp=Warp(d=d, indices=list(range(d)), bounds=unit))


def check_variant_options(options: dict[str, Any]) -> None:
    """Reject the benchmark's own variant keys when they are malformed: ``"model"`` may only
    be ``"gp"`` (a ``SingleTaskGP`` takes no other option but ``"acquisition_seed"``), and
    ``"acquisition_seed"`` is a non-negative integer."""
    if "model" in options and options["model"] != "gp":
        raise ValueError(f"variant option 'model' must be 'gp', not {options['model']!r}.")
    if options.get("model") == "gp":
        extra = sorted(set(options) - {"model", "acquisition_seed", "input_warp"})
        if extra:
            raise ValueError(f"a SingleTaskGP variant takes no LaplaceBNN options: {extra}.")
    seed = options.get("acquisition_seed", 0)
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"variant option 'acquisition_seed' must be a non-negative integer, "
                         f"not {seed!r}.")


def run_bo(problem_name: str, method: str, options: dict[str, Any], seed: int,
           iterations: int) -> dict[str, Any]:
    check_variant_options(options)
    problem = PROBLEMS[problem_name]()
    d = problem.dim
    n_init = 2 * d + 2
    bounds = problem.bounds.to(DTYPE)
    f_star = float(problem.optimal_value)
    all_sobol = sobol_points(problem, n_init + iterations, seed)
    X = all_sobol[:n_init]
    Y, F = observe(problem, X, seed, 0)  # F: true values, which the regret uses
    Y = Y.unsqueeze(-1)
    fit_times, acq_times, wall_times, log_regret = [], [], [], []
    chosen: list[int] = []  # per round: the index of the candidate the evidence chose
    model = None

    def regret() -> float:
        return math.log10(max(f_star - float(F.max()), 1e-12))

    log_regret.append(regret())
    for it in range(iterations):
        t_wall = time.perf_counter()
        if method == "sobol":
            x_new = all_sobol[n_init + it: n_init + it + 1]
            t_fit = t_acq = 0.0
        else:
            # a variant's "acquisition_seed" k > 0 draws other raw samples and restarts
            torch.manual_seed(1000 * seed + it + 1_000_000 * options.get("acquisition_seed", 0))
            t0 = time.process_time()
            model = fit_model(method, options, X, Y, problem, model, seed)
            t1 = time.process_time()
            acqf = qLogExpectedImprovement(model, best_f=Y.max())
            x_new, _ = optimize_acqf(acqf, bounds=bounds, q=1, num_restarts=4,
                                     raw_samples=128)
            t2 = time.process_time()
            t_fit, t_acq = t1 - t0, t2 - t1
            if isinstance(model, LaplaceBNN) and model.selection:
                chosen.append(next(i for i, s in enumerate(model.selection) if s.chosen))
        x_new = x_new.detach()
        X = torch.cat([X, x_new])
        y_new, f_new = observe(problem, x_new, seed, it + 1)
        Y = torch.cat([Y, y_new.unsqueeze(-1)])
        F = torch.cat([F, f_new])
        fit_times.append(t_fit)
        acq_times.append(t_acq)
        wall_times.append(time.perf_counter() - t_wall)
        log_regret.append(regret())
    out: dict[str, Any] = {
        "problem": problem_name, "method": method, "seed": seed, "options": options,
        "log10_regret": log_regret, "final_log10_regret": log_regret[-1],
        "fit_cpu_s": fit_times, "acq_cpu_s": acq_times, "wall_s": wall_times,
        "mean_fit_cpu_s": statistics.fmean(fit_times),
        "mean_acq_cpu_s": statistics.fmean(acq_times),
        "X_boundary_fraction": boundary_fraction(X[n_init:], bounds),
    }
    if model is not None and isinstance(model, LaplaceBNN):
        out["final_prior_precision"] = model.prior_precision.tolist()
        out["final_sigma_noise"] = float(model.sigma_noise)
        if chosen:
            out["chosen_candidate"] = chosen
    return out


def boundary_fraction(X: Tensor, bounds: Tensor, tol: float = 1e-3) -> float:
    """Fraction of proposed coordinates within ``tol`` (relative) of the box boundary."""
    if X.numel() == 0:
        return float("nan")
    u = (X - bounds[0]) / (bounds[1] - bounds[0])
    return float(((u < tol) | (u > 1 - tol)).double().mean())


# --------------------------------------------------------------- posterior cost
def _probe(state_path: str, kind: str, b: int, mode: str) -> dict[str, Any]:
    """Runs in a fresh subprocess: load a trained model, time one ``posterior`` call."""
    saved = torch.load(state_path, weights_only=False)
    X, Y, d = saved["X"], saved["Y"], saved["X"].shape[-1]
    bounds = torch.stack([torch.zeros(d), torch.ones(d)]).to(DTYPE)
    if kind == "gp":
        model = SingleTaskGP(X, Y, input_transform=Normalize(d=d, bounds=bounds),
                             outcome_transform=Standardize(m=1))
        model.load_state_dict(saved["gp"])
        P = None
    else:
        model = LaplaceBNN(X, Y, input_transform=Normalize(d=d, bounds=bounds),
                           **BASE_METHODS[kind])
        model.load_state_dict(saved[kind])
        P = sum(p.numel() for n, p in model.net.named_parameters()
                if model._param_names is None or n in model._param_names)
    model.eval()
    with torch.no_grad():  # warm-up on a tiny batch: builds caches, loads kernels
        model.posterior(torch.rand(2, 4, d, dtype=DTYPE))
    Xq = torch.rand(b, 4, d, dtype=DTYPE, generator=torch.Generator().manual_seed(0))
    if mode == "grad":
        Xq.requires_grad_(True)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0, c0 = time.perf_counter(), time.process_time()
    with torch.set_grad_enabled(mode == "grad"):
        post = model.posterior(Xq)
        mean, cov = post.mean, post.distribution.covariance_matrix
        if mode == "grad":
            (mean.sum() + cov.diagonal(dim1=-2, dim2=-1).sum()).backward()
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    assert cov.shape == (b, 4, 4), cov.shape
    return {"model": kind, "b": b, "mode": mode, "wall_s": wall, "cpu_s": cpu,
            "peak_rss_growth_mb": (peak - base) / 1024, "n_params_posterior": P,
            "jacobian_mb": None if P is None else b * 4 * P * 8 / 2**20}


def posterior_cost(batch_sizes: list[int], quick: bool) -> list[dict[str, Any]]:
    problem = Hartmann(dim=6, negate=True)
    X = sobol_points(problem, 29, 0)
    Y = problem(X).unsqueeze(-1)
    bounds = problem.bounds.to(DTYPE)
    saved: dict[str, Any] = {"X": X, "Y": Y}
    for kind, opts in BASE_METHODS.items():
        model = LaplaceBNN(X, Y, input_transform=Normalize(d=6, bounds=bounds), seed=0,
                           **opts).fit()
        saved[kind] = model.state_dict()
    gp = SingleTaskGP(X, Y, input_transform=Normalize(d=6, bounds=bounds),
                      outcome_transform=Standardize(m=1))
    fit_gpytorch_mll(ExactMarginalLogLikelihood(gp.likelihood, gp))
    saved["gp"] = gp.state_dict()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        path = str(Path(tmp) / "state.pt")
        torch.save(saved, path)
        for kind in [*BASE_METHODS, "gp"]:
            for mode in ("no_grad", "grad"):
                for b in batch_sizes:
                    cmd = [sys.executable, __file__, "--_probe", path, kind, str(b), mode]
                    res = subprocess.run(cmd, capture_output=True, text=True, check=False)
                    if res.returncode != 0:
                        print(res.stderr[-2000:], file=sys.stderr)
                        continue
                    row = json.loads(res.stdout.strip().splitlines()[-1])
                    rows.append(row)
                    print(f"  posterior {kind:10s} {mode:7s} b={b:5d}: "
                          f"{row['wall_s']:.3f} s wall, {row['cpu_s']:.3f} s CPU, "
                          f"peak RSS +{row['peak_rss_growth_mb']:.1f} MB", flush=True)
    return rows


# ----------------------------------------------------------------------- report
def summarize(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    table = []
    keys = sorted({(r["problem"], r["method"]) for r in runs},
                  key=lambda k: (list(PROBLEMS).index(k[0]), k[1]))
    for problem, method in keys:
        rs = [r for r in runs if r["problem"] == problem and r["method"] == method]
        fit = statistics.median(r["mean_fit_cpu_s"] for r in rs)
        acq = statistics.median(r["mean_acq_cpu_s"] for r in rs)
        total = statistics.median(r["mean_fit_cpu_s"] + r["mean_acq_cpu_s"] for r in rs)
        table.append({
            "problem": problem, "method": method, "n_seeds": len(rs),
            "median_final_log10_regret": statistics.median(r["final_log10_regret"] for r in rs),
            "final_log10_regret_per_seed": [r["final_log10_regret"] for r in rs],
            "initial_log10_regret_median": statistics.median(r["log10_regret"][0] for r in rs),
            "median_fit_cpu_s": fit, "median_acq_cpu_s": acq, "median_total_cpu_s": total,
            "median_boundary_fraction": statistics.median(r["X_boundary_fraction"] for r in rs),
            "iqr_final_log10_regret": quartiles([r["final_log10_regret"] for r in rs]),
            "paired_wins_vs_gp": paired_wins(runs, problem, method),
        })
    return table


def quartiles(values: list[float]) -> tuple[float, float]:
    """The 25 % and 75 % quantiles (``statistics.quantiles``, inclusive method)."""
    if len(values) < 2:
        return (values[0], values[0])
    q = statistics.quantiles(values, n=4, method="inclusive")
    return (q[0], q[2])


def paired_wins(runs: list[dict[str, Any]], problem: str, method: str) -> str:
    """``"w/n"``: seeds on which ``method`` ends with a lower regret than the GP."""
    final = {(r["method"], r["seed"]): r["final_log10_regret"] for r in runs
             if r["problem"] == problem}
    seeds = [s for (m, s) in final if m == method and ("gp", s) in final]
    wins = sum(final[(method, s)] < final[("gp", s)] for s in seeds)
    return f"{wins}/{len(seeds)}"


def targets(table: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Issue 13 acceptance per problem: median final regret ≤ the GP's (and whether
    strictly lower); total CPU per iteration ≤ 2× the GP's."""
    out = []
    by = {(r["problem"], r["method"]): r for r in table}
    for problem in PROBLEMS:
        lap, gp = by.get((problem, "laplace")), by.get((problem, "gp"))
        if lap is None or gp is None:
            continue
        lr, gr = lap["median_final_log10_regret"], gp["median_final_log10_regret"]
        ratio = lap["median_total_cpu_s"] / max(gp["median_total_cpu_s"], 1e-12)
        out.append({
            "problem": problem, "regret_laplace": lr, "regret_gp": gr,
            "regret_met": lr <= gr, "strictly_better": lr < gr,
            "cpu_ratio": ratio, "cpu_met": ratio <= 2.0,
        })
    return out


def combine(paths: list[str], out: Path, name: str) -> None:
    """Tabulate the runs of several result files (same protocol) as one table."""
    parts = [json.loads(Path(p).read_text()) for p in paths]
    runs = [r for part in parts for r in part["runs"]]
    meta = dict(parts[0]["meta"])
    meta["command"] = " + ".join(part["meta"]["command"] for part in parts)
    commits = list(dict.fromkeys(str(part["meta"].get("commit", "?")) for part in parts))
    meta["commit"] = " + ".join(commits)  # each part's, in order, once
    meta["seeds"] = sorted({r["seed"] for r in runs})
    meta["load_average"] = [part["meta"].get("load_average") for part in parts]
    table = summarize(runs)
    checks = targets(table)
    md = markdown(table, checks, [], meta)
    print(md)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps(
        {"meta": meta, "table": table, "targets": checks, "posterior": [], "runs": runs},
        indent=1))
    write_markdown(out / f"{name}.md", md)


def write_markdown(path: Path, md: str) -> None:
    """Write the generated report ``md`` to ``path``, keeping the hand-written notes that
    an earlier version of the file has below ``NOTES_MARKER``."""
    if path.exists():
        old = path.read_text()
        if NOTES_MARKER in old:
            md += "\n" + old[old.index(NOTES_MARKER):]
    path.write_text(md)


def markdown(table: list[dict[str, Any]], checks: list[dict[str, Any]],
             post: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    lines = [
        "# BO benchmark: LaplaceBNN vs SingleTaskGP vs Sobol",
        "",
        f"Seeds {meta['seeds']}, {meta['iterations']} iterations of qLogEI (q=1, "
        "`optimize_acqf(num_restarts=4, raw_samples=128)`), initial design 2d+2 Sobol "
        f"points; one thread; {meta['machine']}. Produced by `{meta['command']}`.",
        "",
        f"Code at commit {meta.get('commit', '?')}.",
        "",
        "| problem | method | median final log10 regret [IQR] (per seed) | wins vs GP | "
        "fit CPU s/it | acq CPU s/it | total CPU s/it | boundary coords |",
        "|---|---|---|---|---:|---:|---:|---:|",
    ]
    for r in table:
        label = METHOD_LABELS.get(r["method"], r["method"])
        per = ", ".join(f"{v:.2f}" for v in r["final_log10_regret_per_seed"])
        lo, hi = r["iqr_final_log10_regret"]
        wins = "" if r["method"] == "gp" else r["paired_wins_vs_gp"]
        lines.append(
            f"| {r['problem']} | {label} | {r['median_final_log10_regret']:.2f} "
            f"[{lo:.2f}, {hi:.2f}] ({per}) | {wins} | "
            f"{r['median_fit_cpu_s']:.2f} | {r['median_acq_cpu_s']:.2f} | "
            f"{r['median_total_cpu_s']:.2f} | {r['median_boundary_fraction']:.0%} |"
        )
    lines += ["", "Initial-design log10 regret (median over seeds): " + ", ".join(
        f"{p} {r['initial_log10_regret_median']:.2f}" for p in PROBLEMS
        for r in table if r["problem"] == p and r["method"] == "sobol")]
    if checks:
        lines += ["", "## Targets (LaplaceBNN defaults vs SingleTaskGP)", "",
                  "Issue 13: median final log10 regret ≤ the GP's on at least 8 problems and "
                  "strictly lower on at least 3; CPU per iteration ≤ 2× the GP's.", "",
                  "| problem | regret LaplaceBNN | regret GP | ≤ GP | < GP | CPU ratio "
                  "| ≤ 2 |", "|---|---:|---:|---|---|---:|---|"]
        yes = {True: "yes", False: "NO"}
        for c in checks:
            lines.append(
                f"| {c['problem']} | {c['regret_laplace']:.2f} | {c['regret_gp']:.2f} | "
                f"{yes[c['regret_met']]} | {yes[c['strictly_better']]} | "
                f"{c['cpu_ratio']:.2f} | {yes[c['cpu_met']]} |")
        n_le = sum(c["regret_met"] for c in checks)
        n_lt = sum(c["strictly_better"] for c in checks)
        n_cpu = sum(c["cpu_met"] for c in checks)
        lines += ["", f"Regret ≤ GP on {n_le} of {len(checks)} problems (target 8 of 10), "
                  f"strictly lower on {n_lt} (target 3); CPU ≤ 2× on {n_cpu}."]
    if post:
        lines += ["", "## Posterior cost on `b × 4 × 6` inputs (Hartmann model, 29 points)",
                  "", "`no_grad`: `posterior(X)` under `torch.no_grad()`; `grad`: with "
                  "`X.requires_grad_()` and a backward pass of mean + variances (what the "
                  "acquisition optimiser does). Peak memory: growth of `ru_maxrss` over "
                  "the call in a fresh subprocess per row; Jacobian: `b·4·P·8` bytes.", "",
                  "| model | mode | b | wall s | CPU s | peak RSS growth MB | Jacobian MB |",
                  "|---|---|---:|---:|---:|---:|---:|"]
        for r in post:
            jac = "" if r["jacobian_mb"] is None else f"{r['jacobian_mb']:.1f}"
            lines.append(f"| {METHOD_LABELS.get(r['model'], r['model'])} | {r['mode']} | "
                         f"{r['b']} | {r['wall_s']:.3f} | {r['cpu_s']:.3f} | "
                         f"{r['peak_rss_growth_mb']:.1f} | {jac} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="1 seed, 3 iterations, small "
                        "posterior batches")
    parser.add_argument("--seeds", type=int, nargs="+", default=None)
    parser.add_argument("--seed-set", choices=list(SEED_SETS), default=None,
                        help="development seeds (every choice is made on these) or reporting "
                        "seeds (run once, after the choices are frozen)")
    parser.add_argument("--iterations", type=int, default=None)
    parser.add_argument("--problems", nargs="+", choices=[*PROBLEMS, "ten"],
                        default=["branin", "hartmann", "ackley"])
    parser.add_argument("--methods", nargs="+", default=["laplace", "gp", "sobol"],
                        help="laplace, laplace_last_layer, gp, sobol and names given by "
                        "--variant")
    parser.add_argument("--variant", action="append", default=[], metavar="NAME=JSON",
                        help="an extra LaplaceBNN method with these keyword options "
                        "(\"warm\": false disables warm starts; \"model\": \"gp\" makes it a "
                        "SingleTaskGP; \"acquisition_seed\": k > 0 seeds the acquisition's "
                        "random starts differently, e.g. a second GP as a null "
                        "comparison); run with --methods NAME")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=None)
    parser.add_argument("--no-posterior", action="store_true", help="skip the posterior cost")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"))
    parser.add_argument("--name", default="bo", help="output file stem")
    parser.add_argument("--combine", nargs="+", default=None, metavar="JSON",
                        help="only tabulate the runs of these result files together (e.g. "
                        "one run split over processes by problem)")
    parser.add_argument("--_probe", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    if args._probe:
        path, kind, b, mode = args._probe
        print(json.dumps(_probe(path, kind, int(b), mode)))
        return
    seeds = args.seeds or SEED_SETS.get(args.seed_set) or ([0] if args.quick else [0, 1, 2])
    if args.problems == ["ten"]:
        args.problems = list(TEN_PROBLEMS)
    iterations = args.iterations or (3 if args.quick else 15)
    batch_sizes = args.batch_sizes or ([64, 128] if args.quick else [512, 1024, 2048])
    methods = {name: dict(opts) for name, opts in BASE_METHODS.items()}
    for spec in args.variant:
        name, _, js = spec.partition("=")
        methods[name] = json.loads(js)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip()
    if args.combine:
        combine(args.combine, Path(args.out), args.name)
        return
    runs = []
    t_start = time.perf_counter()
    for method in args.methods:  # one-time costs (imports, torch.func set-up) untimed
        if method != "sobol":
            run_bo("branin", method, methods.get(method, {}), 99, 1)
    for problem in args.problems:
        for seed in seeds:
            for method in args.methods:
                if method not in methods and method not in ("gp", "sobol"):
                    parser.error(f"unknown method {method!r}")
                r = run_bo(problem, method, methods.get(method, {}), seed, iterations)
                runs.append(r)
                print(f"{problem:8s} {method:12s} seed {seed}: log10 regret "
                      f"{r['log10_regret'][0]:.2f} -> {r['final_log10_regret']:.2f}, "
                      f"fit {r['mean_fit_cpu_s']:.2f} s/it, acq {r['mean_acq_cpu_s']:.2f} "
                      f"s/it, boundary {r['X_boundary_fraction']:.0%}", flush=True)
    post = [] if args.no_posterior else posterior_cost(batch_sizes, args.quick)
    table = summarize(runs)
    checks = targets(table)
    meta = {
        "seeds": seeds, "iterations": iterations, "problems": args.problems,
        "methods": {m: methods.get(m, {}) for m in args.methods},
        "command": "python benchmarks/bo.py " + " ".join(sys.argv[1:]),
        "commit": commit,
        "machine": f"{cpu_description()}, torch {torch.__version__}, "
                   f"{torch.get_num_threads()} thread(s)",
        "load_average": os.getloadavg(), "total_wall_s": time.perf_counter() - t_start,
        "packages": package_versions(),
    }
    md = markdown(table, checks, post, meta)
    print("\n" + md)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{args.name}.json").write_text(json.dumps(
        {"meta": meta, "table": table, "targets": checks, "posterior": post, "runs": runs},
        indent=1))
    write_markdown(out / f"{args.name}.md", md)
    print(f"wrote {out / (args.name + '.json')} and {out / (args.name + '.md')}")


if __name__ == "__main__":
    main()
