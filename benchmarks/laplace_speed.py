"""Speed of the ``laplace`` package next to laplace-torch 0.3, measured in one run.

One command::

    .venv/bin/python benchmarks/laplace_speed.py [--quick] [--repeats R] [--out benchmarks/results]

The first run creates ``.cache/laplace-torch-0.3/venv`` (``benchmarks/laplace_torch_env.py``:
``laplace-torch==0.3`` with its own pins, torch pinned to this project's version); later
runs reuse it. ``--no-laplace-torch`` times this package alone.

Two problems, float64 on the CPU with ``torch.set_num_threads(2)``:

* ``regression``: a 5→50→50→1 tanh MLP (2,901 weights) on N=1000 random inputs with
  targets ``sin(x₀) + cos(x₁)·x₂ + 0.5·x₃x₄ + noise``, trained for 300 full-batch Adam
  steps;
* ``classification``: a 64→100→100→10 ReLU MLP (17,610 weights) on the 1,797
  scikit-learn digits (pixels / 16), trained for 200 full-batch Adam steps.

Each problem is built and trained once, in this process, and saved (data, weights) to a
temporary file that every worker loads, so both packages see the same network. Both use
a ``DataLoader`` with batch size 250 (``--batch-size``). For each problem and case
(``full``, ``kron``, ``diag`` over all weights; ``last_layer``: the full last-layer
posterior) the script times ``fit``, one ``log_marginal_likelihood`` at a new prior
precision, 50 steps of marglik prior tuning (scalar prior, after a fresh ``fit``), and
the predictive on 200 test points (with and without a cached factorization), each
through the public API (``Laplace(...)`` with its default backend) under both
interpreters. Repetitions are interleaved: repetition ``r`` runs the case in this
package's interpreter and then in laplace-torch's (the order alternates with ``r``),
each in a fresh subprocess that makes one warm-up call per operation and then times
one (``--no-warmup``: times the first call); the tables give the median over
repetitions, the ratio laplace-torch / ``laplace`` and the 1-minute load average at the
end of each subprocess. The baseline of one pass
of per-sample Jacobians (``la.backend.jacobians``) over the same loader batches, and
for regression ``Σₙ JₙᵀJₙ`` formed directly, is timed for this package only.

Each subprocess also reports its peak resident memory (``ru_maxrss``) above the level
reached after loading the data and the model. The dense posterior of the
classification problem (17,610² float64 = 2.5 GB) is only run with ``--digits-full``,
once, without warm-up, for this package only.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

REPO_ROOT = Path(__file__).resolve().parents[1]

THREADS = 2
CASES = ("full", "kron", "diag", "last_layer")
IMPLS = ("laplace", "laplace-torch")
PROBLEMS = ("regression", "classification")
N_MARGLIK_STEPS = 50
N_TEST = 200
SIGMA_NOISE = 0.1
PRIOR_PRECISION = 1.0

OPS = ("fit", "log_marglik", "marglik_50", "predict", "predict_cached")
OP_LABELS = {
    "fit": "fit",
    "log_marglik": "log_marglik",
    "marglik_50": "marglik ×50",
    "predict": "predict (cold)",
    "predict_cached": "predict (cached)",
}


# --------------------------------------------------------------------------- problems
ACTIVATIONS = {"tanh": nn.Tanh, "relu": nn.ReLU}


@dataclass
class Problem:
    """A trained MLP, its training data and test inputs.

    ``X (N, D)``, ``y (N, 1)`` (regression) or ``(N,)`` class labels, ``X_test (200, D)``.
    """

    name: str
    likelihood: str
    sizes: list[int]
    activation: str
    model: nn.Module
    X: Tensor
    y: Tensor
    X_test: Tensor
    batch_size: int

    @property
    def n_params(self) -> int:
        return sum(p.numel() for p in self.model.parameters())

    @property
    def n_train(self) -> int:
        return len(self.X)

    @property
    def loader(self) -> DataLoader:
        return DataLoader(TensorDataset(self.X, self.y), batch_size=self.batch_size)


def mlp(sizes: list[int], activation: str) -> nn.Sequential:
    """A fully connected network with ``activation`` between the linear layers."""
    layers: list[nn.Module] = []
    for i, (d_in, d_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(d_in, d_out))
        if i < len(sizes) - 2:
            layers.append(ACTIVATIONS[activation]())
    return nn.Sequential(*layers)


def train(model: nn.Module, X: Tensor, y: Tensor, loss_fn: nn.Module, steps: int) -> None:
    """Full-batch Adam (learning rate 1e-2) with a small weight decay."""
    opt = torch.optim.Adam(model.parameters(), lr=1e-2, weight_decay=1e-4)
    for _ in range(steps):
        opt.zero_grad()
        loss_fn(model(X), y).backward()
        opt.step()
    model.eval()


def regression_problem(quick: bool, batch_size: int) -> Problem:
    """5→50→50→1 tanh MLP on a smooth function of random inputs."""
    n = 200 if quick else 1000
    X = torch.rand(n + N_TEST, 5) * 4 - 2
    f = torch.sin(X[:, 0]) + torch.cos(X[:, 1]) * X[:, 2] + 0.5 * X[:, 3] * X[:, 4]
    y = (f + SIGMA_NOISE * torch.randn(n + N_TEST)).unsqueeze(-1)
    sizes = [5, 50, 50, 1]
    model = mlp(sizes, "tanh")
    train(model, X[:n], y[:n], nn.MSELoss(), 50 if quick else 300)
    return Problem("regression", "regression", sizes, "tanh", model, X[:n], y[:n], X[n:],
                   batch_size)


def classification_problem(quick: bool, batch_size: int) -> Problem:
    """64→100→100→10 ReLU MLP on the scikit-learn digits (64→20→20→10 with ``quick``)."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    X = torch.as_tensor(digits.data, dtype=torch.get_default_dtype()) / 16
    y = torch.as_tensor(digits.target, dtype=torch.long)
    if quick:
        X, y = X[:300], y[:300]
    width = 20 if quick else 100
    sizes = [64, width, width, 10]
    model = mlp(sizes, "relu")
    train(model, X, y, nn.CrossEntropyLoss(), 50 if quick else 200)
    X_test = X[torch.randperm(len(X))[:N_TEST]]
    return Problem("classification", "classification", sizes, "relu", model, X, y, X_test,
                   batch_size)


def build_problem(name: str, quick: bool, batch_size: int) -> Problem:
    """The named problem, reproducibly (seed 0, float64)."""
    torch.manual_seed(0)
    torch.set_default_dtype(torch.float64)
    if name == "regression":
        return regression_problem(quick, batch_size)
    return classification_problem(quick, batch_size)


def save_problem(problem: Problem, path: Path) -> None:
    """Data, architecture and trained weights, for ``load_problem`` in any interpreter."""
    fields = {k: getattr(problem, k) for k in ("name", "likelihood", "sizes", "activation",
                                                "X", "y", "X_test", "batch_size")}
    torch.save(fields | {"state_dict": problem.model.state_dict()}, path)


def load_problem(path: Path) -> Problem:
    """The problem saved by ``save_problem``."""
    fields = torch.load(path, weights_only=True)
    model = mlp(fields["sizes"], fields["activation"])
    model.load_state_dict(fields.pop("state_dict"))
    return Problem(model=model.eval(), **fields)


# --------------------------------------------------------------------------- timing
def now() -> float:
    return time.perf_counter()


def time_call(fn: Callable[[], Any], setup: Callable[[], Any] | None = None) -> float:
    """Wall time of ``fn()`` in seconds; ``setup()`` runs first, untimed."""
    if setup is not None:
        setup()
    start = now()
    fn()
    return now() - start


def measure(
    fn: Callable[[], Any], repeats: int, warmup: bool = True,
    setup: Callable[[], Any] | None = None,
) -> dict[str, Any]:
    """Median (and raw times) of ``repeats`` timed calls after an optional warm-up."""
    if warmup:
        time_call(fn, setup)
    times = [time_call(fn, setup) for _ in range(repeats)]
    return {"median_s": statistics.median(times), "times_s": times}


def max_rss_mb() -> float:
    """Peak resident set size of this process so far (MB; ``ru_maxrss`` is in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def make_laplace(problem: Problem, case: str) -> Any:
    """The Laplace approximation of ``problem`` for ``case`` (a structure or last_layer)."""
    from laplace import Laplace  # this interpreter's package (see ``import_laplace``)

    kwargs: dict[str, Any] = {"prior_precision": PRIOR_PRECISION}
    if problem.likelihood == "regression":
        kwargs["sigma_noise"] = SIGMA_NOISE
    if case == "last_layer":
        kwargs |= {"subset_of_weights": "last_layer", "hessian_structure": "full"}
    else:
        kwargs |= {"subset_of_weights": "all", "hessian_structure": case}
    return Laplace(problem.model, problem.likelihood, **kwargs)


def predict(la: Any, problem: Problem, X: Tensor) -> Any:
    """The predictive: ``(f_mu, f_var)`` for regression, probit probabilities otherwise."""
    if problem.likelihood == "regression":
        return la(X)
    return la(X, link_approx="probit")


# --------------------------------------------------------------------------- workers
def run_jacobians(problem: Problem, repeats: int) -> dict[str, Any]:
    """Baseline: one pass of ``la.backend.jacobians`` over the loader (and ``Σ JᵀJ``)."""
    la = make_laplace(problem, "diag")  # the backend does not depend on the structure
    batches = [X for X, _ in problem.loader]

    def jacobian_pass() -> None:
        for X in batches:
            la.backend.jacobians(X)

    base = max_rss_mb()
    result: dict[str, Any] = {"jacobians": measure(jacobian_pass, repeats)}
    result["peak_rss_mb"] = max_rss_mb() - base
    if problem.likelihood == "regression":
        rows = torch.cat([la.backend.jacobians(X)[0] for X in batches])
        rows = rows.reshape(-1, rows.shape[-1])
        result["sum_JtJ"] = measure(lambda: rows.T @ rows, repeats)
    return result


def run_case(problem: Problem, case: str, repeats: int, warmup: bool) -> dict[str, Any]:
    """Time ``fit``, one log marginal likelihood, marglik tuning and the predictive."""
    base = max_rss_mb()
    la = make_laplace(problem, case)
    loader = problem.loader
    prior0 = torch.tensor([PRIOR_PRECISION])
    result: dict[str, Any] = {}

    # The first fit is the warm-up; alone after setup, it also gives fit's peak memory.
    first = time_call(lambda: la.fit(loader))
    result["peak_rss_fit_mb"] = max_rss_mb() - base
    if warmup:
        result["fit"] = measure(lambda: la.fit(loader), repeats, warmup=False)
    else:
        result["fit"] = {"median_s": first, "times_s": [first]}

    # A new prior precision drops every cached factorization.
    result["log_marglik"] = measure(
        lambda: la.log_marginal_likelihood(prior_precision=prior0.clone()), repeats, warmup
    )
    result["log_marglik_value"] = float(la.log_marginal_likelihood(prior0.clone()))

    # Refit (untimed) before each tuning run: tuning may cache per-fit decompositions
    # (without warm-up the single run already starts from a fresh fit).
    def tune() -> None:
        la.optimize_prior_precision(
            method="marglik", n_steps=N_MARGLIK_STEPS, prior_structure="scalar"
        )

    refit = (lambda: la.fit(loader)) if warmup else None
    result["marglik_50"] = measure(tune, repeats, warmup, setup=refit)
    result["tuned_prior_precision"] = la.prior_precision.reshape(-1).tolist()

    def invalidate() -> None:
        la.prior_precision = la.prior_precision.clone()

    X_test = problem.X_test
    result["predict"] = measure(lambda: predict(la, problem, X_test), repeats, warmup,
                                setup=invalidate)
    result["predict_cached"] = measure(lambda: predict(la, problem, X_test), repeats)
    result["peak_rss_mb"] = max_rss_mb() - base
    return result


def import_laplace(impl: str) -> str:
    """Make ``import laplace`` find ``impl``'s package; returns its ``__file__``.

    This script runs as ``python benchmarks/laplace_speed.py``, so ``sys.path[0]`` is
    ``benchmarks/``: ``laplace`` is this repository's only once its root is added, and
    otherwise the one installed in the interpreter (laplace-torch's venv).
    """
    root = str(REPO_ROOT)
    if impl == "laplace" and root not in sys.path:
        sys.path.insert(0, root)
    if impl == "laplace-torch":
        sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != REPO_ROOT]
    import laplace

    in_repo = Path(laplace.__file__).resolve().is_relative_to(REPO_ROOT / "laplace")
    if in_repo != (impl == "laplace"):
        raise RuntimeError(f"{impl} run imported laplace from {laplace.__file__}")
    return laplace.__file__


def worker(spec: dict[str, Any]) -> dict[str, Any]:
    """Run one (problem, job) pair in this process and return its measurements."""
    torch.set_num_threads(THREADS)
    torch.set_default_dtype(torch.float64)
    source = import_laplace(spec["impl"])
    problem = load_problem(Path(spec["problem_file"]))
    info = {"n_train": problem.n_train, "n_params": problem.n_params,
            "n_batches": len(problem.loader), "laplace_file": source,
            "torch": torch.__version__, "load_average_start": os.getloadavg()[0]}
    if spec["job"] == "jacobians":
        result = run_jacobians(problem, spec["repeats"])
    else:
        result = run_case(problem, spec["job"], spec["repeats"], spec["warmup"])
    return info | result | {"load_average_end": os.getloadavg()[0]}


def run_in_subprocess(spec: dict[str, Any], python: Path | str) -> dict[str, Any]:
    """Run ``worker(spec)`` in a fresh ``python`` (separate peak-memory accounting)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "result.json"
        cmd = [str(python), str(Path(__file__).resolve()), "--worker", json.dumps(spec),
               "--result", str(path)]
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp)
        if proc.returncode != 0:
            return {"error": proc.stderr.strip().splitlines()[-1] if proc.stderr else
                    f"exit code {proc.returncode}"}
        return json.loads(path.read_text())


# --------------------------------------------------------------------------- report
def machine_info() -> dict[str, Any]:
    """Torch version, threads and CPU of this machine."""
    if str(REPO_ROOT) not in sys.path:  # run as a script: the repository's packages
        sys.path.insert(0, str(REPO_ROOT))
    from benchmarks.output import cpu_model

    cpu = cpu_model()
    return {
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "torch_threads": THREADS,
        "dtype": "float64",
        "device": "cpu",
        "load_average_at_start": list(os.getloadavg()),
    }


def case_loads(results: dict[str, Any]) -> list[float]:
    """Every 1-minute load average recorded at the end of a subprocess."""
    loads = []
    for name in PROBLEMS:
        entry = results.get(name, {})
        loads += entry.get("baseline", {}).get("loads", [])
        for per_impl in entry.get("cases", {}).values():
            for merged in per_impl.values():
                loads += merged.get("loads", [])
    return loads


def contended(results: dict[str, Any]) -> bool:
    """Whether other work competed for the cores during the run.

    Before the run the 1-minute load must be at most 1; while it runs, this benchmark
    itself adds about ``THREADS``, so any case ending with a load above ``THREADS + 1``
    counts as contended. With two threads per process on oversubscribed cores, each
    parallel torch op can wait a scheduler time slice for its second thread: small-op
    code paths then run up to ~100× slower, and the timings say little about the code.
    """
    info = results["machine"]
    loads = [info.get("load_average_at_end", [0])[0], *case_loads(results)]
    return info["load_average_at_start"][0] > 1 or max(loads) > THREADS + 1


def median(entry: dict[str, Any], op: str) -> float | None:
    value = entry.get(op)
    return value["median_s"] if isinstance(value, dict) else None


def ratio(results: dict[str, Any], name: str, case: str, op: str) -> float | None:
    """laplace-torch's median time over this package's for one operation."""
    per_impl = results[name]["cases"].get(case, {})
    ours = median(per_impl.get("laplace", {}), op)
    theirs = median(per_impl.get("laplace-torch", {}), op)
    return theirs / ours if ours and theirs else None


TARGETS = (  # (key, problem, case, operation)
    ("full_fit_regression", "regression", "full", "fit"),
    ("diag_fit_classification", "classification", "diag", "fit"),
    ("marglik_regression_full", "regression", "full", "marglik_50"),
)


def targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    """The three pass/fail targets, with laplace-torch 0.3 measured in the same run."""
    reg = results["regression"]
    jac = median(reg["baseline"], "jacobians")
    jtj = median(reg["baseline"], "sum_JtJ")
    rows = []
    for key, name, case, op in TARGETS:
        per_impl = results[name]["cases"].get(case, {})
        seconds = median(per_impl.get("laplace", {}), op)
        if seconds is None:
            continue
        row = {"key": key, "seconds": seconds, "value": seconds,
               "laplace_torch_0_3_s": median(per_impl.get("laplace-torch", {}), op),
               "speedup": ratio(results, name, case, op)}
        if key == "full_fit_regression":
            if None in (jac, jtj):
                continue
            row |= {"target": "full fit (regression) ≤ 2× (Jacobians + Σ JᵀJ)",
                    "value": seconds / (jac + jtj), "limit": "≤ 2×"}
            row["passed"] = row["value"] <= 2
        elif key == "diag_fit_classification":
            row |= {"target": "diag fit (classification) < 0.5 s", "limit": "< 0.5 s",
                    "passed": seconds < 0.5}
        else:
            row |= {"target": "50 marglik steps (regression, full) < 2 s", "limit": "< 2 s",
                    "passed": seconds < 2}
        rows.append(row)
    return rows


def fmt(seconds: float | None) -> str:
    return "–" if seconds is None else f"{seconds:.4f}"


def header_lines(results: dict[str, Any]) -> list[str]:
    """Title, setting, laplace-torch environment and load."""
    info, lt = results["machine"], results.get("laplace_torch")
    loads = case_loads(results)
    lines = [
        "# `laplace` speed benchmark, side by side with laplace-torch 0.3",
        "",
        f"{info['cpu']} ({info['cpu_count']} CPUs), torch {info['torch']}, "
        f"{info['torch_threads']} threads, float64 on the CPU; batch size "
        f"{results['batch_size']}; {results['repeats']} interleaved repetition(s), each a "
        f"fresh subprocess per package "
        f"{'with one warm-up call per operation' if results['warmup'] else 'timing first calls'}"
        "; medians"
        f"{' (quick mode: small sizes)' if results['quick'] else ''}. Load average "
        f"(1 min) {info['load_average_at_start'][0]:.1f} at the start, "
        f"{info['load_average_at_end'][0]:.1f} at the end, "
        f"{min(loads, default=0):.1f}–{max(loads, default=0):.1f} at the end of the "
        "subprocesses (2 cores, shared with other work).",
        "",
    ]
    if lt:
        versions = ", ".join(f"{k} {v}" for k, v in lt["versions"].items())
        lines += [f"laplace-torch environment (`{lt['python']}`): {versions}.", ""]
    if info["contended"]:
        lines += [
            "**Warning: other work competed for the cores during this run (see "
            "`contended` in the JSON); the timings are inflated and the ratios uncertain. "
            "Rerun on an idle machine.**",
            "",
        ]
    return lines + [
        "Seconds. *log_marglik*: one call at a new prior precision (no cached "
        "factorization); *marglik ×50*: `optimize_prior_precision(method='marglik', "
        "n_steps=50, prior_structure='scalar')` after a fresh fit; *predict*: 200 test "
        "points, *cold* after a hyperparameter change (includes the factorization), "
        "*cached* repeated. *last_layer*: `subset_of_weights='last_layer'`, "
        "`hessian_structure='full'`. Ratio: laplace-torch / `laplace` (above 1: `laplace` "
        "is faster). Each package uses its default backend. Peak RSS: `ru_maxrss` growth "
        "of the subprocess above the level after loading data and model.",
        "",
    ]


def problem_lines(name: str, entry: dict[str, Any], results: dict[str, Any]) -> list[str]:
    """The side-by-side table of one problem and its per-case details."""
    base = entry["baseline"]
    jtj = median(base, "sum_JtJ")
    lines = [
        f"## {name}: {entry['description']}",
        "",
        f"N = {base.get('n_train')}, P = {base.get('n_params')}, "
        f"{base.get('n_batches')} batches. `laplace` Jacobian pass: "
        f"{fmt(median(base, 'jacobians'))} s"
        + (f"; Σ JᵀJ from those Jacobians: {jtj:.4f} s" if jtj is not None else "") + ".",
        "",
        "| case | operation | `laplace` (s) | laplace-torch 0.3 (s) | ratio |",
        "|---|---|---:|---:|---:|",
    ]
    for case, per_impl in entry["cases"].items():
        ours, theirs = per_impl.get("laplace", {}), per_impl.get("laplace-torch", {})
        for impl, merged in per_impl.items():
            for error in merged.get("errors", []):
                lines.append(f"| {case} | {impl} failed: {error} | | | |")
        for op in OPS:
            r = ratio(results, name, case, op)
            lines.append(f"| {case} | {OP_LABELS[op]} | {fmt(median(ours, op))} | "
                         f"{fmt(median(theirs, op))} | {'–' if r is None else f'{r:.1f}×'} |")
    lines += ["", "| case | package | log marglik at δ=1 | tuned δ | load at end | "
              "peak RSS fit / all (MB) |", "|---|---|---:|---:|---|---:|"]
    for case, per_impl in entry["cases"].items():
        for impl, m in per_impl.items():
            if "log_marglik_value" not in m:
                continue
            loads = ", ".join(f"{x:.1f}" for x in m["loads"])
            lines.append(f"| {case} | {impl} | {m['log_marglik_value']:.6g} | "
                         f"{m['tuned_prior_precision'][0]:.6g} | {loads} | "
                         f"{m['peak_rss_fit_mb']:.0f} / {m['peak_rss_mb']:.0f} |")
    return lines + [""]


def markdown(results: dict[str, Any]) -> str:
    """The results as Markdown tables."""
    lines = header_lines(results)
    for name in PROBLEMS:
        lines += problem_lines(name, results[name], results)
    lines += [
        "## Targets",
        "",
        "| target | measured | limit | pass | laplace-torch 0.3 | ratio |",
        "|---|---:|---|---|---:|---:|",
    ]
    for row in results["targets"]:
        measured = (f"{row['value']:.2f}× ({row['seconds']:.3f} s)"
                    if row["key"] == "full_fit_regression" else f"{row['seconds']:.3f} s")
        theirs, speedup = row["laplace_torch_0_3_s"], row["speedup"]
        lines.append(
            f"| {row['target']} | {measured} | {row['limit']} | "
            f"{'PASS' if row['passed'] else 'FAIL'} | "
            f"{'–' if theirs is None else f'{theirs:.2f} s'} | "
            f"{'–' if speedup is None else f'{speedup:.0f}×'} |"
        )
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- main
DESCRIPTIONS = {
    "regression": "5→50→50→1 tanh MLP, random inputs",
    "classification": "64→100→100→10 ReLU MLP, scikit-learn digits",
}
MERGED_OPS = (*OPS, "jacobians", "sum_JtJ")


def merge(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """One package's repetitions of a case: every time, their median, loads and errors."""
    ok = [r for r in runs if "error" not in r]
    merged: dict[str, Any] = {"errors": [r["error"] for r in runs if "error" in r],
                              "loads": [r["load_average_end"] for r in ok]}
    if not ok:
        return merged
    merged |= {k: v for k, v in ok[-1].items() if k not in MERGED_OPS}
    for op in MERGED_OPS:
        times = [t for r in ok if op in r for t in r[op]["times_s"]]
        if times:
            merged[op] = {"median_s": statistics.median(times), "times_s": times}
    for key in ("peak_rss_fit_mb", "peak_rss_mb"):
        if key in ok[0]:
            merged[key] = max(r[key] for r in ok)
    return merged


def run_case_interleaved(spec: dict[str, Any], pythons: dict[str, Path | str],
                         repeats: int) -> dict[str, Any]:
    """``repeats`` alternating runs of one case per package, merged per package."""
    runs: dict[str, list[dict[str, Any]]] = {impl: [] for impl in pythons}
    order = list(pythons)
    for rep in range(repeats):
        for impl in order if rep % 2 == 0 else order[::-1]:
            start = now()
            runs[impl].append(run_in_subprocess(spec | {"impl": impl}, pythons[impl]))
            print(f"    {impl} repetition {rep + 1}: {now() - start:.1f} s "
                  f"(load {os.getloadavg()[0]:.1f})", flush=True)
    return {impl: merge(r) for impl, r in runs.items()}


def run_problem(name: str, args: argparse.Namespace, pythons: dict[str, Path | str],
                problem_file: Path) -> dict[str, Any]:
    """The Jacobian baseline (this package) and every case of one problem."""
    common = {"problem_file": str(problem_file), "repeats": 1}
    print(f"[{name}] Jacobian baseline", flush=True)
    baseline = merge([run_in_subprocess(common | {"impl": "laplace", "job": "jacobians",
                                                  "repeats": args.repeats}, sys.executable)])
    cases: dict[str, Any] = {}
    for case in CASES:
        heavy = name == "classification" and case == "full" and not args.quick
        if heavy and not args.digits_full:
            continue
        print(f"[{name}] {case}", flush=True)
        spec = common | {"job": case, "warmup": args.warmup and not heavy}
        runs = {"laplace": pythons["laplace"]} if heavy else pythons
        cases[case] = run_case_interleaved(spec, runs, 1 if heavy else args.repeats)
    description = DESCRIPTIONS[name]
    if args.quick and name == "classification":
        description = "64→20→20→10 ReLU MLP, 300 digits (quick)"
    return {"description": description, "baseline": baseline, "cases": cases}


def run_all(args: argparse.Namespace) -> dict[str, Any]:
    """Build each problem once, run every case under both interpreters, collect results."""
    pythons: dict[str, Path | str] = {"laplace": sys.executable}
    results: dict[str, Any] = {
        "machine": machine_info(), "quick": args.quick, "batch_size": args.batch_size,
        "repeats": args.repeats, "warmup": args.warmup, "marglik_steps": N_MARGLIK_STEPS,
        "n_test": N_TEST,
        "peak_memory_method": "ru_maxrss growth of a subprocess per case and package, "
                              "above the level after loading the data and the model",
    }
    if not args.no_laplace_torch:
        if str(REPO_ROOT) not in sys.path:  # this process never imports ``laplace``
            sys.path.insert(0, str(REPO_ROOT))
        from benchmarks.laplace_torch_env import ensure_laplace_torch_env

        python, versions = ensure_laplace_torch_env()
        pythons["laplace-torch"] = python
        results["laplace_torch"] = {"python": str(python.relative_to(REPO_ROOT)),
                                    "versions": versions}
    with tempfile.TemporaryDirectory() as tmp:
        for name in PROBLEMS:
            problem_file = Path(tmp) / f"{name}.pt"
            save_problem(build_problem(name, args.quick, args.batch_size), problem_file)
            results[name] = run_problem(name, args, pythons, problem_file)
    results["machine"]["load_average_at_end"] = list(os.getloadavg())
    results["machine"]["contended"] = contended(results)
    results["targets"] = targets(results)
    return results


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="one repetition on small sizes (a smoke test)")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "benchmarks" / "results",
                        help="folder for laplace_speed.json and laplace_speed.md")
    parser.add_argument("--repeats", type=int, default=2,
                        help="interleaved repetitions per case and package (default 2)")
    parser.add_argument("--batch-size", type=int, default=250, help="DataLoader batch size")
    parser.add_argument("--no-laplace-torch", action="store_true",
                        help="time this package only (no laplace-torch environment)")
    parser.add_argument("--no-warmup", dest="warmup", action="store_false",
                        help="time each operation's first call (no warm-up call): halves "
                        "the run time when laplace-torch's tuning takes minutes")
    parser.add_argument("--digits-full", action="store_true",
                        help="also run the dense posterior on digits (this package, once)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error(f"--repeats must be at least 1, not {args.repeats}")
    if args.quick:
        args.repeats = 1
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.worker:
        args.result.write_text(json.dumps(worker(json.loads(args.worker))))
        return
    load = os.getloadavg()[0]
    if load > 1:
        print(f"warning: load average {load:.1f} on {os.cpu_count()} CPUs before the run: "
              "timings may be inflated", file=sys.stderr)
    results = run_all(args)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "laplace_speed.json").write_text(json.dumps(results, indent=2) + "\n")
    table = markdown(results)
    (args.out / "laplace_speed.md").write_text(table)
    print(table)


if __name__ == "__main__":
    main()
