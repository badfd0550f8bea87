"""Last-layer classification predictive with many classes: time and peak memory.

One command::

    .venv/bin/python benchmarks/last_layer_predictive.py [--quick] [--out benchmarks/results]

Setting: float32 on the CPU, ``torch.set_num_threads(2)``. A 32→256 tanh feature MLP
and a ``Linear(256, 2000)`` head (514,000 last-layer parameters), random (untrained)
weights, 4,000 random inputs with random labels. ``KronLLLaplace`` and
``DiagLLLaplace`` (``Laplace(..., "last_layer", "kron" | "diag")``, prior precision 1)
are fitted once with the default GGN backend (batch size 500; the output layer's KFAC
factor is ``Σ Λₙ`` directly and its diagonal ``p(1 − p)``, so 2,000 classes cost no
per-class backward passes); the predictive's cost does not depend on the curvature.

Timed: the probit predictive on a batch of 64 inputs — median of 5 calls after one
warm-up call (``time.perf_counter``). Variants:

* ``public``: ``la(x, link_approx="probit")``;
* ``public_diagonal_output``: the same with ``diagonal_output=True`` (laplace-torch's
  flag for the fast last-layer path);
* ``diagonal``: what ``__call__`` needs for probit, the per-class variances only:
  ``la.model.forward_with_features(x)`` then the precision's
  ``last_layer_variance(phi, K, bias, diagonal=True)`` and ``links.probit`` (private API:
  what ``__call__`` itself now does for probit);
* ``diagonal_bias_diag`` (kron only): as ``diagonal`` but with the diagonal of the
  bias block ``Σ_b`` computed as ``(Q_b² / λ_b).sum(-1)`` instead of from the dense
  ``K × K`` block (what ``KronPrecision.last_layer_variance`` does for ``diagonal=True``).

Memory: each fit runs in its own subprocess, which saves the model and
``la.state_dict()``; each (structure, variant) is then measured in a fresh subprocess
that loads them. Peak extra memory is the growth of
``resource.getrusage(RUSAGE_SELF).ru_maxrss`` from just before the warm-up call to the
end of the timed calls: resident memory (torch CPU tensors and any workspace, whole
pages), so it includes the posterior factorization done by the first call.

The "alternative" is materialising the per-point Jacobians ``J`` ``(64, 2000, 514,000)``
and forming ``J Σ Jᵀ``: ``J`` alone is 65.8·10⁹ floats, 263 GB in float32. It is not run.
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
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from laplace import Laplace  # noqa: E402  (after making the repository importable)
from laplace.predictive import links  # noqa: E402

THREADS = 2
DTYPE = torch.float32
IN_FEATURES, N_FEATURES, N_CLASSES = 32, 256, 2000
N_TRAIN, FIT_BATCH, N_PRED = 4000, 500, 64
REPEATS = 5
PRIOR_PRECISION = 1.0
TARGET_S, TARGET_MB = 0.5, 500.0
STRUCTURES = ("kron", "diag")
VARIANTS = {
    "kron": ("public", "public_diagonal_output", "diagonal", "diagonal_bias_diag"),
    "diag": ("public", "public_diagonal_output", "diagonal"),
}
VARIANT_LABELS = {
    "public": "`la(x, link_approx='probit')`",
    "public_diagonal_output": "`la(x, link_approx='probit', diagonal_output=True)`",
    "diagonal": "diagonal variances only, by hand (private API)",
    "diagonal_bias_diag": "diagonal + bias-block diagonal, by hand (private API)",
}
SUBPROCESS_TIMEOUT_S = 900


# ------------------------------------------------------------------ problem
def n_last_layer_params() -> int:
    return N_CLASSES * N_FEATURES + N_CLASSES


def build_problem(n_train: int) -> tuple[nn.Module, DataLoader, torch.Tensor]:
    """Model, training loader and the 64 prediction inputs (seed 0)."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Linear(IN_FEATURES, N_FEATURES), nn.Tanh(), nn.Linear(N_FEATURES, N_CLASSES)
    ).to(DTYPE).eval()
    X = torch.randn(n_train + N_PRED, IN_FEATURES, dtype=DTYPE)
    y = torch.randint(0, N_CLASSES, (n_train,))
    loader = DataLoader(TensorDataset(X[:n_train], y), batch_size=FIT_BATCH)
    return model, loader, X[n_train:]


def make_laplace(model: nn.Module, structure: str) -> Any:
    return Laplace(model, "classification", "last_layer", structure,
                   prior_precision=PRIOR_PRECISION)


def max_rss_mb() -> float:
    """Peak resident set size of this process so far (MB; ``ru_maxrss`` is in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# ------------------------------------------------------------------ workers
def fit_worker(structure: str, n_train: int, state_path: Path) -> dict[str, Any]:
    model, loader, _ = build_problem(n_train)
    la = make_laplace(model, structure)
    rss0 = max_rss_mb()
    start = time.perf_counter()
    la.fit(loader)
    fit_s = time.perf_counter() - start
    torch.save({"model": model.state_dict(), "la": la.state_dict()}, state_path)
    return {"fit_s": fit_s, "fit_peak_rss_mb": max_rss_mb() - rss0}


def predictive(la: Any, variant: str, x: torch.Tensor) -> torch.Tensor:
    if variant == "public":
        return la(x, link_approx="probit")
    if variant == "public_diagonal_output":
        return la(x, link_approx="probit", diagonal_output=True)
    with torch.no_grad():
        f_mu, phi = la.model.forward_with_features(x)
        precision = la._precision()
        if variant == "diagonal":
            var = precision.last_layer_variance(phi, f_mu.shape[-1], la._has_bias,
                                                diagonal=True)
        elif variant == "diagonal_bias_diag":
            var = _kron_diagonal_variance(precision.matrix, phi)
        else:
            raise ValueError(variant)
    return links.probit(f_mu, var)


def _kron_diagonal_variance(M: Any, phi: torch.Tensor) -> torch.Tensor:
    """``diag(J Σ Jᵀ)`` of a last layer with Kronecker weight block and dense bias block:
    ``(φQ₂)² λ⁻¹ᵀ (Q₁²)ᵀ + diag(Q_b λ_b⁻¹ Q_bᵀ)`` with no ``K × K`` product."""
    Q1, Q2 = M.eigenvectors[0]
    inv_eig = M.block_eigenvalues(0).reciprocal()  # (K, D)
    out = (phi @ Q2).square() @ inv_eig.T @ Q1.square().T
    (Qb,) = M.eigenvectors[1]
    return out + (Qb.square() / M.block_eigenvalues(1)).sum(-1)


def measure_worker(structure: str, variant: str, n_train: int, state_path: Path,
                   probs_path: Path, repeats: int) -> dict[str, Any]:
    model, _, x = build_problem(n_train)
    state = torch.load(state_path, weights_only=True)
    model.load_state_dict(state["model"])
    la = make_laplace(model, structure)
    la.load_state_dict(state["la"])
    del state
    rss0 = max_rss_mb()
    start = time.perf_counter()
    probs = predictive(la, variant, x)
    warmup_s = time.perf_counter() - start
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        probs = predictive(la, variant, x)
        times.append(time.perf_counter() - start)
    peak = max_rss_mb() - rss0
    torch.save(probs.detach(), probs_path)
    return {"median_s": statistics.median(times), "times_s": times, "warmup_s": warmup_s,
            "peak_extra_rss_mb": peak, "baseline_rss_mb": rss0}


# ------------------------------------------------------------------ driver
def run_subprocess(args: list[str]) -> dict[str, Any]:
    """Run this script with ``args``; its JSON result, or the failure."""
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
        result_path = Path(f.name)
    cmd = [sys.executable, str(Path(__file__).resolve()), *args, "--result", str(result_path)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=SUBPROCESS_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {SUBPROCESS_TIMEOUT_S} s"}
    try:
        if proc.returncode != 0:
            return {"error": f"exit code {proc.returncode}: {proc.stderr.strip()[-400:]}"}
        return json.loads(result_path.read_text())
    finally:
        result_path.unlink(missing_ok=True)


def machine_info() -> dict[str, Any]:
    """CPU, core count, torch and Python versions, threads and the load at the start."""
    if str(REPO_ROOT) not in sys.path:  # run as a script: the repository's packages
        sys.path.insert(0, str(REPO_ROOT))
    from benchmarks.output import cpu_model

    return {"cpu": cpu_model(), "cpu_count": os.cpu_count(), "torch": torch.__version__,
            "python": platform.python_version(), "threads": THREADS,
            "loadavg_start": os.getloadavg()[0]}


def naive_jacobian() -> dict[str, Any]:
    floats = N_PRED * N_CLASSES * n_last_layer_params()
    return {"shape": [N_PRED, N_CLASSES, n_last_layer_params()], "floats": floats,
            "gb_float32": floats * 4 / 1e9, "gb_float64": floats * 8 / 1e9}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=str(REPO_ROOT / "benchmarks" / "results"))
    parser.add_argument("--quick", action="store_true",
                        help="fit on 500 points, 2 repeats (smoke test; same predictive sizes)")
    parser.add_argument("--repeats", type=int, default=REPEATS)
    parser.add_argument("--fit", choices=STRUCTURES, help=argparse.SUPPRESS)
    parser.add_argument("--measure", nargs=2, metavar=("STRUCTURE", "VARIANT"),
                        help=argparse.SUPPRESS)
    parser.add_argument("--state", help=argparse.SUPPRESS)
    parser.add_argument("--probs", help=argparse.SUPPRESS)
    parser.add_argument("--n-train", type=int, default=N_TRAIN, help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(THREADS)

    if args.fit:
        result = fit_worker(args.fit, args.n_train, Path(args.state))
        Path(args.result).write_text(json.dumps(result))
        return
    if args.measure:
        structure, variant = args.measure
        result = measure_worker(structure, variant, args.n_train, Path(args.state),
                                Path(args.probs), args.repeats)
        Path(args.result).write_text(json.dumps(result))
        return

    n_train = 500 if args.quick else N_TRAIN
    repeats = 2 if args.quick else args.repeats
    info = machine_info()
    report: dict[str, Any] = {
        "setting": {
            "dtype": str(DTYPE), "in_features": IN_FEATURES, "features": N_FEATURES,
            "classes": N_CLASSES, "last_layer_params": n_last_layer_params(),
            "n_train": n_train, "fit_batch_size": FIT_BATCH, "prediction_batch": N_PRED,
            "repeats": repeats, "prior_precision": PRIOR_PRECISION,
            "fit_backend": "TorchFuncGGN", "targets": {"time_s": TARGET_S, "memory_mb": TARGET_MB},
            "memory_method": "ru_maxrss growth in a fresh subprocess that loads the fitted "
                             "state, from before the warm-up call to after the timed calls",
        },
        "machine": info,
        "naive_jacobian": naive_jacobian(),
        "structures": {},
    }
    with tempfile.TemporaryDirectory() as tmp:
        for structure in STRUCTURES:
            state = Path(tmp) / f"{structure}.pt"
            print(f"[{structure}] fitting ...", flush=True)
            fit = run_subprocess(["--fit", structure, "--state", str(state),
                                  "--n-train", str(n_train)])
            entry: dict[str, Any] = {"fit": fit, "variants": {}}
            report["structures"][structure] = entry
            if "error" in fit:
                print(f"[{structure}] fit failed: {fit['error']}", flush=True)
                continue
            probs: dict[str, torch.Tensor] = {}
            for variant in VARIANTS[structure]:
                print(f"[{structure}] {variant} ...", flush=True)
                probs_path = Path(tmp) / f"{structure}-{variant}-probs.pt"
                res = run_subprocess(["--measure", structure, variant, "--state", str(state),
                                      "--probs", str(probs_path), "--n-train", str(n_train),
                                      "--repeats", str(repeats)])
                if "error" not in res:
                    probs[variant] = torch.load(probs_path, weights_only=True)
                    res["meets_time_target"] = res["median_s"] < TARGET_S
                    res["meets_memory_target"] = res["peak_extra_rss_mb"] < TARGET_MB
                entry["variants"][variant] = res
            if "public" in probs:
                for variant, p in probs.items():
                    diff = (p - probs["public"]).abs().max().item()
                    entry["variants"][variant]["max_abs_diff_vs_public"] = diff
    info["loadavg_end"] = os.getloadavg()[0]

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = "last_layer_predictive" + ("_quick" if args.quick else "")
    (out / f"{stem}.json").write_text(json.dumps(report, indent=2) + "\n")
    markdown = render(report)
    (out / f"{stem}.md").write_text(markdown)
    print(markdown)


def render(report: dict[str, Any]) -> str:
    s, m, nj = report["setting"], report["machine"], report["naive_jacobian"]
    lines = [
        "# Last-layer classification predictive, 2,000 classes",
        "",
        f"{m['cpu']} ({m['cpu_count']} CPUs), torch {m['torch']}, {m['threads']} threads, "
        f"{s['dtype'].replace('torch.', '')} on the CPU. Load average (1 min) "
        f"{m['loadavg_start']:.1f} at the start, {m['loadavg_end']:.1f} at the end (shared "
        "cores: single numbers move by tens of percent between runs).",
        "",
        f"Model: {s['in_features']}→{s['features']} tanh features + "
        f"Linear({s['features']}, {s['classes']}); {s['last_layer_params']:,} last-layer "
        f"parameters; fitted once on {s['n_train']:,} random points (backend "
        f"`{s['fit_backend']}`, batch {s['fit_batch_size']}, prior precision "
        f"{s['prior_precision']:g}). Predictive: probit on a batch of {s['prediction_batch']}, "
        f"median of {s['repeats']} calls after one warm-up. Peak extra memory: "
        f"{s['memory_method']}. Targets: < {s['targets']['time_s']} s and "
        f"< {s['targets']['memory_mb']:.0f} MB.",
        "",
        f"Alternative (not run): materialising the Jacobians J "
        f"{nj['shape'][0]} × {nj['shape'][1]:,} × {nj['shape'][2]:,} = "
        f"{nj['floats'] / 1e9:.1f}·10⁹ floats = {nj['gb_float32']:.0f} GB in float32 "
        f"({nj['gb_float64']:.0f} GB in float64), before any J Σ Jᵀ product.",
        "",
        "| structure | predictive | median (s) | warm-up (s) | peak extra RSS (MB) | "
        "targets (time / memory) | max |Δp| vs public | alternative: J in memory |",
        "|---|---|---:|---:|---:|---|---:|---:|",
    ]
    for structure, entry in report["structures"].items():
        if "error" in entry["fit"]:
            lines.append(f"| {structure} | fit failed: {entry['fit']['error']} | | | | | | |")
            continue
        for variant, r in entry["variants"].items():
            label = VARIANT_LABELS[variant]
            if "error" in r:
                lines.append(f"| {structure} | {label} | failed: {r['error'][:120]} "
                             f"| | | | | {nj['gb_float32']:.0f} GB |")
                continue
            ok = ("pass" if r["meets_time_target"] else "FAIL") + " / " + (
                "pass" if r["meets_memory_target"] else "FAIL")
            diff = r.get("max_abs_diff_vs_public")
            lines.append(
                f"| {structure} | {label} | {r['median_s']:.4f} | {r['warmup_s']:.4f} | "
                f"{r['peak_extra_rss_mb']:.0f} | {ok} | "
                f"{'—' if diff is None else f'{diff:.1e}'} | {nj['gb_float32']:.0f} GB |"
            )
    lines += ["", "Fit (once, untimed by the targets): " + ", ".join(
        f"{k} {v['fit']['fit_s']:.1f} s (+{v['fit']['fit_peak_rss_mb']:.0f} MB RSS)"
        for k, v in report["structures"].items() if "error" not in v["fit"]) + ".", ""]
    lines += NOTES
    return "\n".join(lines)


NOTES = [
    "The public call asks only for the per-class variances under probit (the Kronecker",
    "bias block contributes its diagonal), so no `K × K` block per point is formed; the",
    "two private variants compute the same thing by hand and agree to round-off.",
    "",
]


if __name__ == "__main__":
    main()
