"""The ``Laplace(...)`` factory: picks the variant for a weight subset and structure."""

from __future__ import annotations

from typing import Any

from torch import nn

from laplace.posterior.base import BaseLaplace
from laplace.posterior.diag import DiagLaplace
from laplace.posterior.ella import ELLA
from laplace.posterior.full import FullLaplace
from laplace.posterior.functional import FunctionalLaplace, FunctionalLLLaplace
from laplace.posterior.kron import KronLaplace
from laplace.posterior.lastlayer import DiagLLLaplace, FullLLLaplace, KronLLLaplace
from laplace.posterior.lowrank import LowRankLaplace
from laplace.posterior.subnet import DiagSubnetLaplace, FullSubnetLaplace
from laplace.posterior.valla import VaLLA
from laplace.utils.enums import (
    FunctionalApproximation,
    HessianStructure,
    SubsetOfWeights,
    parse_option,
)

_VARIANTS: dict[tuple[SubsetOfWeights, HessianStructure], type[BaseLaplace]] = {
    (SubsetOfWeights.ALL, HessianStructure.FULL): FullLaplace,
    (SubsetOfWeights.ALL, HessianStructure.KRON): KronLaplace,
    (SubsetOfWeights.ALL, HessianStructure.DIAG): DiagLaplace,
    (SubsetOfWeights.ALL, HessianStructure.LOWRANK): LowRankLaplace,
    (SubsetOfWeights.ALL, HessianStructure.GP): FunctionalLaplace,
    (SubsetOfWeights.LAST_LAYER, HessianStructure.GP): FunctionalLLLaplace,
    (SubsetOfWeights.LAST_LAYER, HessianStructure.FULL): FullLLLaplace,
    (SubsetOfWeights.LAST_LAYER, HessianStructure.KRON): KronLLLaplace,
    (SubsetOfWeights.LAST_LAYER, HessianStructure.DIAG): DiagLLLaplace,
    (SubsetOfWeights.SUBNETWORK, HessianStructure.FULL): FullSubnetLaplace,
    (SubsetOfWeights.SUBNETWORK, HessianStructure.DIAG): DiagSubnetLaplace,
}

_FUNCTIONAL_APPROXIMATIONS: dict[FunctionalApproximation, type[BaseLaplace]] = {
    FunctionalApproximation.NYSTROM: ELLA,
    FunctionalApproximation.VARIATIONAL: VaLLA,
}


def Laplace(  # noqa: N802  (the public name users know)
    model: nn.Module,
    likelihood: str,
    subset_of_weights: SubsetOfWeights | str = SubsetOfWeights.LAST_LAYER,
    hessian_structure: HessianStructure | str = HessianStructure.KRON,
    *args: Any,
    functional_approximation: FunctionalApproximation | str | None = FunctionalApproximation.SOD,
    **kwargs: Any,
) -> BaseLaplace:
    """Build the Laplace approximation for ``subset_of_weights`` × ``hessian_structure``.

    Args:
        model: the trained network.
        likelihood: ``"regression"``, ``"classification"`` or ``"reward_modeling"``.
        subset_of_weights: ``"all"``, ``"last_layer"`` or ``"subnetwork"``.
        hessian_structure: ``"full"``, ``"kron"``, ``"diag"``, ``"lowrank"`` or ``"gp"``.
        functional_approximation: for ``hessian_structure="gp"``: ``"sod"`` (the default,
            subset-of-data ``FunctionalLaplace``/``FunctionalLLLaplace``; ``None`` is the
            same), and for ``"all"`` only ``"nystrom"`` (``ELLA``) or ``"variational"``
            (``VaLLA``).
        *args, **kwargs: passed to the variant (``prior_precision``, ``sigma_noise``,
            ``backend``, ...).

    Raises:
        ValueError: the combination is not supported.
    """
    subset = parse_option(SubsetOfWeights, subset_of_weights, "subset_of_weights")
    structure = parse_option(HessianStructure, hessian_structure, "hessian_structure")
    if subset == SubsetOfWeights.SUBNETWORK and structure not in (
        HessianStructure.FULL, HessianStructure.DIAG
    ):
        raise ValueError("Subnetwork Laplace requires a full or diagonal Hessian approximation!")
    cls = _VARIANTS.get((subset, structure))
    approx = None if functional_approximation is None else parse_option(
        FunctionalApproximation, functional_approximation, "functional_approximation")
    if approx is not None and approx != FunctionalApproximation.SOD:
        if (subset, structure) != (SubsetOfWeights.ALL, HessianStructure.GP):
            raise ValueError("functional_approximation applies to subset_of_weights='all' "
                             "with hessian_structure='gp' only.")
        cls = _FUNCTIONAL_APPROXIMATIONS[approx]
    if cls is None:
        raise ValueError(f"Unsupported Laplace combination: {subset}, {structure}.")
    return cls(model, likelihood, *args, **kwargs)

from laplace.utils.reexports import reexports  # noqa: E402

__getattr__ = reexports(__name__, ("Likelihood",))
