"""BoTorch's pathwise sampling for ``LaplaceBNN``: ``draw_matheron_paths`` and all that
builds on it.

BoTorch draws posterior sample paths through a dispatcher on the model's type
(``botorch.sampling.pathwise.DrawMatheronPaths``), which ``get_matheron_path_model``,
``PathwiseThompsonSampling``, ``get_optimal_samples`` (and so ``qJointEntropySearch`` and
``qPredictiveEntropySearch``) call. Importing ``lapbo`` registers ``LaplaceBNN`` and its
conditioned models here. Their posterior is Gaussian in the weights, so a draw is an
exact path of the linearized network (``lapbo.sampling``),

    f_s(x) = f(x; θ*) + J(x) (θ_s − θ*),

where BoTorch's GP paths approximate the prior by random features and update it by
Matheron's rule: ``prior_sampler`` and ``update_strategy`` (the GP's two halves of that
construction) have nothing to act on and are ignored.

Shapes are those of BoTorch's paths: the dimensions ``sample_shape + model.batch_shape``
broadcast with the batch dimensions of ``X`` ``(*batch, q, d)``, aligned on the right
(``PathwiseThompsonSampling`` gives each of ``q`` points its own sample this way); a
path returns ``(*b, q)`` for one output and, for ``k`` outputs, ``(*b, k, q)`` with the
outputs on the last batch dimension, which must be 1 or ``k`` in ``X`` (BoTorch's
``MatheronPathModel`` inserts it; a ``(q, d)`` ``X`` is read as ``(1, q, d)``), as for a
batched multi-output GP.
"""

from __future__ import annotations

from typing import Any

import torch
from botorch.sampling.pathwise.paths import SamplePath
from botorch.sampling.pathwise.posterior_samplers import DrawMatheronPaths
from torch import Size, Tensor

from lapbo.linearized_model import _LinearizedModel


class LinearizedSamplePath(SamplePath):
    """Sample paths of a ``LaplaceBNN`` (or conditioned model) in BoTorch's convention.

    Args:
        model: the fitted model.
        offsets: ``θ_s − θ*`` ``(*sample_shape, *model.batch_shape, P)``.
        sample_shape: the sample dimensions leading ``offsets``.
    """

    def __init__(self, model: _LinearizedModel, offsets: Tensor, sample_shape: Size) -> None:
        super().__init__()
        self.model = model
        self.sample_shape = Size(sample_shape)
        self.register_buffer("offsets", offsets)

    def set_ensemble_as_batch(self, ensemble_as_batch: bool) -> None:
        """No-op: a ``LaplaceBNN`` is not an ensemble model."""

    def forward(self, X: Tensor) -> Tensor:
        """Path values at ``X`` ``(*batch, q, d)`` on the original outcome scale: ``(*b, q)``
        for one output, ``(*b, k, q)`` for ``k`` (see the module's docstring)."""
        model = self.model
        model.eval()
        model._check_query(X)
        idx = model._outputs
        k = len(idx)
        if k > 1 and X.ndim == 2:  # one set of q points for every output, as a GP's path
            X = X.unsqueeze(-3)
        if k > 1 and X.shape[-3] not in (1, k):
            raise ValueError(f"A path of a model with {k} outputs takes X of shape "
                             f"(q, d) or (*batch, 1 or {k}, q, d), the outputs on the last batch "
                             f"dimension (as BoTorch's MatheronPathModel passes it); got "
                             f"{tuple(X.shape)}.")
        X_tf = model._transform_query(X)  # q points → q' (``InputPerturbation``: q·n_w)
        q = X_tf.shape[-2]
        J, f = model._features(X_tf, idx)  # (*bx, q·k, P), (*bx, q·k)
        # the sample and model batch dimensions, aligned left of X's batch (and, for k
        # outputs, of the output dimension X carries at -3)
        delta = self.offsets.reshape(*self.offsets.shape[:-1], *([1] * (k > 1)),
                                     self.offsets.shape[-1], 1)
        values = (f.unsqueeze(-1) + J @ delta).squeeze(-1)  # (*b, q·k)
        values = values.reshape(*values.shape[:-1], q, k).to(model._output_dtype(X))
        ot = model._outcome_transform_for(idx)
        if ot is not None:
            values, _ = ot.untransform(values)
        if k == 1:
            return values.squeeze(-1)
        # (*b, 1 or k, q, k): output j of the path at X's j-th slice
        values = values.expand(*values.shape[:-3], k, q, k)
        return values.diagonal(dim1=-3, dim2=-1).mT  # diagonal puts it last: (*b, k, q)


def _paths(model: _LinearizedModel, sample_shape: Size) -> LinearizedSamplePath:
    """One model's paths: ``sample_shape`` draws of its weight posterior."""
    n = sample_shape.numel()
    offsets = model._gaussian().sample_offsets(n)  # (n, *batch, P), global RNG as BoTorch
    offsets = offsets.to(model._compute_dtype)
    return LinearizedSamplePath(model, offsets.reshape(*sample_shape, *offsets.shape[1:]),
                                sample_shape)


class MixtureSamplePath(SamplePath):
    """Sample paths of an evidence-weighted mixture (``model_averaging``): each draw
    belongs to one component, picked with the component's weight.

    Args:
        parts: one ``LinearizedSamplePath`` per component, each with all the draws.
        component: the component of each draw, ``sample_shape`` (long).
    """

    def __init__(self, parts: list[LinearizedSamplePath], component: Tensor) -> None:
        super().__init__()
        self.parts = torch.nn.ModuleList(parts)
        self.register_buffer("component", component)

    def set_ensemble_as_batch(self, ensemble_as_batch: bool) -> None:
        """No-op: a ``LaplaceBNN`` is not an ensemble model."""

    def forward(self, X: Tensor) -> Tensor:
        """As ``LinearizedSamplePath.forward``: each draw's values from its component."""
        values = [part(X) for part in self.parts]
        shape = torch.broadcast_shapes(*(v.shape for v in values))
        first = self.parts[0]
        trailing = first.offsets.ndim - 1 - len(first.sample_shape)  # model batch dims
        trailing += 1 + (len(first.model._outputs) > 1)  # q, and the outputs
        mask = torch.nn.functional.one_hot(self.component, len(values)).movedim(-1, 0)
        mask = mask.reshape(*mask.shape, *([1] * trailing)).to(values[0])
        return (mask * torch.stack([v.expand(shape) for v in values])).sum(0)


@DrawMatheronPaths.register(_LinearizedModel)
def _draw_matheron_paths_linearized(model: _LinearizedModel, *, sample_shape: Size,
                                    **ignored: Any) -> SamplePath:
    """``draw_matheron_paths`` for ``LaplaceBNN``: exact paths of the linearized network
    (``prior_sampler`` and ``update_strategy`` do not apply; see the module's docstring)."""
    sample_shape = Size(sample_shape)
    if not model._mixture:
        return _paths(model, sample_shape)
    weights = torch.tensor([w for w, _ in model._mixture], dtype=torch.float64)
    n = sample_shape.numel()
    component = torch.multinomial(weights, n, replacement=True).reshape(sample_shape)
    return MixtureSamplePath([_paths(c, sample_shape) for _, c in model._mixture], component)
