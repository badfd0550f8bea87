"""Data-parallel Laplace fits across ``torch.distributed`` processes.

A Laplace fit is a sum over the training data of per-batch curvature and loss, so a fit
on data sharded across the processes of a default process group (each rank's loader
yields its own shard, e.g. through a ``DistributedSampler``) is the local fit followed by
one ``all_reduce`` sum of the accumulated state. This module holds everything that
mechanism needs, and nothing else: whether a fit is distributed (``resolve``), the
global data count (``data_count``), the sums (``all_reduce_nested``, ``concat_rows``),
the agreement on errors so that an error on one rank reaches every rank instead of
leaving the others waiting in a collective (``collective_errors``), validation metrics
summed over sharded validation loaders (``reduced_metric``), the rank-0 helpers for
progress bars and files, and a counter of the bytes all-reduced (``communication``).

Every tensor is reduced on the device it lives on (CPU tensors for Gloo, the rank's
CUDA device for NCCL): nothing here moves data between devices.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

from laplace.utils.errors import DistributedError

__all__ = [
    "DistributedError",
    "all_reduce_nested",
    "collective_errors",
    "communication",
    "concat_rows",
    "data_count",
    "is_active",
    "is_main_process",
    "resolve",
    "show_progress",
    "unwrap_parallel",
    "validate_sharded",
]

_COUNTER = {"bytes": 0, "calls": 0}


# ------------------------------------------------------------------ detection
def is_active() -> bool:
    """Whether a default process group with more than one process is initialised."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def resolve(distributed: Any, name: str = "distributed") -> bool:
    """The ``distributed`` argument of ``fit`` as a bool.

    ``None`` (auto) is ``is_active()``; ``True`` requires an initialised default process
    group (a world of one process is allowed and reduces nothing); ``False`` forces a
    local fit.

    Raises:
        ValueError: ``distributed`` is not ``None``, ``True`` or ``False``.
        DistributedError: ``True`` without an initialised process group.
    """
    if distributed is not None and not isinstance(distributed, bool):
        raise ValueError(f"{name} must be None, True or False, got {distributed!r}.")
    if distributed is None:
        return is_active()
    if distributed and not (dist.is_available() and dist.is_initialized()):
        raise DistributedError(
            f"{name}=True needs an initialised default process group: call "
            "torch.distributed.init_process_group(...) first (torchrun sets up the "
            "environment for it), or pass distributed=False."
        )
    return distributed


def require_local(distributed: Any, what: str) -> None:
    """Refuse a distributed fit of a function-space (GP) Laplace approximation.

    These posteriors are built on a subset of training points drawn by their global
    index (``n_subset`` / ``num_data``), and the function-space ELBO of ``VaLLA`` is
    optimised over the data set's batches: a sharded loader has neither. Fit them on
    every rank with all the data and ``distributed=False``.

    Raises:
        DistributedError: ``distributed`` resolves to ``True``.
    """
    if resolve(distributed):
        raise DistributedError(
            f"{what} cannot be fitted on data sharded across processes: its subset of "
            "data is drawn by global index. Give every rank all the data and pass "
            "distributed=False."
        )


def _rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def _world() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def is_main_process() -> bool:
    """Rank 0 of the default process group, or any process when there is none: the one
    process that shows progress bars and writes files."""
    return _rank() == 0


def show_progress(progress_bar: bool) -> bool:
    """``progress_bar`` on the main process only (the ``disable=not ...`` of tqdm)."""
    return bool(progress_bar) and is_main_process()


def unwrap_parallel(model: nn.Module) -> nn.Module:
    """The module inside ``DistributedDataParallel`` / ``DataParallel`` (else ``model``).

    The posterior is over the wrapped module's parameters, so its names carry no
    ``module.`` prefix and its state loads into an LA over the unwrapped model.
    """
    wrappers = (nn.parallel.DistributedDataParallel, nn.DataParallel)
    while isinstance(model, wrappers):
        model = model.module
    return model


# --------------------------------------------------------------- reductions
@contextmanager
def communication() -> Iterator[dict[str, int]]:
    """Count the ``all_reduce`` traffic inside the block.

    Yields a dict whose ``"bytes"`` (payload bytes all-reduced by this process) and
    ``"calls"`` (number of ``all_reduce`` calls) are filled in when the block exits.
    """
    start = dict(_COUNTER)
    out = {"bytes": 0, "calls": 0}
    try:
        yield out
    finally:
        out.update({k: _COUNTER[k] - start[k] for k in out})


def _all_reduce(buffer: Tensor) -> Tensor:
    """Sum ``buffer`` (contiguous) in place over the default group; returns it."""
    dist.all_reduce(buffer, op=dist.ReduceOp.SUM)
    _COUNTER["bytes"] += buffer.numel() * buffer.element_size()
    _COUNTER["calls"] += 1
    return buffer


def _leaves(state: Any) -> list[Tensor]:
    if isinstance(state, Tensor):
        return [state]
    if isinstance(state, (list, tuple)):
        return [t for s in state for t in _leaves(s)]
    raise TypeError(f"Cannot all-reduce a {type(state).__name__}: tensors in lists only.")


def _rebuild(state: Any, leaves: Iterator[Tensor]) -> Any:
    if isinstance(state, Tensor):
        return next(leaves)
    return type(state)(_rebuild(s, leaves) for s in state)


def all_reduce_nested(state: Any) -> Any:
    """The sum over all processes of a tensor or nested lists/tuples of tensors.

    Tensors of one dtype and device travel in one flat buffer (one ``all_reduce`` per
    group, of exactly the state's size); the result has ``state``'s structure, shapes,
    dtypes and devices. The inputs are not modified.
    """
    leaves = _leaves(state)
    groups: dict[tuple[torch.dtype, torch.device], list[int]] = {}
    for i, t in enumerate(leaves):
        groups.setdefault((t.dtype, t.device), []).append(i)
    out: list[Tensor] = list(leaves)
    for indices in groups.values():
        flat = _all_reduce(torch.cat([leaves[i].reshape(-1) for i in indices]))
        sizes = [leaves[i].numel() for i in indices]
        for i, chunk in zip(indices, flat.split(sizes)):
            out[i] = chunk.reshape(leaves[i].shape)
    return _rebuild(state, iter(out))


def concat_rows(rows: list[Tensor] | None, max_rows: int, like: Tensor) -> list[Tensor] | None:
    """Every process's rows ``(n_r, P)`` stacked in rank order, or ``None``.

    ``None`` when any process has no rows (``None``) or when there are more than
    ``max_rows`` in all (then the stacked rows would exceed the ``P × P`` curvature).
    One ``all_reduce`` of the counts, one of a zero-padded ``(Σ n_r, P)`` buffer.

    Args:
        rows: this process's row blocks, each ``(n, P)``.
        max_rows: the most rows worth keeping (``P``).
        like: a tensor with the rows' dtype and device (for an empty shard).
    """
    n_local = -1 if rows is None else sum(r.shape[0] for r in rows)
    counts = torch.zeros(_world(), dtype=torch.float64, device=like.device)
    counts[_rank()] = n_local
    counts = _all_reduce(counts).to(torch.int64)
    if bool((counts < 0).any()) or int(counts.sum()) > max_rows:
        return None
    offset, total = int(counts[: _rank()].sum()), int(counts.sum())
    width = rows[0].shape[1] if rows else max_rows
    buffer = like.new_zeros(total, width)
    if n_local > 0:
        buffer[offset : offset + n_local] = torch.cat(rows)
    return [_all_reduce(buffer)]


def data_count(loader: Any, distributed: bool, device: torch.device,
               local_count: Callable[[Any], int]) -> int:
    """The number of training points over all processes.

    Locally this is ``local_count(loader)`` (``len(loader.dataset)``); a loader with a
    ``DistributedSampler`` counts its shard, ``len(loader.sampler)`` (its
    ``loader.dataset`` is the whole data set). A ``DistributedSampler`` that pads the
    data to equal shards repeats points, which a single process would not see: that is
    warned about (build the shards without padding for exact results).
    """
    if not distributed:
        return local_count(loader)
    with collective_errors(True, "counting the training data", device):
        n = _local_shard_size(loader, local_count)
    total = all_reduce_nested(torch.tensor([float(n)], dtype=torch.float64, device=device))
    return int(total.item())


def _local_shard_size(loader: Any, local_count: Callable[[Any], int]) -> int:
    from torch.utils.data.distributed import DistributedSampler

    sampler = getattr(loader, "sampler", None)
    if not isinstance(sampler, DistributedSampler):
        return local_count(loader)
    if sampler.total_size > len(sampler.dataset) and not sampler.drop_last:
        warnings.warn(
            f"DistributedSampler pads {len(sampler.dataset)} points to "
            f"{sampler.total_size} by repeating some: the fit counts those twice. Shard "
            "without padding (e.g. a Subset per rank) for the single-process result.",
            stacklevel=4,
        )
    n = len(sampler)
    if n == 0:
        raise ValueError("The data loader is empty: it has no data points to fit on.")
    return n


# ------------------------------------------------------------------- errors
@contextmanager
def collective_errors(enabled: bool, stage: str,
                      device: torch.device | None = None) -> Iterator[None]:
    """Agree on errors raised in the block before any rank enters the next collective.

    The block must run no collective itself. When ``enabled``, every rank leaves the
    block through one ``all_reduce`` of a failure flag: if any rank failed, the failing
    ranks re-raise their own exception and the others raise ``DistributedError`` naming
    the failing rank and its message, so no rank waits forever for a failed one.
    """
    error: BaseException | None = None
    try:
        yield
    except Exception as err:  # noqa: BLE001  (re-raised below, after the agreement)
        if not enabled:
            raise
        error = err
    if enabled:
        _agree(error, stage, device or torch.device("cpu"))


def _agree(error: BaseException | None, stage: str, device: torch.device) -> None:
    flag = torch.tensor([0.0 if error is None else 1.0], dtype=torch.float64, device=device)
    if float(_all_reduce(flag).item()) == 0:
        return
    mine = None if error is None else (_rank(), type(error).__name__, str(error))
    reports: list[Any] = [None] * _world()
    dist.all_gather_object(reports, mine)
    if error is not None:
        raise error
    rank, kind, message = next(r for r in reports if r is not None)
    raise DistributedError(f"Rank {rank} failed while {stage}: {kind}: {message}")


# ------------------------------------------------------------------ metrics
def validate_sharded(validate: Callable[..., float], loss: Any, device: torch.device,
                     **kwargs: Any) -> float:
    """``validate(loss=...)`` over every process's shard of a validation loader.

    The local pass runs inside ``collective_errors`` (an empty shard or a failed
    prediction on one rank reaches every rank), then the shards are combined:

    * a metric object with ``_sum_states`` (``RunningNLLMetric``,
      ``MeanSquaredErrorMetric``): its running sums are all-reduced, then ``compute``;
    * another metric object (e.g. a torchmetrics metric, which synchronises its own
      states across processes in ``compute``): its ``compute``;
    * a callable ``loss(preds, [var,] y)``: applied once to the predictions of every
      shard, gathered in rank order, as a single process applies it to the whole loader.
    """
    is_metric = all(callable(getattr(loss, n, None)) for n in ("update", "compute", "reset"))
    local = _LocalMetric(loss if is_metric else _Gathered())
    with collective_errors(True, "validating", device):
        validate(loss=local, **kwargs)
    metric = local.metric
    if isinstance(metric, _Gathered):
        return float(torch.as_tensor(metric.apply(loss)).sum().item())
    if hasattr(metric, "_sum_states"):
        _sum_states(metric)
    return float(torch.as_tensor(metric.compute()).sum().item())


def _sum_states(metric: Any) -> None:
    """All-reduce the running sums named by ``metric._sum_states``, in place."""
    names = metric._sum_states
    values = [torch.as_tensor(getattr(metric, n), dtype=torch.float64) for n in names]
    for name, old, new in zip(names, values, all_reduce_nested(values)):
        kind = type(getattr(metric, name))
        setattr(metric, name, new.to(old.dtype) if kind is Tensor else kind(new.item()))


class _LocalMetric:
    """``metric`` whose ``compute`` is postponed: ``validate`` only feeds it locally."""

    def __init__(self, metric: Any) -> None:
        self.metric = metric

    def update(self, *args: Any) -> None:
        self.metric.update(*args)

    def reset(self) -> None:
        self.metric.reset()

    def compute(self) -> Tensor:
        return torch.zeros(())


class _Gathered:
    """The predictions and targets of a shard, for a callable loss over all shards."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.parts: list[tuple[Tensor, ...]] = []

    def update(self, *args: Tensor) -> None:
        self.parts.append(tuple(a.detach() for a in args))

    def compute(self) -> Tensor:
        return torch.zeros(())

    def apply(self, loss: Callable[..., Tensor]) -> Tensor:
        from laplace.utils.metrics import _takes_three_arguments

        local = [torch.cat(chunks).cpu() for chunks in zip(*self.parts)]
        gathered: list[Any] = [None] * _world()
        dist.all_gather_object(gathered, local)
        columns = [torch.cat(parts) for parts in zip(*gathered)]
        if len(columns) == 3 and not _takes_three_arguments(loss):
            columns = [columns[0], columns[2]]
        return loss(*columns)
