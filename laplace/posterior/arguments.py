"""laplace-torch's positional constructor arguments.

Every Laplace class of laplace-torch 0.3 takes its options positionally in its own order
(``KronLaplace(model, lik, σ, δ, μ₀, T, backprop, key_x, key_y, backend, damping)``,
``LowRankLaplace(model, lik, backend, σ, ...)``, ``SubnetLaplace(model, lik, indices, σ,
δ, μ₀, T, backend)``, ...). Here the variants share one constructor chain that passes
options on as keywords; ``PositionalArguments`` (the metaclass of ``BaseLaplace``) maps a
call's positional arguments after ``(model, likelihood)`` to keywords by the class's
``_POSITIONAL`` order, laplace-torch's, before the constructor runs. A user's positional
call then sets the option it set in laplace-torch (it used to land silently in another
one, e.g. a ``SubnetLaplace`` backend in ``enable_backprop``).
"""

from __future__ import annotations

import inspect
from typing import Any

#: ``BaseLaplace``'s order after ``(model, likelihood)`` (laplace-torch's ``BaseLaplace``,
#: ``FullLaplace``, ``DiagLaplace``).
BASE = ("sigma_noise", "prior_precision", "prior_mean", "temperature", "enable_backprop",
        "dict_key_x", "dict_key_y", "backend", "backend_kwargs", "asdl_fisher_kwargs")
#: The last-layer variants' order.
LAST_LAYER = ("sigma_noise", "prior_precision", "prior_mean", "temperature", "enable_backprop",
              "feature_reduction", "dict_key_x", "dict_key_y", "backend", "last_layer_name",
              "backend_kwargs", "asdl_fisher_kwargs")


def insert_after(order: tuple[str, ...], anchor: str, *names: str) -> tuple[str, ...]:
    """``order`` with ``names`` inserted after ``anchor``."""
    i = order.index(anchor) + 1
    return (*order[:i], *names, *order[i:])


def keywords_from_positional(cls: type, args: tuple[Any, ...], kwargs: dict[str, Any]
                             ) -> dict[str, Any]:
    """``kwargs`` plus the positional ``args`` (after ``model, likelihood``) named by
    ``cls._POSITIONAL``; renamed keywords (``cls._ALIASES``) take our names.

    Raises:
        TypeError: more positional arguments than the order names, or a value given
            both positionally and by keyword (as Python's own binding would).
    """
    kwargs = dict(kwargs)
    for old, new in getattr(cls, "_ALIASES", {}).items():
        if old in kwargs:
            if new in kwargs:
                raise TypeError(f"{cls.__name__}() got both {old!r} and {new!r}.")
            kwargs[new] = kwargs.pop(old)
    order = cls._POSITIONAL
    if len(args) > len(order):
        raise TypeError(f"{cls.__name__}() takes at most {len(order) + 2} positional arguments "
                        f"(model, likelihood, {', '.join(order)}) but {len(args) + 2} were given.")
    for name, value in zip(order, args):
        name = getattr(cls, "_ALIASES", {}).get(name, name)
        if name in kwargs:
            raise TypeError(f"{cls.__name__}() got multiple values for argument {name!r}.")
        kwargs[name] = value
    return kwargs


def laplace_torch_signature(cls: type) -> inspect.Signature:
    """``(model, likelihood, <cls._POSITIONAL with their defaults>, *, <other keywords>)``:
    what ``inspect.signature(cls)`` shows (the defaults are those of the constructors in
    the class's MRO)."""
    defaults: dict[str, Any] = {}
    keyword_only: list[inspect.Parameter] = []
    for klass in cls.__mro__:
        init = klass.__dict__.get("__init__")
        if init is None:
            continue
        for p in list(inspect.signature(init).parameters.values())[1:]:
            if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
                continue
            defaults.setdefault(p.name, p.default)
            if p.kind == p.KEYWORD_ONLY and all(q.name != p.name for q in keyword_only):
                keyword_only.append(p)
    aliases = {new: old for old, new in getattr(cls, "_ALIASES", {}).items()}
    P = inspect.Parameter
    params = [P("model", P.POSITIONAL_OR_KEYWORD), P("likelihood", P.POSITIONAL_OR_KEYWORD)]
    positional = [getattr(cls, "_ALIASES", {}).get(n, n) for n in cls._POSITIONAL]
    for name in positional:
        default = defaults.get(name, P.empty)
        if params[-1].default is not P.empty and default is P.empty:
            default = None  # a required option after defaulted ones: None raises
        params.append(P(aliases.get(name, name), P.POSITIONAL_OR_KEYWORD, default=default))
    params += [p for p in keyword_only if p.name not in positional]
    return inspect.Signature(params)


class PositionalArguments(type):
    """Metaclass of the Laplace classes: laplace-torch's positional arguments become
    keywords (``keywords_from_positional``) before the constructor runs; a class whose
    ``_POSITIONAL`` is ``None`` binds its arguments as its constructor declares them."""

    def __init__(cls, name: str, bases: tuple[type, ...], namespace: dict[str, Any]) -> None:
        super().__init__(name, bases, namespace)
        # A subclass that declares its own constructor but no order (a user's class with
        # its own positional arguments) binds them itself.
        mro = cls.__mro__
        order_at = next(i for i, k in enumerate(mro) if "_POSITIONAL" in k.__dict__)
        init_at = next(i for i, k in enumerate(mro) if "__init__" in k.__dict__)
        cls._maps_positional = cls._POSITIONAL is not None and order_at <= init_at
        init = inspect.signature(cls.__init__)
        forwards = any(p.kind == p.VAR_POSITIONAL for p in init.parameters.values())
        if cls._maps_positional or (cls._POSITIONAL is not None and forwards):
            cls.__signature__ = laplace_torch_signature(cls)
        else:  # the constructor's own, not an inherited laplace-torch order
            cls.__signature__ = init.replace(parameters=list(init.parameters.values())[1:])

    def __call__(cls, *args: Any, **kwargs: Any) -> Any:
        if cls._maps_positional and (len(args) > 2 or getattr(cls, "_ALIASES", None)):
            kwargs = keywords_from_positional(cls, args[2:], kwargs)
            args = args[:2]
        return super().__call__(*args, **kwargs)
