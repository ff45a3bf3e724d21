"""Gumbel-Rao: the straight-through Gumbel-softmax gradient, Rao-Blackwellised over the noise.

Source: Paulus, Maddison & Krause, "Rao-Blackwellizing the Straight-Through Gumbel-Softmax
Gradient Estimator" (ICLR 2021), §3 (GR-MCK: K Monte Carlo conditional samples; here M).

ST-Gumbel (``st-gumbel``) forwards the hard sample ``D = argmax(θ + G)`` and backpropagates
through the relaxed ``y(θ, G) = softmax((θ + G)/τ)``, so its estimate is
``(∂y/∂θ)(θ, G)ᵀ ∇f(D)``. The Gumbel noise enters the backward pass only through ∂y/∂θ, and
``∇f(D)`` depends on the noise only through D, so conditioning on D keeps the mean and can only
lower the variance (Rao-Blackwell):

    ĝ_θ = E[∂y/∂θ | D]ᵀ ∇f(D) ≈ (1/M) Σ_m (∂y/∂θ)(θ, G_m)ᵀ ∇f(D),   G_m ~ G | argmax(θ + G) = D.

With ``Z = Σ_c e^{θ_c}`` and i.i.d. ``E_c ~ Exp(1)``, the conditional perturbed logits are
(the maximum of Gumbels is Gumbel(log Z), and the others are truncated below it)

    x_D = log Z - log E_D,        x_c = -log(E_c e^{-θ_c} + E_D / Z)   (c ≠ D),

and ``G_m = x - θ`` is held fixed while differentiating ``softmax((θ + G_m)/τ)`` in θ, as in ST-GS.
So the estimator has exactly ST-Gumbel's expectation at the same τ, with lower variance that
decreases in M (M = 1 is ST-Gumbel in distribution). f is evaluated once, at the hard sample;
the M relaxed Jacobians cost no extra evaluations of f.

Bernoulli(ℓ) is the 2-class categorical on ``(1 - z, z)`` with logits ``(0, ℓ)`` (its relaxed
coordinate is the binary Concrete, as in ``pwgf.estimators.gumbel``).

The randomness is the hard sample and the conditional noise drawn in ``attach``, so the
estimate is not a function of the discrete sample alone (not ``per_sample``); the tests compare
its mean with ST-Gumbel's exact expectation by quadrature over the noise.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..errors import PWGFError
from ..families import Family
from .base import PathwiseEstimator
from .gumbel import check_temperature


def check_positive_int(name: str, option: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise PWGFError(f"{name}: {option} must be an int >= 1, got {value!r}")
    return value


def two_class(fam: Family, z: Tensor) -> tuple[Tensor, Tensor]:
    """Logits ``(…, C)`` (differentiable) and one-hot samples ``(K, …, C)`` of ``fam``; a
    Bernoulli(ℓ) coordinate becomes the categorical on ``(1 - z, z)`` with logits ``(0, ℓ)``."""
    logits = fam.base.logits
    if fam.name == "bernoulli":
        return torch.stack([torch.zeros_like(logits), logits], -1), torch.stack([1 - z, z], -1)
    return logits, z


def straight_through(fam: Family, z: Tensor, logits: Tensor, x: Tensor, tau: float) -> Tensor:
    """``z`` in value, backward through ``softmax((θ + s)/τ)`` with the shift ``s = x - θ`` held
    fixed (0 where θ = -inf), averaged over the draws of ``x`` ``(M, K, …, C)``; ``logits`` and
    ``z`` as from ``two_class`` and ``fam``."""
    theta = logits.detach()
    shift = torch.where(torch.isfinite(theta), x - theta, torch.zeros_like(x))
    y = torch.softmax((logits + shift) / tau, -1).mean(0)
    if fam.name == "bernoulli":
        y = y[..., 1]
    return z + (y - y.detach())


def conditional_gumbel_logits(logits: Tensor, d: Tensor, m: int) -> Tensor:
    """``m`` draws of the perturbed logits ``θ + G`` given ``argmax(θ + G) = d`` (detached),
    shape ``(m, *d.shape)``; ``-inf`` logits stay ``-inf``."""
    theta = logits.detach()
    tiny = torch.finfo(theta.dtype).tiny
    e = torch.empty((m, *d.shape), dtype=theta.dtype, device=theta.device).exponential_()
    log_e = e.clamp_(min=tiny).log_()
    log_z = torch.logsumexp(theta, -1, keepdim=True)
    log_e_top = (log_e * d).sum(-1, keepdim=True)
    top = log_z - log_e_top
    other = -torch.logaddexp(log_e - theta, log_e_top - log_z)
    return torch.where(d > 0, top, other)


class GumbelRao(PathwiseEstimator):
    name = "gumbel-rao"
    aliases = ("gr-mck", "gr-mc", "rao-gumbel")
    families = ("bernoulli", "categorical")
    biased = True
    per_sample = False  # the backward pass draws conditional noise of its own
    evaluations = "1 f, 1 ∇f (and M relaxed Jacobians, no extra f)"
    option_docs = {
        "m": "10: conditional Gumbel draws per sample (M = 1 is ST-Gumbel)",
        "temperature": "1.0: τ > 0 of the relaxation softmax((θ + G)/τ)",
    }

    def __init__(self, m: int = 10, temperature: float = 1.0) -> None:
        super().__init__()
        self.m = check_positive_int(self.name, "m", m)
        self.temperature = check_temperature(self.name, temperature)

    def attach(self, fam: Family, z: Tensor) -> Tensor:
        logits, d = two_class(fam, z)
        x = conditional_gumbel_logits(logits, d, self.m)
        return straight_through(fam, z, logits, x, self.temperature)

    def extra_repr(self) -> str:
        return f"{self.name}, m={self.m}, temperature={self.temperature}"
