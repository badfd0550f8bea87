"""Fit and predict time of every curvature backend, relative to the native one.

One command::

    .venv/bin/python benchmarks/backends.py [--quick] [--out benchmarks/results]

Two classification problems on scikit-learn's bundled digits (pixels / 16), float64 on
the CPU: an MLP 64→32→32→10 (tanh) and a small CNN (Conv2d(1,8,3) → ReLU →
Conv2d(8,8,3) → ReLU → Flatten → Linear(128,10)), each trained briefly. For every
backend and structure the script times ``la.fit`` over 1,797 points (batch size 256) and
the GLM probit predictive on 200 points (median of 3 after a warm-up), and reports the
ratio to the native backend of the same curvature type (``TorchFuncGGN`` for GGN
backends, ``TorchFuncEF`` for EF backends). Combinations a library cannot compute show
the error's first words.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from laplace import Laplace  # noqa: E402
from laplace import curvature as C  # noqa: E402

GGN = ["TorchFuncGGN", "BackPackGGN", "CurvlinopsGGN", "AsdlGGN"]
EF = ["TorchFuncEF", "BackPackEF", "CurvlinopsEF", "AsdlEF"]
STRUCTURES = ("full", "kron", "diag")


def digits(image: bool) -> tuple[torch.Tensor, torch.Tensor]:
    from sklearn.datasets import load_digits

    X, y = load_digits(return_X_y=True)
    X = torch.tensor(X / 16.0)
    return (X.reshape(-1, 1, 8, 8) if image else X), torch.tensor(y)


def make_model(kind: str) -> nn.Module:
    torch.manual_seed(0)
    if kind == "mlp":
        layers = [nn.Linear(64, 32), nn.Tanh(), nn.Linear(32, 32), nn.Tanh(), nn.Linear(32, 10)]
    else:
        layers = [nn.Conv2d(1, 8, 3), nn.ReLU(), nn.Conv2d(8, 8, 3), nn.ReLU(), nn.Flatten(),
                  nn.Linear(128, 10)]
    return nn.Sequential(*layers).double()


def train(model: nn.Module, X: torch.Tensor, y: torch.Tensor, steps: int) -> None:
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(steps):
        opt.zero_grad()
        nn.functional.cross_entropy(model(X), y).backward()
        opt.step()


def timed(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def run_case(model, loader, X_test, backend: str, structure: str, repeats: int) -> dict:
    la = Laplace(model, "classification", "all", structure, backend=getattr(C, backend))
    try:
        fit = timed(lambda: la.fit(loader), repeats)
        predict = timed(lambda: la(X_test, link_approx="probit"), repeats)
    except (NotImplementedError, ValueError) as err:
        return {"error": str(err).split(".")[0][:70]}
    return {"fit_s": fit, "predict_s": predict}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="one repeat, 512 points")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "benchmarks" / "results")
    args = parser.parse_args(argv)
    torch.set_num_threads(2)
    repeats = 1 if args.quick else 3
    results: dict = {"machine": {"python": platform.python_version(), "torch": torch.__version__,
                                 "threads": torch.get_num_threads()}, "problems": {}}
    for kind in ("mlp", "cnn"):
        X, y = digits(image=kind == "cnn")
        if args.quick:
            X, y = X[:512], y[:512]
        model = make_model(kind)
        train(model, X, y, 100)
        loader = DataLoader(TensorDataset(X, y), batch_size=256)
        n_params = sum(p.numel() for p in model.parameters())
        rows = {}
        for structure in STRUCTURES:
            for backend in GGN + EF:
                rows[f"{backend}/{structure}"] = run_case(model, loader, X[:200], backend,
                                                          structure, repeats)
                print(kind, structure, backend, rows[f"{backend}/{structure}"], flush=True)
        results["problems"][kind] = {"n_params": n_params, "n_data": len(X), "rows": rows}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "backends.json").write_text(json.dumps(results, indent=2))
    (args.out / "backends.md").write_text(markdown(results))
    print(markdown(results))
    return results


def markdown(results: dict) -> str:
    lines = ["# Curvature backends: fit and predict time", "",
             f"torch {results['machine']['torch']}, {results['machine']['threads']} threads, "
             "float64 CPU. Seconds (median of 3 after a warm-up) and, in brackets, the ratio "
             "to the native backend of the same curvature type. Command: "
             "`.venv/bin/python benchmarks/backends.py`.", ""]
    for kind, prob in results["problems"].items():
        lines += [f"## {kind}: {prob['n_params']} weights, {prob['n_data']} digits", "",
                  "| backend | structure | fit | predict (200 pts) |", "|---|---|---:|---:|"]
        for key, row in prob["rows"].items():
            backend, structure = key.split("/")
            native = prob["rows"][("TorchFuncEF" if backend in EF else "TorchFuncGGN")
                                  + "/" + structure]
            if "error" in row:
                lines.append(f"| {backend} | {structure} | n/a: {row['error']} | |")
                continue
            cells = []
            for field in ("fit_s", "predict_s"):
                ratio = row[field] / native[field] if "error" not in native else float("nan")
                cells.append(f"{row[field]:.4f} ({ratio:.2f}×)")
            lines.append(f"| {backend} | {structure} | {cells[0]} | {cells[1]} |")
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
