"""ReinMax: a second-order (Heun) correction of straight-through.

Source: Liu, Dong, Liu, Yu & Gao, "Bridging Discrete and Backpropagation: Straight-Through and
Beyond" (NeurIPS 2023); algorithm as in the authors' reference code (microsoft/ReinMax).

For a one-hot categorical with logits θ, sample D ~ softmax(θ) and g = ∇f(D). With the softmax
Jacobian ``J(p) = diag(p) - p pᵀ`` (symmetric),

    π₀ = softmax(θ),   π_τ = softmax(θ / τ),   π½ = (π_τ + D) / 2,
    ĝ_θ = 2 J(π½) g - ½ J(π₀) g.

ST is ``J(π₀) g`` (Euler's method on the integral ``f(e_i) - f(e_j) = ∫ ∇f``); ReinMax is the
trapezoid (Heun) rule, which for τ = 1 makes ``E[ĝ]`` equal the exact gradient whenever f is
quadratic in each categorical atom (ST only when f is linear). The temperature τ enters only
through π_τ; the sample is always drawn at τ = 1. The authors recommend τ >= 1.

Bernoulli(ℓ) is the 2-class categorical on ``(1 - z, z)`` with logits ``(0, ℓ)``; with
``q½ = (σ(ℓ/τ) + z)/2`` and p = σ(ℓ) this is

    ĝ_ℓ = (2 q½(1 - q½) - ½ p(1 - p)) g.

Implemented as a backward rule at each sample (``z`` unchanged in value):
``z + 2 J(π½)(θ - stopgrad θ) - ½ (π₀ - stopgrad π₀)``, whose vector-Jacobian product with the
incoming g is ĝ_θ. θ is ``dist.logits``, so for a distribution built from probabilities the
estimate for the logits reaches the probs by the chain rule. The estimate depends only on the
discrete sample and θ, so its exact mean is a sum over the support
(``pwgf.estimator_expectation``).
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..families import Family
from .base import PathwiseEstimator
from .gumbel import check_temperature


class ReinMax(PathwiseEstimator):
    name = "reinmax"
    families = ("bernoulli", "categorical")
    biased = True
    evaluations = "1 f, 1 ∇f"
    option_docs = {"temperature": "1.0: τ > 0 of π_τ = softmax(θ/τ) (the paper advises τ >= 1)"}

    def __init__(self, temperature: float = 1.0) -> None:
        super().__init__()
        self.temperature = check_temperature(self.name, temperature)

    def attach(self, fam: Family, z: Tensor) -> Tensor:
        logits = fam.base.logits
        # a -inf logit masks its category (π = 0 there, and so is its gradient); inf - inf would
        # be nan, so masked entries carry a zero instead
        live = logits.masked_fill(torch.isneginf(logits.detach()), 0.0)
        delta = live - live.detach()  # zero in value; carries the gradient to θ
        p0 = fam.base.probs
        lt = logits.detach() / self.temperature
        if fam.name == "bernoulli":
            q = 0.5 * (lt.sigmoid() + z)
            shift = 2 * q * (1 - q) * delta
        else:
            q = 0.5 * (lt.softmax(-1) + z)
            # J(q) δ = q ⊙ δ - q <q, δ>, the softmax Jacobian at q applied to δ
            shift = 2 * q * (delta - (q * delta).sum(-1, keepdim=True))
        return z + shift - 0.5 * (p0 - p0.detach())

    def extra_repr(self) -> str:
        return f"{self.name}, temperature={self.temperature}"
