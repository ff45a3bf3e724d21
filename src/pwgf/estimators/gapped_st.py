"""Gapped straight-through (GST): ST-Gumbel's backward pass with a deterministic perturbation.

Source: Fan, Chi, Rudnicky & Ramadge, "Training Discrete Deep Generative Models via Gapped
Straight-Through Estimator" (ICML 2022); algorithm as in the authors' code (chijames/GST,
``gst_mover``), which ReinMax's benchmark runs as GST-1.0.

Instead of averaging the relaxed Jacobian over the Gumbel noise consistent with the sample
(Gumbel-Rao), GST builds one perturbed logit vector x from the logits θ and the sample D with the
two properties the authors identify in the conditional Gumbels: *consistency* (D is the argmax
of x) and a *gap* κ between the sampled logit and the others. With ``a = argmax θ``,

    x_D = θ_a,        x_c = min(θ_c, θ_a - κ)   (c ≠ D),

the shift ``x - θ`` is held fixed and the estimate is ST through ``softmax(x/τ)``:

    ĝ_θ = (1/τ) J(softmax(x/τ)) ∇f(D),     J(p) = diag(p) - p pᵀ.

κ = 1 is GST-1.0 of ReinMax's table. The estimate depends only on D and θ, so its exact mean
is a sum over the support (``pwgf.estimator_expectation``); it is biased, like ST-Gumbel.

Bernoulli(ℓ) is the 2-class categorical on ``(1 - z, z)`` with logits ``(0, ℓ)``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ..errors import PWGFError
from ..families import Family
from .base import PathwiseEstimator
from .gumbel import check_temperature
from .gumbel_rao import straight_through, two_class


def gapped_logits(logits: Tensor, d: Tensor, gap: float) -> Tensor:
    """The perturbed logits x (detached) for one-hot samples ``d`` ``(K, …, C)``."""
    theta = logits.detach()
    top = theta.max(-1, keepdim=True).values
    return torch.where(d > 0, top, torch.minimum(theta, top - gap)).expand_as(d)


class GappedST(PathwiseEstimator):
    name = "gapped-st"
    aliases = ("gst",)
    families = ("bernoulli", "categorical")
    biased = True
    evaluations = "1 f, 1 ∇f"
    option_docs = {
        "gap": "1.0: κ >= 0, the least margin of the sampled logit over the others (GST-1.0)",
        "temperature": "1.0: τ > 0 of softmax(x/τ) in the backward pass",
    }

    def __init__(self, gap: float = 1.0, temperature: float = 1.0) -> None:
        super().__init__()
        try:
            kappa = float(gap)
        except (TypeError, ValueError):
            raise PWGFError(f"{self.name}: gap must be a float >= 0, got {gap!r}") from None
        if isinstance(gap, bool) or not (kappa >= 0 and math.isfinite(kappa)):
            raise PWGFError(f"{self.name}: gap must be a finite float >= 0, got {gap!r}")
        self.gap = kappa
        self.temperature = check_temperature(self.name, temperature)

    def attach(self, fam: Family, z: Tensor) -> Tensor:
        logits, d = two_class(fam, z)
        x = gapped_logits(logits, d, self.gap)
        return straight_through(fam, z, logits, x.unsqueeze(0), self.temperature)

    def extra_repr(self) -> str:
        return f"{self.name}, gap={self.gap}, temperature={self.temperature}"
