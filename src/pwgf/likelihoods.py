"""Log-probabilities that also hold at relaxed (non-discrete) values.

Estimators that evaluate the cost between the support points (``gumbel-softmax``, ``rebar``,
``relax``: a relaxation in [0, 1] or the simplex; ``muprop``: the mean) pass values that
``torch.distributions`` rejects with ``validate_args`` on. These functions compute the same
log-probability as torch's ``log_prob`` at discrete values and its natural extension elsewhere
(linear in z for Bernoulli and categorical, the Gamma-function extension for Poisson), with no
support check, so a cost written with them works under every estimator:

    Bernoulli(ℓ):          log p(z) = z log σ(ℓ) + (1 - z) log σ(-ℓ) = z ℓ - softplus(ℓ)
    categorical(ℓ):        log p(z) = Σ_c z_c log_softmax(ℓ)_c       (z one-hot or on the simplex)
    Poisson(λ):            log p(z) = z log λ - λ - lgamma(z + 1)

Shapes broadcast as in torch: ``bernoulli_log_prob`` and ``poisson_log_prob`` are elementwise,
``categorical_log_prob`` sums over the last (event) dimension. ``log_prob`` takes a torch
distribution (``Bernoulli``, ``OneHotCategorical``, ``Poisson``, or ``Independent`` of one) and
returns what its ``log_prob(value)`` would, relaxed values allowed.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.distributions import Bernoulli, Independent, OneHotCategorical, Poisson

from .errors import UnsupportedDistributionError


def bernoulli_log_prob(value: Tensor, logits: Tensor) -> Tensor:
    """``z ℓ - softplus(ℓ)`` elementwise: ``Bernoulli(logits=ℓ).log_prob(z)`` for z in {0, 1},
    linear in z between them."""
    return value * logits - F.softplus(logits)


def categorical_log_prob(value: Tensor, logits: Tensor) -> Tensor:
    """``Σ_c z_c log_softmax(ℓ)_c`` over the last dimension: ``OneHotCategorical(logits=ℓ)
    .log_prob(z)`` for one-hot z, linear in z on the simplex. Masked classes (ℓ_c = -inf) add
    nothing where z_c = 0 (and -inf where z_c > 0, as torch gives)."""
    logp = torch.log_softmax(logits, -1)
    # 0 * -inf would be NaN, in the value and in the gradient: take the log-prob only where z_c > 0
    logp = torch.where(value != 0, logp, torch.zeros_like(logp))
    return (value * logp).sum(-1)


def poisson_log_prob(value: Tensor, rate: Tensor) -> Tensor:
    """``z log λ - λ - lgamma(z + 1)`` elementwise: ``Poisson(λ).log_prob(z)`` for counts z,
    smooth in z >= 0 between them (``0 log 0 = 0``, so λ = 0 gives log p(0) = 0)."""
    return torch.xlogy(value, rate) - rate - torch.lgamma(value + 1)


def log_prob(dist: object, value: Tensor) -> Tensor:
    """``dist.log_prob(value)`` for ``Bernoulli``, ``OneHotCategorical``, ``Poisson`` and
    ``Independent`` of one of them, without the support check, so relaxed values are allowed.

    Raises ``pwgf.UnsupportedDistributionError`` for other distributions."""
    if isinstance(dist, Independent):
        lp = log_prob(dist.base_dist, value)
        n = dist.reinterpreted_batch_ndims
        return lp.sum(tuple(range(-n, 0))) if n else lp
    if isinstance(dist, Bernoulli):
        return bernoulli_log_prob(value, dist.logits)
    if isinstance(dist, OneHotCategorical):
        return categorical_log_prob(value, dist.logits)
    if isinstance(dist, Poisson):
        return poisson_log_prob(value, dist.rate)
    raise UnsupportedDistributionError(
        f"pwgf.log_prob handles Bernoulli, OneHotCategorical, Poisson and Independent of them, "
        f"got {type(dist).__name__}"
    )


__all__ = ["bernoulli_log_prob", "categorical_log_prob", "log_prob", "poisson_log_prob"]
