"""laplace-torch 0.3's API surface: positional constructor arguments in its order, its
re-exported names and import paths, and its smaller methods and attributes.

The orders below are laplace-torch 0.3's ``__init__`` parameters after ``(model,
likelihood)``, read from its signatures.
"""

from __future__ import annotations

import inspect

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from laplace import (
    ELLA,
    FullLaplace,
    FullLLLaplace,
    FullSubnetLaplace,
    FunctionalLaplace,
    FunctionalLLLaplace,
    KronLaplace,
    KronLLLaplace,
    Laplace,
    LowRankLaplace,
)
from laplace.curvature import CurvlinopsGGN, TorchFuncGGN
from laplace.utils import RunningNLLMetric, validate

torch.set_num_threads(1)
DT = torch.float64

_BASE = ["sigma_noise", "prior_precision", "prior_mean", "temperature", "enable_backprop",
         "dict_key_x", "dict_key_y", "backend"]
_LAST_LAYER = [*_BASE[:5], "feature_reduction", *_BASE[5:], "last_layer_name",
               "backend_kwargs", "asdl_fisher_kwargs"]
LAPLACE_TORCH_ORDERS = {
    FullLaplace: [*_BASE, "backend_kwargs"],
    KronLaplace: [*_BASE, "damping", "backend_kwargs", "asdl_fisher_kwargs"],
    LowRankLaplace: ["backend", *_BASE[:-1], "backend_kwargs"],
    FullLLLaplace: _LAST_LAYER,
    KronLLLaplace: [*_LAST_LAYER[:10], "damping", *_LAST_LAYER[10:]],
    FullSubnetLaplace: ["subnetwork_indices", *_BASE[:4], "backend", "backend_kwargs",
                        "asdl_fisher_kwargs"],
    FunctionalLaplace: ["n_subset", *_BASE, "backend_kwargs", "independent_outputs", "seed"],
    FunctionalLLLaplace: ["n_subset", *_LAST_LAYER[:8], "last_layer_name", "backend",
                          "backend_kwargs", "independent_outputs", "seed"],
    ELLA: ["subsample_size", "n_eigenvalues", *_BASE, "backend_kwargs", "seed"],
}


def model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(2, 5), nn.Tanh(), nn.Linear(5, 2)).to(DT)


def regression_loader() -> DataLoader:
    g = torch.Generator().manual_seed(1)
    X = torch.randn(12, 2, generator=g, dtype=DT)
    return DataLoader(TensorDataset(X, torch.randn(12, 2, generator=g, dtype=DT)),
                      batch_size=6)


@pytest.mark.parametrize("cls", list(LAPLACE_TORCH_ORDERS), ids=lambda c: c.__name__)
def test_the_signature_lists_laplace_torch_order(cls):
    names = list(inspect.signature(cls).parameters)
    order = LAPLACE_TORCH_ORDERS[cls]
    assert names[:2] == ["model", "likelihood"]
    assert names[2:2 + len(order)] == order


def test_positional_arguments_set_the_options_laplace_torch_sets():
    m = model()
    # laplace-torch's SubnetLaplace has no enable_backprop: the 6th option is the backend
    la = FullSubnetLaplace(m, "regression", torch.tensor([0, 1, 2]), 0.5, 2.0, 0.0, 1.0,
                           CurvlinopsGGN)
    assert la._backend_cls is CurvlinopsGGN and la.enable_backprop is False
    assert float(la.sigma_noise) == 0.5 and float(la.prior_precision) == 2.0
    kron = KronLaplace(m, "regression", 1.0, 1.0, 0.0, 1.0, False, "input_ids", "labels",
                       None, True)
    assert kron.damping is True
    ll = FullLLLaplace(m, "regression", 1.0, 1.0, 0.0, 1.0, False, None, "input_ids",
                       "labels", None, "2")
    assert ll.model.last_layer_name == "2"
    lowrank = LowRankLaplace(m, "regression", CurvlinopsGGN, 0.5)
    assert lowrank._backend_cls is CurvlinopsGGN and float(lowrank.sigma_noise) == 0.5
    gp = FunctionalLaplace(m, "regression", 6, 1.0, 1.0, 0.0, 1.0, False, "input_ids",
                           "labels", TorchFuncGGN, None, True, 3)
    assert gp.independent_outputs is True and gp.seed == 3
    assert ELLA(m, "regression", subsample_size=8, n_eigenvalues=3).n_subset == 8
    via_factory = Laplace(m, "regression", "all", "kron", 1.0, 1.0, 0.0, 1.0, False,
                          "input_ids", "labels", None, True)
    assert isinstance(via_factory, KronLaplace) and via_factory.damping is True


def test_positional_mistakes_are_type_errors_as_in_python():
    m = model()
    for cls in (FullLaplace, KronLaplace):  # forwarded as given / mapped to keywords
        with pytest.raises(TypeError, match="positional arguments"):
            cls(m, "regression", *([1.0] * 12))
        with pytest.raises(TypeError, match="multiple values for argument 'sigma_noise'"):
            cls(m, "regression", 1.0, sigma_noise=2.0)


def test_small_methods_and_attributes():
    m = model()
    la = FullLaplace(m, "regression")
    la.fit(regression_loader())
    X = torch.randn(3, 2, dtype=DT)
    for got, want in zip(la.predictive(X, "glm", "probit", 10), la(X)):
        assert torch.equal(got, want)
    assert [p is q for p, q in zip(la.params, m.parameters())] == [True] * 4
    assert la.is_subset_params is False
    m[0].weight.requires_grad_(False)
    assert FullLaplace(m, "regression").is_subset_params is True


def test_selected_output_jacobians_pick_rows_of_the_jacobians():
    backend = TorchFuncGGN(model(), "regression")
    X = torch.randn(4, 2, dtype=DT)
    Js, f = backend.jacobians(X)
    picked, f2 = backend.selected_output_jacobians(X, torch.tensor([0, 1, 1, 0]))
    assert picked.shape == (4, 1, Js.shape[-1]) and torch.equal(f, f2)
    for n, k in enumerate([0, 1, 1, 0]):
        assert torch.equal(picked[n, 0], Js[n, k])
    both, _ = backend.selected_output_jacobians(X, torch.tensor([[1, 0]] * 4))
    assert torch.equal(both, Js.flip(1))
    with pytest.raises(ValueError, match="outputs must lie in"):
        backend.selected_output_jacobians(X, torch.tensor([0, 1, 2, 0]))


def test_validate_takes_val_loader_by_name():
    g = torch.Generator().manual_seed(2)
    X = torch.randn(12, 2, generator=g, dtype=DT)
    y = torch.randint(0, 2, (12,), generator=g)
    loader = DataLoader(TensorDataset(X, y), batch_size=6)
    la = Laplace(model(), "classification", "all", "full")
    la.fit(loader)
    by_name = validate(la, val_loader=loader, loss=RunningNLLMetric())
    assert by_name == validate(la, loader, RunningNLLMetric())


def test_function_space_sod_and_no_weight_samples():
    la = Laplace(model(), "regression", "all", "gp", functional_approximation="sod",
                 n_subset=6)
    assert type(la) is FunctionalLaplace
    assert type(Laplace(model(), "regression", "last_layer", "gp", n_subset=6)) \
        is FunctionalLLLaplace
    la.fit(regression_loader())
    with pytest.raises(NotImplementedError, match="no weight samples"):
        la.sample(3)


def test_laplace_torch_import_paths():
    import laplace.curvature
    from laplace.baselaplace import (  # noqa: F401
        ELLA,
        AsdlGGN,
        BaseFunctionalLaplace,
        Kron,
        Likelihood,
        VaLLA,
        validate,
    )
    from laplace.curvature.asdfghjkl import Kron as Kron2  # noqa: F401
    from laplace.laplace import Likelihood as Likelihood2  # noqa: F401
    from laplace.lllaplace import FeatureExtractor, FullLaplace  # noqa: F401
    from laplace.marglik_training import AsdlGGN as AsdlGGN2  # noqa: F401
    from laplace.marglik_training import expand_prior_precision  # noqa: F401
    from laplace.subnetlaplace import GGNInterface  # noqa: F401
    from laplace.utils.matrix import block_diag, kron, symeig  # noqa: F401
    from laplace.utils.utils import PredType  # noqa: F401

    assert laplace.curvature.asdl.AsdlGGN is AsdlGGN
    assert issubclass(ELLA, BaseFunctionalLaplace)
    with pytest.raises(ImportError):
        from laplace.baselaplace import NoSuchName  # noqa: F401
    # dir() and tab completion list the lazily imported adapters, as laplace-torch's do
    assert {"BackPackGGN", "CurvlinopsEF", "AsdlHessian", "backpack"} <= set(
        dir(laplace.curvature))


def test_log_likelihood_before_fit_is_zero_as_in_laplace_torch():
    for likelihood in ("regression", "classification"):
        assert float(FullLaplace(model(), likelihood).log_likelihood) == 0.0


def test_kron_decomposed_refuses_a_delta_of_the_wrong_length():
    la = KronLaplace(model(), "regression")
    la.fit(regression_loader())
    H = la.H  # decomposed after fit, one block per weight/bias tensor (4)
    assert len((H + torch.ones(4, dtype=DT)).deltas) == 4
    with pytest.raises(ValueError, match="Invalid shape of delta"):
        H + torch.ones(3, dtype=DT)


def test_marglik_training_leaves_no_gradients():
    from laplace.marglik_training import marglik_training

    net = model()
    marglik_training(net, regression_loader(), likelihood="regression", n_epochs=2,
                     n_epochs_burnin=1, n_hypersteps=2)
    assert all(p.grad is None for p in net.parameters())


def test_a_subclass_with_its_own_positional_arguments_binds_them_itself():
    class Tagged(FullLaplace):
        def __init__(self, model, likelihood, tag, **kwargs):
            self.tag = tag
            super().__init__(model, likelihood, **kwargs)

    la = Tagged(model(), "regression", "mine", sigma_noise=0.5)
    assert la.tag == "mine" and float(la.sigma_noise) == 0.5
    assert list(inspect.signature(Tagged).parameters) == ["model", "likelihood", "tag",
                                                          "kwargs"]


def test_verbose_tuning_prints_laplace_torchs_line(capsys):
    la = FullLaplace(model(), "regression")
    la.fit(regression_loader())
    la.optimize_prior_precision(method="marglik", n_steps=5, verbose=True)
    out = capsys.readouterr().out
    assert out.strip() == f"Optimized prior precision is {la.prior_precision}."


def test_base_laplace_declares_fit_and_sample_as_laplace_torch_does():
    """A subclass written against laplace-torch's ``BaseLaplace`` that does not implement
    ``fit``/``sample`` gets ``NotImplementedError``, not ``AttributeError``."""
    from laplace import BaseLaplace

    class Partial(BaseLaplace):
        pass

    la = Partial(nn.Sequential(nn.Linear(2, 1)), "regression")
    with pytest.raises(NotImplementedError, match="Partial does not implement fit"):
        la.fit([])
    with pytest.raises(NotImplementedError, match="Partial does not implement sample"):
        la.sample(3)
