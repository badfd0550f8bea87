"""laplace-torch import path: subnetwork Laplace variants."""

from laplace.posterior.subnet import DiagSubnetLaplace, FullSubnetLaplace, SubnetLaplace

__all__ = ["DiagSubnetLaplace", "FullSubnetLaplace", "SubnetLaplace"]
