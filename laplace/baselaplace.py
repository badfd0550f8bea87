"""laplace-torch import path: the base classes and the all-weights variants."""

from laplace.posterior.base import BaseLaplace
from laplace.posterior.diag import DiagLaplace
from laplace.posterior.ella import ELLA
from laplace.posterior.full import FullLaplace
from laplace.posterior.functional import FunctionalLaplace
from laplace.posterior.kron import KronLaplace
from laplace.posterior.lowrank import LowRankLaplace
from laplace.posterior.parametric import ParametricLaplace
from laplace.posterior.valla import VaLLA
from laplace.utils.reexports import reexports

#: laplace-torch's common base of the function-space variants; here ``FunctionalLaplace``
#: is that base (``ELLA`` and ``VaLLA`` derive from it).
BaseFunctionalLaplace = FunctionalLaplace

__all__ = [
    "BaseFunctionalLaplace",
    "ELLA",
    "VaLLA",
    "BaseLaplace",
    "DiagLaplace",
    "FullLaplace",
    "FunctionalLaplace",
    "KronLaplace",
    "LowRankLaplace",
    "ParametricLaplace",
]

__getattr__ = reexports(__name__, (
    "Kron", "KronDecomposed", "RunningNLLMetric", "SoDSampler", "Likelihood", "LinkApprox",
    "PredType", "PriorStructure", "TuningMethod", "AsdlGGN", "AsdlInterface", "BackPackGGN",
    "BackPackInterface", "CurvatureInterface", "CurvlinopsEF", "CurvlinopsGGN",
    "AsdfghjklHessian", "AsdfghjklInterface", "fix_prior_prec_structure", "invsqrt_precision",
    "normal_samples", "validate", "classification_targets", "concatenate_rows",
    "draw_gaussian", "preserve_model_gradients", "regression_targets", "same_configuration",
    "select_rows", "split_batch", "subset_loader", "to_device", "training_indices"))
