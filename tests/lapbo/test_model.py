"""Contracts of ``LaplaceBNN``: shapes, agreement with the Laplace object, gradients,
conditioning, serialization, warm starts and pathwise samples."""

from __future__ import annotations

import warnings
from collections.abc import Iterator

import pytest
import torch
from botorch.acquisition import qLogExpectedImprovement
from botorch.exceptions.warnings import InputDataWarning
from botorch.models.transforms.input import Normalize
from botorch.posteriors.gpytorch import GPyTorchPosterior
from botorch.sampling import SobolQMCNormalSampler
from botorch.utils.datasets import SupervisedDataset
from gpytorch.distributions import MultitaskMultivariateNormal, MultivariateNormal
from torch import Tensor

from lapbo import ConditionedLaplaceBNN, LaplaceBNN, draw_pathwise_samples, fit_laplace_bnn

SMALL = {"width": 16, "n_epochs": 100, "marglik_every": 50, "marglik_steps": 10,
         "final_marglik_steps": 30, "n_epochs_warm_start": 30}


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    """Tiny matrices: OpenMP threads only contend on a shared machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def objective(X: Tensor) -> Tensor:
    """``(n, d) → (n, 2)``: two smooth outputs."""
    y1 = torch.sin(5 * X[:, :1]) + X[:, 1:2].square()
    y2 = torch.cos(3 * X.sum(-1, keepdim=True))
    return torch.cat([y1, y2], dim=-1)


def data(n: int = 12, d: int = 2, dtype: torch.dtype = torch.float64) -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(0)
    X = torch.rand(n, d, generator=g, dtype=dtype)
    return X, objective(X)


@pytest.fixture(scope="module")
def model1() -> LaplaceBNN:
    X, Y = data()
    return LaplaceBNN(X, Y[:, :1], seed=0, **SMALL).fit()


@pytest.fixture(scope="module", params=["last_layer", "all"])
def model2(request: pytest.FixtureRequest) -> LaplaceBNN:
    """Two outputs; the default last-layer posterior and the all-weights one."""
    X, Y = data()
    return LaplaceBNN(X, Y, seed=0, input_transform=Normalize(d=2),
                      subset_of_weights=request.param, **SMALL).fit()


def test_fit_sets_hyperparameters(model1: LaplaceBNN) -> None:
    assert bool(model1.is_fitted)
    assert 1e-3 <= float(model1.sigma_noise) <= 10
    assert 1e-6 <= float(model1.prior_precision) <= 1e6
    assert model1.num_outputs == 1 and model1.batch_shape == torch.Size()
    X, Y = data()
    post = model1.posterior(X)
    rmse = (post.mean - Y[:, :1]).square().mean().sqrt()
    assert rmse < 0.3 * Y[:, 0].std()


@pytest.mark.parametrize("which", [1, 2])
@pytest.mark.parametrize("shape", [(5, 2), (3, 4, 2), (2, 3, 4, 2)])
def test_posterior_shapes(model1: LaplaceBNN, model2: LaplaceBNN, which: int,
                          shape: tuple[int, ...]) -> None:
    model = model1 if which == 1 else model2
    X = torch.rand(*shape, dtype=torch.float64)
    post = model.posterior(X)
    assert type(post) is GPyTorchPosterior
    batch, q, m = shape[:-2], shape[-2], which
    dist_type = MultivariateNormal if m == 1 else MultitaskMultivariateNormal
    assert isinstance(post.distribution, dist_type)
    assert post.mean.shape == (*batch, q, m)
    assert post.variance.shape == (*batch, q, m)
    assert post.distribution.covariance_matrix.shape == (*batch, q * m, q * m)
    assert torch.isfinite(post.mean).all() and (post.variance > 0).all()
    noisy = model.posterior(X, observation_noise=True)
    assert (noisy.variance > post.variance).all()
    samples = post.rsample(torch.Size([3]))
    assert samples.shape == (3, *batch, q, m)
    # batched evaluation equals evaluation of each batch element alone
    flat = X.reshape(-1, q, 2)
    single = model.posterior(flat[-1])
    assert torch.allclose(post.mean.reshape(-1, q, m)[-1], single.mean, atol=1e-10)
    cov = post.distribution.covariance_matrix.reshape(-1, q * m, q * m)[-1]
    assert torch.allclose(cov, single.distribution.covariance_matrix, atol=1e-10)


def test_output_indices_and_subset(model2: LaplaceBNN) -> None:
    X = torch.rand(4, 2, dtype=torch.float64)
    full = model2.posterior(X)
    one = model2.posterior(X, output_indices=[1])
    assert isinstance(one.distribution, MultivariateNormal)
    assert torch.allclose(one.mean, full.mean[..., 1:], atol=1e-10)
    assert torch.allclose(one.variance, full.variance[..., 1:], atol=1e-10)
    sub = model2.subset_output([1])
    assert sub.num_outputs == 1
    assert torch.allclose(sub.posterior(X).mean, full.mean[..., 1:], atol=1e-10)


@pytest.mark.parametrize("subset", ["last_layer", "all"])
@pytest.mark.parametrize("structure", ["full", "kron", "diag"])
def test_matches_laplace_predictive(structure: str, subset: str) -> None:
    X, Y = data()
    model = LaplaceBNN(X, Y, outcome_transform=None, hessian_structure=structure, seed=1,
                       subset_of_weights=subset, **SMALL).fit()
    Xt = torch.rand(6, 2, dtype=torch.float64)
    f_mu, f_var = model.la(Xt)
    post = model.posterior(Xt)
    assert torch.allclose(post.mean, f_mu, rtol=1e-7, atol=1e-9)
    var = f_var.diagonal(dim1=-2, dim2=-1)
    assert torch.allclose(post.variance, var, rtol=1e-6, atol=1e-9)
    _, joint = model.la(Xt, joint=True)
    cov = post.distribution.covariance_matrix
    assert torch.allclose(cov, joint, rtol=1e-6, atol=1e-8)
    if structure == "full":  # with noise: the Laplace predictive plus σ²
        noisy = model.posterior(Xt, observation_noise=True)
        assert torch.allclose(noisy.variance, var + model.sigma_noise**2, rtol=1e-6)


def test_outcome_transform_untransforms(model1: LaplaceBNN) -> None:
    Xt = torch.rand(5, 2, dtype=torch.float64)
    f_mu, f_var = model1.la(model1.transform_inputs(Xt))
    ot = model1.outcome_transform
    post = model1.posterior(Xt)
    assert torch.allclose(post.mean, f_mu * ot.stdvs + ot.means, rtol=1e-7)
    assert torch.allclose(post.variance[..., 0], f_var[..., 0, 0] * ot.stdvs[0, 0] ** 2,
                          rtol=1e-6)


def test_gradients_match_finite_differences(model1: LaplaceBNN) -> None:
    X, Y = data()
    acqf = qLogExpectedImprovement(
        model1, best_f=Y[:, 0].max(), sampler=SobolQMCNormalSampler(torch.Size([64]), seed=0)
    )
    Xq = torch.rand(3, 2, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    Xq.requires_grad_(True)
    acqf(Xq).sum().backward()
    grad = Xq.grad
    eps = 1e-5
    fd = torch.zeros_like(Xq)
    with torch.no_grad():
        for idx in torch.cartesian_prod(*[torch.arange(s) for s in Xq.shape]):
            i = tuple(idx.tolist())
            Xp, Xm = Xq.detach().clone(), Xq.detach().clone()
            Xp[i] += eps
            Xm[i] -= eps
            fd[i] = (acqf(Xp).sum() - acqf(Xm).sum()) / (2 * eps)
    assert torch.isfinite(grad).all() and grad.abs().max() > 1e-6
    assert torch.allclose(grad, fd, rtol=1e-4, atol=1e-6)
    # the posterior mean and variance too
    x = torch.rand(1, 2, dtype=torch.float64, requires_grad=True)
    post = model1.posterior(x)
    (post.mean.sum() + post.variance.sum()).backward()
    with torch.no_grad():
        fd_x = torch.zeros_like(x)
        for j in range(2):
            xp, xm = x.detach().clone(), x.detach().clone()
            xp[0, j] += eps
            xm[0, j] -= eps
            pp, pm = model1.posterior(xp), model1.posterior(xm)
            fd_x[0, j] = (pp.mean.sum() + pp.variance.sum() - pm.mean.sum()
                          - pm.variance.sum()) / (2 * eps)
    assert torch.allclose(x.grad, fd_x, rtol=1e-5, atol=1e-7)


# Noise 1e-12 collapses the variance at x0 to round-off; GPyTorch rounds it up and says so.
@pytest.mark.filterwarnings("ignore:Negative variance values detected")
def test_conditioning_interpolates(model1: LaplaceBNN) -> None:
    x0 = torch.tensor([[0.37, 0.81]], dtype=torch.float64)
    before = model1.posterior(x0)
    y0 = before.mean + 3.0 * before.variance.sqrt()  # a surprising observation
    noise = torch.full_like(y0, 1e-12)
    cond = model1.condition_on_observations(x0, y0, noise=noise)
    assert isinstance(cond, ConditionedLaplaceBNN) and cond.batch_shape == torch.Size()
    after = cond.posterior(x0)
    scale = float(before.variance.sqrt())
    assert (after.mean - y0).abs().item() < 1e-3 * scale
    assert after.variance.item() < 1e-4 * before.variance.item()
    # variance elsewhere can only shrink; the untouched model is unchanged
    Xt = torch.rand(20, 2, dtype=torch.float64)
    assert (cond.posterior(Xt).variance <= model1.posterior(Xt).variance + 1e-12).all()
    assert torch.allclose(model1.posterior(x0).mean, before.mean)


def test_conditioning_is_exact_gaussian_update(model2: LaplaceBNN) -> None:
    g = torch.Generator().manual_seed(3)
    Xn = torch.rand(2, 2, dtype=torch.float64, generator=g)
    Xt = torch.rand(3, 2, dtype=torch.float64, generator=g)
    Yn = torch.randn(2, 2, dtype=torch.float64, generator=g)
    # joint prior over [Xn, Xt] in the outcome-transformed space (no outcome transform
    # in the reference: compare standardized quantities)
    ot = model2.outcome_transform
    joint = model2.posterior(torch.cat([Xn, Xt]))
    mu = ((joint.mean - ot.means) / ot.stdvs).reshape(-1)
    K = joint.distribution.covariance_matrix / torch.kron(
        ot.stdvs.reshape(-1).repeat(5)[:, None], ot.stdvs.reshape(-1).repeat(5)[None, :]
    )
    s2 = model2.sigma_noise**2
    n = 4  # 2 points × 2 outputs
    y = ((Yn - ot.means) / ot.stdvs).reshape(-1)
    Knn = K[:n, :n] + s2 * torch.eye(n, dtype=K.dtype)
    gain = torch.linalg.solve(Knn, K[:n, n:]).T
    mean_ref = mu[n:] + gain @ (y - mu[:n])
    cov_ref = K[n:, n:] - gain @ K[:n, n:]
    cond = model2.condition_on_observations(Xn, Yn).posterior(Xt)
    mean = ((cond.mean - ot.means) / ot.stdvs).reshape(-1)
    cov = cond.distribution.covariance_matrix / torch.kron(
        ot.stdvs.reshape(-1).repeat(3)[:, None], ot.stdvs.reshape(-1).repeat(3)[None, :]
    )
    assert torch.allclose(mean, mean_ref, rtol=1e-5, atol=1e-6)
    assert torch.allclose(cov, cov_ref, rtol=1e-5, atol=1e-6)


def test_fantasize_batch_shapes(model1: LaplaceBNN, model2: LaplaceBNN) -> None:
    X = torch.rand(4, 1, 2, dtype=torch.float64)
    sampler = SobolQMCNormalSampler(torch.Size([3]), seed=0)
    for model, m in ((model1, 1), (model2, 2)):
        fant = model.fantasize(X, sampler)
        assert fant.batch_shape == torch.Size([3, 4])
        post = fant.posterior(torch.rand(3, 4, 2, 2, dtype=torch.float64))
        assert post.mean.shape == (3, 4, 2, m)
        assert torch.isfinite(post.variance).all() and (post.variance > 0).all()
        post2d = fant.posterior(torch.rand(5, 2, dtype=torch.float64))
        assert post2d.mean.shape == (3, 4, 5, m)
        # a fantasy model conditioned again (nested fantasies)
        fant2 = fant.fantasize(torch.rand(4, 1, 2, dtype=torch.float64), sampler)
        assert fant2.batch_shape == torch.Size([3, 3, 4])


def test_state_dict_round_trip(model1: LaplaceBNN) -> None:
    X, Y = data()
    state = model1.state_dict()
    clone = LaplaceBNN(X, Y[:, :1], seed=123, **SMALL)
    clone.load_state_dict(state)
    Xt = torch.rand(7, 2, dtype=torch.float64)
    p0, p1 = model1.posterior(Xt), clone.posterior(Xt)
    assert torch.allclose(p0.mean, p1.mean, atol=1e-10)
    assert torch.allclose(p0.distribution.covariance_matrix,
                          p1.distribution.covariance_matrix, atol=1e-10)
    # Ax cross-validation: a fold model with fewer points loads the full state as is
    fold = LaplaceBNN(X[:-2], Y[:-2, :1], **SMALL)
    fold.load_state_dict(state)
    post = fold.posterior(Xt)
    assert torch.isfinite(post.mean).all() and (post.variance > 0).all()
    assert torch.allclose(post.mean, p0.mean, atol=0.5)


def test_a_random_feature_state_is_conditioned_on_the_loading_models_data() -> None:
    """Ax's cross-validation folds load the full model's state onto the fold's data: a
    random-feature network's weights (a posterior mean) are then the posterior mean on
    the fold, at the loaded hyperparameters, as a GP conditions on its fold (they held
    the left-out point, and leave-one-out looked good on pure noise); on the same data
    the weights load bit for bit."""
    from lapbo.networks import random_feature_layer
    from laplace.posterior.linear_gaussian import linear_gaussian_posterior_mean

    g = torch.Generator().manual_seed(0)
    X = torch.rand(12, 3, dtype=torch.float64, generator=g)
    Y = torch.randn(12, 1, dtype=torch.float64, generator=g)
    full = LaplaceBNN(X, Y, net="random_features", random_features=64, candidates=None,
                      seed=0).fit()
    state = full.state_dict()
    same = LaplaceBNN(X, Y, net="random_features", random_features=64, candidates=None)
    same.load_state_dict(state)
    assert all(torch.equal(a, b) for a, b in zip(same.net.parameters(), full.net.parameters()))
    fold = LaplaceBNN(X[1:], Y[1:], net="random_features", random_features=64,
                      candidates=None)
    fold.load_state_dict(state)
    Xf, Yf, _ = fold._training_data()  # the loaded outcome transform, as for a GP fold
    layer = random_feature_layer(fold.net)
    with torch.no_grad():
        phi = layer.features(Xf, layer.lengthscale)
        phi = torch.cat([phi, torch.ones_like(phi[:, :1])], -1)
    expected = linear_gaussian_posterior_mean(
        phi, Yf[:, 0], fold.prior_precision.reshape(()), fold.sigma_noise.square().expand(11))
    head = fold.net[1]
    torch.testing.assert_close(torch.cat([head.weight[0], head.bias]), expected,
                               rtol=1e-9, atol=1e-12)
    left_out = fold.posterior(X[:1]).mean - full.posterior(X[:1]).mean
    assert float(left_out.abs()) > 1e-3  # no longer the value that saw the point


@pytest.mark.parametrize("net", ["random_features", None])
def test_a_state_of_other_inputs_is_refused_by_name(net: str | None) -> None:
    g = torch.Generator().manual_seed(1)
    X3, Y = torch.rand(10, 3, dtype=torch.float64, generator=g), torch.randn(10, 1, generator=g,
                                                                             dtype=torch.float64)
    options = {"net": net, "candidates": None, "seed": 0,
               **({"random_features": 32} if net else SMALL)}
    saved = LaplaceBNN(X3, Y, **options).fit().state_dict()
    other = LaplaceBNN(X3[:, :2], Y, **options)
    with pytest.raises(ValueError, match="3 inputs; this model has 2"):
        other.load_state_dict(saved)


def test_warm_start_and_helpers(model1: LaplaceBNN) -> None:
    X, Y = data(n=16)
    warm = LaplaceBNN(X, Y[:, :1], warm_start=model1, **SMALL)
    for p, q in zip(warm.net.parameters(), model1.net.parameters()):
        assert torch.equal(p, q) and p is not q
    assert float(warm.prior_precision) == float(model1.prior_precision)
    fit_laplace_bnn(warm)
    post = warm.posterior(X)
    assert (post.mean - Y[:, :1]).square().mean().sqrt() < 0.3 * Y[:, 0].std()
    ds = SupervisedDataset(X, Y[:, :1], feature_names=["a", "b"], outcome_names=["y"])
    inputs = LaplaceBNN.construct_inputs(ds, width=8, n_epochs=10)
    assert set(inputs) == {"train_X", "train_Y", "width", "n_epochs"}
    assert LaplaceBNN(**inputs).fit().posterior(X).mean.shape == (16, 1)
    with pytest.raises(RuntimeError, match="not fitted"):
        LaplaceBNN(X, Y[:, :1]).posterior(X)


def test_float32_model() -> None:
    X, Y = data(dtype=torch.float32)
    with pytest.warns(InputDataWarning, match="torch.float32"):  # BoTorch's advice
        model = LaplaceBNN(X, Y[:, :1], seed=0, **SMALL).fit()
    post = model.posterior(torch.rand(2, 3, 2))
    assert post.mean.dtype == torch.float32 and post.mean.shape == (2, 3, 1)
    assert next(model.net.parameters()).dtype == torch.float64
    assert torch.isfinite(post.variance).all() and (post.variance > 0).all()
    model.to(torch.float32)  # an explicit cast moves the network and the data
    post32 = model.posterior(torch.rand(4, 2))
    assert torch.isfinite(post32.mean).all()


@pytest.mark.parametrize("outcome_transform", ["default", None])
def test_a_float32_query_of_a_float64_model_is_answered_in_float64(outcome_transform) -> None:
    """The query's dtype promoted with the data's, as a ``SingleTaskGP`` answers, with or
    without the outcome transform (which alone used to promote), and the paths too."""
    from botorch.sampling.pathwise import draw_matheron_paths

    from lapbo import draw_pathwise_samples

    X, Y = data()
    kwargs = {} if outcome_transform == "default" else {"outcome_transform": None}
    model = LaplaceBNN(X, Y[:, :1], seed=0, **SMALL, **kwargs).fit()
    Xq = torch.rand(3, 2, dtype=torch.float64)
    post32, post64 = model.posterior(Xq.float()), model.posterior(Xq)
    assert post32.mean.dtype == post32.variance.dtype == torch.float64
    torch.testing.assert_close(post32.mean, post64.mean, rtol=1e-6, atol=1e-6)
    assert draw_matheron_paths(model, torch.Size([2]))(Xq.float()).dtype == torch.float64
    assert draw_pathwise_samples(model, 2)(Xq.float()).dtype == torch.float64


def test_float32_network_keeps_a_float64_gaussian() -> None:
    """``compute_dtype=torch.float32`` for the MLP at the noise floor (σ = 10⁻³, a
    noiseless function, 100 rows): in float32 the sample-space capacitance
    ``I + s·R D⁻¹ Rᵀ`` could not be factorised (``NotPositiveDefiniteError`` in
    ``posterior``) and at 30 rows the variances came back negative (GPyTorch clamped
    them); the network trains in float32 and the Gaussian's linear algebra is float64."""
    g = torch.Generator().manual_seed(0)
    X = torch.rand(100, 2, generator=g, dtype=torch.float64)
    Y = (3 * X).sin().sum(-1, keepdim=True)
    model = LaplaceBNN(X, Y, seed=1, width=40, compute_dtype=torch.float32).fit()
    assert next(model.net.parameters()).dtype == torch.float32
    assert model._gaussian().dtype == torch.float64
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # no negative-variance clamping
        post = model.posterior(torch.cat([X[:20], torch.rand(5, 2, generator=g,
                                                             dtype=torch.float64)]))
    assert post.mean.dtype == torch.float64
    assert bool((post.variance > 0).all()) and bool(torch.isfinite(post.variance).all())
    fantasy = model.fantasize(X[:3].unsqueeze(0) + 0.01, SobolQMCNormalSampler(torch.Size([2])))
    assert bool((fantasy.posterior(X[:4]).variance > 0).all())
    paths = draw_pathwise_samples(model, 3)
    assert torch.isfinite(paths(X[:4])).all()


def test_train_yvar() -> None:
    X, Y = data()
    Yvar = torch.full_like(Y, 1e-4)
    model = LaplaceBNN(X, Y, Yvar, seed=0, **SMALL).fit()
    post = model.posterior(X, observation_noise=True)
    assert torch.isfinite(post.variance).all()
    assert (post.variance >= 1e-4 * 0.99).all()


def test_known_noise_below_the_floor_is_raised_to_it() -> None:
    """``train_Yvar`` below ``min_noise_std²`` (standardized) is raised to it, with one
    warning at construction, as GPyTorch raises a fixed noise below
    ``settings.min_fixed_noise``."""
    X, Y = data()
    with pytest.warns(InputDataWarning, match="min_noise_std") as record:
        model = LaplaceBNN(X, Y, torch.zeros_like(Y), seed=0, **SMALL)
    assert sum("min_noise_std" in str(w.message) for w in record) == 1
    with warnings.catch_warnings():
        warnings.simplefilter("error", InputDataWarning)  # the fits do not repeat it
        model.fit()
    assert torch.allclose(model._training_data()[2], torch.full_like(Y, 1e-6))
    std = Y.std(0)  # Standardize: the floor in the data's units is 1e-6 · var(Y) per output
    post = model.posterior(X, observation_noise=True)
    assert (post.variance >= 1e-6 * std**2 * 0.99).all()


def test_noise_free_observations_at_600_rows_fit() -> None:
    """``train_Yvar = 0`` at 600 rows with a floor of 10⁻⁶ (``min_noise_std``): the
    family's evidence factorisation fails to rounding and is jittered (it raised
    ``NotPositiveDefiniteError`` before); the predictive is finite and accurate."""
    g = torch.Generator().manual_seed(3)
    X = torch.rand(600, 6, generator=g, dtype=torch.float64)
    Y = X.sum(-1, keepdim=True)
    with pytest.warns(RuntimeWarning, match="jitter"):
        model = LaplaceBNN(X, Y, torch.zeros_like(Y), min_noise_std=1e-6, seed=0).fit()
    Xt = torch.rand(50, 6, generator=g, dtype=torch.float64)
    post = model.posterior(Xt)
    assert torch.isfinite(post.variance).all() and (post.variance > 0).all()
    assert (post.mean - Xt.sum(-1, keepdim=True)).abs().max() < 0.05


def test_pathwise_samples(model1: LaplaceBNN) -> None:
    g = torch.Generator().manual_seed(0)
    paths = draw_pathwise_samples(model1, 4000, generator=g)
    Xt = torch.rand(3, 2, dtype=torch.float64)
    values = paths(Xt)
    assert values.shape == (4000, 3, 1)
    assert torch.equal(values, paths(Xt))  # deterministic functions of X
    post = model1.posterior(Xt)
    sd = post.variance.sqrt()
    assert ((values.mean(0) - post.mean).abs() < 5 * sd / 4000**0.5).all()
    assert torch.allclose(values.var(0), post.variance, rtol=0.15)
    Xb = torch.rand(5, 2, 2, dtype=torch.float64, requires_grad=True)
    out = draw_pathwise_samples(model1, 2, generator=g)(Xb)
    assert out.shape == (2, 5, 2, 1)
    out.sum().backward()
    assert torch.isfinite(Xb.grad).all() and Xb.grad.abs().sum() > 0
    # a conditioned model: samples pass through the conditioning point
    x0 = torch.tensor([[0.2, 0.3]], dtype=torch.float64)
    y0 = torch.tensor([[1.5]], dtype=torch.float64)
    cond = model1.condition_on_observations(x0, y0, noise=torch.full_like(y0, 1e-10))
    vals = draw_pathwise_samples(cond, 50, generator=g)(x0)
    assert (vals - y0).abs().max() < 1e-3


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_cuda(dtype: torch.dtype) -> None:
    from botorch.optim import optimize_acqf

    device = torch.device("cuda")
    X, Y = data(dtype=dtype)
    X, Y = X.to(device), Y.to(device)
    model = LaplaceBNN(X, Y, seed=0, **SMALL).fit()
    assert next(model.net.parameters()).device.type == "cuda"
    Xt = torch.rand(4, 3, 2, dtype=dtype, device=device, requires_grad=True)
    post = model.posterior(Xt)
    assert post.mean.device.type == "cuda" and post.mean.dtype == dtype
    assert post.mean.shape == (4, 3, 2) and (post.variance > 0).all()
    post.mean.sum().backward()
    assert torch.isfinite(Xt.grad).all()
    fant = model.fantasize(Xt.detach()[:, :1], SobolQMCNormalSampler(torch.Size([2]), seed=0))
    assert fant.posterior(Xt.detach()).mean.shape == (2, 4, 3, 2)
    sub = model.subset_output([0])
    acqf = qLogExpectedImprovement(sub, best_f=Y[:, 0].max())
    bounds = torch.tensor([[0.0, 0.0], [1.0, 1.0]], dtype=dtype, device=device)
    cand, value = optimize_acqf(acqf, bounds, q=2, num_restarts=2, raw_samples=16)
    assert cand.device.type == "cuda" and torch.isfinite(value)
    g = torch.Generator(device=device).manual_seed(0)
    paths = draw_pathwise_samples(model, 8, generator=g)
    assert paths(Xt.detach()).shape == (8, 4, 3, 2)
    clone = LaplaceBNN(X, Y, **SMALL).to(device)
    clone.load_state_dict(model.state_dict())
    x = Xt.detach()
    assert torch.allclose(clone.posterior(x).mean, model.posterior(x).mean, atol=1e-5)


@pytest.mark.parametrize("n", [1, 2, 3])
def test_few_points_keep_the_prior_variance(n: int) -> None:
    """With one to three observations the δ hyperprior keeps the posterior variance away
    from the data of the order of the outcome variance (without it, n = 1 gave ~0.01)."""
    g = torch.Generator().manual_seed(n)
    X = torch.rand(n, 6, generator=g, dtype=torch.float64)
    Y = -(X - 0.3).square().sum(-1, keepdim=True)
    model = LaplaceBNN(X, Y, seed=0, n_epochs=100).fit()
    X_far = torch.rand(200, 1, 6, generator=g, dtype=torch.float64)
    with torch.no_grad():
        var = model.posterior(X_far).variance.squeeze() / model.outcome_transform.stdvs.square()
    assert 0.1 < float(var.median()) < 10.0
    no_hyperprior = LaplaceBNN(X, Y, seed=0, n_epochs=100, prior_precision_prior=None).fit()
    if n == 1:  # the evidence alone sends δ towards its bound
        assert float(no_hyperprior.prior_precision) > 10 * float(model.prior_precision)


@pytest.mark.parametrize("batch", [(7,), (2, 5)])
def test_posterior_without_gradients_in_pieces_equals_the_whole_batch(monkeypatch, batch) -> None:
    """Under ``torch.no_grad`` a large batch of queries is evaluated in pieces of at most
    ``PREDICT_CHUNK_BYTES`` of Jacobians (here one query each): same moments, same shapes,
    for two outputs and a subset of them."""
    from lapbo import linearized_model

    g = torch.Generator().manual_seed(3)
    X = torch.rand(15, 2, generator=g, dtype=torch.float64)
    Y = torch.stack([torch.sin(5 * X[:, 0]), X.sum(-1)], -1)
    model = LaplaceBNN(X, Y, seed=0, width=10, n_epochs=50).fit()
    Xq = torch.rand(*batch, 3, 2, generator=g, dtype=torch.float64)
    calls: list[int] = []
    features = model._features

    def counted(X_tf: torch.Tensor, idx: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        calls.append(1)
        return features(X_tf, idx)

    model._features = counted  # type: ignore[method-assign]
    for indices in (None, [1]):
        with torch.no_grad():
            calls.clear()
            whole = model.posterior(Xq, output_indices=indices)
            assert len(calls) == 1
            monkeypatch.setattr(linearized_model, "PREDICT_CHUNK_BYTES", 1)
            pieces = model.posterior(Xq, output_indices=indices)
            monkeypatch.undo()
            assert len(calls) == 1 + Xq.shape[:-2].numel()  # one query per piece
        assert pieces.mean.shape == whole.mean.shape
        assert torch.allclose(pieces.mean, whole.mean, rtol=0, atol=1e-12)
        assert torch.allclose(pieces.mvn.covariance_matrix, whole.mvn.covariance_matrix,
                              rtol=0, atol=1e-12)
