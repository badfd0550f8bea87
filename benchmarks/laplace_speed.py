"""Speed benchmark of the ``laplace`` package (full / kron / diag over all weights).

One command::

    .venv/bin/python benchmarks/laplace_speed.py [--quick] [--out benchmarks/results]

Two problems, float64 on the CPU with ``torch.set_num_threads(2)``:

* ``regression``: a 5→50→50→1 tanh MLP (2,901 weights) on N=1000 random inputs with
  targets ``sin(x₀) + cos(x₁)·x₂ + 0.5·x₃x₄ + noise``, trained for 300 full-batch Adam
  steps;
* ``classification``: a 64→100→100→10 ReLU MLP (17,610 weights) on the 1,797
  scikit-learn digits (pixels / 16), trained for 200 full-batch Adam steps.

Both use a ``DataLoader`` with batch size 250 (``--batch-size``). For each problem
and structure the script times ``fit``, one ``log_marginal_likelihood`` at a new prior
precision, 50 steps of marglik prior tuning (scalar prior, after a fresh ``fit``),
and the predictive on 200 test points (with and without a cached factorization),
against the baseline of one pass of per-sample Jacobians (``la.backend.jacobians``)
over the same loader batches; for regression also ``Σₙ JₙᵀJₙ`` formed directly.
Each number is the median of 3 repeats after a warm-up call.

Every (problem, structure) pair runs in its own subprocess, which also reports its
peak resident memory (``ru_maxrss``) above the level reached after building the data
and the trained model. The dense posterior of the classification problem
(17,610² float64 = 2.5 GB, about 11 TFLOP per fit and a 17,610-point
eigendecomposition for tuning) is only run with ``--digits-full``, once, without
warm-up.
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
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from laplace import Laplace  # noqa: E402  (after making the repository importable)

THREADS = 2
STRUCTURES = ("full", "kron", "diag")
PROBLEMS = ("regression", "classification")
N_MARGLIK_STEPS = 50
N_TEST = 200
SIGMA_NOISE = 0.1
PRIOR_PRECISION = 1.0

#: laplace-torch 0.3 on this machine, for the three targets (seconds).
REFERENCE_LAPLACE_TORCH = {
    "full_fit_regression": 12.9,
    "diag_fit_classification": 15.4,
    "marglik_regression_full": 55.0,
}

OPS = ("fit", "log_marglik", "marglik_50", "predict", "predict_cached")
OP_LABELS = {
    "fit": "fit",
    "log_marglik": "log_marglik",
    "marglik_50": "marglik ×50",
    "predict": "predict (cold)",
    "predict_cached": "predict (cached)",
}


# --------------------------------------------------------------------------- problems
@dataclass
class Problem:
    """A trained model, its training loader and test inputs."""

    name: str
    likelihood: str
    model: nn.Module
    loader: DataLoader
    X_test: Tensor
    n_train: int

    @property
    def n_params(self) -> int:
        return sum(p.numel() for p in self.model.parameters())


def mlp(sizes: list[int], activation: type[nn.Module]) -> nn.Sequential:
    """A fully connected network with ``activation`` between the linear layers."""
    layers: list[nn.Module] = []
    for i, (d_in, d_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(d_in, d_out))
        if i < len(sizes) - 2:
            layers.append(activation())
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
    model = mlp([5, 50, 50, 1], nn.Tanh)
    train(model, X[:n], y[:n], nn.MSELoss(), 50 if quick else 300)
    loader = DataLoader(TensorDataset(X[:n], y[:n]), batch_size=batch_size)
    return Problem("regression", "regression", model, loader, X[n:], n)


def classification_problem(quick: bool, batch_size: int) -> Problem:
    """64→100→100→10 ReLU MLP on the scikit-learn digits (64→20→20→10 with ``quick``)."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    X = torch.as_tensor(digits.data, dtype=torch.get_default_dtype()) / 16
    y = torch.as_tensor(digits.target, dtype=torch.long)
    if quick:
        X, y = X[:300], y[:300]
    width = 20 if quick else 100
    model = mlp([64, width, width, 10], nn.ReLU)
    train(model, X, y, nn.CrossEntropyLoss(), 50 if quick else 200)
    loader = DataLoader(TensorDataset(X, y), batch_size=batch_size)
    X_test = X[torch.randperm(len(X))[:N_TEST]]
    return Problem("classification", "classification", model, loader, X_test, len(X))


def build_problem(name: str, quick: bool, batch_size: int) -> Problem:
    """The named problem, reproducibly (seed 0)."""
    torch.manual_seed(0)
    if name == "regression":
        return regression_problem(quick, batch_size)
    return classification_problem(quick, batch_size)


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


def make_laplace(problem: Problem, structure: str) -> Any:
    """The Laplace approximation of ``problem`` with the given Hessian structure."""
    kwargs: dict[str, Any] = {"prior_precision": PRIOR_PRECISION}
    if problem.likelihood == "regression":
        kwargs["sigma_noise"] = SIGMA_NOISE
    return Laplace(problem.model, problem.likelihood, subset_of_weights="all",
                   hessian_structure=structure, **kwargs)


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


def run_structure(problem: Problem, structure: str, repeats: int, warmup: bool) -> dict[str, Any]:
    """Time ``fit``, one log marginal likelihood, marglik tuning and the predictive."""
    base = max_rss_mb()
    la = make_laplace(problem, structure)
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

    # Refit (untimed) before each tuning run: tuning may cache per-fit decompositions
    # (without warm-up the single run already starts from a fresh fit).
    def tune() -> None:
        la.optimize_prior_precision(
            method="marglik", n_steps=N_MARGLIK_STEPS, prior_structure="scalar"
        )

    refit = (lambda: la.fit(loader)) if warmup else None
    result["marglik_50"] = measure(tune, repeats, warmup, setup=refit)
    result["tuned_prior_precision"] = la.prior_precision.tolist()

    def invalidate() -> None:
        la.prior_precision = la.prior_precision.clone()

    X_test = problem.X_test
    result["predict"] = measure(lambda: predict(la, problem, X_test), repeats, warmup,
                                setup=invalidate)
    result["predict_cached"] = measure(lambda: predict(la, problem, X_test), repeats)
    result["peak_rss_mb"] = max_rss_mb() - base
    return result


def worker(spec: dict[str, Any]) -> dict[str, Any]:
    """Run one (problem, job) pair in this process and return its measurements."""
    torch.set_num_threads(THREADS)
    torch.set_default_dtype(torch.float64)
    problem = build_problem(spec["problem"], spec["quick"], spec["batch_size"])
    info = {"n_train": problem.n_train, "n_params": problem.n_params,
            "n_batches": len(problem.loader)}
    if spec["job"] == "jacobians":
        result = run_jacobians(problem, spec["repeats"])
    else:
        result = run_structure(problem, spec["job"], spec["repeats"], spec["warmup"])
    return info | result | {"load_average_end": os.getloadavg()[0]}


def run_in_subprocess(spec: dict[str, Any]) -> dict[str, Any]:
    """Run ``worker(spec)`` in a fresh interpreter (separate peak-memory accounting)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "result.json"
        cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps(spec),
               "--result", str(path)]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            return {"error": proc.stderr.strip().splitlines()[-1] if proc.stderr else
                    f"exit code {proc.returncode}"}
        return json.loads(path.read_text())


# --------------------------------------------------------------------------- report
def machine_info() -> dict[str, Any]:
    """Torch version, threads and CPU of this machine."""
    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
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


def contended(results: dict[str, Any]) -> bool:
    """Whether other work competed for the cores during the run.

    Before the run the 1-minute load must be at most 1; while it runs, this benchmark
    itself adds about ``THREADS``, so any case ending with a load above ``THREADS + 1``
    counts as contended. With two threads per process on oversubscribed cores, each
    parallel torch op can wait a scheduler time slice for its second thread: small-op
    code paths then run up to ~100× slower, and the timings say little about the code.
    """
    info = results["machine"]
    loads = [info.get("load_average_at_end", [0])[0]]
    for name in PROBLEMS:
        entry = results.get(name, {})
        cases = [entry.get("baseline", {}), *entry.get("structures", {}).values()]
        loads += [case["load_average_end"] for case in cases if "load_average_end" in case]
    return info["load_average_at_start"][0] > 1 or max(loads) > THREADS + 1


def median(entry: dict[str, Any], op: str) -> float | None:
    value = entry.get(op)
    return value["median_s"] if isinstance(value, dict) else None


def targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    """The three pass/fail targets, with laplace-torch 0.3 for comparison."""
    reg, cls = results["regression"], results["classification"]
    jac = median(reg["baseline"], "jacobians")
    jtj = median(reg["baseline"], "sum_JtJ")
    full_fit = median(reg["structures"].get("full", {}), "fit")
    rows = []
    if None not in (jac, jtj, full_fit):
        ratio = full_fit / (jac + jtj)
        rows.append({"target": "full fit (regression) ≤ 2× (Jacobians + Σ JᵀJ)",
                     "key": "full_fit_regression", "seconds": full_fit, "value": ratio,
                     "limit": "≤ 2×", "passed": ratio <= 2})
    diag_fit = median(cls["structures"].get("diag", {}), "fit")
    if diag_fit is not None:
        rows.append({"target": "diag fit (classification) < 0.5 s",
                     "key": "diag_fit_classification", "seconds": diag_fit,
                     "value": diag_fit, "limit": "< 0.5 s", "passed": diag_fit < 0.5})
    marglik = median(reg["structures"].get("full", {}), "marglik_50")
    if marglik is not None:
        rows.append({"target": "50 marglik steps (regression, full) < 2 s",
                     "key": "marglik_regression_full", "seconds": marglik, "value": marglik,
                     "limit": "< 2 s", "passed": marglik < 2})
    for row in rows:
        ref = REFERENCE_LAPLACE_TORCH[row["key"]]
        row["laplace_torch_0_3_s"] = ref
        row["speedup"] = ref / row["seconds"]
    return rows


def fmt_time(seconds: float | None, jac: float | None) -> str:
    if seconds is None:
        return "–"
    ratio = f" ({seconds / jac:.2f}×)" if jac else ""
    return f"{seconds:.4f}{ratio}"


def markdown(results: dict[str, Any]) -> str:
    """The results as Markdown tables."""
    info = results["machine"]
    lines = [
        "# `laplace` speed benchmark",
        "",
        f"{info['cpu']} ({info['cpu_count']} CPUs), torch {info['torch']}, "
        f"{info['torch_threads']} threads, float64 on the CPU; batch size "
        f"{results['batch_size']}; median of {results['repeats']} repeat(s) after a warm-up"
        f"{' (quick mode: small sizes)' if results['quick'] else ''}. Load average "
        f"(1 min) {info['load_average_at_start'][0]:.1f} at the start, "
        f"{info['load_average_at_end'][0]:.1f} at the end (the cores are shared).",
        "",
    ]
    if info["contended"]:
        lines += [
            "**Warning: other work competed for the cores during this run (see "
            "`contended` in the JSON); the timings are inflated. Rerun on an idle "
            "machine.**",
            "",
        ]
    lines += [
        "Seconds, and in brackets the ratio to one pass of per-sample Jacobians over the "
        "same loader batches. *log_marglik*: one call at a new prior precision (no cached "
        "factorization); *marglik ×50*: `optimize_prior_precision(method='marglik', "
        "n_steps=50, prior_structure='scalar')` after a fresh fit; *predict*: 200 test "
        "points, *cold* after a hyperparameter change (includes the factorization), "
        "*cached* repeated. Peak RSS: `ru_maxrss` growth of the case's own subprocess "
        "above the level after building data and model (for `fit`: the first fit alone; "
        "*all*: the whole case).",
        "",
    ]
    for name in PROBLEMS:
        entry = results[name]
        base = entry["baseline"]
        jac = median(base, "jacobians")
        lines += [
            f"## {name}: {entry['description']}",
            "",
            f"N = {base.get('n_train')}, P = {base.get('n_params')}, "
            f"{base.get('n_batches')} batches. Jacobian pass: {fmt_time(jac, None)} s, "
            f"peak RSS +{base.get('peak_rss_mb', 0):.0f} MB"
            + (f"; Σ JᵀJ from those Jacobians: {median(base, 'sum_JtJ'):.4f} s"
               if median(base, "sum_JtJ") is not None else "") + ".",
            "",
            "| structure | " + " | ".join(OP_LABELS[op] for op in OPS)
            + " | peak RSS fit (MB) | peak RSS all (MB) |",
            "|---|" + "---:|" * (len(OPS) + 2),
        ]
        for structure, res in entry["structures"].items():
            if "error" in res or "skipped" in res:
                reason = res.get("error") or res.get("skipped")
                lines.append(f"| {structure} | {reason} |" + " |" * (len(OPS) + 1))
                continue
            cells = [fmt_time(median(res, op), jac) for op in OPS]
            note = "" if res.get("warmup", True) else " ¹"
            lines.append(
                f"| {structure}{note} | " + " | ".join(cells)
                + f" | {res['peak_rss_fit_mb']:.0f} | {res['peak_rss_mb']:.0f} |"
            )
        if any(not r.get("warmup", True) for r in entry["structures"].values()):
            lines += ["", "¹ one run, no warm-up."]
        lines.append("")
    lines += [
        "## Targets",
        "",
        "| target | measured | limit | pass | laplace-torch 0.3 | speed-up |",
        "|---|---:|---|---|---:|---:|",
    ]
    for row in results["targets"]:
        measured = (f"{row['value']:.2f}× ({row['seconds']:.3f} s)"
                    if row["key"] == "full_fit_regression" else f"{row['seconds']:.3f} s")
        lines.append(
            f"| {row['target']} | {measured} | {row['limit']} | "
            f"{'PASS' if row['passed'] else 'FAIL'} | {row['laplace_torch_0_3_s']:.1f} s | "
            f"{row['speedup']:.0f}× |"
        )
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- main
DESCRIPTIONS = {
    "regression": "5→50→50→1 tanh MLP, random inputs",
    "classification": "64→100→100→10 ReLU MLP, scikit-learn digits",
}


def run_all(args: argparse.Namespace) -> dict[str, Any]:
    """Run every case in its own subprocess and collect the results."""
    repeats = 1 if args.quick else args.repeats
    common = {"quick": args.quick, "batch_size": args.batch_size, "repeats": repeats}
    results: dict[str, Any] = {
        "machine": machine_info(), "quick": args.quick, "batch_size": args.batch_size,
        "repeats": repeats, "marglik_steps": N_MARGLIK_STEPS, "n_test": N_TEST,
        "peak_memory_method": "ru_maxrss growth of a subprocess per case, above the level "
                              "after building the data and the trained model",
    }
    for name in PROBLEMS:
        description = DESCRIPTIONS[name]
        if args.quick and name == "classification":
            description = "64→20→20→10 ReLU MLP, 300 digits (quick)"
        print(f"[{name}] Jacobian baseline", flush=True)
        baseline = run_in_subprocess(common | {"problem": name, "job": "jacobians"})
        structures: dict[str, Any] = {}
        for structure in STRUCTURES:
            heavy = name == "classification" and structure == "full" and not args.quick
            if heavy and not args.digits_full:
                structures[structure] = {"skipped": "skipped (dense 17,610² posterior; "
                                                    "run with --digits-full)"}
                continue
            spec = common | {"problem": name, "job": structure, "warmup": not heavy}
            if heavy:
                spec["repeats"] = 1
            print(f"[{name}] {structure}", flush=True)
            start = now()
            structures[structure] = run_in_subprocess(spec) | {"warmup": not heavy}
            print(f"    done in {now() - start:.1f} s", flush=True)
        results[name] = {"description": description, "baseline": baseline,
                         "structures": structures}
    results["machine"]["load_average_at_end"] = list(os.getloadavg())
    results["machine"]["contended"] = contended(results)
    results["targets"] = targets(results)
    results["reference_laplace_torch_0_3_s"] = REFERENCE_LAPLACE_TORCH
    return results


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="one repeat on small sizes (a smoke test)")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "benchmarks" / "results",
                        help="folder for laplace_speed.json and laplace_speed.md")
    parser.add_argument("--repeats", type=int, default=3, help="timed repeats per operation")
    parser.add_argument("--batch-size", type=int, default=250, help="DataLoader batch size")
    parser.add_argument("--digits-full", action="store_true",
                        help="also run the dense posterior on digits (once; ~20+ minutes)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


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
