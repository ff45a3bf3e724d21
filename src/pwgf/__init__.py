"""pwgf: gradient estimators for discrete random variables in PyTorch.

Straight-through read as a projected Wasserstein gradient flow (pWGF-ST), its kernel (MMD)
projection (pWGF-MMD), and the baselines, behind one interface and checked against exact
gradients. See the README for the estimator table.
"""

from __future__ import annotations

from torch import Tensor

from .errors import (
    InvalidCostError,
    InvalidParameterError,
    NeedsCostFunctionError,
    PWGFError,
    TooLargeToEnumerateError,
    UnknownEstimatorError,
    UnsupportedDistributionError,
    UnsupportedFamilyError,
)
from .estimators.base import Estimator
from .exact import estimator_expectation, estimator_moments, exact_expectation, exact_gradient
from .families import Family, as_family
from .registry import EstimatorInfo, estimators_for, get_estimator, list_estimators

__version__ = "0.1.0"


def sample(dist: object, estimator: str = "pwgf", n_samples: int = 1, **options: object) -> Tensor:
    """Samples of shape ``(n_samples, *dist.batch_shape, *dist.event_shape)`` whose backward pass
    is ``estimator``'s estimate. Only for estimators that need no more than ∇f at the samples
    (``st``, ``pwgf`` with ``step=None``); the others go through ``get_estimator(...).surrogate``.
    """
    return get_estimator(estimator, **options).sample(dist, n_samples)


__all__ = [
    "Estimator",
    "EstimatorInfo",
    "Family",
    "InvalidCostError",
    "InvalidParameterError",
    "NeedsCostFunctionError",
    "PWGFError",
    "TooLargeToEnumerateError",
    "UnknownEstimatorError",
    "UnsupportedDistributionError",
    "UnsupportedFamilyError",
    "as_family",
    "estimator_expectation",
    "estimator_moments",
    "estimators_for",
    "exact_expectation",
    "exact_gradient",
    "get_estimator",
    "list_estimators",
    "sample",
]
