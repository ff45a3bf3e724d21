"""Exponential arrival times (EAT): a reparameterised relaxation of the Poisson count.

Sources: Vafaii, Galor & Yates, "Poisson Variational Autoencoder" (NeurIPS 2024, arXiv
2405.14473), the sigmoid indicator and its straight-through ("hard") form; Ibrahim et al., "A
Hitchhiker's Guide to Poisson Gradient Estimation" (arXiv 2602.03896), the cubic (smoothstep)
indicator and the moment analysis.

A Poisson(λ) count is the number of arrivals in [0, 1) of a rate-λ Poisson process, whose
arrival times are ``T_k = Σ_{i<=k} E_i`` with ``E_i ~ Exp(λ)``. Reparameterised,
``T_k = Γ_k / λ`` with ``Γ_k`` the arrival times of a unit-rate process (cumulative sums of
standard exponentials: the estimator's noise). Replacing the step ``1[T_k < 1]`` by a smooth
indicator H at temperature τ > 0,

    z̃ = Σ_{k=1..n} H((1 - T_k) / τ),       ∂z̃/∂λ = Σ_k H'((1 - T_k)/τ) T_k / (λ τ),

with ``indicator``

    sigmoid   H(x) = σ(x)                                    (the P-VAE's)
    cubic     H(x) = 3u² - 2u³,  u = clip((x + 1)/2, 0, 1)    (the Hitchhiker's EAT-cubic)
    linear    H(x) = u

Moments (Campbell's theorem, n -> ∞, a = 1/τ): ``E z̃ = λ τ F₁(a)``, ``Var z̃ = λ τ F₂(a)``
with ``F_j(a) = ∫_{-∞}^a H(x)^j dx``; so cubic and linear have ``E z̃ = λ`` exactly for τ <= 1,
``Var z̃ = λ(1 - 9τ/35)`` (cubic) and ``λ(1 - τ/3)`` (linear); sigmoid has
``E z̃ = λ τ log(1 + e^{1/τ})`` and ``Var z̃ = λ τ [log(1 + e^{1/τ}) - σ(1/τ)]``
(``campbell_moments``). f is evaluated on z̃ and differentiated through it, so the estimate
is the unbiased gradient of the *relaxed* objective ``E[f(z̃)]``, a biased one of ∇E[f(z)].

``hard=True`` (the P-VAE's "st"): the forward value is the exact count ``#{k : T_k < 1}``,
the backward goes through z̃ (``z + z̃ - stopgrad z̃``). The count stays an exact Poisson(λ)
draw whatever n is: if all n arrivals fall before 1, the arrivals left in ``[T_n, 1)`` are
Poisson(λ(1 - T_n)) by memorylessness and are drawn as such (``torch.poisson``).

Truncation (``n_exp``). An int is used as given. ``"auto"`` (default) takes the library's
Poisson window (``pwgf.truncation``) at the largest rate in the call, scaled to the horizon
``t* = 1 + s`` that the indicator can still see: ``n = hi`` of the window of Poisson(λ_max t*)
at tail mass ``tail``, where ``s = τ`` for cubic and linear (H = 0 beyond it) and
``s = τ log(max(2 λ_max τ / tail, 1))`` for sigmoid. The dropped terms ``Σ_{k>n} H(...)`` are
>= 0 and, per atom, ``E[dropped] <= E[(N(t*) - n)⁺] + λ ∫_{t*}^∞ H((1 - t)/τ) dt`` where
N(t*) ~ Poisson(λ t*) has ``P(N(t*) > n) <= tail/2``; the second term is 0 for cubic and linear
and ``<= λ τ e^{-s/τ} <= tail/2`` for sigmoid. ``auto`` reads the largest rate from the device
(one host synchronisation a call); pass an int to avoid it (e.g. under ``torch.compile``).

Rates in ``[0, eps)`` (eps of the dtype) are read as eps in z̃ (its gradient there is 0, and
z̃ < n·H(1/τ - Γ₁/(eps τ)) is negligible); the hard count uses the exact rate. The randomness is
the unit-rate arrival times, not the count, so the estimator is not ``per_sample``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ..errors import PWGFError
from ..families import Family
from ..truncation import poisson_window
from .base import CostFn, Estimator, average, evaluate
from .gumbel import check_temperature

INDICATORS = ("sigmoid", "cubic", "linear")
DEFAULT_TEMPERATURE = 0.1
DEFAULT_TAIL = 1e-6


def indicator_fn(name: str, x: Tensor) -> Tensor:
    """H(x) for the named indicator."""
    if name == "sigmoid":
        return torch.sigmoid(x)
    u = ((x + 1) / 2).clamp(0.0, 1.0)
    return u * u * (3 - 2 * u) if name == "cubic" else u


def campbell_moments(indicator: str, rate: Tensor, temperature: float) -> tuple[Tensor, Tensor]:
    """Mean and variance of z̃ with infinitely many arrivals: ``λτF₁(1/τ)``, ``λτF₂(1/τ)``."""
    _check_indicator(indicator)
    tau = check_temperature("eat", temperature)
    a = torch.as_tensor(1.0 / tau, dtype=rate.dtype, device=rate.device)
    if indicator == "sigmoid":
        f1 = torch.nn.functional.softplus(a)
        f2 = f1 - torch.sigmoid(a)
    else:
        u = ((a + 1) / 2).clamp(0.0, 1.0)
        flat = (a - 1).clamp(min=0.0)  # where H = 1
        if indicator == "cubic":  # ∫_{-1}^{a} with dx = 2 du
            f1 = 2 * (u**3 - u**4 / 2) + flat
            f2 = 2 * (9 * u**5 / 5 - 2 * u**6 + 4 * u**7 / 7) + flat
        else:
            f1 = u**2 + flat
            f2 = 2 * u**3 / 3 + flat
    return rate * tau * f1, rate * tau * f2


def _check_indicator(indicator: object) -> str:
    if indicator not in INDICATORS:
        raise PWGFError(f"eat: indicator must be one of {INDICATORS}, got {indicator!r}")
    return indicator  # type: ignore[return-value]


class ExponentialArrivalTimes(Estimator):
    """Relaxed (or, with ``hard``, straight-through) Poisson counts from arrival times."""

    name = "eat"
    aliases = ("exponential-arrival-times",)
    families = ("poisson",)
    biased = True
    pathwise = True  # pwgf.sample serves it (see ``sample``)
    per_sample = False  # the randomness is the arrival process, not the count
    relaxed_inputs = True  # f sees the relaxed count (unless hard)
    evaluations = "1 f (at the relaxed count; hard: at the exact count, 1 ∇f)"
    option_docs = {
        "indicator": "'sigmoid': H of the relaxed step, one of sigmoid, cubic, linear",
        "temperature": f"{DEFAULT_TEMPERATURE}: τ > 0 of H((1 - T_k)/τ)",
        "n_exp": "'auto': arrivals per atom, an int >= 1 or 'auto' (window of pwgf.truncation)",
        "tail": f"{DEFAULT_TAIL}: mass bound of the arrivals 'auto' leaves out",
        "hard": "False: forward the exact count, backward through the relaxed one",
    }

    def __init__(
        self,
        indicator: str = "sigmoid",
        temperature: float = DEFAULT_TEMPERATURE,
        n_exp: int | str = "auto",
        tail: float = DEFAULT_TAIL,
        hard: bool = False,
    ) -> None:
        super().__init__()
        self.indicator = _check_indicator(indicator)
        self.temperature = check_temperature(self.name, temperature)
        if n_exp != "auto":
            if isinstance(n_exp, bool) or not isinstance(n_exp, int) or n_exp < 1:
                raise PWGFError(f"eat: n_exp must be an int >= 1 or 'auto', got {n_exp!r}")
        self.n_exp = n_exp
        if not (isinstance(tail, int | float) and 0.0 < tail < 1.0):
            raise PWGFError(f"eat: tail must be a float in (0, 1), got {tail!r}")
        self.tail = float(tail)
        if not isinstance(hard, bool):
            raise PWGFError(f"eat: hard must be True or False, got {hard!r}")
        self.hard = hard

    # -- truncation ---------------------------------------------------------------------------
    def arrivals(self, fam: Family) -> int:
        """Number of arrivals per atom for this call (see the module docstring)."""
        if self.n_exp != "auto":
            return int(self.n_exp)
        rate = fam.base.rate.detach()
        lam = float(rate.max()) if rate.numel() else 0.0
        tau = self.temperature
        if self.indicator == "sigmoid":
            s = tau * math.log(max(2 * lam * tau / self.tail, 1.0))
        else:
            s = tau
        horizon = torch.tensor([lam * (1 + s)], dtype=torch.float64)
        lo, width = poisson_window(horizon, self.tail)
        return max(int(lo.item()) + width - 1, 1)  # hi of the window

    # -- estimator ----------------------------------------------------------------------------
    def draw(self, fam: Family, n: int) -> Tensor:
        """Unit-rate arrival times Γ, shape ``(n, *fam.shape, n_exp)``."""
        shape = (n, *fam.shape, self.arrivals(fam))
        e = torch.empty(shape, dtype=fam.dtype, device=fam.device).exponential_()
        return e.cumsum(-1)

    def transform(self, fam: Family, gamma: Tensor) -> Tensor:
        """The values f is evaluated on, from the arrival times Γ, with the estimator's backward."""
        rate = fam.base.rate
        eps = torch.finfo(rate.dtype).eps
        t = gamma / rate.clamp(min=eps).unsqueeze(-1)
        soft = indicator_fn(self.indicator, (1 - t) / self.temperature).sum(-1)
        if not self.hard:
            return soft
        with torch.no_grad():
            lam = rate.detach().unsqueeze(-1)
            count = (gamma < lam).sum(-1).to(rate.dtype)
            # arrivals past the n-th that still fall before 1: exact by memorylessness
            rest = (lam - gamma[..., -1:]).clamp(min=0.0).squeeze(-1)
            count = count + torch.poisson(rest)
        return count + (soft - soft.detach())

    def sample(self, dist: object, n_samples: int = 1) -> Tensor:
        fam = self.family(dist)
        return self.transform(fam, self.draw(fam, self._check_n(n_samples)))

    def surrogate_at(
        self, f: CostFn, fam: Family, z: Tensor, weights: Tensor | None = None
    ) -> Tensor:
        # ``z`` is the arrival-time noise Γ drawn by ``draw``.
        return average(evaluate(f, self.transform(fam, z)), weights)

    def extra_repr(self) -> str:
        return (
            f"{self.name}, indicator={self.indicator}, temperature={self.temperature}, "
            f"n_exp={self.n_exp}, hard={self.hard}"
        )
