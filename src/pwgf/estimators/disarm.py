"""DisARM: ARM with the uniform noise integrated out given the antithetic pair.

Source: Dong, Mnih & Tucker, "DisARM: An Antithetic Gradient Estimator for Binary Latent
Variables" (NeurIPS 2020). With u ~ U(0, 1)^D, the antithetic pair

    b = 1[u < σ(ℓ)],   b̃ = 1[1 - u < σ(ℓ)],

(each an exact draw from p_θ), the estimate for the logits is, per coordinate d,

    ĝ_{ℓ_d} = ½ (f(b) - f(b̃)) (-1)^{b̃_d} 1[b_d ≠ b̃_d] σ(|ℓ_d|).

It is ARM's estimate conditioned on (b, b̃) (ARM with u_d integrated out), so it is unbiased and,
by Rao-Blackwell, its variance is at most ARM's in every coordinate, for any f. Two evaluations
of f per sample, made in one call on a batch of 2K; the surrogate's value, the treatment of f's
parameters, of probs-built distributions and of outputs are as for ``pwgf.estimators.arm``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .arm import ARM


class DisARM(ARM):
    name = "disarm"

    def pair(self, p: Tensor, logits: Tensor, u: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        b = (u < p).to(u.dtype)
        b_anti = (u > 1 - p).to(u.dtype)
        coef = 0.5 * (1 - 2 * b_anti) * (b != b_anti).to(u.dtype) * torch.sigmoid(logits.abs())
        return b, b_anti, coef
