"""Exception classes shared by the ``laplace`` package.

They live in ``utils``, the lowest layer, so that every layer can raise them;
``laplace.precision`` re-exports the precision errors under their former path.
"""

from __future__ import annotations


class MissingKeyError(KeyError, ValueError):
    """A name that is not there: a dict key of a batch or a module name.

    laplace-torch raises ``KeyError`` in these cases; deriving from ``ValueError``
    as well keeps ``except ValueError`` callers working. ``str()`` gives the plain
    message (``KeyError`` would quote it).
    """

    def __str__(self) -> str:
        return str(self.args[0]) if len(self.args) == 1 else super().__str__()


class MissingArgumentError(TypeError, ValueError):
    """A required argument was not given (or given as ``None``).

    A ``TypeError`` as Python raises where laplace-torch makes the argument required
    (``SubnetLaplace``'s ``subnetwork_indices``), and a ``ValueError`` as this project
    raised before.
    """


class UnsupportedLayerError(NotImplementedError, ValueError):
    """A curvature structure that a layer of the model does not support (e.g. Kronecker
    factors of an ``nn.Embedding``): laplace-torch raises ``NotImplementedError`` there,
    this project raised ``ValueError``."""


class NotPositiveDefiniteError(ValueError):
    """The posterior precision is not positive definite."""


class NotFittedError(AttributeError, ValueError):
    """A quantity that needs ``fit`` was asked for before it.

    An ``AttributeError`` as laplace-torch raises ("Laplace not fitted"), and a
    ``ValueError`` as this project raised before.
    """


def not_pd_message(structure: str, detail: str = "") -> str:
    """The ``NotPositiveDefiniteError`` message for a ``structure`` such as ``"Kronecker"``."""
    return (
        f"The {structure} posterior precision is not positive definite{detail}. "
        "Increase the prior precision, use a GGN backend (the Hessian can be "
        "indefinite), or check the curvature for NaN/inf values."
    )


class DistributedError(RuntimeError):
    """A distributed fit cannot go on: no process group for ``distributed=True``, a
    structure that cannot be sharded, or another rank failed (the message names the
    rank and its error)."""
