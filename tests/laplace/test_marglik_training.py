"""Online marginal-likelihood training (``laplace.marglik_training``)."""

from __future__ import annotations

import importlib

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

from laplace import DiagLaplace, FullLaplace, KronLaplace
from laplace.marglik_training import marglik_training
from laplace.utils.parameters import vector_of

# The package exports the function under the module's name (as laplace-torch does).
mt = importlib.import_module("laplace.marglik_training")


@pytest.fixture(autouse=True)
def _one_thread():
    # Tiny tensors: intra-op threads only add contention on a shared machine.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def sine_data(n: int = 100, sigma: float = 0.1, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    X = torch.linspace(-3, 3, n, dtype=torch.float64).unsqueeze(-1)
    y = torch.sin(X) + sigma * torch.randn(X.shape, generator=g, dtype=torch.float64)
    return X, y


def mlp(n_in: int, n_hidden: int, n_out: int, seed: int = 0, dtype=torch.float64) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Linear(n_in, n_hidden), nn.Tanh(), nn.Linear(n_hidden, n_out)
    ).to(dtype)


def blobs(n_per_class: int = 50, seed: int = 0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    centers = torch.tensor([[-2.0, -2.0], [2.0, 2.0]], dtype=dtype)
    X = torch.cat([c + torch.randn(n_per_class, 2, generator=g, dtype=dtype) for c in centers])
    y = torch.arange(2).repeat_interleave(n_per_class)
    return X, y


def small_regression(n: int = 32, batch_size: int = 32):
    X, y = sine_data(n)
    return DataLoader(TensorDataset(X, y), batch_size=batch_size), mlp(1, 8, 1)


# ------------------------------------------------------------------ regression
def test_regression_learns_noise_and_marglik_improves():
    X, y = sine_data(100, sigma=0.1)
    loader = DataLoader(TensorDataset(X, y), batch_size=100)
    model = mlp(1, 20, 1)
    n_epochs, n_hypersteps = 100, 10
    lap, out_model, margliks, losses = marglik_training(
        model, loader, likelihood="regression", hessian_structure="full",
        n_epochs=n_epochs, n_hypersteps=n_hypersteps, optimizer_kwargs={"lr": 0.05},
    )
    assert out_model is model and lap.model is model
    assert isinstance(lap, FullLaplace)
    assert len(losses) == n_epochs and len(margliks) == n_epochs * n_hypersteps
    assert all(torch.isfinite(torch.tensor(margliks)))

    sigma = float(lap.sigma_noise)
    assert 0.05 < sigma < 0.2, sigma
    # margliks are negative log marginal likelihoods: they decrease as training improves.
    per_epoch = torch.tensor(margliks[n_hypersteps - 1 :: n_hypersteps])
    assert per_epoch[-1] < per_epoch[0] - 50
    assert (per_epoch.diff() < 0).float().mean() > 0.6
    assert losses[-1] < losses[0]

    # The returned approximation sits at the returned weights with positive hyperparameters.
    assert torch.allclose(lap.mean, vector_of(p.detach() for p in model.parameters()))
    assert lap.prior_precision.numel() == 4 and bool((lap.prior_precision > 0).all())
    f_mu, f_var = lap(X[::10])
    assert f_mu.shape == (10, 1) and f_var.shape == (10, 1, 1)
    assert bool(torch.isfinite(f_var).all()) and bool((f_var > 0).all())
    assert float((f_mu - torch.sin(X[::10])).abs().max()) < 0.4


def test_fix_sigma_noise_keeps_sigma():
    loader, model = small_regression()
    lap, _, margliks, _ = marglik_training(
        model, loader, likelihood="regression", hessian_structure="kron", n_epochs=3,
        n_hypersteps=3, sigma_noise_init=0.5, fix_sigma_noise=True,
    )
    assert float(lap.sigma_noise) == pytest.approx(0.5)
    assert len(margliks) == 9
    # The prior precision is still learned.
    assert not torch.allclose(lap.prior_precision, torch.ones(4, dtype=torch.float64))


def test_sigma_noise_is_learned_when_not_fixed():
    loader, model = small_regression()
    lap, *_ = marglik_training(
        model, loader, likelihood="regression", hessian_structure="diag", n_epochs=2,
        n_hypersteps=3, sigma_noise_init=0.5,
    )
    assert isinstance(lap, DiagLaplace)
    assert float(lap.sigma_noise) != pytest.approx(0.5)


# -------------------------------------------------------------- classification
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_classification_kron_layerwise(dtype):
    X, y = blobs(dtype=dtype)
    loader = DataLoader(TensorDataset(X, y), batch_size=25, shuffle=True,
                        generator=torch.Generator().manual_seed(0))
    model = mlp(2, 10, 2, dtype=dtype)
    lap, _, margliks, losses = marglik_training(
        model, loader, n_epochs=10, n_hypersteps=5, optimizer_kwargs={"lr": 0.01},
    )
    assert isinstance(lap, KronLaplace)
    n_layers = len(list(model.parameters()))
    prior = lap.prior_precision
    assert prior.shape == (n_layers,) and prior.dtype == dtype and bool((prior > 0).all())
    assert float(lap.sigma_noise) == 1.0
    assert len(losses) == 10 and len(margliks) == 50
    assert margliks[-1] < margliks[0]
    probs = lap(X)
    assert probs.shape == (100, 2)
    assert torch.allclose(probs.sum(-1), torch.ones(100, dtype=dtype))
    assert float((probs.argmax(-1) == y).float().mean()) > 0.95


@pytest.mark.parametrize(
    ("structure", "hessian", "length"),
    [("scalar", "kron", 1), ("diag", "diag", 52), ("diag", "full", 52)],
)
def test_prior_structures(structure, hessian, length):
    X, y = blobs(20)
    loader = DataLoader(TensorDataset(X, y), batch_size=40)
    lap, *_ = marglik_training(
        mlp(2, 10, 2), loader, hessian_structure=hessian, prior_structure=structure,
        n_epochs=2, n_hypersteps=2,
    )
    assert lap.prior_precision.shape == (length,)
    assert bool((lap.prior_precision > 0).all())


# ------------------------------------------------------ schedule of the updates
@pytest.mark.parametrize(
    ("frequency", "burnin", "update_epochs"),
    [(3, 4, [6, 9]), (3, 3, [3, 6, 9]), (1, 0, list(range(1, 11))), (4, 0, [4, 8])],
)
def test_marglik_frequency_and_burnin(monkeypatch, frequency, burnin, update_epochs):
    built = []
    real_laplace = mt.Laplace

    def spy(*args, **kwargs):
        la = real_laplace(*args, **kwargs)
        built.append(la)
        return la

    monkeypatch.setattr(mt, "Laplace", spy)
    loader, model = small_regression()
    _, _, margliks, losses = marglik_training(
        model, loader, likelihood="regression", n_epochs=10, n_hypersteps=2,
        marglik_frequency=frequency, n_epochs_burnin=burnin,
    )
    # Epochs count from 1; updates in epochs divisible by the frequency, from the burn-in on.
    assert len(losses) == 10
    assert len(margliks) == 2 * len(update_epochs)
    assert len(built) == len(update_epochs) + 1  # plus the final fit


def test_burnin_beyond_training_fits_initial_hyperparameters():
    loader, model = small_regression()
    lap, _, margliks, losses = marglik_training(
        model, loader, likelihood="regression", n_epochs=3, n_epochs_burnin=5,
        prior_structure="scalar", prior_prec_init=0.5, sigma_noise_init=0.3, temperature=2.0,
    )
    assert margliks == [] and len(losses) == 3
    assert lap.prior_precision.tolist() == pytest.approx([1.0])  # temperature · init
    assert float(lap.sigma_noise) == pytest.approx(0.3)
    assert torch.allclose(lap.mean, vector_of(p.detach() for p in model.parameters()))


def test_best_marglik_state_is_returned(monkeypatch):
    """The returned weights are those of the epoch with the lowest negative marglik."""
    snapshots = []
    real_laplace = mt.Laplace

    def spy(model, *args, **kwargs):
        snapshots.append(vector_of(p.detach().clone() for p in model.parameters()))
        return real_laplace(model, *args, **kwargs)

    monkeypatch.setattr(mt, "Laplace", spy)
    loader, model = small_regression()
    # A learning rate blown up after epoch 3 makes the later epochs' marglik worse.
    lap, _, margliks, _ = marglik_training(
        model, loader, likelihood="regression", n_epochs=6, n_hypersteps=1,
        optimizer_cls=torch.optim.SGD, optimizer_kwargs={"lr": 0.01},
        scheduler_cls=torch.optim.lr_scheduler.LambdaLR,
        scheduler_kwargs={"lr_lambda": lambda e: 1.0 if e < 3 else 300.0},
    )
    assert len(snapshots) == 7  # one Laplace per epoch, then the final one
    best_epoch = min(range(6), key=lambda i: margliks[i])
    assert best_epoch == 2 and margliks[-1] > margliks[best_epoch]
    assert not torch.allclose(snapshots[5], snapshots[best_epoch])
    assert torch.equal(snapshots[-1], snapshots[best_epoch])
    assert torch.allclose(lap.mean, snapshots[best_epoch])
    final = vector_of(p.detach() for p in model.parameters())
    assert torch.equal(final, snapshots[best_epoch])


def test_scheduler_stepped_per_batch():
    """laplace-torch steps the scheduler after every batch of network training."""
    schedulers, lrs_at_step = [], []

    class Recording(torch.optim.lr_scheduler.StepLR):
        def __init__(self, optimizer, **kwargs):
            super().__init__(optimizer, **kwargs)
            schedulers.append(self)

        def step(self, *args, **kwargs):
            lrs_at_step.append(self.optimizer.param_groups[0]["lr"])
            super().step(*args, **kwargs)

    loader, model = small_regression(32, batch_size=8)  # 4 batches per epoch
    marglik_training(
        model, loader, likelihood="regression", n_epochs=3, n_hypersteps=1,
        optimizer_cls=torch.optim.SGD, optimizer_kwargs={"lr": 0.1},
        scheduler_cls=Recording, scheduler_kwargs={"step_size": 1, "gamma": 0.5},
    )
    (scheduler,) = schedulers
    assert isinstance(scheduler.optimizer, torch.optim.SGD)
    assert scheduler.last_epoch == 12  # 3 epochs x 4 batches
    # StepLR's constructor takes one step; then one per batch, each halving the rate.
    assert lrs_at_step[1:] == pytest.approx([0.1 * 0.5**k for k in range(12)])
    assert scheduler.optimizer.param_groups[0]["lr"] == pytest.approx(0.1 * 0.5**12)


def test_weight_decay_is_replaced_by_the_prior():
    loader, model = small_regression()
    kwargs = {"lr": 0.01, "weight_decay": 1e-2}
    with pytest.warns(UserWarning, match="[Ww]eight decay"):
        marglik_training(
            model, loader, likelihood="regression", n_epochs=1, n_hypersteps=1,
            optimizer_kwargs=kwargs,
        )
    assert kwargs == {"lr": 0.01, "weight_decay": 1e-2}  # the caller's dict is untouched


# ------------------------------------------------------------- dict batches
class DictBlobs(Dataset):
    def __init__(self, X, y):
        self.X, self.y = X, y

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        return {"features": self.X[i], "target": self.y[i]}


class DictModel(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = mlp(2, 6, 2)

    def forward(self, batch):
        return self.net(batch["features"])


def test_dict_batches_and_progress_bar():
    X, y = blobs(20)
    loader = DataLoader(DictBlobs(X, y), batch_size=20)
    model = DictModel()
    lap, _, margliks, losses = marglik_training(
        model, loader, hessian_structure="kron", n_epochs=2, n_hypersteps=2,
        dict_key_x="features", dict_key_y="target", progress_bar=True,
    )
    assert len(margliks) == 4 and len(losses) == 2
    assert lap.dict_key_x == "features" and lap.dict_key_y == "target"
    probs = lap({"features": X})
    assert probs.shape == (40, 2)


# ------------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"prior_structure": "blockwise"}, "prior_structure"),
        ({"prior_structure": "diag", "hessian_structure": "kron"}, "Kronecker"),
        ({"hessian_structure": "lowrank"}, "hessian_structure"),
        ({"likelihood": "ranking"}, "likelihood"),
        ({"likelihood": "reward_modeling"}, "pair batches"),
        ({"n_hypersteps": 0}, "n_hypersteps"),
        ({"marglik_frequency": 0}, "marglik_frequency"),
        ({"n_epochs": -1}, "n_epochs"),
        ({"prior_prec_init": 0.0}, "prior_prec_init"),
        ({"likelihood": "regression", "sigma_noise_init": -1.0}, "sigma_noise_init"),
        ({"sigma_noise_init": 0.5}, "sigma_noise_init"),
        # named where they enter (raw TypeErrors, or silently accepted, before)
        ({"lr_hyp": "0.1"}, "lr_hyp"),
        ({"lr_hyp": None}, "lr_hyp"),
        ({"prior_prec_init": True}, "prior_prec_init"),
        ({"prior_prec_init": torch.tensor([1.0, 2.0])}, "prior_prec_init must be a scalar"),
        ({"backend": nn.Linear}, "backend must be a curvature class"),
        ({"optimizer_cls": "adam"}, "optimizer_cls"),
        ({"scheduler_cls": "cos"}, "scheduler_cls"),
        ({"optimizer_kwargs": [1]}, "optimizer_kwargs must be a dict"),
        ({"scheduler_kwargs": {"T_max": 3}}, "without scheduler_cls"),
        ({"fix_sigma_noise": "no"}, "fix_sigma_noise must be a bool"),
        ({"progress_bar": "yes"}, "progress_bar must be a bool"),
        ({"enable_backprop": 1}, "enable_backprop must be a bool"),
        ({"dict_key_x": 3}, "dict_key_x must be a string"),
    ],
)
def test_invalid_options(kwargs, match):
    loader, model = small_regression()
    with pytest.raises(ValueError, match=match):
        marglik_training(model, loader, **{"n_epochs": 1, **kwargs})


def test_empty_loader():
    empty = TensorDataset(torch.zeros(0, 1, dtype=torch.float64), torch.zeros(0, 1))
    with pytest.raises(ValueError, match="empty"):
        marglik_training(mlp(1, 4, 1), DataLoader(empty), likelihood="regression", n_epochs=1)
