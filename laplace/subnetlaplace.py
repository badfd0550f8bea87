"""laplace-torch import path: subnetwork Laplace variants."""

from laplace.posterior.subnet import DiagSubnetLaplace, FullSubnetLaplace, SubnetLaplace

__all__ = ["DiagSubnetLaplace", "FullSubnetLaplace", "SubnetLaplace"]

from laplace.utils.reexports import reexports  # noqa: E402

__getattr__ = reexports(__name__, (
    "CurvatureInterface", "EFInterface", "GGNInterface", "DiagLaplace", "FullLaplace",
    "ParametricLaplace", "Likelihood"))
