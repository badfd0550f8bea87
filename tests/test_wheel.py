"""The built wheel: it holds both packages and their data, installs, imports and runs.

``python -m build --wheel`` runs on a copy of what the wheel is built from
(``pyproject.toml``, ``README.md``, ``laplace/``, ``lapbo/``), so the checkout gets no
``build/`` or ``*.egg-info``. The wheel goes into a fresh virtual environment with
``--no-deps``; its dependencies (torch, BoTorch, ...: gigabytes) are those of the test
interpreter, reached through a ``.pth`` line naming its site-packages. That line adds
the folder to ``sys.path`` after the new environment's own site-packages without
running the ``.pth`` hooks there, so the editable install of this checkout stays
inactive: the imports below must come from the wheel, from a temporary working
directory, and the test asserts that ``__file__`` lies inside the new environment.
"""

from __future__ import annotations

import json
import shutil
import site
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("laplace", "lapbo")
PROBE = """
import importlib.metadata as md, json, pathlib, laplace, lapbo, laplace.curvature
print(json.dumps({
    "files": [laplace.__file__, lapbo.__file__, laplace.curvature.__file__],
    "versions": [laplace.__version__, lapbo.__version__, md.version("lapbo")],
    "typed": [(pathlib.Path(p.__file__).parent / "py.typed").is_file()
              for p in (laplace, lapbo)],
    "license": md.metadata("lapbo")["License-Expression"],
}))
"""


def build_wheel(tmp: Path) -> Path:
    """Build the wheel from a copy of the project's build inputs; returns its path."""
    src = tmp / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    for package in PACKAGES:
        shutil.copytree(ROOT / package, src / package,
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    subprocess.run([sys.executable, "-m", "build", "--wheel", "--outdir", str(tmp / "dist"),
                    str(src)], check=True, capture_output=True, text=True)
    (wheel,) = (tmp / "dist").glob("lapbo-*.whl")
    return wheel


def make_venv(tmp: Path, wheel: Path) -> Path:
    """A fresh venv with the wheel (``--no-deps``) that sees this interpreter's deps."""
    venv = tmp / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    purelib = subprocess.run([str(python), "-c", "import sysconfig; "
                              "print(sysconfig.get_path('purelib'))"],
                             check=True, capture_output=True, text=True).stdout.strip()
    (Path(purelib) / "_project_deps.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install",
                    "--quiet", "--no-deps", "--no-index", str(wheel)], check=True)
    return python


@pytest.mark.slow
def test_wheel_installs_imports_both_packages_and_runs_the_cli(tmp_path):
    wheel = build_wheel(tmp_path)
    names = zipfile.ZipFile(wheel).namelist()
    for package in PACKAGES:
        assert f"{package}/__init__.py" in names and f"{package}/py.typed" in names
    assert "laplace/curvature/kfac.py" in names and "lapbo/__main__.py" in names
    assert not [n for n in names if n.startswith(("tests/", "benchmarks/", "tutorials/"))]

    python = make_venv(tmp_path, wheel)
    cwd = tmp_path / "elsewhere"
    cwd.mkdir()
    probe = subprocess.run([str(python), "-c", PROBE], cwd=cwd, check=True,
                           capture_output=True, text=True)
    found = json.loads(probe.stdout)
    venv = python.parents[1]
    assert all(Path(f).is_relative_to(venv) for f in found["files"]), found["files"]
    version = found["versions"][0]
    assert found["versions"] == [version] * 3 and wheel.name.startswith(f"lapbo-{version}-")
    assert found["typed"] == [True, True]
    assert found["license"] == "MIT"

    cli = subprocess.run([str(python), "-m", "lapbo", "--help"], cwd=cwd,
                         capture_output=True, text=True)
    assert cli.returncode == 0, cli.stderr
    assert cli.stdout.startswith("usage: python -m lapbo") and "--problem" in cli.stdout
    assert cli.stderr == ""  # no warnings either
    script = subprocess.run([str(venv / "bin" / "lapbo"), "--help"], cwd=cwd,
                            capture_output=True, text=True)
    assert script.returncode == 0 and "--surrogates" in script.stdout
