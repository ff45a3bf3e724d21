"""Gumbel-Softmax (Concrete) relaxation and its straight-through form.

Sources: Jang, Gu & Poole, "Categorical Reparameterization with Gumbel-Softmax" (ICLR 2017);
Maddison, Mnih & Teh, "The Concrete Distribution" (ICLR 2017).

The discrete sample is replaced by a continuous one that is a differentiable function of the
logits ℓ and of parameter-free noise u ~ U(0, 1), at temperature τ > 0:

    categorical (one-hot, C classes):  y = softmax((ℓ + G) / τ),   G_c = -log(-log u_c)
    Bernoulli (binary Concrete):       y = σ((ℓ + L) / τ),         L = log u - log(1 - u)

(L is logistic: the difference of two Gumbels, so the 2-class Gumbel-softmax on logits
``(0, ℓ)`` and the binary Concrete on ℓ give the same relaxed coordinate.) As τ -> 0, y tends
to the exact sample ``argmax(ℓ + G)`` (``1[ℓ + L > 0]``).

* ``gumbel-softmax``: f is evaluated on the relaxed y and differentiated through it,

      ĝ = (1/K) Σ_k ∇_θ f(y_k(θ, u_k)),

  the unbiased gradient of the *relaxed* objective ``E_u[f(y)]``, a biased estimate of
  ``∇ E[f(z)]`` (the bias vanishes as τ -> 0 for the relaxed objective, while the variance
  grows like 1/τ). The surrogate's value is the mean of f(y), which estimates the relaxed
  objective, not E[f(z)].
* ``st-gumbel``: forward the hard sample z (an exact draw from p_θ), backward through y:
  ``z + y - stopgrad(y)``, so ĝ = (1/K) Σ_k (∂y_k/∂θ)ᵀ ∇f(z_k). Its value is an unbiased
  estimate of E[f(z)]; the gradient is biased at every τ.

Poisson(λ) (the generalised Gumbel-softmax: Joo, Kim, Shin, Yang & Moon, "Generalized
Gumbel-Softmax Gradient Estimator for Various Discrete Random Variables", arXiv 2003.01847; the
Hitchhiker's GSM, Ibrahim et al., arXiv 2602.03896): the count is a categorical over a finite
window of support points ``x_0 < ... < x_{M-1}`` with logits ``x log λ - λ - log x!`` (the
log-pmf; the common ``-λ`` does not change the softmax),

    y = softmax((ℓ + G) / τ) over the window,   relaxed value  z̃ = Σ_m x_m y_m,
    hard value  x_{argmax(ℓ + G)}.

The window is the library's (``pwgf.truncation.poisson_grid`` at ``tail`` = 1e-10, per
atom ``lo + arange(M)``, so ``{0..M-1}`` for small rates and a band of width O(√λ) around λ for
large ones). Tail mass: the softmax over the window *renormalises* the Poisson onto it, i.e. the
hard value is an exact draw from Poisson(λ) conditioned on the window, whose total-variation
distance from Poisson(λ) is the left-out mass, at most ``tail``. The log-pmf is formed in
float64 (its terms are O(λ log λ) and cancel) and cast back; ``log λ`` uses ``max(λ, tiny)``,
so λ = 0 is the point mass at 0 with a zero (not NaN) gradient. The window's width is read
from the largest rate (one host synchronisation a call).

The estimators' randomness is the noise u (``draw``), not the discrete sample, so they are not
``per_sample``: their exact expectation is an integral over u (the tests use quadrature). For a
distribution built from probabilities, ℓ is ``dist.logits`` as torch derives it from the probs,
and the gradient reaches the probs through it.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ..errors import PWGFError
from ..families import Family
from ..truncation import DEFAULT_TAIL, poisson_window
from .base import CostFn, Estimator, average, evaluate


def check_temperature(name: str, temperature: float) -> float:
    try:
        tau = float(temperature)
    except (TypeError, ValueError):
        raise PWGFError(
            f"{name}: temperature must be a positive float, got {temperature!r}"
        ) from None
    if not (tau > 0 and math.isfinite(tau)):
        raise PWGFError(f"{name}: temperature must be positive and finite, got {temperature!r}")
    return tau


def uniform_noise(fam: Family, n: int) -> Tensor:
    """``n`` draws of U(0, 1) noise, shape ``(n, *fam.shape)`` (Poisson: ``(n, *fam.shape, M)``
    for the M points of its window), kept away from 0."""
    extra = (poisson_window(fam.base.rate)[1],) if fam.name == "poisson" else ()
    u = torch.rand((n, *fam.shape, *extra), dtype=fam.dtype, device=fam.device)
    return u.clamp_(min=torch.finfo(fam.dtype).tiny)


def poisson_support(fam: Family, width: int) -> tuple[Tensor, Tensor]:
    """Window points ``(*shape, M)`` (detached) and the log-pmf there, differentiable in λ."""
    rate = fam.base.rate
    lo, w = poisson_window(rate, DEFAULT_TAIL)
    if w != width:
        raise PWGFError(
            f"{fam.name}: noise for a window of {width} points, but the rates need {w}; draw "
            "the noise for the same distribution"
        )
    x = lo.unsqueeze(-1) + torch.arange(width, dtype=rate.dtype, device=rate.device)
    lam = rate.double().clamp(min=torch.finfo(torch.float64).tiny).unsqueeze(-1)
    xd = x.double()
    log_p = xd * torch.log(lam) - lam - torch.lgamma(xd + 1)
    return x, log_p.to(rate.dtype)


def perturbed_logits(fam: Family, u: Tensor) -> Tensor:
    """``ℓ + noise`` (logistic for Bernoulli, Gumbel for categorical), differentiable in ℓ."""
    if fam.name == "poisson":
        return poisson_support(fam, u.shape[-1])[1] - torch.log(-torch.log(u))
    logits = fam.base.logits
    if fam.name == "bernoulli":
        return logits + torch.logit(u)
    return logits - torch.log(-torch.log(u))


def relaxed(fam: Family, x: Tensor, tau: float) -> Tensor:
    """The relaxed sample y(θ, u) at temperature τ, from ``x = perturbed_logits(fam, u)``."""
    if fam.name == "bernoulli":
        return torch.sigmoid(x / tau)
    if fam.name == "poisson":
        points = poisson_support(fam, x.shape[-1])[0]
        return (torch.softmax(x / tau, dim=-1) * points).sum(-1)
    return torch.softmax(x / tau, dim=-1)


def hard(fam: Family, x: Tensor) -> Tensor:
    """The exact discrete sample that ``x = perturbed_logits(fam, u)`` selects (detached)."""
    x = x.detach()
    if fam.name == "bernoulli":
        return (x > 0).to(x.dtype)
    if fam.name == "poisson":
        points = poisson_support(fam, x.shape[-1])[0]
        return points.expand_as(x).gather(-1, x.argmax(-1, keepdim=True)).squeeze(-1)
    return torch.zeros_like(x).scatter_(-1, x.argmax(-1, keepdim=True), 1.0)


class _GumbelBase(Estimator):
    families = ("bernoulli", "categorical", "poisson")
    biased = True
    pathwise = True  # pwgf.sample serves it (see ``sample``)
    per_sample = False  # the randomness is the noise u, not the discrete sample
    option_docs = {"temperature": "1.0: τ > 0 of the relaxation"}

    def __init__(self, temperature: float = 1.0) -> None:
        super().__init__()
        self.temperature = check_temperature(self.name, temperature)

    def draw(self, fam: Family, n: int) -> Tensor:
        return uniform_noise(fam, n)

    def sample(self, dist: object, n_samples: int = 1) -> Tensor:
        fam = self.family(dist)
        return self.transform(fam, self.draw(fam, self._check_n(n_samples)))

    def transform(self, fam: Family, u: Tensor) -> Tensor:
        """The values f is evaluated on, from the noise u, with the estimator's backward."""
        raise NotImplementedError

    def surrogate_at(
        self, f: CostFn, fam: Family, z: Tensor, weights: Tensor | None = None
    ) -> Tensor:
        # ``z`` is the noise u drawn by ``draw``; ``weights`` turn a grid of u into a quadrature.
        return average(evaluate(f, self.transform(fam, z)), weights)

    def extra_repr(self) -> str:
        return f"{self.name}, temperature={self.temperature}"


class GumbelSoftmax(_GumbelBase):
    """Relaxed sample: f is evaluated on the continuous y (``pwgf.sample`` returns y too)."""

    name = "gumbel-softmax"
    aliases = ("gumbel", "concrete")
    evaluations = "1 f (at the relaxed sample)"

    def transform(self, fam: Family, u: Tensor) -> Tensor:
        return relaxed(fam, perturbed_logits(fam, u), self.temperature)


class StraightThroughGumbel(_GumbelBase):
    """Hard sample forward, relaxed sample backward."""

    name = "st-gumbel"
    aliases = ("st-gumbel-softmax", "st-gs")
    evaluations = "1 f, 1 ∇f"

    def transform(self, fam: Family, u: Tensor) -> Tensor:
        x = perturbed_logits(fam, u)
        y = relaxed(fam, x, self.temperature)
        return hard(fam, x) + (y - y.detach())
