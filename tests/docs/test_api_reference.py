"""Every public name of ``laplace`` and ``lapbo`` is on an API reference page.

The pages under ``docs/api/`` render objects with mkdocstrings ``::: path`` directives.
A directive covers the object at ``path``; a module directive covers the names listed in
its ``options.members`` or, without that option, the module's public names. A public name
is covered when some directive covers the same object (re-exports count once).
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
API_PAGES = ROOT / "docs" / "api"
PACKAGES = ["laplace", "lapbo"]
PUBLIC_MODULES = [
    "laplace.baselaplace", "laplace.lllaplace", "laplace.subnetlaplace", "laplace.curvature",
    "laplace.utils", "laplace.marglik_training", "lapbo.model", "lapbo.linearized_model",
    "lapbo.ax", "lapbo.sampling", "lapbo.matheron",
    "lapbo.selection", "lapbo.networks", "lapbo.lengthscales", "lapbo.feature_evidence",
]
DIRECTIVE = re.compile(r"^::: *(\S+) *$")


def public_names(module: ModuleType) -> list[str]:
    """``__all__``, else the names the module's own source defines without a leading ``_``."""
    if hasattr(module, "__all__"):
        return list(module.__all__)
    tree = ast.parse(Path(module.__file__).read_text())
    names: list[str] = []
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.append(node.name)
        elif isinstance(node, ast.Assign):
            names += [t.id for t in node.targets if isinstance(t, ast.Name)]
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names.append(node.target.id)
    return [n for n in names if not n.startswith("_")]


def parse_directives(text: str) -> list[tuple[str, dict[str, Any]]]:
    """``(path, options)`` of each ``::: path`` directive, with its indented YAML block."""
    lines = text.splitlines()
    found = []
    for i, line in enumerate(lines):
        match = DIRECTIVE.match(line)
        if not match:
            continue
        block = []
        for follow in lines[i + 1:]:
            if follow.strip() and not follow.startswith("    "):
                break
            block.append(follow[4:])
        config = yaml.safe_load("\n".join(block)) or {}
        found.append((match.group(1), config.get("options", {}) or {}))
    return found


def resolve(path: str) -> Any:
    """The object at a dotted ``path`` (a module, or an attribute of one)."""
    try:
        return importlib.import_module(path)
    except ModuleNotFoundError:
        module, _, name = path.rpartition(".")
        return getattr(importlib.import_module(module), name)


def rendered_paths(pages: list[Path]) -> dict[str, Any]:
    """``{dotted path: object}`` of what the directives of ``pages`` render.

    A member whose name is also a submodule of the package (``laplace.marglik_training``)
    is left out: mkdocstrings renders the submodule there, not the attribute.
    """
    rendered = {}
    for page in pages:
        for path, options in parse_directives(page.read_text()):
            target = resolve(path)
            if not isinstance(target, ModuleType):
                rendered[path] = target
                continue
            members = options.get("members")
            for name in members if isinstance(members, list) else public_names(target):
                obj = getattr(target, name)
                shadowed = (hasattr(target, "__path__") and not isinstance(obj, ModuleType)
                            and importlib.util.find_spec(f"{path}.{name}") is not None)
                if not shadowed:
                    rendered[f"{path}.{name}"] = obj
    return rendered


def covered_objects(pages: list[Path]) -> list[Any]:
    """The objects the directives of ``pages`` render (see the module docstring)."""
    return list(rendered_paths(pages).values())


def missing_names(pages: list[Path], modules: list[str]) -> list[str]:
    """``module.name`` for each public name of ``modules`` that no directive covers."""
    covered = covered_objects(pages)
    missing = []
    for module_name in modules:
        module = importlib.import_module(module_name)
        for name in public_names(module):
            obj = getattr(module, name)
            if not any(obj is c for c in covered):
                missing.append(f"{module_name}.{name}")
    return missing


def test_every_public_name_is_documented() -> None:
    pages = sorted(API_PAGES.glob("*.md"))
    assert missing_names(pages, PACKAGES + PUBLIC_MODULES) == []


def test_public_names_include_the_non_all_modules() -> None:
    import lapbo.selection

    assert public_names(lapbo.selection) == [
        "DEFAULT_CANDIDATES", "HIGH_DIMENSIONAL", "MID_DIMENSIONAL",
        "HIGH_DIMENSIONAL_CANDIDATES", "MID_DIMENSIONAL_CANDIDATES",
        "MID_DIMENSIONAL_LARGE_DATA_CANDIDATE", "MLP_CANDIDATES", "RANDOM_FEATURE_CANDIDATE",
        "MLP_OPTIONS", "default_family", "refits_cold", "INCOMPARABLE", "CandidateScore",
        "check_candidates", "check_candidate_values",
        "fit_by_evidence", "warm_candidates", "selection_table",
    ]


def test_a_member_shadowed_by_a_submodule_is_not_covered(tmp_path: Path) -> None:
    page = tmp_path / "shadowed.md"
    page.write_text("::: laplace\n    options:\n      members: [marglik_training]\n")
    assert missing_names([page], ["laplace.marglik_training"]) == [
        "laplace.marglik_training.marglik_training"
    ]


def test_a_name_missing_from_the_pages_is_reported(tmp_path: Path) -> None:
    page = tmp_path / "partial.md"
    page.write_text(
        "# partial\n\n::: lapbo.sampling\n\n::: lapbo\n    options:\n"
        "      members: [LaplaceBNN, __version__, fit_laplace_bnn]\n"
    )
    assert missing_names([page], ["lapbo", "lapbo.sampling"]) == [
        "lapbo.ConditionedLaplaceBNN"
    ]
    page.write_text("::: lapbo.model.LaplaceBNN\n")
    assert missing_names([page], ["lapbo.model", "lapbo.linearized_model"]) == [
        "lapbo.linearized_model.PREDICT_CHUNK_BYTES",
        "lapbo.linearized_model.ConditionedLaplaceBNN",
    ]


def test_the_site_builds_strictly(tmp_path: Path) -> None:
    start = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert time.perf_counter() - start < 60
    # every object the directives promise has its anchor in the built pages
    html = " ".join(p.read_text() for p in (tmp_path / "api").rglob("*.html"))
    anchors = set(re.findall(r'id="([A-Za-z_][\w.]*)"', html))
    paths = rendered_paths(sorted(API_PAGES.glob("*.md")))
    assert sorted(set(paths) - anchors) == []
    assert (tmp_path / "assets" / "benchmarks" / "results" / "bo_convergence.png").exists()

