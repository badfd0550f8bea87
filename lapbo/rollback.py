"""A ``LaplaceBNN.fit`` that raises leaves the model as it was before the call.

BoTorch's ``fit_gpytorch_mll`` rolls a model back to its state before a failed fit. A
``LaplaceBNN`` trains its network in place and then replaces its Laplace posterior, so an
error (or a ``KeyboardInterrupt``) between the two used to leave trained weights under
the previous fit's posterior: ``posterior()`` then combined two fits without a word.
``restored_on_error`` keeps, for the model and every submodule (network, transforms), a
shallow copy of its attributes and of its parameter, buffer and submodule tables, and a
copy of every parameter and buffer value, and puts them all back when the block raises.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

_TABLES = ("_parameters", "_buffers", "_modules")


@contextmanager
def restored_on_error(model: nn.Module) -> Iterator[None]:
    """Run the block; if it raises, restore ``model`` (and its submodules) first."""
    modules = list(model.modules())
    attributes = [dict(m.__dict__) for m in modules]
    tables = [{name: dict(m.__dict__[name]) for name in _TABLES} for m in modules]
    values = [(t, t.detach().clone()) for m in modules
              for t in (*m._parameters.values(), *m._buffers.values()) if t is not None]
    try:
        yield
    except BaseException:
        for module, attrs, saved in zip(modules, attributes, tables):
            module.__dict__.clear()
            module.__dict__.update(attrs)
            for name, table in saved.items():
                module.__dict__[name].clear()
                module.__dict__[name].update(table)
        with torch.no_grad():
            for tensor, value in values:
                tensor.data = value
        raise
