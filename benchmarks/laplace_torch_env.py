"""A cached virtual environment with laplace-torch 0.3, for side-by-side benchmarks.

``ensure_laplace_torch_env()`` creates ``.cache/laplace-torch-0.3/venv`` (ignored by git)
once and returns its interpreter. torch and torchvision are installed first, pinned to
this project's versions (``TORCH_PINS``; pip finds them locally here, so nothing of
gigabytes is downloaded), then ``laplace-torch==0.3`` with the pins of its own
metadata (``asdfghjkl==0.1a4``, ``curvlinops-for-pytorch>=3.0.1``, ``torchmetrics``, ...)
from the package registry. The installed versions are recorded in
``.cache/laplace-torch-0.3/versions.json``; its presence marks a finished install.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
CACHE_DIR = REPO_ROOT / ".cache" / "laplace-torch-0.3"
LAPLACE_TORCH_PIN = "laplace-torch==0.3"
TORCH_PINS = ("torch==2.14.1", "torchvision==0.29.1")
RECORDED = ("laplace-torch", "torch", "torchvision", "asdfghjkl", "backpack-for-pytorch",
            "curvlinops-for-pytorch", "torchmetrics", "numpy", "scipy", "opt-einsum")


def venv_python(cache_dir: Path = CACHE_DIR) -> Path:
    """The interpreter of the cached environment (it may not exist yet)."""
    return cache_dir / "venv" / "bin" / "python"


def _pip(python: Path, *args: str) -> None:
    subprocess.run([str(python), "-m", "pip", "install", "--quiet",
                    "--disable-pip-version-check", *args], check=True)


def installed_versions(python: Path) -> dict[str, str]:
    """``{distribution: version}`` of the ``RECORDED`` packages in ``python``'s environment."""
    code = ("import json, importlib.metadata as m; names = json.loads(input()); "
            "print(json.dumps({n: m.version(n) for n in names}))")
    out = subprocess.run([str(python), "-c", code], input=json.dumps(RECORDED), text=True,
                         capture_output=True, check=True)
    return json.loads(out.stdout)


def ensure_laplace_torch_env(cache_dir: Path = CACHE_DIR, base_python: str = sys.executable,
                             verbose: bool = True) -> tuple[Path, dict[str, str]]:
    """Create the environment unless cached; returns ``(interpreter, versions)``."""
    python, stamp = venv_python(cache_dir), cache_dir / "versions.json"
    if python.exists() and stamp.exists():
        return python, json.loads(stamp.read_text())
    if verbose:
        print(f"creating {cache_dir / 'venv'} with {LAPLACE_TORCH_PIN} (once; minutes)",
              flush=True)
    cache_dir.mkdir(parents=True, exist_ok=True)
    # Plain venv: the base interpreter, not this project's environment (no --system-site-packages).
    base = subprocess.run([base_python, "-c", "import sys; print(sys._base_executable)"],
                          capture_output=True, text=True, check=True).stdout.strip()
    subprocess.run([base, "-m", "venv", "--clear", str(cache_dir / "venv")], check=True)
    _pip(python, *TORCH_PINS)
    _pip(python, LAPLACE_TORCH_PIN, *TORCH_PINS)  # keeps the torch pins while resolving
    versions = installed_versions(python)
    stamp.write_text(json.dumps(versions, indent=2) + "\n")
    return python, versions


if __name__ == "__main__":
    print(json.dumps(ensure_laplace_torch_env()[1], indent=2))
