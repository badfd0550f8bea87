"""Online marginal-likelihood training of a network and its prior (Immer et al., 2021).

The network is trained on the MAP objective with the current prior precision (and
observation noise); every ``marglik_frequency`` epochs a Laplace approximation over
all weights is fitted and a few Adam steps on the log hyperparameters maximise its
log marginal likelihood. The weights with the best marginal likelihood are kept.

[1] Immer, Bauer, Fortuin, Rätsch, Khan. *Scalable Marginal Likelihood Estimation
for Model Selection in Deep Learning.* ICML 2021.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping
from copy import deepcopy
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F
from tqdm.auto import trange

from laplace.curvature.curvature import CurvatureInterface
from laplace.curvature.torchfunc import TorchFuncGGN
from laplace.laplace import Laplace
from laplace.posterior.base import BaseLaplace
from laplace.utils import checks
from laplace.utils import distributed as distributed_fit
from laplace.utils.data import dataset_size, inputs_to, split_batch
from laplace.utils.enums import HessianStructure, Likelihood, PriorStructure, parse_option
from laplace.utils.parameters import expand_to_parameters, fix_prior_prec_structure, vector_of

__all__ = ["marglik_training"]

_STRUCTURES = (HessianStructure.FULL, HessianStructure.KRON, HessianStructure.DIAG)


def marglik_training(
    model: nn.Module,
    train_loader: Any,
    likelihood: Likelihood | str = Likelihood.CLASSIFICATION,
    hessian_structure: HessianStructure | str = HessianStructure.KRON,
    backend: type[CurvatureInterface] = TorchFuncGGN,
    optimizer_cls: type[torch.optim.Optimizer] = torch.optim.Adam,
    optimizer_kwargs: dict[str, Any] | None = None,
    scheduler_cls: type[Any] | None = None,
    scheduler_kwargs: dict[str, Any] | None = None,
    n_epochs: int = 300,
    lr_hyp: float = 1e-1,
    prior_structure: PriorStructure | str = PriorStructure.LAYERWISE,
    n_epochs_burnin: int = 0,
    n_hypersteps: int = 10,
    marglik_frequency: int = 1,
    prior_prec_init: float = 1.0,
    sigma_noise_init: float = 1.0,
    temperature: float = 1.0,
    fix_sigma_noise: bool = False,
    progress_bar: bool = False,
    enable_backprop: bool = False,
    dict_key_x: str = "input_ids",
    dict_key_y: str = "labels",
    distributed: bool | None = None,
) -> tuple[BaseLaplace, nn.Module, list[float], list[float]]:
    """Train ``model`` and its prior precision (and noise) by the Laplace marginal likelihood.

    Algorithm 1 of Immer et al. (2021). Each epoch minimises, per batch,
    ``loss(f, y) + 0.5·(δ⊙θ)·θ / (N·c)`` with the current prior precision ``δ``
    (expanded to the parameters for the ``"scalar"``/``"layerwise"``/``"diag"``
    structure), where ``loss`` is the mean cross-entropy (``c = T``) or the mean squared
    error (``c = T/(2σ²)``, so that the objective is proportional to the negative log
    joint ``SSE/(2σ²) + 0.5·δθᵀθ``). After ``n_epochs_burnin`` epochs, every
    ``marglik_frequency``-th epoch fits ``Laplace(model, likelihood, "all",
    hessian_structure, backend=backend)`` on ``train_loader`` and takes ``n_hypersteps``
    Adam steps (rate ``lr_hyp``) on ``log δ`` and, for regression unless
    ``fix_sigma_noise``, on ``log σ``, maximising ``log_marginal_likelihood``.

    Args:
        model: the network (trained in place; its trainable parameters are the weights).
        train_loader: a ``DataLoader`` of ``(X, y)`` or dict-like batches; ``N`` is the
            number of points it yields (``len(train_loader.dataset)`` unless its sampler
            covers fewer or it drops a last batch: ``laplace.utils.data.dataset_size``).
        likelihood: ``"classification"``, ``"regression"`` or ``"reward_modeling"`` (pair
            batches ``(batch, 2, ...)``: trained and fitted as two-class classification
            of the preference, as ``Laplace(..., likelihood="reward_modeling")``).
        hessian_structure: ``"full"``, ``"kron"`` or ``"diag"``.
        backend: curvature backend class for the Laplace approximations.
        optimizer_cls, optimizer_kwargs: the network's optimizer (``weight_decay`` is
            replaced by the learned prior and set to 0, with a warning).
        scheduler_cls, scheduler_kwargs: learning-rate scheduler, built as
            ``scheduler_cls(optimizer, **scheduler_kwargs)`` and stepped after every batch
            of network training (laplace-torch's convention).
        n_epochs: number of training epochs (epochs are counted from 1).
        lr_hyp: Adam learning rate of the log hyperparameters.
        prior_structure: ``"scalar"``, ``"layerwise"`` or ``"diag"`` prior precision.
        n_epochs_burnin: no hyperparameter updates in epochs before this one.
        n_hypersteps: Adam steps on the hyperparameters per marginal-likelihood epoch.
        marglik_frequency: update the hyperparameters in epochs divisible by this.
        prior_prec_init: initial prior precision (multiplied by ``temperature``).
        sigma_noise_init: initial (or, with ``fix_sigma_noise``, fixed) noise scale.
        temperature: posterior temperature ``T``.
        fix_sigma_noise: keep ``σ = sigma_noise_init`` (regression).
        progress_bar: show a tqdm bar over epochs.
        enable_backprop: passed to the returned Laplace approximation.
        dict_key_x, dict_key_y: keys of dict-like (Hugging Face) batches.
        distributed: ``None`` (auto), ``True`` or ``False``, as for ``fit``. Distributed,
            ``train_loader`` is this rank's shard, ``N`` counts all shards, the network's
            gradients are averaged over the processes after every backward pass (by
            ``DistributedDataParallel`` when ``model`` is wrapped in it, else by one
            ``all_reduce`` here), and the Laplace fits sum over the shards: with equal
            local batch sizes every rank follows the single-process run whose batches
            are the unions of the ranks' batches.

    Returns:
        ``(lap, model, margliks, losses)``: the Laplace approximation fitted at the end
        with the weights and hyperparameters of the best marginal likelihood; the model
        holding those weights; the *negative* log marginal likelihood of every
        hyperparameter step (``n_hypersteps`` values per marginal-likelihood epoch, so a
        decreasing list means improvement); the mean training objective per epoch.

    Raises:
        ValueError: an unknown option, a diagonal prior with a Kronecker posterior,
            non-positive initial hyperparameters or counts, or an empty data loader.
    """
    likelihood = parse_option(Likelihood, likelihood, "likelihood")
    if likelihood not in (Likelihood.CLASSIFICATION, Likelihood.REGRESSION,
                          Likelihood.REWARD_MODELING):
        raise ValueError(f"marglik_training supports 'classification', 'regression' and "
                         f"'reward_modeling', not {likelihood!r}.")
    hessian_structure = parse_option(HessianStructure, hessian_structure, "hessian_structure")
    if hessian_structure not in _STRUCTURES:
        raise ValueError(
            f"marglik_training needs a 'full', 'kron' or 'diag' hessian_structure, "
            f"not {hessian_structure!r}."
        )
    prior_structure = parse_option(PriorStructure, prior_structure, "prior_structure")
    if prior_structure == PriorStructure.DIAG and hessian_structure == HessianStructure.KRON:
        raise ValueError(
            "A 'diag' prior precision does not keep the Kronecker structure: use "
            "prior_structure='scalar' or 'layerwise' with hessian_structure='kron', or a "
            "'full'/'diag' hessian_structure."
        )
    checks.torch_module(model)
    _check_counts(0, n_epochs=n_epochs, n_epochs_burnin=n_epochs_burnin)
    _check_counts(1, n_hypersteps=n_hypersteps, marglik_frequency=marglik_frequency)
    lr_hyp, prior_prec_init, sigma_noise_init, temperature = (
        checks.positive_float(value, name) for name, value in (
            ("lr_hyp", lr_hyp), ("prior_prec_init", prior_prec_init),
            ("sigma_noise_init", sigma_noise_init), ("temperature", temperature)))
    _check_callables(backend, optimizer_cls, optimizer_kwargs, scheduler_cls, scheduler_kwargs)
    for name, flag in (("fix_sigma_noise", fix_sigma_noise), ("progress_bar", progress_bar),
                       ("enable_backprop", enable_backprop)):
        if not isinstance(flag, bool):
            raise ValueError(f"{name} must be a bool, got {flag!r}.")
    for name, key in (("dict_key_x", dict_key_x), ("dict_key_y", dict_key_y)):
        if not isinstance(key, str):
            raise ValueError(f"{name} must be a string, got {key!r}.")
    if likelihood != Likelihood.REGRESSION and sigma_noise_init != 1.0:
        raise ValueError(f"sigma_noise_init must be 1 for {likelihood}.")

    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("The model has no trainable parameters (requires_grad=True).")
    sizes = [p.numel() for p in params]
    device, dtype = params[0].device, params[0].dtype
    dist = distributed_fit.resolve(distributed)
    N = distributed_fit.data_count(train_loader, dist, device, dataset_size)
    average = dist and not isinstance(model, nn.parallel.DistributedDataParallel)
    regression = likelihood == Likelihood.REGRESSION
    learn_sigma = regression and not fix_sigma_noise

    optimizer_kwargs = dict(optimizer_kwargs or {})
    if optimizer_kwargs.get("weight_decay", 0.0):
        warnings.warn(
            "Weight decay is replaced by the learned prior precision: set to 0.", stacklevel=2
        )
    if "weight_decay" in optimizer_kwargs:
        optimizer_kwargs["weight_decay"] = 0.0
    optimizer = optimizer_cls(model.parameters(), **optimizer_kwargs)
    scheduler = (
        scheduler_cls(optimizer, **(scheduler_kwargs or {})) if scheduler_cls is not None else None
    )

    # Differentiable hyperparameters, optimised on the log scale.
    log_prior_prec = fix_prior_prec_structure(
        math.log(temperature * prior_prec_init), prior_structure, len(params), sum(sizes),
        device=device, dtype=dtype,
    ).requires_grad_(True)
    hyperparameters = [log_prior_prec]
    log_sigma_noise = torch.full((1,), math.log(sigma_noise_init), device=device, dtype=dtype)
    if learn_sigma:
        log_sigma_noise.requires_grad_(True)
        hyperparameters.append(log_sigma_noise)
    hyper_optimizer = torch.optim.Adam(hyperparameters, lr=lr_hyp)

    def current_sigma() -> Tensor:
        return log_sigma_noise.detach().exp()

    def make_laplace(prior_prec: Tensor, sigma_noise: Tensor | float) -> BaseLaplace:
        return Laplace(
            model, likelihood, subset_of_weights="all", hessian_structure=hessian_structure,
            sigma_noise=sigma_noise, prior_precision=prior_prec, temperature=temperature,
            backend=backend, enable_backprop=enable_backprop, dict_key_x=dict_key_x,
            dict_key_y=dict_key_y,
        )

    training_mode = model.training
    best_neg_marglik = math.inf
    best: tuple[dict[str, Any], Tensor, Tensor | float] | None = None
    margliks: list[float] = []
    losses: list[float] = []

    progress_bar = distributed_fit.show_progress(progress_bar)
    epochs = trange(1, n_epochs + 1, desc="marglik training", disable=not progress_bar)
    for epoch in epochs:
        model.train(training_mode)  # Laplace.fit leaves the model in eval mode
        prior_prec = log_prior_prec.detach().exp()
        delta = expand_to_parameters(prior_prec, sizes)
        if regression:
            crit_factor = temperature / (2 * current_sigma().square())
        else:
            crit_factor = torch.tensor(temperature, device=device, dtype=dtype)

        epoch_loss, n_batches = 0.0, 0
        for batch in train_loader:
            X, y = split_batch(batch, dict_key_x, dict_key_y)
            X, y = inputs_to(X, device), y.to(device)
            optimizer.zero_grad()
            f = model(X)
            if epoch == 1:  # the targets, before the first step
                if likelihood == Likelihood.CLASSIFICATION and n_batches == 0:
                    checks.class_logits(f.shape[-1] if f.ndim > 1 else 1)
                if likelihood == Likelihood.REWARD_MODELING:
                    checks.pair_output(X, f)
                checks.fit_targets(y, f.shape[0], tuple(f.shape[1:]) or (1,), regression,
                                   n_batches)
            if not regression:
                y = checks.class_labels(y, n_batches)
            theta = vector_of(params)
            data_loss = _data_loss(f, y, regression)
            loss = data_loss + 0.5 * (delta * theta) @ theta / N / crit_factor
            loss.backward()
            if average:
                _average_gradients(params)
            optimizer.step()
            epoch_loss += loss.item() * y.shape[0]
            n_batches += 1
            if scheduler is not None:
                scheduler.step()  # once per batch, as laplace-torch does
        if n_batches == 0:
            raise ValueError("The data loader yielded no batches: nothing to train on.")
        if dist:
            epoch_loss = float(distributed_fit.all_reduce_nested(
                torch.tensor(epoch_loss, dtype=torch.float64, device=device)))
        losses.append(epoch_loss / N)

        if epoch % marglik_frequency != 0 or epoch < n_epochs_burnin:
            if progress_bar:
                epochs.set_postfix(loss=f"{losses[-1]:.4g}")
            continue

        # Fit the Laplace approximation at the current weights, then tune its hyperparameters.
        lap = make_laplace(prior_prec, current_sigma() if regression else 1.0)
        lap.fit(train_loader, distributed=dist)
        for _ in range(n_hypersteps):
            hyper_optimizer.zero_grad()
            prior_prec = log_prior_prec.exp()
            sigma_noise = log_sigma_noise.exp() if learn_sigma else None
            neg_marglik = -lap.log_marginal_likelihood(prior_prec, sigma_noise)
            neg_marglik.backward()
            hyper_optimizer.step()
            _check_hyperstep(epoch, lr_hyp, neg_marglik, hyperparameters)
            margliks.append(neg_marglik.item())

        # Keep the weights (and the hyperparameters they were scored with) of the best one.
        if margliks[-1] < best_neg_marglik:
            best_neg_marglik = margliks[-1]
            sigma_best = sigma_noise.detach().clone() if learn_sigma else current_sigma()
            best = (deepcopy(model.state_dict()), prior_prec.detach().clone(), sigma_best)
        if progress_bar:
            epochs.set_postfix(loss=f"{losses[-1]:.4g}", neg_marglik=f"{margliks[-1]:.4g}")

    if best is not None:
        state, prior_prec, sigma_noise = best
        model.load_state_dict(state)
    else:  # no marginal-likelihood epoch: the final weights and initial hyperparameters
        prior_prec, sigma_noise = log_prior_prec.detach().exp(), current_sigma()
    lap = make_laplace(prior_prec, sigma_noise if regression else 1.0)
    lap.fit(train_loader, distributed=dist)
    for p in params:  # no stale training gradients on the returned model (laplace-torch)
        p.grad = None
    return lap, model, margliks, losses


def _check_hyperstep(epoch: int, lr_hyp: float, neg_marglik: Tensor,
                     hyperparameters: list[Tensor]) -> None:
    """Stop with a named error once a hyperparameter step leaves the finite numbers.

    A too large ``lr_hyp`` makes Adam overshoot ``log δ`` (or ``log σ``) until ``exp``
    overflows; without this check the next Laplace fit reports an infinite prior precision,
    which hides the cause.
    """
    finite = bool(torch.isfinite(neg_marglik)) and all(
        bool(torch.isfinite(h).all() and torch.isfinite(h.detach().exp()).all())
        for h in hyperparameters
    )
    if not finite:
        raise RuntimeError(
            f"The marginal-likelihood optimisation diverged at epoch {epoch}: the negative "
            f"log marginal likelihood is {neg_marglik.item():.4g} and the log hyperparameters "
            f"are {[h.detach().tolist() for h in hyperparameters]}. Lower lr_hyp "
            f"(now {lr_hyp:g}) or start from closer prior_prec_init / sigma_noise_init."
        )


def _average_gradients(params: list[Tensor]) -> None:
    """Replace every gradient by its mean over the processes (what DDP does)."""
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    world = torch.distributed.get_world_size()
    for p, g in zip(params, distributed_fit.all_reduce_nested(grads)):
        p.grad = g / world


def _data_loss(f: Tensor, y: Tensor, regression: bool) -> Tensor:
    """Mean over the batch of the per-point loss: squared error summed over outputs (so
    ``0.5·SSE/σ²`` is the Gaussian NLL) or cross-entropy (summed over extra positions)."""
    n = f.shape[0]
    if regression:
        if y.shape != f.shape:
            if y.numel() != f.numel():
                raise ValueError(
                    f"Regression targets of shape {tuple(y.shape)} do not match model "
                    f"outputs of shape {tuple(f.shape)}."
                )
            y = y.reshape(f.shape)
        return F.mse_loss(f, y.to(f.dtype), reduction="sum") / n
    if f.ndim > 2:  # (n, ..., K) logits of sequences: cross-entropy over every position
        return F.cross_entropy(f.reshape(-1, f.shape[-1]), y.reshape(-1), reduction="sum") / n
    return F.cross_entropy(f, y, reduction="mean")


def _check_counts(minimum: int, **counts: int) -> None:
    for name, value in counts.items():
        if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
            raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}.")


def _check_callables(backend: Any, optimizer_cls: Any, optimizer_kwargs: Any,
                     scheduler_cls: Any, scheduler_kwargs: Any) -> None:
    """The classes and keyword dicts of ``marglik_training``, checked before training."""
    if not (isinstance(backend, type) and issubclass(backend, CurvatureInterface)):
        raise ValueError(f"backend must be a curvature class (e.g. laplace.curvature."
                         f"TorchFuncGGN), got {backend!r}.")
    if not (isinstance(optimizer_cls, type) and issubclass(optimizer_cls, torch.optim.Optimizer)):
        raise ValueError(f"optimizer_cls must be a torch.optim.Optimizer class, got "
                         f"{optimizer_cls!r}.")
    if scheduler_cls is not None and not isinstance(scheduler_cls, type):
        raise ValueError(f"scheduler_cls must be a learning-rate scheduler class or None, "
                         f"got {scheduler_cls!r}.")
    for name, kwargs in (("optimizer_kwargs", optimizer_kwargs),
                         ("scheduler_kwargs", scheduler_kwargs)):
        if kwargs is not None and not isinstance(kwargs, Mapping):
            raise ValueError(f"{name} must be a dict or None, got {type(kwargs).__name__}.")
    if scheduler_kwargs and scheduler_cls is None:
        raise ValueError("scheduler_kwargs were given without scheduler_cls: they would be "
                         "ignored.")

from laplace.utils.reexports import reexports  # noqa: E402

__getattr__ = reexports(__name__, ("AsdlGGN", "SubsetOfWeights", "expand_prior_precision"))
