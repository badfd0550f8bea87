"""Names that laplace-torch's modules expose because they import them.

User code written against laplace-torch imports some of them from there (``from
laplace.baselaplace import Kron``, ``from laplace.lllaplace import FeatureExtractor``).
``reexports`` gives a module a ``__getattr__`` that resolves such names where this
package defines them, on first access: the curvature adapters stay unimported until
used (``import laplace`` does not import BackPACK, Curvlinops or ASDL).
"""

from __future__ import annotations

from collections.abc import Callable
from importlib import import_module
from typing import Any

#: Where the names live here, searched in order.
_SOURCES = ("laplace", "laplace.curvature", "laplace.utils", "laplace.utils.enums")


def reexports(module: str, names: tuple[str, ...]) -> Callable[[str], Any]:
    """A module-level ``__getattr__`` for ``module`` that resolves ``names``."""
    wanted = frozenset(names)

    def __getattr__(name: str) -> Any:  # noqa: N807  (the module hook's name)
        if name in wanted:
            for source in _SOURCES:
                try:
                    return getattr(import_module(source), name)
                except AttributeError:
                    continue
        raise AttributeError(f"module {module!r} has no attribute {name!r}")

    return __getattr__
