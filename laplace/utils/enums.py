"""String enums naming the options of the ``Laplace`` API.

They subclass ``str`` so that ``"full" == HessianStructure.FULL`` and users may pass
either form anywhere an option is expected.
"""

from __future__ import annotations

from enum import StrEnum


class _StrEnum(StrEnum):
    def __str__(self) -> str:
        return str(self.value)


class SubsetOfWeights(_StrEnum):
    ALL = "all"
    LAST_LAYER = "last_layer"
    SUBNETWORK = "subnetwork"


class HessianStructure(_StrEnum):
    FULL = "full"
    KRON = "kron"
    DIAG = "diag"
    LOWRANK = "lowrank"
    GP = "gp"


class Likelihood(_StrEnum):
    REGRESSION = "regression"
    CLASSIFICATION = "classification"
    REWARD_MODELING = "reward_modeling"


class PredType(_StrEnum):
    GLM = "glm"
    NN = "nn"
    GP = "gp"


class LinkApprox(_StrEnum):
    MC = "mc"
    PROBIT = "probit"
    BRIDGE = "bridge"
    BRIDGE_NORM = "bridge_norm"


class TuningMethod(_StrEnum):
    MARGLIK = "marglik"
    GRIDSEARCH = "gridsearch"


class PriorStructure(_StrEnum):
    SCALAR = "scalar"
    DIAG = "diag"
    LAYERWISE = "layerwise"


class FunctionalApproximation(_StrEnum):
    SOD = "sod"
    NYSTROM = "nystrom"
    VARIATIONAL = "variational"


def parse_option(enum: type[_StrEnum], value: str, what: str) -> _StrEnum:
    """Return ``enum(value)`` or raise a ``ValueError`` listing the valid choices."""
    try:
        return enum(value)
    except ValueError:
        choices = ", ".join(repr(m.value) for m in enum)
        raise ValueError(f"Unknown {what} {value!r}; choose one of {choices}.") from None
