"""Problems and per-rank checks of the distributed tests (imported by spawned ranks).

Every function computes the same quantities whether it runs in a rank of a process
group on that rank's shard (``shard=rank``) or in the test process on all the data
(``shard=None``); the tests compare the two in float64.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Subset, TensorDataset

from laplace import Laplace, marglik_training
from laplace.posterior.tuning import gridsearch
from laplace.utils import RunningNLLMetric, get_nll
from laplace.utils import distributed as distributed_fit
from laplace.utils.errors import DistributedError

N_TRAIN, N_VAL, BATCH = 31, 11, 4
SPLIT_TRAIN, SPLIT_VAL = 19, 4  # uneven shards: rank 0 holds the first SPLIT points

# (likelihood, subset_of_weights, hessian_structure, extra kwargs)
CONFIGS: list[tuple[str, str, str, dict[str, Any]]] = [
    (lik, subset, structure, {})
    for lik in ("regression", "classification")
    for subset, structures in (("all", ("full", "kron", "diag", "lowrank")),
                               ("last_layer", ("full", "kron", "diag")))
    for structure in structures
] + [
    (lik, "subnetwork", structure, {"subnetwork_indices": torch.tensor([0, 3, 7, 20, 25, 30])})
    for lik in ("regression", "classification") for structure in ("full", "diag")
] + [
    ("regression", "all", "lowrank", {"n_eigenvalues": 4}),  # ARPACK products
    ("classification", "all", "lowrank", {"n_eigenvalues": 4}),
    ("regression", "frozen", "full", {}),  # a requires-grad subset
    ("classification", "frozen", "kron", {}),
    ("regression", "frozen", "diag", {}),
]


def data(likelihood: str, n: int, seed: int) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, 3, generator=g, dtype=torch.float64)
    if likelihood == "regression":
        y = torch.sin(X[:, :1]) + 0.1 * torch.randn(n, 1, generator=g, dtype=torch.float64)
    else:
        y = (X[:, 0] > 0).long() + (X[:, 1] > 0.5).long()
    return TensorDataset(X, y)


def model(likelihood: str, frozen: bool = False) -> nn.Module:
    torch.manual_seed(0)
    out = 1 if likelihood == "regression" else 3
    net = nn.Sequential(nn.Linear(3, 6), nn.Tanh(), nn.Linear(6, out)).double()
    if frozen:
        net[0].bias.requires_grad_(False)
    return net


def loader(dataset: TensorDataset, shard: int | None, split: int,
           batch: int = BATCH) -> DataLoader:
    """All of ``dataset`` (``shard=None``) or rank ``shard``'s part of it."""
    if shard is not None:
        n = len(dataset)
        dataset = Subset(dataset, range(split) if shard == 0 else range(split, n))
    return DataLoader(dataset, batch_size=batch)


def fitted(config: tuple, shard: int | None) -> Any:
    likelihood, subset, structure, kwargs = config
    la = Laplace(model(likelihood, subset == "frozen"), likelihood,
                 "all" if subset == "frozen" else subset, structure,
                 sigma_noise=0.3 if likelihood == "regression" else 1.0,
                 prior_precision=0.5, **kwargs)
    la.fit(loader(data(likelihood, N_TRAIN, 1), shard, SPLIT_TRAIN))
    return la


def structure_results(config: tuple, shard: int | None) -> dict[str, Tensor]:
    """The posterior, its predictive, evidence and marglik-tuned prior on one config."""
    la = fitted(config, shard)
    X_test = data(config[0], 5, 2).tensors[0]
    likelihood, _, structure, kwargs = config
    out = {"n_data": torch.tensor(la.n_data), "loss": torch.as_tensor(la.loss).reshape(1),
           "lml": la.log_marginal_likelihood().detach().reshape(1)}
    if structure == "lowrank" and "n_eigenvalues" in kwargs:  # eigenvectors: up to sign
        U, lam = la.H
        out["precision"] = (U * lam) @ U.T
    else:
        out["precision"] = la._precision().to_matrix()
    pred = la(X_test)
    out["predictive"] = torch.cat([p.flatten() for p in pred]) if isinstance(pred, tuple) \
        else pred.flatten()
    if structure != "kron":
        out["log_prob"] = la.log_prob(la._posterior_mean + 0.1).reshape(1)
    la.optimize_prior_precision(n_steps=15, prior_structure="layerwise" if structure != "lowrank"
                                else "scalar")
    out["tuned_prior"] = la.prior_precision.detach()
    return out


def gridsearch_results(shard: int | None) -> dict[str, Tensor]:
    """Grid-search losses with a sharded validation loader (metrics and a callable)."""
    out = {}
    for likelihood, structure, loss in (("regression", "full", None),
                                        ("classification", "diag", RunningNLLMetric()),
                                        ("classification", "kron", get_nll)):
        la = fitted((likelihood, "all", structure, {}), shard)
        val = loader(data(likelihood, N_VAL, 3), shard, SPLIT_VAL, batch=3)
        grid, losses = gridsearch(la, "glm", val, loss, -2, 2, 5, "probit", 10)
        la.optimize_prior_precision(method="gridsearch", val_loader=val, grid_size=5,
                                    log_prior_prec_min=-2, log_prior_prec_max=2)
        out[f"{likelihood}-{structure}"] = torch.cat([losses, la.prior_precision])
    return out


def marglik_results(shard: int | None, ddp: bool) -> dict[str, Tensor]:
    """``marglik_training`` on equal shards (the single process sees the union batches)."""
    dataset = data("regression", 16, 4)
    if shard is None:  # batch t of the single process = batch t of rank 0 and of rank 1
        order = torch.cat([torch.cat([torch.arange(4 * t, 4 * t + 4),
                                      torch.arange(8 + 4 * t, 8 + 4 * t + 4)]) for t in (0, 1)])
        train = DataLoader(Subset(dataset, order.tolist()), batch_size=8)
    else:
        train = loader(dataset, shard, 8)
    net = model("regression")
    if ddp:
        net = nn.parallel.DistributedDataParallel(net)
    la, net, margliks, losses = marglik_training(
        net, train, "regression", "full", n_epochs=3, n_hypersteps=2,
        optimizer_kwargs={"lr": 1e-2}, prior_structure="scalar",
    )
    weights = torch.cat([p.detach().flatten() for p in net.parameters()])
    return {"weights": weights, "margliks": torch.tensor(margliks),
            "losses": torch.tensor(losses), "prior": la.prior_precision.detach(),
            "sigma": la.sigma_noise.detach().reshape(1),
            "lml": la.log_marginal_likelihood().detach().reshape(1)}


def ddp_results(shard: int | None) -> dict[str, Tensor]:
    """A DDP-wrapped model: the posterior is over its module; the state loads into an
    LA over the unwrapped model."""
    net = model("classification")
    if shard is not None:
        net = nn.parallel.DistributedDataParallel(net)
    la = Laplace(net, "classification", "all", "kron")
    la.fit(loader(data("classification", N_TRAIN, 1), shard, SPLIT_TRAIN))
    plain = Laplace(model("classification"), "classification", "all", "kron")
    plain.load_state_dict(la.state_dict())
    X_test = data("classification", 5, 2).tensors[0]
    return {"predictive": la(X_test), "loaded_predictive": plain(X_test),
            "lml": la.log_marginal_likelihood().reshape(1)}


def error_results(rank: int) -> dict[str, Any]:
    """An error on rank 1 only; a function-space LA refused; then a normal fit."""
    out: dict[str, Any] = {}
    dataset = data("regression", N_TRAIN, 1)
    X, y = dataset.tensors
    if rank == 1:
        y = y.clone()
        y[SPLIT_TRAIN] = float("nan")  # the first target of rank 1's shard
    shard = loader(TensorDataset(X, y), rank, SPLIT_TRAIN)
    for name, structure in (("full", "full"), ("lowrank", "lowrank")):
        la = Laplace(model("regression"), "regression", "all", structure)
        try:
            la.fit(shard)
        except (ValueError, DistributedError) as err:
            out[name] = (type(err).__name__, str(err))
    empty = DataLoader(TensorDataset(X[:0], y[:0])) if rank == 0 else shard
    try:
        Laplace(model("regression"), "regression", "last_layer", "diag").fit(empty)
    except (ValueError, DistributedError) as err:
        out["empty"] = (type(err).__name__, str(err))
    try:
        Laplace(model("regression"), "regression", "all", "gp", n_subset=4).fit(shard)
    except DistributedError as err:
        out["gp"] = (type(err).__name__, str(err))
    la = Laplace(model("regression"), "regression", "all", "diag")
    la.fit(loader(dataset, rank, SPLIT_TRAIN))
    out["after"] = la.H
    try:  # raised on every rank before any collective: nothing to agree on
        la.fit(loader(dataset, rank, SPLIT_TRAIN), override=False)
    except ValueError as err:
        out["override"] = str(err)
    return out


def rank_main(rank: int, world_size: int) -> dict[str, Any]:
    """Everything the distributed tests compare, computed in one process group."""
    with distributed_fit.communication() as traffic:
        structures = [structure_results(config, rank) for config in CONFIGS]
    return {
        "structures": structures,
        "traffic": traffic,
        "gridsearch": gridsearch_results(rank),
        "marglik_ddp": marglik_results(rank, ddp=True),
        "marglik_allreduce": marglik_results(rank, ddp=False),
        "ddp": ddp_results(rank),
        "errors": error_results(rank),
        "auto": distributed_fit.resolve(None),
    }


def cuda_results(rank: int, world_size: int) -> list[dict[str, Tensor]]:
    """The regression structures fitted on this rank's CUDA device in an NCCL group
    (``distributed=True``: a world of one GPU also goes through the reductions)."""
    device = torch.device("cuda", torch.cuda.current_device())
    n = scenarios_split(world_size)
    out = []
    for structure in ("full", "kron", "diag", "lowrank"):
        la = Laplace(model("regression").to(device), "regression", "all", structure,
                     sigma_noise=0.3, prior_precision=0.5)
        dataset = data("regression", N_TRAIN, 1)
        part = Subset(dataset, range(rank * n, N_TRAIN if rank == world_size - 1
                                     else (rank + 1) * n))
        la.fit(DataLoader(part, batch_size=BATCH), distributed=True)
        assert la.H is not None and la.mean.device == device
        out.append({"precision": la._precision().to_matrix().cpu(),
                    "lml": la.log_marginal_likelihood().detach().cpu().reshape(1)})
    return out


def scenarios_split(world_size: int) -> int:
    return N_TRAIN // world_size + 3 if world_size > 1 else N_TRAIN
