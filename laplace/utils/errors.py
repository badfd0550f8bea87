"""Exception classes shared by the ``laplace`` package."""

from __future__ import annotations


class MissingKeyError(KeyError, ValueError):
    """A name that is not there: a dict key of a batch or a module name.

    laplace-torch raises ``KeyError`` in these cases; deriving from ``ValueError``
    as well keeps ``except ValueError`` callers working. ``str()`` gives the plain
    message (``KeyError`` would quote it).
    """

    def __str__(self) -> str:
        return str(self.args[0]) if len(self.args) == 1 else super().__str__()
