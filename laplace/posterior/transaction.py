"""A ``fit`` that raises leaves the Laplace approximation as it was before the call.

Fitting changes the posterior's state batch by batch (the number of outputs on the first
batch, then the loss and the curvature), so an error in a later batch (NaN targets, a
backend that cannot handle a layer, a non-finite loss) used to leave a half-fitted
object that predicted, sampled and gave an evidence from part of the data without a
word. ``restores_state_on_error`` wraps a ``fit`` method: it keeps a shallow copy of the
object's attributes (plus copies of whatever the fit changes in place, from the
object's ``_fit_inplace_state(override)``) and puts them back when the call raises.
Nested fits (a subclass's ``fit`` calling its parent's) keep only the outermost copy.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

F = TypeVar("F", bound=Callable[..., Any])

_ACTIVE = "_fit_state_saved"


def restores_state_on_error(fit: F) -> F:
    """Decorate ``fit(self, train_loader, override=True, ...)`` so that it is all or
    nothing: on any exception the instance's attributes are restored, then it re-raises."""

    @functools.wraps(fit)
    def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
        if self.__dict__.get(_ACTIVE):
            return fit(self, *args, **kwargs)
        override = kwargs.get("override", args[1] if len(args) > 1 else True)
        saved = dict(self.__dict__)
        saved.update(self._fit_inplace_state(override is True))
        self.__dict__[_ACTIVE] = True
        try:
            return fit(self, *args, **kwargs)
        except BaseException:
            self.__dict__.clear()
            self.__dict__.update(saved)
            self._invalidate()  # caches may hold tensors the fit changed in place
            raise
        finally:
            self.__dict__.pop(_ACTIVE, None)

    return wrapper  # type: ignore[return-value]
