"""``fit`` and ``load_state_dict`` are all or nothing: a call that raises leaves the
Laplace approximation as it was before it.

Fitting changes the posterior's state batch by batch (the number of outputs on the first
batch, then the loss and the curvature), so an error in a later batch (NaN targets, a
backend that cannot handle a layer, a non-finite loss) used to leave a half-fitted
object that predicted, sampled and gave an evidence from part of the data without a
word; loading a state set its entries one after the other, so a refused entry left the
ones before it loaded. ``restores_state_on_error`` wraps such a method: it keeps a
shallow copy of the object's attributes (plus copies of what ``fit(override=False)``
changes in place, from the object's ``_fit_inplace_state``) and puts them back when the
call raises. Nested calls (a subclass's method calling its parent's) keep only the
outermost copy.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any, TypeVar

F = TypeVar("F", bound=Callable[..., Any])

_ACTIVE = "_state_saved_for_restore"


def restores_state_on_error(method: F) -> F:
    """Decorate ``method(self, ...)`` so that on any exception the instance's attributes
    are restored before it re-raises. A method with an ``override`` argument (``fit``)
    that is not ``True`` adds to the stored curvature in place: that is copied too."""
    names = list(inspect.signature(method).parameters)[1:]  # after self
    position = names.index("override") if "override" in names else None

    @functools.wraps(method)
    def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
        if self.__dict__.get(_ACTIVE):
            return method(self, *args, **kwargs)
        saved = dict(self.__dict__)
        if position is not None:
            override = kwargs.get("override", args[position] if len(args) > position else True)
            saved.update(self._fit_inplace_state(override is True))
        self.__dict__[_ACTIVE] = True
        try:
            return method(self, *args, **kwargs)
        except BaseException:
            self.__dict__.clear()
            self.__dict__.update(saved)
            self._invalidate()  # caches may hold tensors the call changed in place
            raise
        finally:
            self.__dict__.pop(_ACTIVE, None)

    return wrapper  # type: ignore[return-value]
