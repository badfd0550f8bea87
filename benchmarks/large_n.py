"""Where an exact GP breaks: many observations and batch rounds (issue 13).

Protocol: Ackley-20 (negated; ``--problem`` names another of ``PROBLEMS`` for checks on
functions the defaults were not developed on), a ``--n-init``-point scrambled Sobol design, then
``--rounds`` rounds of ``q = 10`` with ``qLogNoisyExpectedImprovement``
(``prune_baseline=True``, 128 QMC samples, ``optimize_acqf(num_restarts=2,
raw_samples=256)``). Compared: ``LaplaceBNN`` (defaults, warm-started every round),
the default family without its quadratic-trend networks (``laplace_notrend``, a
development variant), ``LaplaceBNN(net="random_features", random_features=4096)`` alone
(``laplace_rf``:
its first ``lengthscales.FIT_FEATURES`` features above ``lengthscales.EXACT_FIT_ROWS`` rows),
``SingleTaskGP`` (exact, refit every round) and ``SingleTaskVariationalGP`` (256 learned
inducing points, refit by the ELBO every round). Each method runs in its own subprocess,
so its peak resident memory (``ru_maxrss``) is its own; each writes one JSON line per
round, as the round ends, to ``<output>.<method>.progress`` (for ``LaplaceBNN`` with the
candidate the evidence chose and every candidate's evidence). Reported per method: CPU seconds
per round (fit and acquisition; ``time.process_time``), peak memory, and the log10
regret after the design and after the last round.

    .venv/bin/python benchmarks/large_n.py --n-init 1000 --rounds 3
    .venv/bin/python benchmarks/large_n.py --n-init 2000 --rounds 2 \\
        --output benchmarks/results/large_n_2000

``--save-data`` checkpoints each run after every round and ``--resume`` continues it (the
exact GP's 100 rounds take hours). ``--replay DATA --at N …`` runs one round of each
method on the same first ``N`` rows of a saved trajectory: CPU on identical data, the
model's posterior at the incumbent, the best true value of the batch it chooses, and the
test NLL and mean ``|z|`` of its predictive, uniformly and near the incumbent
(``predictive_calibration``).

    .venv/bin/python benchmarks/large_n.py --replay \\
        benchmarks/results/large_n_trajectory.laplace.pt --at 1130 1500 1900 \\
        --methods laplace gp --output benchmarks/results/large_n_replay

``--seed-table STEM …`` tabulates runs of several seeds (one ``--output`` stem each):
every seed at the ``N`` all its methods reached (or ``--at N``), then medians over seeds
and the seeds where each method's regret is at most the exact GP's.

    .venv/bin/python benchmarks/large_n.py --seed-table runs/seed100 runs/seed101 \\
        --output benchmarks/results/large_n_seeds
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import resource  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402
from collections.abc import Callable  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import torch  # noqa: E402
from botorch.acquisition.logei import qLogNoisyExpectedImprovement  # noqa: E402
from botorch.fit import fit_gpytorch_mll  # noqa: E402
from botorch.models import SingleTaskGP  # noqa: E402
from botorch.models.approximate_gp import SingleTaskVariationalGP  # noqa: E402
from botorch.models.transforms.input import Normalize  # noqa: E402
from botorch.models.transforms.outcome import Standardize  # noqa: E402
from botorch.optim import optimize_acqf  # noqa: E402
from botorch.sampling import SobolQMCNormalSampler  # noqa: E402
from botorch.test_functions import Ackley  # noqa: E402
from botorch.test_functions.synthetic import SyntheticTestFunction  # noqa: E402
from gpytorch.mlls import ExactMarginalLogLikelihood, VariationalELBO  # noqa: E402
from torch import Tensor  # noqa: E402
from torch.quasirandom import SobolEngine  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.output import cpu_description, package_versions  # noqa: E402
from benchmarks.problems import DEVELOPMENT_PROBLEMS  # noqa: E402
from benchmarks.problems import PROBLEMS as TEN_PROBLEMS  # noqa: E402
from lapbo import LaplaceBNN, selection  # noqa: E402

torch.set_num_threads(1)
DTYPE = torch.float64
METHODS = ("laplace", "laplace_notrend", "laplace_rf", "gp", "svgp")

#: Problems (maximised; factories of ``benchmarks.problems``): the benchmark's Ackley-20,
#: four twenty-input ones that no large-N choice used, and three from six to eight inputs
#: (the family of four to nine inputs), for checks that the defaults carry over
#: (development seeds only).
PROBLEMS: dict[str, Callable[[], SyntheticTestFunction]] = {
    name: {**TEN_PROBLEMS, **DEVELOPMENT_PROBLEMS}[name]
    for name in ("ackley20", "levy20", "griewank20", "styblinski_tang20", "rosenbrock20",
                 "ackley6", "levy7", "powell8")}
DEFAULT_PROBLEM = "ackley20"


def sobol_design(problem: SyntheticTestFunction, n_init: int, seed: int) -> Tensor:
    """The seed's ``(n_init, d)`` scrambled Sobol design in the problem's box."""
    lo, hi = problem.bounds.to(DTYPE)
    return lo + (hi - lo) * SobolEngine(problem.dim, scramble=True, seed=seed).draw(
        n_init).to(DTYPE)


def notrend_family(d: int, n: int) -> list[dict[str, Any]]:
    """``laplace_notrend``'s candidates: ``LaplaceBNN``'s default family of ``d`` inputs and
    ``n`` observations without its quadratic-trend networks (a development variant)."""
    return [c for c in selection.default_family([], d, n) if c.get("trend") is None]


def fit(method: str, X: Tensor, Y: Tensor, bounds: Tensor, previous: Any) -> Any:
    """A model of ``method`` fitted on ``X (n, d)``, ``Y (n, 1)``."""
    d = X.shape[-1]
    if method == "laplace":
        return LaplaceBNN(X, Y, input_transform=Normalize(d=d, bounds=bounds),
                          warm_start=previous, seed=0).fit()
    if method == "laplace_notrend":
        return LaplaceBNN(X, Y, input_transform=Normalize(d=d, bounds=bounds),
                          warm_start=previous, seed=0,
                          candidates=notrend_family(d, X.shape[0])).fit()
    if method == "laplace_rf":  # the random-feature network alone (no candidate family)
        return LaplaceBNN(X, Y, input_transform=Normalize(d=d, bounds=bounds),
                          warm_start=previous, seed=0, net="random_features",
                          random_features=4096, candidates=None).fit()
    if method == "gp":
        model = SingleTaskGP(X, Y, input_transform=Normalize(d=d, bounds=bounds),
                             outcome_transform=Standardize(m=1))
        fit_gpytorch_mll(ExactMarginalLogLikelihood(model.likelihood, model))
        return model
    model = SingleTaskVariationalGP(X, Y, inducing_points=256,
                                    input_transform=Normalize(d=d, bounds=bounds),
                                    outcome_transform=Standardize(m=1))
    mll = VariationalELBO(model.likelihood, model.model, num_data=X.shape[0])
    fit_gpytorch_mll(mll)
    return model


def run(method: str, n_init: int, rounds: int, q: int, seed: int,
        save_data: str | None = None, resume: bool = False,
        problem_name: str = DEFAULT_PROBLEM, progress_file: str | None = None
        ) -> dict[str, Any]:
    """One BO run of ``method``; returns per-round CPU and the regret trace.

    With ``save_data`` the run's state (data, per-round CPU, regret trace, random state)
    is written to ``<save_data>.<method>.pt`` after every round; ``resume`` continues
    from that file to ``rounds`` rounds in all (``LaplaceBNN`` then refits its first
    resumed round from scratch: the warm start is not saved). Each round's progress line
    is appended to ``progress_file``, opened by path for each line (a file replaced while
    the run goes on, e.g. by a ``git checkout``, then still receives the later rounds), or
    printed to stderr (``None``).
    """
    torch.manual_seed(seed)
    problem = PROBLEMS[problem_name]()
    bounds = problem.bounds.to(DTYPE)
    X = sobol_design(problem, n_init, seed)
    Y = problem(X).unsqueeze(-1)
    f_star = float(problem.optimal_value)
    regret = [math.log10(f_star - float(Y.max()))]
    fit_s, acq_s, model = [], [], None
    cpu = cpu_description()  # in every round's line: a run resumed elsewhere mixes CPUs
    state_path = None if save_data is None else f"{save_data}.{method}.pt"
    if resume:
        if state_path is None or not Path(state_path).exists():
            raise FileNotFoundError(f"--resume needs the saved state {state_path}")
        state = torch.load(state_path)
        X, Y, fit_s, acq_s, regret = (state["X"], state["Y"], state["fit_cpu_s"],
                                      state["acq_cpu_s"], state["log10_regret"])
        torch.set_rng_state(state["rng"])
    while len(fit_s) < rounds:
        t0 = time.process_time()
        model = fit(method, X, Y, bounds, model if method.startswith("laplace") else None)
        t1 = time.process_time()
        acqf = qLogNoisyExpectedImprovement(
            model, X_baseline=X, prune_baseline=True,
            sampler=SobolQMCNormalSampler(torch.Size([128])))
        x_new, _ = optimize_acqf(acqf, bounds=bounds, q=q, num_restarts=2, raw_samples=256)
        t2 = time.process_time()
        fit_s.append(t1 - t0)
        acq_s.append(t2 - t1)
        X = torch.cat([X, x_new.detach()])
        Y = torch.cat([Y, problem(x_new.detach()).unsqueeze(-1)])
        regret.append(math.log10(f_star - float(Y.max())))
        line = json.dumps({"n": X.shape[0], "fit_cpu_s": fit_s[-1], "acq_cpu_s": acq_s[-1],
                           "log10_regret": regret[-1], "cpu": cpu, **chosen_candidate(model)})
        if progress_file is None:
            print(line, file=sys.stderr, flush=True)
        else:
            with open(progress_file, "a") as log:
                log.write(line + "\n")
        if state_path is not None:  # the trajectory so far: to profile it, or resume
            partial = f"{state_path}.partial"  # replaced in one step: a kill leaves either
            torch.save({"X": X, "Y": Y, "fit_cpu_s": fit_s, "acq_cpu_s": acq_s,
                        "log10_regret": regret, "rng": torch.get_rng_state()}, partial)
            os.replace(partial, state_path)
    return {"method": method, "problem": problem_name, "n_init": n_init, "rounds": rounds,
            "q": q, "seed": seed, "fit_cpu_s": fit_s, "acq_cpu_s": acq_s,
            "mean_round_cpu_s": (sum(fit_s) + sum(acq_s)) / rounds,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "log10_regret": regret}


def chosen_candidate(model: Any) -> dict[str, Any]:
    """For a progress line: the index of the candidate ``model`` (a ``LaplaceBNN`` with a
    family) chose this round, its trend and kernel, and every candidate's evidence, so that
    a run shows which network made each batch; nothing for other models."""
    scores = getattr(model, "selection", None)
    if not scores:
        return {}
    i = next(j for j, score in enumerate(scores) if score.chosen)
    return {"chosen": i, "chosen_trend": scores[i].options.get("trend"),
            "chosen_kernel": scores[i].options.get("random_feature_kernel", "rbf"),
            "log_evidences": [round(score.log_marginal_likelihood, 3) for score in scores]}


def replay_round(method: str, data: str, n: int, q: int, seed: int,
                 problem_name: str = DEFAULT_PROBLEM) -> dict[str, Any]:
    """One round of ``method`` on the first ``n`` rows of a saved trajectory (``data``, as
    written by ``--save-data``): the fit and the acquisition of ``q`` points, timed. Every
    method sees the same data; ``LaplaceBNN`` is first fitted, untimed, on the first
    ``n − q`` rows and warm-started from there, as in a round of its own trajectory."""
    state = torch.load(data)
    if not q < n <= len(state["X"]):
        raise ValueError(f"--at must be more than --q ({q}) and at most the {len(state['X'])} "
                         f"rows saved in {data}, not {n}.")
    X, Y = state["X"][:n], state["Y"][:n]
    problem = PROBLEMS[problem_name]()
    bounds = problem.bounds.to(DTYPE)
    previous = None
    if method.startswith("laplace"):
        previous = fit(method, X[:-q], Y[:-q], bounds, None)
    torch.manual_seed(seed)
    t0 = time.process_time()
    model = fit(method, X, Y, bounds, previous)
    t1 = time.process_time()
    acqf = qLogNoisyExpectedImprovement(model, X_baseline=X, prune_baseline=True,
                                        sampler=SobolQMCNormalSampler(torch.Size([128])))
    x_new, _ = optimize_acqf(acqf, bounds=bounds, q=q, num_restarts=2, raw_samples=256)
    t2 = time.process_time()
    best = int(Y.argmax())
    with torch.no_grad():
        post = model.posterior(X[best:best + 1])
        batch = problem(x_new.detach())
    return {"method": method, "data": data, "n": n, "fit_cpu_s": t1 - t0,
            "acq_cpu_s": t2 - t1, "round_cpu_s": t2 - t0,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            # what the round achieves: the best new value against the incumbent's, and the
            # model's posterior at the incumbent (mean, SD) against its observed value
            "incumbent": float(Y[best]), "batch_best": float(batch.max()),
            "incumbent_mean": float(post.mean), "incumbent_sd": float(post.variance.sqrt()),
            **predictive_calibration(model, X, Y, bounds, problem)}


#: Test points of ``predictive_calibration``: uniform in the box, and around the incumbent
#: (each coordinate within ``NEAR_INCUMBENT`` of it in the problem's units, clipped to the
#: box: about a tenth of Ackley's half-range, where the later rounds of its trajectories
#: concentrate their rows).
UNIFORM_TEST_POINTS, NEAR_TEST_POINTS, NEAR_INCUMBENT = 500, 300, 3.0


def predictive_calibration(model: Any, X: Tensor, Y: Tensor, bounds: Tensor,
                           problem: SyntheticTestFunction | None = None,
                           seed: int = 12345) -> dict[str, float]:
    """Gaussian test NLL (per point, in units of the SD of ``Y``) and mean ``|z|`` of the
    posterior predictive with observation noise, on fresh points uniform in ``bounds``
    (``(2, d)``) and near the incumbent of ``X`` ``(n, d)``, ``Y`` ``(n, 1)``: how well a
    model fitted to a trajectory's clustered rows predicts where the next rounds look
    (``problem``: the maximised function, Ackley by default)."""
    if problem is None:
        problem = Ackley(dim=X.shape[-1], negate=True)
    g = torch.Generator().manual_seed(seed)
    lo, hi = bounds
    uniform = lo + (hi - lo) * torch.rand(UNIFORM_TEST_POINTS, len(lo), generator=g,
                                          dtype=X.dtype)
    step = 2 * torch.rand(NEAR_TEST_POINTS, len(lo), generator=g, dtype=X.dtype) - 1
    near = torch.maximum(torch.minimum(X[Y.argmax()] + NEAR_INCUMBENT * step, hi), lo)
    scale = float(Y.std())
    out = {}
    for name, T in (("uniform", uniform), ("near", near)):
        with torch.no_grad():
            post = model.posterior(T, observation_noise=True)
        mean, var = post.mean.squeeze(-1), post.variance.squeeze(-1)
        z = (problem(T) - mean) / var.sqrt()
        nll = 0.5 * (math.log(2 * math.pi) + torch.log(var / scale**2) + z**2)
        out[f"{name}_nll"], out[f"{name}_abs_z"] = float(nll.mean()), float(z.abs().mean())
    return out


def markdown(rows: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    gp = next((r for r in rows if r["method"] == "gp"), None)
    lines = [f"# Large N: {meta.get('problem', DEFAULT_PROBLEM)}, {meta['n_init']} Sobol "
             f"points, {meta['rounds']} rounds of q = {meta['q']}", "",
             f"`{meta['command']}` at commit {meta['commit']}, "
             f"seed {meta['seed']}; {torch.get_num_threads()} thread(s)"
             f"{'; ' + meta['cpu'] if 'cpu' in meta else ''}.", "",
             "The first round fits on the design alone (from scratch for every method); "
             "later rounds refit (`LaplaceBNN` warm-started from the previous round, the "
             "GPs from scratch). A run to N = 2,000 in rounds of 10 has 100 rounds, so "
             "the later-round cost is the one that adds up.", "",
             "| method | first-round fit CPU s | later fit CPU s/round | acq CPU s/round | "
             "later total s/round | ratio to GP | last 10 rounds s/round | ratio to GP | "
             "all rounds s/round | peak RSS MB | log10 regret design → end |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]

    def later(r: dict[str, Any]) -> float:
        fits = r["fit_cpu_s"][1:] or r["fit_cpu_s"]
        return sum(fits) / len(fits) + sum(r["acq_cpu_s"]) / r["rounds"]

    def last(r: dict[str, Any]) -> float:  # the rounds nearest the final N
        k = max(min(10, r["rounds"] - 1), 1)
        return sum(f + a for f, a in zip(r["fit_cpu_s"][-k:], r["acq_cpu_s"][-k:])) / k

    for r in rows:
        fits = r["fit_cpu_s"][1:] or r["fit_cpu_s"]
        acq_m = sum(r["acq_cpu_s"]) / r["rounds"]
        ratio = "" if gp is None else f"{later(r) / later(gp):.2f}"
        ratio_last = "" if gp is None else f"{last(r) / last(gp):.2f}"
        lines.append(f"| {r['method']} | {r['fit_cpu_s'][0]:.1f} | "
                     f"{sum(fits) / len(fits):.1f} | {acq_m:.1f} | {later(r):.1f} | {ratio} | "
                     f"{last(r):.1f} | {ratio_last} | "
                     f"{r['mean_round_cpu_s']:.1f} | {r['peak_rss_mb']:.0f} | "
                     f"{r['log10_regret'][0]:.3f} → {r['log10_regret'][-1]:.3f} |")
    return "\n".join(lines) + "\n"


#: Rounds over which ``progress_table`` reports the CPU per round at the ``N`` compared.
LAST_ROUNDS = 10


def read_progress(path: str | Path) -> list[dict[str, Any]]:
    """The rounds of a ``.progress`` file (its JSON lines; warnings in between skipped)."""
    return [json.loads(line) for line in Path(path).read_text().splitlines()
            if line.startswith("{")]


def progress_table(paths: list[str], design_regret: float) -> tuple[str, dict[str, Any]]:
    """Runs read from ``<output>.<method>.progress`` files, finished or not, side by side
    at the ``N`` that all of them reached: log10 regret, mean CPU per round up to it, and
    mean CPU per round over the ``LAST_ROUNDS`` rounds that end there (the cost at that
    ``N``)."""
    runs = {Path(path).name.removesuffix(".progress"): read_progress(path) for path in paths}
    common = min(r[-1]["n"] for r in runs.values())
    marks = sorted({n for n in (1010, 1050, 1100, 1200, 1500, 2000, common)
                    if n <= common and all(any(x["n"] == n for x in r) for r in runs.values())})
    head = " | ".join(f"regret at N = {n}" for n in marks)
    lines = [f"| run | rounds run | N reached | {head}"
             + f" | fit CPU s/round to N = {common} | acq CPU s/round | total s/round"
             + f" | last {LAST_ROUNDS} rounds s/round |",
             "|---|---:|---:|" + "---:|" * (len(marks) + 4)]
    table = {}
    for method, r in runs.items():
        upto = [x for x in r if x["n"] <= common]
        fit = sum(x["fit_cpu_s"] for x in upto) / len(upto)
        acq = sum(x["acq_cpu_s"] for x in upto) / len(upto)
        last = sum(x["fit_cpu_s"] + x["acq_cpu_s"] for x in upto[-LAST_ROUNDS:]) / len(
            upto[-LAST_ROUNDS:])
        regret = {n: next(x["log10_regret"] for x in r if x["n"] == n) for n in marks}
        table[method] = {"rounds": len(r), "n_reached": r[-1]["n"], "regret": regret,
                         "fit_cpu_s": fit, "acq_cpu_s": acq, "rounds_compared": len(upto),
                         "last_rounds_cpu_s": last}
        lines.append(f"| {method} | {len(r)} | {r[-1]['n']} | "
                     + " | ".join(f"{regret[n]:.3f}" for n in marks)
                     + f" | {fit:.1f} | {acq:.1f} | {fit + acq:.1f} | {last:.1f} |")
    lines += ["", f"log10 regret of the design: {design_regret:.3f}."]
    cpus = {method: sorted({x["cpu"] for x in r if "cpu" in x}) for method, r in runs.items()}
    if any(cpus.values()):  # rounds before session 39 did not record it
        lines += ["", "CPUs the rounds ran on: " + "; ".join(
            f"{method}: {', '.join(c) or 'not recorded'}" for method, c in cpus.items()) + "."]
    return "\n".join(lines) + "\n", {"common_n": common, "design_regret": design_regret,
                                      "methods": table, "cpus": cpus}


def design_regret(seed: int, n_init: int, problem_name: str = DEFAULT_PROBLEM) -> float:
    """log10 regret of the best point of the seed's ``n_init``-point Sobol design."""
    problem = PROBLEMS[problem_name]()
    X = sobol_design(problem, n_init, seed)
    return math.log10(float(problem.optimal_value) - float(problem(X).max()))


def seed_table(stems: list[str], n_init: int,
               at: int | None = None) -> tuple[str, dict[str, Any]]:
    """Runs of several seeds (``<stem>.json`` for the seed and problem,
    ``<stem>.<method>.progress`` for the rounds, finished or not): per seed, each method's
    log10 regret at the ``N`` every method of that seed reached (or at ``at``, at most
    that) and its mean CPU per round up to there; then the median over seeds and, for each
    method, the seeds where it is at most ``gp``'s. A row names its problem where it is
    not the benchmark's Ackley-20."""
    per_seed = []
    for stem in stems:
        meta = json.loads(Path(stem).with_suffix(".json").read_text())["meta"]
        seed, problem_name = meta["seed"], meta.get("problem", DEFAULT_PROBLEM)
        runs = {}
        for method in METHODS:
            path = Path(f"{stem}.{method}.progress")
            if path.exists() and (rows := read_progress(path)):
                runs[method] = rows
        common = min(r[-1]["n"] for r in runs.values())
        if at is not None:
            if at > common:
                raise ValueError(f"--at {at}: the runs of {stem} reached only N = {common}.")
            common = at
        cells = {}
        for method, rows in runs.items():
            upto = [x for x in rows if x["n"] <= common]
            if not upto or upto[-1]["n"] != common:
                ends = ", ".join(str(x["n"]) for x in rows[:3])
                raise ValueError(f"--at {common}: no round of {stem}'s {method} run ends "
                                 f"there (its rounds end at N = {ends}, ...).")
            cells[method] = {
                "regret": upto[-1]["log10_regret"],
                "cpu_s_per_round": sum(x["fit_cpu_s"] + x["acq_cpu_s"] for x in upto)
                / len(upto)}
        per_seed.append({"seed": seed, "problem": problem_name, "n": common,
                         "design": design_regret(seed, n_init, problem_name),
                         "methods": cells})
    methods = [m for m in METHODS if any(m in s["methods"] for s in per_seed)]
    first = ("seed" if all(s["problem"] == DEFAULT_PROBLEM for s in per_seed)
             else "problem, seed")
    lines = [f"| {first} | N | design | "
             + " | ".join(f"{m} regret (CPU s/round)" for m in methods)
             + " |", "|---:|---:|---:|" + "---:|" * len(methods)]
    for s in per_seed:
        label = str(s["seed"]) if first == "seed" else f"{s['problem']}, {s['seed']}"
        lines.append(f"| {label} | {s['n']} | {s['design']:.3f} | " + " | ".join(
            f"{s['methods'][m]['regret']:.3f} ({s['methods'][m]['cpu_s_per_round']:.1f})"
            if m in s["methods"] else "" for m in methods) + " |")
    summary: dict[str, Any] = {}
    for m in methods:
        vals = [s["methods"][m]["regret"] for s in per_seed if m in s["methods"]]
        paired = [s for s in per_seed if m in s["methods"] and "gp" in s["methods"]]
        summary[m] = {"median_regret": statistics.median(vals), "seeds": len(vals),
                      "at_most_gp": sum(s["methods"][m]["regret"] <= s["methods"]["gp"]["regret"]
                                        for s in paired), "paired_with_gp": len(paired)}
    lines.append("| median | | " + f"{statistics.median(s['design'] for s in per_seed):.3f} | "
                 + " | ".join(f"{summary[m]['median_regret']:.3f}" for m in methods) + " |")
    lines += ["", "Runs where the method's regret is at most the exact GP's: " + ", ".join(
        f"{m} {summary[m]['at_most_gp']} of {summary[m]['paired_with_gp']}"
        for m in methods if m != "gp") + "."]
    problems = list(dict.fromkeys(s["problem"] for s in per_seed))
    if len(problems) > 1:
        lines += ["", *problem_medians(per_seed, problems, methods)]
    return "\n".join(lines) + "\n", {"stems": stems, "seeds": per_seed, "summary": summary}


def problem_medians(per_seed: list[dict[str, Any]], problems: list[str],
                    methods: list[str]) -> list[str]:
    """Markdown lines: each problem's median regret per method over its seeds, then the
    number of problems where each method's median is at most ``gp``'s."""
    lines = ["| problem | seeds | " + " | ".join(f"{m} median" for m in methods) + " |",
             "|---|---:|" + "---:|" * len(methods)]
    at_most_gp = dict.fromkeys(methods, 0)
    for problem in problems:
        rows = [s for s in per_seed if s["problem"] == problem]
        med = {m: statistics.median(s["methods"][m]["regret"] for s in rows
                                    if m in s["methods"])
               for m in methods if any(m in s["methods"] for s in rows)}
        for m in med:
            at_most_gp[m] += "gp" in med and med[m] <= med["gp"]
        lines.append(f"| {problem} | {len(rows)} | " + " | ".join(
            f"{med[m]:.3f}" if m in med else "" for m in methods) + " |")
    if "gp" in methods:
        lines += ["", "Problems where the method's median is at most the exact GP's: " + ", ".join(
            f"{m} {at_most_gp[m]} of {len(problems)}" for m in methods if m != "gp") + "."]
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n-init", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--q", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--problem", choices=list(PROBLEMS), default=DEFAULT_PROBLEM,
                        help="the maximised 20-input function (default: the benchmark's "
                        "Ackley-20; the others for checks on development seeds)")
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    parser.add_argument("--output", default=None,
                        help="stem of the result files (default benchmarks/results/large_n; "
                        "with --progress: none, the table is only printed)")
    parser.add_argument("--combine", nargs="+", default=None, metavar="JSON",
                        help="tabulate the runs of these result files together (same "
                             "protocol) into --output, running nothing")
    parser.add_argument("--progress", nargs="+", default=None, metavar="FILE",
                        help="tabulate <output>.<method>.progress files (runs finished or "
                        "not) at the N all of them reached")
    parser.add_argument("--seed-table", nargs="+", default=None, metavar="STEM",
                        help="one run per seed (the --output stems of runs with --seed): "
                        "each method's regret at the N all its methods reached, per seed, "
                        "with medians and paired wins; running nothing")
    parser.add_argument("--save-data", action="store_true",
                        help="also write each method's run so far (X, Y, CPU, regret) to "
                        "<output>.<method>.pt after every round")
    parser.add_argument("--resume", action="store_true",
                        help="continue the runs saved by --save-data to --rounds rounds")
    parser.add_argument("--replay", default=None, metavar="DATA",
                        help="time one round of each method on the first --at rows of the "
                        "trajectory saved in DATA (by --save-data), all on the same data")
    parser.add_argument("--at", type=int, nargs="+", default=None,
                        help="rows of --replay's data (several: one round at each); with "
                        "--seed-table, the N at which the runs are compared")
    parser.add_argument("--_one", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--progress-file", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    if args.seed_table:
        at = None if args.at is None else args.at[0]
        text, table = seed_table(args.seed_table, args.n_init, at)
        print(text)
        if args.output is not None:
            out = Path(args.output)
            out.with_suffix(".json").write_text(json.dumps(table, indent=1))
            out.with_suffix(".md").write_text(text)
        return
    if args.progress:
        text, table = progress_table(args.progress, design_regret(args.seed, args.n_init,
                                                                  args.problem))
        print(text)
        if args.output is not None:  # never over the committed results unless asked
            out = Path(args.output)
            out.with_suffix(".json").write_text(json.dumps(
                {"progress": args.progress, **table}, indent=1))
            out.with_suffix(".md").write_text(text)
        return
    if args.output is None:
        args.output = "benchmarks/results/large_n"
    if args.combine:
        parts = [json.loads(Path(f).read_text()) for f in args.combine]
        meta = {**parts[0]["meta"], "command": " + ".join(p["meta"]["command"] for p in parts)}
        write(Path(args.output), meta, [r for p in parts for r in p["runs"]])
        return
    if args._one and args.replay:
        for n in args.at:
            print(json.dumps(replay_round(args._one, args.replay, n, args.q, args.seed,
                                          args.problem)), flush=True)
        return
    if args.replay:
        replay_all(args)
        return
    if args._one:
        print(json.dumps(run(args._one, args.n_init, args.rounds, args.q, args.seed,
                             args.output if args.save_data or args.resume else None,
                             args.resume, args.problem, args.progress_file)))
        return
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip()
    rows = []
    for method in args.methods:
        cmd = [sys.executable, __file__, "--_one", method, "--n-init", str(args.n_init),
               "--rounds", str(args.rounds), "--q", str(args.q), "--seed", str(args.seed),
               "--problem", args.problem, "--output", args.output,
               *(["--save-data"] if args.save_data else []),
               *(["--resume"] if args.resume else [])]
        progress = Path(args.output).with_suffix(f".{method}.progress")
        progress.parent.mkdir(parents=True, exist_ok=True)
        if not args.resume:
            progress.write_text("")
        # one JSON line per round, appended by the run as it ends; warnings in between
        cmd += ["--progress-file", str(progress)]
        with progress.open("a") as log:
            res = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=log, text=True,
                                 check=False)
        if res.returncode != 0:
            print(progress.read_text()[-3000:], file=sys.stderr)
            continue
        rows.append(json.loads(res.stdout.strip().splitlines()[-1]))
        print(json.dumps(rows[-1]), flush=True)
    if not rows:  # every run stopped early (killed to be resumed): keep the file as it is
        print(f"no run finished; {args.output}.json left as it was", file=sys.stderr)
        return
    earlier = Path(args.output).with_suffix(".json")
    if earlier.exists():  # the runs of the methods not run now stay in the file
        done = {row["method"] for row in rows}
        rows = [row for row in json.loads(earlier.read_text()).get("runs", [])
                if row.get("method") not in done] + rows
    meta = {"command": "benchmarks/large_n.py " + " ".join(sys.argv[1:]), "commit": commit,
            "problem": args.problem, "n_init": args.n_init, "rounds": args.rounds,
            "q": args.q, "seed": args.seed, "cpu": cpu_description(),
            "packages": package_versions()}
    write(Path(args.output), meta, rows)


def replay_all(args: argparse.Namespace) -> None:
    """``--replay``: each method's rounds in its own process; a table per state of CPU,
    memory and what the round's batch achieves."""
    if args.at is None:
        raise ValueError("--replay needs --at (the number of rows to fit on)")
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip()
    rows = []
    for method in args.methods:
        cmd = [sys.executable, __file__, "--_one", method, "--replay", args.replay,
               "--at", *map(str, args.at), "--q", str(args.q), "--seed", str(args.seed),
               "--problem", args.problem]
        res = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if res.returncode != 0:
            print(res.stderr[-3000:], file=sys.stderr)
            continue
        rows += [json.loads(line) for line in res.stdout.splitlines() if line.startswith("{")]
        print("\n".join(json.dumps(r) for r in rows if r["method"] == method), flush=True)
    text = replay_markdown(rows, f"benchmarks/large_n.py {' '.join(sys.argv[1:])}", commit)
    print(text)
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(
        {"command": "benchmarks/large_n.py " + " ".join(sys.argv[1:]), "commit": commit,
         "rows": rows}, indent=1))
    out.with_suffix(".md").write_text(text)


def replay_markdown(rows: list[dict[str, Any]], command: str, commit: str) -> str:
    """One line per (state, method) of ``--replay`` rows; CPU as a ratio to the GP's round
    at the same state."""
    lines = [f"# Rounds replayed on a saved trajectory: `{rows[0]['data']}`" if rows else "",
             "", f"`{command}` at commit {commit}; {torch.get_num_threads()} thread(s).", "",
             "| N | method | fit CPU s | acq CPU s | round CPU s | ratio to GP | peak RSS MB "
             "| incumbent | posterior at incumbent | best of the batch "
             "| test NLL uniform (mean abs z) | test NLL near incumbent (mean abs z) |",
             "|---:|---|---:|---:|---:|---:|---:|---:|---|---:|---|---|"]
    for r in sorted(rows, key=lambda r: (r["n"], METHODS.index(r["method"]))):
        gp = next((g for g in rows if g["method"] == "gp" and g["n"] == r["n"]), None)
        ratio = "" if gp is None else f"{r['round_cpu_s'] / gp['round_cpu_s']:.2f}"
        view = (f"{r['incumbent_mean']:.2f} ± {r['incumbent_sd']:.2f}"
                if "incumbent_mean" in r else "")
        lines.append(f"| {r['n']} | {r['method']} | {r['fit_cpu_s']:.1f} | "
                     f"{r['acq_cpu_s']:.1f} | {r['round_cpu_s']:.1f} | {ratio} | "
                     f"{r['peak_rss_mb']:.0f} | {r.get('incumbent', float('nan')):.2f} | "
                     f"{view} | {r.get('batch_best', float('nan')):.2f} | "
                     f"{_nll_cell(r, 'uniform')} | {_nll_cell(r, 'near')} |")
    return "\n".join(lines) + "\n"


def _nll_cell(row: dict[str, Any], where: str) -> str:
    """``NLL (mean |z|)`` of ``predictive_calibration`` (empty for rows written before it)."""
    if f"{where}_nll" not in row:
        return ""
    return f"{row[f'{where}_nll']:.2f} ({row[f'{where}_abs_z']:.2f})"


def write(out: Path, meta: dict[str, Any], rows: list[dict[str, Any]]) -> None:
    """Print the table of ``rows`` and write it (``out.md``) and the runs (``out.json``)."""
    text = markdown(rows, meta)
    print(text)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps({"meta": meta, "runs": rows}, indent=1))
    out.with_suffix(".md").write_text(text)


if __name__ == "__main__":
    main()
