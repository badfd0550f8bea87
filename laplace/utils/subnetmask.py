"""Subnetwork masks: choose which parameters a subnetwork Laplace approximation covers.

Every mask's ``select(train_loader)`` returns the (ascending) positions of the chosen
parameters in ``torch.nn.utils.parameters_to_vector(model.parameters())`` as a
``LongTensor``; pass them as ``subnetwork_indices`` to a subnetwork Laplace. A subnetwork
Laplace indexes the *trainable* parameters, so on a model with frozen parameters
(``requires_grad=False``) ``select`` returns positions among those (the same positions
when nothing is frozen), never selects a frozen entry (score-based masks rank the
trainable ones; a name-based mask that names a frozen tensor is an error), where
laplace-torch returns positions in the full vector and the Laplace fits other entries.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import CrossEntropyLoss, MSELoss
from torch.nn.utils import parameters_to_vector

from laplace.utils import checks
from laplace.utils.data import inputs_to
from laplace.utils.enums import Likelihood, parse_option
from laplace.utils.feature_extractor import FeatureExtractor
from laplace.utils.swag import fit_diagonal_swag_var

__all__ = [
    "LargestMagnitudeSubnetMask",
    "LargestVarianceDiagLaplaceSubnetMask",
    "LargestVarianceSWAGSubnetMask",
    "LastLayerSubnetMask",
    "ModuleNameSubnetMask",
    "ParamNameSubnetMask",
    "RandomSubnetMask",
    "ScoreBasedSubnetMask",
    "SubnetMask",
]

_MASK_DTYPES = (torch.bool, torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64)


def _as_name_list(names: str | Iterable[str] | None, what: str) -> list[str]:
    if names is None:
        raise ValueError(f"{what} name list cannot be None.")
    if isinstance(names, str):
        names = [names]
    names = list(names)
    if not all(isinstance(n, str) for n in names):
        raise ValueError(f"{what} names must be strings, got {names!r}.")
    return names


class SubnetMask:
    """Base class of subnetwork masks.

    Subclasses implement ``get_subnet_mask(train_loader)``, returning a boolean mask
    over ``parameters_to_vector(model.parameters())``.

    Args:
        model: the network whose parameters are selected from.
    """

    def __init__(self, model: nn.Module) -> None:
        checks.torch_module(model)
        self.model = model
        self._n_params = sum(p.numel() for p in model.parameters())
        self._indices: Tensor | None = None
        self._n_params_subnet: int | None = None

    @property
    def parameter_vector(self) -> Tensor:
        """The model's current parameters as one detached vector: ``(n_params,)``."""
        return parameters_to_vector(self.model.parameters()).detach()

    def _check_select(self) -> None:
        if self._indices is None:
            raise AttributeError("Subnetwork mask not selected. Run select() first.")

    @property
    def indices(self) -> Tensor:
        """The selected parameter positions (after ``select``)."""
        self._check_select()
        return self._indices

    @property
    def n_params_subnet(self) -> int:
        """Number of selected parameters."""
        if self._n_params_subnet is None:
            self._check_select()
            self._n_params_subnet = len(self._indices)
        return self._n_params_subnet

    def convert_subnet_mask_to_indices(self, subnet_mask: Tensor) -> Tensor:
        """Turn a 0/1 (or boolean) mask over the parameter vector into sorted indices.

        Args:
            subnet_mask: ``(n_params,)`` boolean or integral tensor of zeros and ones.

        Returns:
            ``LongTensor`` of the positions of the ones, in ascending order.
        """
        if not isinstance(subnet_mask, Tensor):
            raise ValueError("Subnetwork mask needs to be torch.Tensor!")
        if subnet_mask.dtype not in _MASK_DTYPES or subnet_mask.ndim != 1:
            raise ValueError(
                "Subnetwork mask needs to be 1-dimensional integral or boolean tensor!"
            )
        if subnet_mask.numel() != self._n_params:
            raise ValueError(
                f"Subnetwork mask has {subnet_mask.numel()} entries but the model has "
                f"{self._n_params} parameters."
            )
        if not bool(((subnet_mask == 0) | (subnet_mask == 1)).all()):
            raise ValueError("Subnetwork mask may only contain zeros and ones.")
        if not bool(subnet_mask.any()):
            raise ValueError("Subnetwork mask selects no parameters.")
        return subnet_mask.nonzero(as_tuple=True)[0].long()

    def select(self, train_loader: Any = None) -> Tensor:
        """Select the subnetwork.

        Args:
            train_loader: data for masks that need it (score-based on data, or
                ``LastLayerSubnetMask`` without a ``last_layer_name``).

        Returns:
            ``LongTensor`` of the selected positions in the parameter vector (ascending).
        """
        if self._indices is not None:
            raise ValueError("Subnetwork mask already selected.")
        subnet_mask = self.get_subnet_mask(train_loader)
        indices = self.convert_subnet_mask_to_indices(subnet_mask)
        self._indices = _trainable_positions(self.model, indices)
        return self._indices

    def get_subnet_mask(self, train_loader: Any) -> Tensor:
        """Boolean mask ``(n_params,)`` of the subnetwork."""
        raise NotImplementedError


# ---------------------------------------------------------------- score-based
class ScoreBasedSubnetMask(SubnetMask):
    """Select the ``n_params_subnet`` parameters with the largest scores.

    Subclasses implement ``compute_param_scores(train_loader)`` returning one score
    per parameter, ``(n_params,)``. Ties are broken towards lower positions.

    Args:
        model: the network.
        n_params_subnet: number of parameters to select, ``1 <= n <= n_params``.
    """

    def __init__(self, model: nn.Module, n_params_subnet: int) -> None:
        super().__init__(model)
        if n_params_subnet is None:
            raise ValueError(
                "Need to pass number of subnetwork parameters when using subnetwork Laplace."
            )
        if isinstance(n_params_subnet, bool) or not isinstance(n_params_subnet, int):
            raise ValueError(f"n_params_subnet must be an integer, got {n_params_subnet!r}.")
        if n_params_subnet > self._n_params:
            raise ValueError(
                f"Subnetwork ({n_params_subnet}) cannot be larger than model ({self._n_params})."
            )
        if n_params_subnet < 1:
            raise ValueError(f"Subnetwork must have at least one parameter, got {n_params_subnet}.")
        self._n_params_subnet = n_params_subnet
        self._param_scores: Tensor | None = None

    @property
    def param_scores(self) -> Tensor | None:
        """The scores the selection used (``None`` before ``select``)."""
        return self._param_scores

    def compute_param_scores(self, train_loader: Any) -> Tensor:
        raise NotImplementedError

    def _check_param_scores(self) -> None:
        scores = self._param_scores
        if not isinstance(scores, Tensor) or scores.shape != (self._n_params,):
            shape = tuple(scores.shape) if isinstance(scores, Tensor) else type(scores).__name__
            raise ValueError(
                f"Parameter scores need to be of same shape as parameter vector "
                f"({self._n_params},), got {shape}."
            )
        if bool(torch.isnan(scores).any()):
            raise ValueError("Parameter scores contain NaN.")

    def get_subnet_mask(self, train_loader: Any) -> Tensor:
        if self._param_scores is None:
            self._param_scores = self.compute_param_scores(train_loader).detach()
        self._check_param_scores()
        trainable = _trainable_mask(self.model).to(self._param_scores.device)
        if self._n_params_subnet > int(trainable.sum()):
            raise ValueError(f"Subnetwork ({self._n_params_subnet}) cannot be larger than "
                             f"the model's {int(trainable.sum())} trainable parameters.")
        scores = self._param_scores.masked_fill(~trainable, -torch.inf)
        order = torch.argsort(scores, descending=True, stable=True)
        idx = order[: self._n_params_subnet]
        subnet_mask = torch.zeros(self._n_params, dtype=torch.bool, device=idx.device)
        subnet_mask[idx] = True
        return subnet_mask


class RandomSubnetMask(ScoreBasedSubnetMask):
    """Select ``n_params_subnet`` parameters uniformly at random (torch's global RNG)."""

    def compute_param_scores(self, train_loader: Any) -> Tensor:
        return torch.rand_like(self.parameter_vector)


class LargestMagnitudeSubnetMask(ScoreBasedSubnetMask):
    """Select the ``n_params_subnet`` parameters of largest magnitude ``|θ|``."""

    def compute_param_scores(self, train_loader: Any) -> Tensor:
        return self.parameter_vector.abs()


class LargestVarianceDiagLaplaceSubnetMask(ScoreBasedSubnetMask):
    """Select the parameters of largest marginal variance under a diagonal Laplace.

    Args:
        model: the network.
        n_params_subnet: number of parameters to select.
        diag_laplace_model: a ``DiagLaplace`` over ``model``'s parameters; fitted on
            ``train_loader`` in ``select`` unless it is fitted already.
    """

    def __init__(
        self, model: nn.Module, n_params_subnet: int, diag_laplace_model: Any
    ) -> None:
        super().__init__(model, n_params_subnet)
        la_model = getattr(diag_laplace_model, "model", None)
        if not isinstance(la_model, nn.Module) or not hasattr(diag_laplace_model, "fit"):
            raise ValueError("diag_laplace_model must be a Laplace approximation (e.g. "
                             f"DiagLaplace) over model, got {type(diag_laplace_model).__name__}.")
        if la_model is not model and not _same_parameters(la_model, model):
            raise ValueError("diag_laplace_model was built on another network: its "
                             "parameters differ from model's, so its variances would "
                             "score other weights.")
        self.diag_laplace_model = diag_laplace_model

    def compute_param_scores(self, train_loader: Any) -> Tensor:
        la = self.diag_laplace_model
        if getattr(la, "n_outputs", None) is None:  # not fitted yet
            if train_loader is None:
                raise ValueError("Need to pass train loader for subnet selection.")
            la.fit(train_loader)
        variances = la.posterior_variance
        if variances.shape != (self._n_params,):
            raise ValueError(
                f"The diagonal Laplace has {variances.numel()} marginal variances but the "
                f"model has {self._n_params} parameters: it must cover all parameters of "
                "the same model (no frozen parameters)."
            )
        return variances


class LargestVarianceSWAGSubnetMask(ScoreBasedSubnetMask):
    """Select the parameters of largest diagonal-SWAG variance.

    Args:
        model: the network.
        n_params_subnet: number of parameters to select.
        likelihood: ``"classification"`` (cross-entropy loss; also for
            ``"reward_modeling"``) or ``"regression"`` (mean squared error).
        swag_n_snapshots, swag_snapshot_freq, swag_lr: see ``fit_diagonal_swag_var``.
    """

    def __init__(
        self,
        model: nn.Module,
        n_params_subnet: int,
        likelihood: Likelihood | str = "classification",
        swag_n_snapshots: int = 40,
        swag_snapshot_freq: int = 1,
        swag_lr: float = 0.01,
    ) -> None:
        super().__init__(model, n_params_subnet)
        self.likelihood = parse_option(Likelihood, likelihood, "likelihood")
        # one snapshot, or a step size of 0, gives every parameter the same variance and
        # the "largest" would be the first n_params_subnet positions
        if isinstance(swag_n_snapshots, bool) or not isinstance(swag_n_snapshots, int) \
                or swag_n_snapshots < 2:
            raise ValueError("swag_n_snapshots must be an integer >= 2 (a variance needs "
                             f"two snapshots), not {swag_n_snapshots!r}.")
        if isinstance(swag_lr, bool) or not isinstance(swag_lr, (int, float)) \
                or not swag_lr > 0 or swag_lr == float("inf"):
            raise ValueError(f"swag_lr must be a finite number > 0, not {swag_lr!r}.")
        self.swag_n_snapshots = swag_n_snapshots
        self.swag_snapshot_freq = swag_snapshot_freq
        self.swag_lr = swag_lr

    def _criterion(self) -> Any:
        if self.likelihood == Likelihood.REGRESSION:
            mse = MSELoss(reduction="mean")

            def criterion(f: Tensor, y: Tensor) -> Tensor:
                # (n,) targets for (n, 1) outputs would otherwise broadcast to (n, n).
                if y.shape != f.shape and y.numel() == f.numel():
                    y = y.reshape(f.shape)
                return mse(f, y.to(f.dtype))

            return criterion
        return CrossEntropyLoss(reduction="mean")

    def compute_param_scores(self, train_loader: Any) -> Tensor:
        if train_loader is None:
            raise ValueError("Need to pass train loader for subnet selection.")
        return fit_diagonal_swag_var(
            self.model,
            train_loader,
            self._criterion(),
            n_snapshots_total=self.swag_n_snapshots,
            snapshot_freq=self.swag_snapshot_freq,
            lr=self.swag_lr,
        )


# ---------------------------------------------------------------- name-based
class ParamNameSubnetMask(SubnetMask):
    """Select all entries of the named parameters.

    Args:
        model: the network.
        parameter_names: names as in ``model.named_parameters()``.
    """

    def __init__(self, model: nn.Module, parameter_names: Iterable[str]) -> None:
        super().__init__(model)
        self._parameter_names = _as_name_list(parameter_names, "Parameter")
        self._selected_param_ids()  # empty or unknown names are refused here already

    def _selected_param_ids(self) -> set[int]:
        names = self._parameter_names
        if len(names) == 0:
            raise ValueError("Parameter name list cannot be empty.")
        params = dict(self.model.named_parameters(remove_duplicate=False))
        missing = [n for n in names if n not in params]
        if missing:
            raise ValueError(f"Parameters {missing} do not exist in model.")
        return {id(params[n]) for n in names}

    def get_subnet_mask(self, train_loader: Any) -> Tensor:
        selected = self._selected_param_ids()
        return _mask_of_params(self.model, selected)


class ModuleNameSubnetMask(SubnetMask):
    """Select all parameters of the named modules (including their submodules).

    Args:
        model: the network.
        module_names: names as in ``model.named_modules()`` (``""`` is the model).
    """

    def __init__(self, model: nn.Module, module_names: Iterable[str]) -> None:
        super().__init__(model)
        self._module_names = _as_name_list(module_names, "Module")
        self._selected_param_ids()  # empty, unknown or parameterless modules refused here

    def _selected_param_ids(self) -> set[int]:
        names = self._module_names
        if len(names) == 0:
            raise ValueError("Module name list cannot be empty.")
        modules = dict(self.model.named_modules(remove_duplicate=False))
        missing = [n for n in names if n not in modules]
        if missing:
            raise ValueError(f"Modules {missing} do not exist in model.")
        selected: set[int] = set()
        for name in names:
            params = list(modules[name].parameters())
            if not params:
                raise ValueError(f'Module "{name}" does not have any parameters.')
            selected.update(id(p) for p in params)
        return selected

    def get_subnet_mask(self, train_loader: Any) -> Tensor:
        return _mask_of_params(self.model, self._selected_param_ids())


class LastLayerSubnetMask(ParamNameSubnetMask):
    """Select the parameters of the last ``nn.Linear`` layer.

    Args:
        model: the network.
        last_layer_name: name of the last layer in ``model.named_modules()``; when
            ``None`` it is found by running one input of ``train_loader`` through the
            model (the last ``nn.Linear`` executed).
    """

    def __init__(self, model: nn.Module, last_layer_name: str | None = None) -> None:
        SubnetMask.__init__(self, model)
        self._parameter_names = []
        self._feature_extractor = FeatureExtractor(model, last_layer_name=last_layer_name)

    def get_subnet_mask(self, train_loader: Any) -> Tensor:
        fe = self._feature_extractor
        if fe.last_layer is None:
            if train_loader is None:
                raise ValueError("Need to pass train loader for subnet selection.")
            X = _first_input(train_loader, self.model)
            # Find the layer in eval mode (no batch-norm statistics updates), then
            # restore every module's training flag.
            modes = [(m, m.training) for m in self.model.modules()]
            self.model.eval()
            try:
                fe.find_last_layer(X)
            finally:
                for m, training in modes:
                    m.training = training
        prefix = f"{fe.last_layer_name}." if fe.last_layer_name else ""
        self._parameter_names = [prefix + n for n, _ in fe.last_layer.named_parameters()]
        if not self._parameter_names:
            raise ValueError(f'Module "{fe.last_layer_name}" does not have any parameters.')
        return super().get_subnet_mask(train_loader)


# ------------------------------------------------------------------- helpers
def _same_parameters(a: nn.Module, b: nn.Module) -> bool:
    """Whether ``a`` and ``b`` hold parameters of the same shapes and values (``a`` may
    be a copy of ``b``)."""
    pa, pb = list(a.parameters()), list(b.parameters())
    return len(pa) == len(pb) and all(
        x.shape == y.shape and torch.equal(x.detach().to(y), y.detach())
        for x, y in zip(pa, pb))


def _trainable_mask(model: nn.Module) -> Tensor:
    """``(n_params,)`` booleans over ``parameters_to_vector(model.parameters())``: which
    entries belong to parameters with ``requires_grad``."""
    parts = [torch.full((p.numel(),), p.requires_grad, dtype=torch.bool)
             for p in model.parameters()]
    return torch.cat(parts) if parts else torch.zeros(0, dtype=torch.bool)


def _trainable_positions(model: nn.Module, indices: Tensor) -> Tensor:
    """``indices`` over all parameters as positions among the trainable ones (what a
    subnetwork Laplace indexes); a ``ValueError`` if one points at a frozen parameter."""
    trainable = _trainable_mask(model).to(indices.device)
    if bool(trainable.all()):
        return indices
    if not bool(trainable[indices].all()):
        frozen = [n for n, p in model.named_parameters() if not p.requires_grad]
        raise ValueError(f"The subnetwork selects frozen parameters (requires_grad=False, "
                         f"among {frozen}); a subnetwork Laplace covers trainable "
                         "parameters only: select among those.")
    return (torch.cumsum(trainable.long(), 0) - 1)[indices]


def _mask_of_params(model: nn.Module, selected: set[int]) -> Tensor:
    """Boolean mask over ``parameters_to_vector(model.parameters())`` of ``selected``."""
    params = list(model.parameters())
    device = params[0].device if params else None
    parts = [
        torch.full((p.numel(),), id(p) in selected, dtype=torch.bool, device=device)
        for p in params
    ]
    return torch.cat(parts) if parts else torch.zeros(0, dtype=torch.bool)


def _first_input(train_loader: Any, model: nn.Module) -> Any:
    """The first data point of the loader's first batch, on the model's device."""
    try:
        batch = next(iter(train_loader))
    except StopIteration:
        raise ValueError("The data loader yielded no batches.") from None
    if isinstance(batch, Mapping):  # dict-like (Hugging Face) batch: the model input
        X = batch
    else:
        X = batch[0] if isinstance(batch, (tuple, list)) else batch
        X = X[:1] if isinstance(X, Tensor) else X
    param = next(model.parameters(), None)
    return inputs_to(X, param.device) if param is not None else X
