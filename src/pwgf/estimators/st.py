"""pWGF-ST: the multi-sample straight-through estimator.

Source: Cheng et al., "Straight-Through Estimator as Projected Wasserstein Gradient Flow"
(arXiv 1910.02176), §2.1; Bengio, Léonard & Courville 2013. Projecting the Wasserstein flow
``y_k = z_k - ε ∇f(z_k)`` back onto the family with the expectation-difference bound
``|E_p z - E_q z| <= W2(p, q)`` and the control variate ``z̄ -> μ(θ)`` gives, for the mean,

    ĝ_μ = (1/K) Σ_k ∇f(z_k),        ĝ_θ = (∂μ/∂θ)ᵀ ĝ_μ.

Implemented as ``z + μ - stopgrad(μ)`` per sample: the forward value is the discrete sample and
autograd applies the chain rule through μ(θ) (Bernoulli logits: p(1-p) ĝ_p; categorical logits:
π ⊙ (ĝ_π - <π, ĝ_π>); Poisson log-rate: λ ĝ_λ).

``variant="identity"`` is Bengio's other form, ``∂z/∂θ := 1`` with respect to the tensor the
distribution was built from (logits or probs or rate); it is offered for comparison only.
"""

from __future__ import annotations

from torch import Tensor

from ..errors import PWGFError
from ..families import Family
from .base import PathwiseEstimator

VARIANTS = ("mean", "identity")


class StraightThrough(PathwiseEstimator):
    name = "st"
    aliases = ("pwgf-st",)
    biased = True
    evaluations = "1 f, 1 ∇f"
    option_docs = {
        "variant": "'mean': backward through μ(θ) (pWGF-ST); 'identity': ∂z/∂θ := 1 (Bengio)",
    }

    def __init__(self, variant: str = "mean") -> None:
        super().__init__()
        if variant not in VARIANTS:
            raise PWGFError(f"st: variant must be one of {VARIANTS}, got {variant!r}")
        self.variant = variant

    def attach(self, fam: Family, z: Tensor) -> Tensor:
        target = fam.mean() if self.variant == "mean" else fam.param
        if target.shape != fam.shape:
            raise PWGFError(
                f"st: variant 'identity' needs a parameter of the sample's shape {tuple(fam.shape)}"
            )
        return z + (target - target.detach())
