"""The probe's option groups (``laplace_torch_probe.py``): backends named in ``Laplace``,
``marglik_training`` and tuning options, the predictive's options, repeated fits and
posterior matrices, ``laplace.utils`` helpers and ``ELLA``. Like the probe it imports
nothing from this repository."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch.utils.data import DataLoader, TensorDataset

from laplace import Laplace, marglik_training

try:
    from laplace_torch_probe_common import Problem, _net, _Positions, _read_into
except ImportError:
    from benchmarks.laplace_torch_probe_common import Problem, _net, _Positions, _read_into


def _fit_backends(p: Problem) -> dict[str, Any]:
    """Each curvature backend named in ``Laplace(..., backend=...)``: the evidence of the
    fitted LA for regression and classification, every structure over all weights and a
    full last layer."""
    import laplace.curvature as curvature

    X, out = p.X, {}
    for likelihood, targets, k in (("regression", p.y, 1),
                                   ("classification", (X[:, 0] > 0).long(), 2)):
        for name in ("BackPackGGN", "BackPackEF", "CurvlinopsGGN", "CurvlinopsEF",
                     "CurvlinopsHessian", "AsdlGGN", "AsdlEF", "AsdlHessian"):
            for subset, structure in (("all", "full"), ("all", "kron"), ("all", "diag"),
                                      ("last_layer", "full")):
                def evidence(name: str = name, subset: str = subset,
                             structure: str = structure, likelihood: str = likelihood,
                             targets: Any = targets, k: int = k) -> Any:
                    la = Laplace(_net(k), likelihood, subset_of_weights=subset,
                                 hessian_structure=structure,
                                 backend=getattr(curvature, name))
                    la.fit(DataLoader(TensorDataset(X, targets), batch_size=8))
                    return la.log_marginal_likelihood()

                _read_into(out, f"backend={name} {likelihood}/{subset}/{structure} "
                                "log_marginal_likelihood()", evidence)
    return out


def _marglik_options(p: Problem) -> dict[str, Any]:
    """``marglik_training`` with layerwise and diagonal priors over three structures, a
    fixed noise and a temperature (3 epochs each)."""
    out: dict[str, Any] = {}
    import laplace.curvature as curvature

    for prior, structure, extra in (
            ("layerwise", "kron", {}), ("layerwise", "diag", {}), ("diag", "full", {}),
            ("diag", "diag", {}), ("scalar", "full", {"fix_sigma_noise": True}),
            ("scalar", "diag", {"temperature": 0.5}),
            ("scalar", "full", {"n_epochs_burnin": 1, "marglik_frequency": 2}),
            ("scalar", "full", {"prior_prec_init": 3.0, "sigma_noise_init": 0.5}),
            ("layerwise", "full", {"backend": curvature.BackPackGGN}),
            ("layerwise", "diag", {"backend": curvature.CurvlinopsGGN}),
            ("scalar", "full", {"optimizer_cls": torch.optim.SGD,
                                "optimizer_kwargs": {"lr": 0.05}}),
            ("scalar", "full", {"scheduler_cls": torch.optim.lr_scheduler.StepLR,
                                "scheduler_kwargs": {"step_size": 1, "gamma": 0.5}})):
        def trained(prior: str = prior, structure: str = structure,
                    extra: dict[str, Any] = extra) -> Any:
            la, _, margliks, losses = marglik_training(
                _net(1), p.loader(), likelihood="regression", hessian_structure=structure,
                prior_structure=prior, n_epochs=3, n_hypersteps=5, **extra)
            return [la.prior_precision, la.sigma_noise, margliks[-1], losses[-1]]

        _read_into(out, f"marglik_training {prior} prior, {structure}, {sorted(extra)}",
                   trained)
    return out


def _tuning_options(p: Problem) -> dict[str, Any]:
    """``optimize_prior_precision``: a per-weight (diag) prior by the evidence, its initial
    value and learning rate, and grid search by a given loss and grid."""
    out: dict[str, Any] = {}

    def tuned(structure: str, **kwargs: Any) -> Any:
        la = p.fitted("all", structure)
        la.optimize_prior_precision(**kwargs)
        return la.prior_precision

    def tuned_other(subset: str, structure: str, **kwargs: Any) -> Any:
        extra = ({"n_subset": 8} if structure == "gp" else
                 {"subnetwork_indices": torch.arange(0, 26, 3)} if subset == "subnetwork"
                 else {})
        la = p.fitted(subset, structure, **extra)
        la.optimize_prior_precision(**kwargs)
        return [la.prior_precision, la(p.X[:2])]

    for subset, structure in (("all", "gp"), ("last_layer", "gp"), ("subnetwork", "full")):
        _read_into(out, f"{subset}/{structure} optimize_prior_precision(marglik, 20 steps)",
                   lambda s=subset, h=structure: tuned_other(s, h, n_steps=20))
        _read_into(out, f"{subset}/{structure} optimize_prior_precision(gridsearch, 5)",
                   lambda s=subset, h=structure: tuned_other(
                       s, h, method="gridsearch", val_loader=p.loader(), grid_size=5))
    for structure in ("full", "diag"):
        _read_into(out, f"{structure} optimize_prior_precision(diag, 20 steps)",
                   lambda s=structure: tuned(s, prior_structure="diag", n_steps=20))
    _read_into(out, "full optimize_prior_precision(init 3.0, lr 0.5, 15 steps)",
               lambda: tuned("full", init_prior_prec=3.0, lr=0.5, n_steps=15))
    _read_into(out, "kron gridsearch(loss=MSE-like, log_prior_prec 5 points)", lambda: tuned(
        "kron", method="gridsearch", val_loader=p.loader(),
        log_prior_prec_min=-2, log_prior_prec_max=2, grid_size=5,
        loss=lambda f, y: ((f - y) ** 2).mean()))
    return out


def _predictive_options(p: Problem) -> dict[str, Any]:
    """The predictive's options on a two-output regression (``diagonal_output``,
    ``fitting``, NN sampling with a generator, sample shapes), a classifier's Monte Carlo
    link with a generator, and the function-space LA's output and kernel options."""
    X, y = p.X, p.y
    two = torch.cat([y, X[:, :1]], -1)
    out: dict[str, Any] = {}

    def put(key: str, fn: Callable[[], Any]) -> None:
        _read_into(out, key, fn)

    for structure in ("full", "kron", "diag"):
        la = Laplace(_net(2), "regression", subset_of_weights="all", hessian_structure=structure)
        la.fit(DataLoader(TensorDataset(X, two), batch_size=8))
        tag = f"two outputs {structure} "
        put(tag + "la(x, diagonal_output=True)", lambda la=la: la(X[:3], diagonal_output=True))
        put(tag + "la(x, fitting=True)", lambda la=la: la(X[:3], fitting=True))
        put(tag + "la(x, nn, 7 samples).shape", lambda la=la: [list(t.shape) for t in la(
            X[:3], pred_type="nn", link_approx="mc", n_samples=7,
            generator=torch.Generator().manual_seed(0))])
        put(tag + "predictive_samples(x, 5, diagonal_output=True).shape",
            lambda la=la: list(la.predictive_samples(X[:3], n_samples=5,
                                                     diagonal_output=True).shape))
    c = (X[:, 0] > 0).long()
    la = Laplace(_net(2), "classification", subset_of_weights="all", hessian_structure="full")
    la.fit(DataLoader(TensorDataset(X, c), batch_size=8))
    put("classification full la(x, mc, 9 samples, generator).shape", lambda: list(la(
        X[:3], link_approx="mc", n_samples=9, generator=torch.Generator().manual_seed(0)).shape))
    put("classification full la(x, fitting=True)", lambda: la(X[:3], fitting=True))
    put("classification full la(x, diagonal_output=True)", lambda: la(X[:3],
                                                                      diagonal_output=True))
    for name, kwargs in (("independent_outputs", {"independent_outputs": True}),
                         ("diagonal_kernel", {"diagonal_kernel": True})):
        def functional(kwargs: dict[str, Any] = kwargs) -> Any:
            fla = Laplace(_net(2), "regression", subset_of_weights="all",
                          hessian_structure="gp", n_subset=8, **kwargs)
            fla.fit(DataLoader(TensorDataset(X, two), batch_size=8))
            return [*fla(X[:3]), fla.log_marginal_likelihood()]

        put(f"two outputs gp {name} la(x), log_marginal_likelihood()", functional)
    return out


def _fits_and_posteriors(p: Problem) -> dict[str, Any]:
    """A second ``fit(override=False)`` on the same data, the posterior's matrices of the
    Kronecker and diagonal LAs, a layerwise Kronecker prior, a diagonal subnetwork and the
    last layer read at the first or the average position of a sequence."""
    X = p.X
    out: dict[str, Any] = {}

    def put(key: str, fn: Callable[[], Any]) -> None:
        _read_into(out, key, fn)

    for structure in ("full", "kron", "diag"):
        def twice(structure: str = structure) -> Any:
            la = p.fitted("all", structure)
            la.fit(p.loader(), override=False)
            return [la.n_data, la.log_marginal_likelihood(), la(X[:3])]

        put(f"{structure} fit twice (override=False)", twice)
    kron = p.fitted("all", "kron", prior_precision=torch.tensor([0.5, 1.0, 2.0, 4.0],
                                                                 dtype=X.dtype))
    put("kron layerwise prior prior_precision_diag", lambda: kron.prior_precision_diag)
    put("kron layerwise prior log_det_ratio", lambda: kron.log_det_ratio)
    put("kron layerwise prior posterior_precision.to_matrix()",
        lambda: kron.posterior_precision.to_matrix())
    put("kron layerwise prior la(x)", lambda: kron(X[:3]))
    diag = p.fitted("all", "diag")
    put("diag posterior_precision", lambda: diag.posterior_precision)
    put("diag posterior_scale", lambda: diag.posterior_scale)
    put("subnetwork diag log_marginal_likelihood()", lambda: p.fitted(
        "subnetwork", "diag", subnetwork_indices=torch.arange(0, 26, 3)
    ).log_marginal_likelihood())

    seqs = X.reshape(6, 4, 3)
    for reduction in ("pick_first", "average"):
        def reduced(reduction: str = reduction) -> Any:
            la = Laplace(_Positions("average"), "regression", subset_of_weights="last_layer",
                         hessian_structure="full", feature_reduction=reduction)
            la.fit(DataLoader(TensorDataset(seqs, seqs.sum((1, 2))[:, None]), batch_size=3))
            return [la.log_marginal_likelihood(), la(seqs[:2])]

        put(f"feature_reduction={reduction} log_marginal_likelihood(), la(x)", reduced)
    return out


def _utilities(p: Problem) -> dict[str, Any]:
    """The public helpers of ``laplace.utils`` on fixed inputs: matrix and prior helpers,
    Kronecker factors, the NLL metrics, subnetwork masks and the feature extractor."""
    from laplace import utils

    X = p.X
    out: dict[str, Any] = {}

    def put(key: str, fn: Callable[[], Any]) -> None:
        _read_into(out, key, fn)

    A = X[:5].T @ X[:5] + torch.eye(3, dtype=X.dtype)  # 3 × 3, positive definite
    B = torch.tensor([[2.0, 0.5], [0.5, 1.0]], dtype=X.dtype)
    net = _net(2)
    put("parameters_per_layer", lambda: utils.parameters_per_layer(net))
    put("invsqrt_precision", lambda: utils.invsqrt_precision(A))
    put("symeig eigenvalues", lambda: utils.symeig(A)[0])
    put("block_diag", lambda: utils.block_diag([A, B]))
    put("diagonal_add_scalar", lambda: utils.diagonal_add_scalar(A, torch.tensor(0.5)))
    put("expand_prior_precision(layerwise)", lambda: utils.expand_prior_precision(
        torch.tensor([0.5, 1.0, 2.0, 4.0], dtype=X.dtype), net))
    for structure in ("scalar", "layerwise", "diag"):
        put(f"fix_prior_prec_structure({structure})", lambda s=structure: (
            utils.fix_prior_prec_structure(torch.tensor(2.0, dtype=X.dtype), s, 4, 32,
                                           torch.device("cpu"), X.dtype)))
    put("normal_samples(seeded)", lambda: utils.normal_samples(
        X[:3, :2], X[:3, :2].abs() + 0.1, 4, torch.Generator().manual_seed(0)))
    probs = torch.softmax(X[:6, :2], -1)
    labels = (X[:6, 0] > 0).long()
    put("get_nll", lambda: utils.get_nll(probs, labels))

    def running_nll() -> Any:
        metric = utils.RunningNLLMetric()
        metric.update(probs[:3], labels[:3])
        metric.update(probs[3:], labels[3:])
        return metric.compute()

    put("RunningNLLMetric over two batches", running_nll)
    kron = utils.Kron([[A, B], [B]])  # a layer with two factors (weight), one with one

    def decomposed() -> Any:
        return utils.Kron([[A, B], [B]]).decompose()

    put("Kron.to_matrix", lambda: kron.to_matrix())
    put("Kron.diag", lambda: kron.diag())
    put("Kron.logdet", lambda: kron.logdet())
    put("KronDecomposed.logdet", lambda: decomposed().logdet())
    put("KronDecomposed.to_matrix(exponent=-1)", lambda: decomposed().to_matrix(exponent=-1))
    put("(KronDecomposed + 0.5).logdet", lambda: (decomposed() + 0.5).logdet())
    put("(KronDecomposed * 2).to_matrix", lambda: (decomposed() * 2).to_matrix())
    put("KronDecomposed.bmm(W (2, 8), exponent=-1)", lambda: decomposed().bmm(
        torch.cat([X[:2], X[2:4], X[4:6, :2]], -1), exponent=-1))
    put("KronDecomposed.inv_square_form(W (2, 3, 8))", lambda: decomposed().inv_square_form(
        torch.cat([X[:6], X[6:12], X[12:18, :2]], -1).reshape(2, 3, 8)))
    put("Kron.init_from_model shapes", lambda: [[list(f.shape) for f in fs] for fs in
                                                utils.Kron.init_from_model(
                                                    net, torch.device("cpu"), X.dtype).kfacs])
    put("ParamNameSubnetMask(['0.weight'])",
        lambda: utils.ParamNameSubnetMask(net, ["0.weight"]).select())
    put("LastLayerSubnetMask", lambda: utils.LastLayerSubnetMask(_net(1)).select(p.loader()))

    def largest_variance() -> Any:
        model = _net(1)
        diag = Laplace(model, "regression", subset_of_weights="all", hessian_structure="diag")
        diag.fit(p.loader())
        return utils.LargestVarianceDiagLaplaceSubnetMask(model, 7, diag).select(p.loader())

    put("LargestVarianceDiagLaplaceSubnetMask(7)", largest_variance)

    def seeded(mask: Callable[[], Any]) -> Any:
        torch.manual_seed(0)
        return mask().select(p.loader())

    put("RandomSubnetMask(7) (torch seed 0)",
        lambda: seeded(lambda: utils.RandomSubnetMask(_net(1), 7)))
    put("LargestVarianceSWAGSubnetMask(7) (torch seed 0)", lambda: seeded(
        lambda: utils.LargestVarianceSWAGSubnetMask(_net(1), 7, likelihood="regression",
                                                    swag_n_snapshots=4)))
    put("FeatureExtractor.forward_with_features", lambda: utils.FeatureExtractor(
        _net(2)).forward_with_features(X[:3]))
    return out


def _ella(p: Problem) -> dict[str, Any]:
    """``ELLA`` (its default seed) for regression and classification: the predictive."""
    from laplace import ELLA

    out: dict[str, Any] = {}
    X = p.X
    for likelihood, targets, k in (("regression", p.y, 1),
                                   ("classification", (X[:, 0] > 0).long(), 2)):
        def predictive(likelihood: str = likelihood, targets: Any = targets,
                       k: int = k) -> Any:
            la = ELLA(_net(k), likelihood, subsample_size=10, n_eigenvalues=6)
            la.fit(DataLoader(TensorDataset(X, targets), batch_size=8))
            return la(X[:3])

        _read_into(out, f"ELLA {likelihood} la(x)", predictive)
    return out



#: ``{group name: reads of a Problem}``, run (and failing) each on its own.
OPTION_GROUPS: dict[str, Callable[[Problem], dict[str, Any]]] = {
    "fit backends": _fit_backends,
    "marglik_training options": _marglik_options,
    "tuning options": _tuning_options,
    "predictive options": _predictive_options,
    "fits and posteriors": _fits_and_posteriors,
    "utilities": _utilities,
    "ELLA": _ella,
}
