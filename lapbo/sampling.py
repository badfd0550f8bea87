"""Pathwise Thompson samples of a linearized Laplace model.

A draw ``θ_s`` from the (possibly conditioned) weight posterior defines a deterministic
function of the inputs through the linearized network,

    f_s(x) = f(x; θ*) + J(x) (θ_s − θ*),

which is differentiable in ``x`` and can be optimised like any acquisition function
(Thompson sampling with gradient-based inner optimisation).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from lapbo import averaging, validation
from lapbo.linearized_model import _LinearizedModel


class PathwiseSamples(nn.Module):
    """``n_samples`` linearized sample paths of a ``LaplaceBNN`` (or conditioned model).

    Args:
        model: the fitted model.
        offsets: ``θ_s − θ*`` ``(n_samples, *model.batch_shape, P)``.
    """

    def __init__(self, model: _LinearizedModel, offsets: Tensor) -> None:
        super().__init__()
        self.model = model
        self.register_buffer("offsets", offsets)

    @property
    def n_samples(self) -> int:
        return self.offsets.shape[0]

    def forward(self, X: Tensor) -> Tensor:
        """Sample values at ``X`` ``(*batch, q, d)``: ``(n_samples, *b, q, m)`` where ``*b``
        broadcasts ``*batch`` with the model batch shape (original outcome scale)."""
        model = self.model
        model.eval()
        model._check_query(X)
        idx = model._outputs
        X_tf = model._transform_query(X)  # q points → q' (``InputPerturbation``: q·n_w)
        q, k = X_tf.shape[-2], len(idx)
        J, f = model._features(X_tf, idx)  # (*bx, q·k, P), (*bx, q·k)
        model_batch = self.offsets.shape[1:-1]
        batch = torch.broadcast_shapes(J.shape[:-2], model_batch)
        pad = len(batch) - len(model_batch)
        delta = self.offsets.reshape(
            self.n_samples, *([1] * pad), *model_batch, self.offsets.shape[-1], 1
        )
        values = f + (J @ delta).squeeze(-1)  # (S, *b, q·k)
        values = values.reshape(self.n_samples, *batch, q, k).to(model._output_dtype(X))
        ot = model._outcome_transform_for(idx)
        if ot is not None:
            values, _ = ot.untransform(values)
        return values


class MixturePathwiseSamples(nn.Module):
    """Sample paths of an evidence-weighted mixture: those of each component, stacked.

    Args:
        parts: one ``PathwiseSamples`` per component with at least one path, holding
            its share of the paths (``averaging.allocate_samples``).
    """

    def __init__(self, parts: list[PathwiseSamples]) -> None:
        super().__init__()
        self.parts = nn.ModuleList(parts)

    @property
    def n_samples(self) -> int:
        return sum(p.n_samples for p in self.parts)

    def forward(self, X: Tensor) -> Tensor:
        """``(n_samples, *b, q, m)``, as ``PathwiseSamples.forward``."""
        values = [p(X) for p in self.parts]
        batch = torch.broadcast_shapes(*(v.shape[1:] for v in values))
        return torch.cat([v.expand(v.shape[0], *batch) for v in values])


def draw_pathwise_samples(
    model: _LinearizedModel, n_samples: int, generator: torch.Generator | None = None
) -> PathwiseSamples | MixturePathwiseSamples:
    """Draw ``n_samples`` posterior sample paths ``f_s``.

    Args:
        model: a fitted ``LaplaceBNN`` or a model returned by its
            ``condition_on_observations``/``fantasize``/``subset_output``.
        n_samples: number of paths.
        generator: a ``torch.Generator`` (on the model's device) for reproducible draws.

    Returns:
        A module mapping ``X`` ``(*batch, q, d)`` to ``(n_samples, *b, q, m)``; for a
        model that averages candidates, each component's share of the paths (the paths
        of one component are consecutive).
    """
    if not isinstance(model, _LinearizedModel):
        raise TypeError("model must be a fitted LaplaceBNN (or a model derived from one), "
                        f"not {type(model).__name__}.")
    validation.check_generator("generator", generator, model._train_X.device)
    if model._mixture:
        counts = averaging.allocate_samples([w for w, _ in model._mixture], n_samples)
        return MixturePathwiseSamples([
            draw_pathwise_samples(c, n, generator)
            for (_, c), n in zip(model._mixture, counts) if n > 0])
    offsets = model._gaussian().sample_offsets(n_samples, generator).to(model._compute_dtype)
    return PathwiseSamples(model, offsets)
