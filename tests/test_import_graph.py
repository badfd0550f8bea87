"""The import graph of ``laplace/`` and ``lapbo/``: no circles, no arrow running back up.

Every module is parsed with ``ast``; every ``import`` / ``from ... import`` statement
counts, at module level or inside a function, and also inside ``if TYPE_CHECKING:``
(an annotation is a dependency too). ``from pkg import name`` is an edge to
``pkg.name`` when that is a module, else to ``pkg`` (its ``__init__``). The only
exemption is ``ANNOTATION_ONLY``: ``lapbo`` modules that name ``LaplaceBNN`` in
annotations under ``TYPE_CHECKING`` (such an import never runs, so it cannot close an
import circle); the test checks that these edges stay annotation-only.

Layers of ``laplace`` (a module may import only its own layer and those below):

0. ``utils`` — enums, checks, data handling, errors, Kronecker matrices, metrics;
1. ``curvature`` — backends giving ``H`` (full, diagonal, Kronecker, square-root rows);
2. ``precision`` — storage classes of the posterior precision ``Σ⁻¹ = H/σ²T + P₀``;
3. ``predictive`` — link approximations from a Gaussian over logits to probabilities.
   The issue sketch put it above ``posterior``, but in the code it is a set of pure
   functions of ``(f_mu, f_var)`` that the posteriors call, so it sits below them;
4. ``posterior`` — the Laplace classes, combining the three layers above;
5. the laplace-torch facades: ``laplace``, ``laplace.laplace``, ``baselaplace``,
   ``lllaplace``, ``subnetlaplace``, ``marglik_training``.

``lapbo`` sits above all of it and imports ``laplace`` only through ``PUBLIC`` modules
and names without a leading underscore (dunders such as ``__version__`` are public
module attributes, not private names). The third-party backend adapters of
``laplace.curvature`` are loaded by name (``importlib``) and import only
``curvature.curvature``, which their static imports here confirm.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("laplace", "lapbo")
LAYERS = ("utils", "curvature", "precision", "predictive", "posterior")
FACADE_RANK = len(LAYERS)
PUBLIC = {
    "laplace", "laplace.baselaplace", "laplace.lllaplace", "laplace.subnetlaplace",
    "laplace.curvature", "laplace.utils", "laplace.marglik_training",
}
ANNOTATION_ONLY = {("lapbo.training", "lapbo.model"), ("lapbo.selection", "lapbo.model"),
                   ("lapbo.saved_state", "lapbo.model")}


@dataclass(frozen=True)
class Import:
    source: str
    target: str
    names: tuple[str, ...]
    line: int
    type_checking: bool


def find_modules(root: Path = ROOT) -> dict[str, Path]:
    """Dotted module name -> file, for every ``.py`` file of ``PACKAGES``."""
    modules = {}
    for package in PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            modules[".".join(parts)] = path
    return modules


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _statements(tree: ast.AST, guarded: bool = False) -> Iterator[tuple[ast.stmt, bool]]:
    """Every import statement of ``tree`` (functions and classes included) and whether
    it sits under ``if TYPE_CHECKING:``."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.Import | ast.ImportFrom):
            yield node, guarded
        elif isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.body:
                yield from _statements(ast.Module(body=[child], type_ignores=[]), True)
            for child in node.orelse:
                yield from _statements(ast.Module(body=[child], type_ignores=[]), guarded)
        else:
            yield from _statements(node, guarded)


def _resolve(name: str, modules: dict[str, Path]) -> str | None:
    """The longest prefix of dotted ``name`` that is one of ``modules``."""
    parts = name.split(".")
    for end in range(len(parts), 0, -1):
        if ".".join(parts[:end]) in modules:
            return ".".join(parts[:end])
    return None


def module_imports(source: str, modules: dict[str, Path]) -> list[Import]:
    """Imports of ``source`` that land in ``modules`` (self-imports dropped)."""
    path = modules[source]
    package = source if path.name == "__init__.py" else source.rpartition(".")[0]
    found = []
    for node, guarded in _statements(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            pairs = [(alias.name, ()) for alias in node.names]
        else:
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([node.module] if node.module else [])])
            pairs = [(f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base, (a.name,))
                     for a in node.names]
        for name, names in pairs:
            target = _resolve(name, modules)
            if target is not None and target != source:
                found.append(Import(source, target, names, node.lineno, guarded))
    return found


def all_imports(modules: dict[str, Path]) -> list[Import]:
    return [imp for source in modules for imp in module_imports(source, modules)]


def import_graph(imports: list[Import]) -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for imp in imports:
        if (imp.source, imp.target) not in ANNOTATION_ONLY:
            graph.setdefault(imp.source, set()).add(imp.target)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """A path ``[a, b, ..., a]`` around an import circle, or ``None`` (iterative DFS)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: finished
    for start in sorted(graph):
        if state.get(start):
            continue
        path, stack = [start], [iter(sorted(graph.get(start, ())))]
        state[start] = 1
        while stack:
            nxt = next(stack[-1], None)
            if nxt is None:
                state[path.pop()] = 2
                stack.pop()
            elif state.get(nxt) == 1:
                return [*path[path.index(nxt):], nxt]
            elif not state.get(nxt):
                state[nxt] = 1
                path.append(nxt)
                stack.append(iter(sorted(graph.get(nxt, ()))))
    return None


def laplace_rank(module: str) -> int:
    """Layer of a ``laplace`` module (see the module docstring)."""
    parts = module.split(".")
    return LAYERS.index(parts[1]) if len(parts) > 1 and parts[1] in LAYERS else FACADE_RANK


MODULES = find_modules()
IMPORTS = all_imports(MODULES)


def test_parser_sees_module_function_and_type_checking_imports():
    """Known edges of each kind, so that an empty graph cannot pass the tests below."""
    edges = {(i.source, i.target, i.type_checking) for i in IMPORTS}
    assert len(MODULES) > 60
    # module level, function level (``_require_fit``) and under TYPE_CHECKING
    assert ("laplace.posterior.base", "laplace.curvature.curvature", False) in edges
    assert ("laplace.posterior.base", "laplace.precision.base", False) in edges
    assert ("laplace.curvature.lowrank", "laplace.curvature.curvature", True) in edges
    assert ("lapbo.model", "lapbo.training", False) in edges  # ``from lapbo import training``


def test_find_cycle_on_small_graphs():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "c": {"d"}, "d": {"c"}}) == ["c", "d", "c"]


def test_no_import_cycles():
    """No module imports a module that (transitively) imports it back."""
    cycle = find_cycle(import_graph(IMPORTS))
    assert cycle is None, "import circle: " + " -> ".join(cycle)


def test_annotation_only_edges_stay_under_type_checking():
    for source, target in ANNOTATION_ONLY:
        found = [i for i in IMPORTS if (i.source, i.target) == (source, target)]
        assert found, f"{source} no longer imports {target}: drop it from ANNOTATION_ONLY"
        runtime = [i.line for i in found if not i.type_checking]
        assert not runtime, f"{source} imports {target} at run time (lines {runtime})"


def test_laplace_layers_point_down():
    upward = [
        f"{i.source}:{i.line} -> {i.target}"
        for i in IMPORTS
        if i.source.startswith("laplace") and i.target.startswith("laplace")
        and laplace_rank(i.target) > laplace_rank(i.source)
    ]
    assert upward == []
    assert [i for i in IMPORTS if i.source.startswith("laplace")
            and i.target.startswith("lapbo")] == []


def is_private(name: str) -> bool:
    """A leading underscore, except a dunder (``__version__``)."""
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def test_lapbo_uses_only_the_public_laplace_api():
    used = [i for i in IMPORTS if i.source.startswith("lapbo") and i.target.startswith("laplace")]
    assert used, "lapbo is expected to build on laplace"
    private = [
        f"{i.source}:{i.line} -> {i.target} {i.names}" for i in used
        if i.target not in PUBLIC or any(is_private(name) for name in i.names)
    ]
    assert private == []
