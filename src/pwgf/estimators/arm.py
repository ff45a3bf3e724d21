"""ARM: the augment-REINFORCE-merge estimator for Bernoulli logits.

Source: Yin & Zhou, "ARM: Augment-REINFORCE-Merge Gradient for Stochastic Binary Networks"
(ICLR 2019). For z_d ~ Bernoulli(σ(ℓ_d)), independent u ~ U(0, 1)^D and the antithetic pair

    b = 1[u < σ(ℓ)],   b̃ = 1[u > σ(-ℓ)] = 1[1 - u < σ(ℓ)]

(each is an exact draw from p_θ), the estimate for the logits is, per coordinate d,

    ĝ_{ℓ_d} = (f(b̃) - f(b)) (u_d - 1/2),

unbiased for ∇_ℓ E[f(z)]. It costs two evaluations of f per sample, made in one call of f on a
batch of 2K. With K samples the estimate is the average of K such terms. The surrogate's value is
the mean of ``(f(b) + f(b̃))/2`` (an unbiased estimate of E[f(z)]), and f's own parameters get the
ordinary gradient of that mean.

For a distribution built from probabilities the estimate is still for the logits ℓ: it is attached
as ``ĝ_ℓ · ℓ`` with ℓ = ``dist.logits`` (which torch derives from the probs differentiably), so
autograd applies the chain rule to the probs. Outputs are credited to batch entries as in
REINFORCE (``joint_score``; see ``pwgf.estimators.base``).
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..families import Family
from .base import CostFn, Estimator, average, evaluate, per_output


class ARM(Estimator):
    name = "arm"
    families = ("bernoulli",)
    biased = False
    #: at probs of exactly 0 or 1 the antithetic pair never differs: refused there
    interior_only = True
    per_sample = False  # the randomness is u, not the discrete sample
    evaluations = "2 f"
    option_docs = {
        "joint_score": "False: credit every output to all atoms (see pwgf.estimators.base)",
    }

    def __init__(self, joint_score: bool = False) -> None:
        super().__init__()
        self.joint_score = bool(joint_score)

    def draw(self, fam: Family, n: int) -> Tensor:
        return torch.rand((n, *fam.shape), dtype=fam.dtype, device=fam.device)

    def pair(self, p: Tensor, logits: Tensor, u: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``(b₁, b₂, c)`` with ĝ_{ℓ_d} = (f(b₁) - f(b₂)) c_d; all detached."""
        b = (u < p).to(u.dtype)
        b_anti = (u > 1 - p).to(u.dtype)
        return b_anti, b, u - 0.5

    def surrogate_at(
        self, f: CostFn, fam: Family, z: Tensor, weights: Tensor | None = None
    ) -> Tensor:
        # ``z`` is the noise u drawn by ``draw``.
        fam.check_interior(self.name)
        k = z.shape[0]
        logits = fam.base.logits
        b1, b2, coef = self.pair(fam.base.probs.detach(), logits.detach(), z)
        out = evaluate(f, torch.cat([b1, b2]))  # both evaluations in one call of f
        f1, f2 = out[:k], out[k:]
        credit = per_output(
            coef * (logits - logits.detach()), f1.shape[1:], fam.batch_shape, self.joint_score
        )
        return average(0.5 * (f1 + f2) + (f1 - f2).detach() * credit, weights)
