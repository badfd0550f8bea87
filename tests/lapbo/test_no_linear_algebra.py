"""``lapbo`` does no Gaussian linear algebra of its own (issue #12).

Every evidence value, posterior covariance, sample and conditioning comes from
``laplace``; ``lapbo`` only builds Jacobians, transforms and BoTorch objects. The test
parses every ``lapbo`` module with ``ast`` (docstrings and comments do not count) and fails
on any use of a factorization, triangular solve, eigendecomposition, determinant or
inverse: as an attribute (``torch.linalg.cholesky``, ``x.logdet()``), a bare name or an
imported name (``from linear_operator.utils.cholesky import psd_safe_cholesky``).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

LAPBO = Path(__file__).resolve().parents[2] / "lapbo"
FORBIDDEN = {
    "linalg", "cholesky", "cholesky_ex", "cholesky_solve", "cholesky_inverse",
    "psd_safe_cholesky", "eigh", "eigvalsh", "eig", "eigvals", "solve_triangular",
    "triangular_solve", "logdet", "slogdet", "det", "inverse", "inv", "pinv", "svd", "qr",
    "lu_factor", "lstsq",
}


def forbidden_uses(source: str) -> list[tuple[int, str]]:
    """``(line, name)`` of every forbidden attribute, name, import or imported module."""
    found = []
    for node in ast.walk(ast.parse(source)):
        names: list[str] = []
        if isinstance(node, ast.Attribute):
            names = [node.attr]
        elif isinstance(node, ast.Name):
            names = [node.id]
        elif isinstance(node, ast.ImportFrom):
            names = (node.module or "").split(".") + [a.name for a in node.names]
        elif isinstance(node, ast.Import):
            names = [part for a in node.names for part in a.name.split(".")]
        found += [(node.lineno, n) for n in names if n in FORBIDDEN]
    return sorted(found)


@pytest.mark.parametrize("path", sorted(LAPBO.glob("*.py")), ids=lambda p: p.name)
def test_lapbo_module_has_no_linear_algebra(path: Path) -> None:
    uses = forbidden_uses(path.read_text())
    assert uses == [], f"{path.name} does Gaussian linear algebra (line, call): {uses}"


def test_the_check_sees_calls_imports_and_methods() -> None:
    source = (
        "import torch.linalg\n"
        "from linear_operator.utils.cholesky import psd_safe_cholesky\n"
        "L = torch.linalg.cholesky(A)\n"
        "d = A.logdet()\n"
        "x = solve_triangular(L, b)\n"
        '"""docstrings may say cholesky, eigh or an inverse length scale"""\n'
    )
    assert sorted(forbidden_uses(source)) == [
        (1, "linalg"), (2, "cholesky"), (2, "psd_safe_cholesky"), (3, "cholesky"),
        (3, "linalg"), (4, "logdet"), (5, "solve_triangular"),
    ]
