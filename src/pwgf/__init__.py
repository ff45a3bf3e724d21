"""pwgf: gradient estimators for discrete random variables in PyTorch.

Straight-through read as a projected Wasserstein gradient flow (pWGF-ST), its kernel (MMD)
projection (pWGF-MMD), and the baselines, behind one interface and checked against exact
gradients. See the README for the estimator table.
"""

from __future__ import annotations

from torch import Tensor

from .errors import (
    BoundaryError,
    InvalidCostError,
    InvalidParameterError,
    NeedsCostFunctionError,
    PWGFError,
    StaleDistributionError,
    TooLargeToEnumerateError,
    UnknownEstimatorError,
    UnsupportedDistributionError,
    UnsupportedFamilyError,
    UntunedEstimatorWarning,
)
from .estimators.base import Estimator, RelaxedInputError
from .exact import estimator_expectation, estimator_moments, exact_expectation, exact_gradient
from .families import Family, as_family
from .fused import set_fused
from .likelihoods import bernoulli_log_prob, categorical_log_prob, log_prob, poisson_log_prob
from .registry import EstimatorInfo, estimators_for, get_estimator, list_estimators, parse_spec
from .validation import is_validating, set_validation, validation

__version__ = "0.1.0"


def sample(dist: object, estimator: str = "pwgf", n_samples: int = 1, **options: object) -> Tensor:
    """Samples of shape ``(n_samples, *dist.batch_shape, *dist.event_shape)`` whose backward pass
    is ``estimator``'s estimate.

    ``estimator`` is a name, alias or spec with options (``"pwgf:bandwidth=2"``); ``options`` are
    further keyword options (see ``get_estimator``). Only the estimators that need no more
    than ∇f at the samples (the registry's ``pathwise`` flag) work here: ``st``, ``pwgf``,
    ``gumbel-softmax``, ``st-gumbel``, ``reinmax``, ``gumbel-rao``, ``gapped-st``, ``eat``
    (``pwgf`` only with ``step=None``, its default; ``gumbel-softmax`` and ``eat`` return
    relaxed values, see ``pwgf.list_estimators()``'s ``relaxed_inputs``). The others go through
    ``get_estimator(...).surrogate(f, dist, n_samples)``.

    The backward rule is the estimator's; e.g. for ``st`` (pWGF-ST, the paper's §2.1; Bengio et
    al. 2013) ``∂z/∂θ := ∂μ(θ)/∂θ``, so a loss of the samples gets ``(1/K) Σ_k ∇f(z_k) ∂μ/∂θ``.
    Each estimator's module docstring gives its formula and source.

    Args:
        dist: ``Bernoulli``, ``OneHotCategorical`` or ``Poisson``, optionally inside
            ``Independent``, built from logits, probabilities or rates; the gradient reaches
            that tensor and whatever produced it.
        estimator: name, alias or spec, e.g. ``"st"``, ``"pwgf:bandwidth=2"``.
        n_samples: K, the number of samples (at least the estimator's ``min_samples``).
        **options: the estimator's keyword options.

    Returns:
        Samples ``(n_samples, *dist.batch_shape, *dist.event_shape)`` in the parameter's dtype
            and device: discrete values (relaxed ones for ``gumbel-softmax`` and ``eat``).

    Raises:
        NeedsCostFunctionError: the estimator (or an option, such as ``pwgf``'s ``step``) must
            evaluate f itself; the message names the ``surrogate`` call to use instead.
        UnknownEstimatorError: an unknown name; the message lists the valid ones.
        UnsupportedFamilyError: the estimator does not support ``dist``'s family.
        PWGFError: an unknown option, or ``n_samples`` not an int at least ``min_samples``.
    """
    return get_estimator(estimator, **options).sample(dist, n_samples)


__all__ = [
    "BoundaryError",
    "Estimator",
    "EstimatorInfo",
    "Family",
    "InvalidCostError",
    "InvalidParameterError",
    "NeedsCostFunctionError",
    "PWGFError",
    "RelaxedInputError",
    "StaleDistributionError",
    "TooLargeToEnumerateError",
    "UnknownEstimatorError",
    "UnsupportedDistributionError",
    "UnsupportedFamilyError",
    "UntunedEstimatorWarning",
    "as_family",
    "bernoulli_log_prob",
    "categorical_log_prob",
    "estimator_expectation",
    "estimator_moments",
    "estimators_for",
    "exact_expectation",
    "exact_gradient",
    "get_estimator",
    "is_validating",
    "list_estimators",
    "log_prob",
    "parse_spec",
    "poisson_log_prob",
    "sample",
    "set_fused",
    "set_validation",
    "validation",
]
