"""pWGF-MMD: the kernel projection of the Wasserstein gradient flow.

Source: Cheng et al., arXiv 1910.02176, §2.2 and appendix D; restated in ESTIMATORS.md.

Each atom's W2² is replaced by MMD²_κ. With samples ``z_k``, gradients ``g_k = ∇f(z_k)`` and the
flowed points ``y_k = z_k - ε g_k`` held fixed, the control-variate surrogate is

    Φ(θ) = MMD²(p_θ, q̂_ε) - MMD²(p_θ, q̂_0) = -(2/K) Σ_k E_{x~p_θ}[κ(x, y_k) - κ(x, z_k)],

where the expectation is an exact sum over the support (truncated for Poisson). The estimate
for the mean parameter μ is

    raw:         ĝ_μ = (s_raw / ε) ∇_μ Φ,   s_raw = h²/2 for RBF (1/2 for the linear kernel)
    projection:  ĝ_μ = G(μ)⁻¹ ∇_μ Φ / ε,    G = ∇²_{μ'} MMD²(p_{μ'}, p_μ)|_{μ'=μ}

and other parameterisations follow by the chain rule, as for ST. With ``step=None`` (the
default) ε -> 0:

    ∇_μ Φ / ε -> (2/K) Σ_k g_k ∇_μ E_{x~p_μ}[∂_b κ(x, b)]|_{b=z_k},

which is linear in g_k, so it is a backward rule at each sample and works through
``pwgf.sample``. With a finite ``step`` the surrogate needs g_k as a value and must go through
``surrogate`` (its gradient is the one of f's outputs summed).

How it is computed with ``step=None``. On Bernoulli and categorical (any kernel) and with the
linear kernel on every family, ``∇_μ E[∂_b κ(x, b)]|_{b=z_k}`` is the same constant ``a`` for
every sample (Bernoulli: ``∂_bκ(1, b) - ∂_bκ(0, b) = c₀/h²``; categorical: ``c/h²`` on the
simplex's tangent space), so pWGF is ``2 s a`` times ST, ``z + 2sa (μ - stopgrad μ)``: ST's cost
and memory (ESTIMATORS.md oracles 1-3). On Poisson with the RBF kernel the per-sample weight
``2sA(λ, z_k)`` comes from the bandwidth rule's ``pwgf.poisson_table`` (Chebyshev interpolants
built once from exact sums: a polynomial of degree 5 per sample in the rate, or a 2-D one for
rates >= 32), at a cost independent of the rate; what no table holds takes the general path of
``pwgf.poisson_kernel`` (Gauss-Hermite rules or exact sums, chosen per atom).
``exact_sums=True`` computes everything as plain sums over the truncated support common to all
atoms (the original implementation, kept as the reference; O(M²) per atom on Poisson).

Bandwidth: a float h, or a rule scaled by the atom's spread, ``"std"`` (h = std of p_θ) or
``"std*c"`` (h = c · std), floored at ``min_bandwidth``. The default, h = max(2 std, 1), comes
from ``pwgf poisson-bias`` and ``pwgf poisson-gan`` (README, "Poisson"): on Poisson it has the
bias of h = 1 with ST's variance instead of 1.7-3.7 times it, since a bandwidth below the
spread makes the per-sample weights swing; for Bernoulli (std <= 1/2) it is exactly h = 1. A
small floor lets the weights, and so the gradient, vanish for low-variance atoms.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .. import poisson_kernel, poisson_table
from ..errors import PWGFError
from ..families import Family
from ..kernels import KERNELS
from ..truncation import DEFAULT_TAIL
from .base import CostFn, PathwiseEstimator, average, detached_grad, evaluate

NORMALIZATIONS = ("projection", "raw")


def _parse_bandwidth(bandwidth: float | str) -> tuple[float, float | None]:
    """(multiplier, fixed h): ``1.5`` -> (_, 1.5); ``"std*2"`` -> (2, None)."""
    if isinstance(bandwidth, str):
        head, _, mult = bandwidth.partition("*")
        try:
            c = float(mult) if mult else 1.0
            if head != "std" or not (c > 0 and c < float("inf")):
                raise ValueError
            return c, None
        except ValueError:
            raise PWGFError(
                f"pwgf: bandwidth must be a positive float, 'std' or 'std*c', got {bandwidth!r}"
            ) from None
    h = float(bandwidth)
    if not (h > 0 and h < float("inf")):
        raise PWGFError(f"pwgf: bandwidth must be positive and finite, got {bandwidth}")
    return 1.0, h


class PWGFKernel(PathwiseEstimator):
    name = "pwgf"
    aliases = ("pwgf-mmd",)
    biased = True
    evaluations = "1 f, 1 ∇f"
    option_docs = {
        "kernel": "'rbf': κ = exp(-(a-b)²/(2h²)); or 'linear' (then pWGF = ST)",
        "bandwidth": "'std*2': h, a float, or 'std' / 'std*c' (c times the atom's std)",
        "step": "None: ε -> 0 (works with pwgf.sample); or a float ε > 0",
        "normalization": "'projection': Newton step G⁻¹∇Φ/ε; or 'raw': (h²/2)∇Φ/ε",
        "min_bandwidth": "1.0: floor of a 'std' bandwidth",
        "tail": "1e-10: Poisson tail mass left out of the truncated support",
        "exact_sums": "False: the fast forms; True: plain sums over the support (reference)",
    }

    def __init__(
        self,
        kernel: str = "rbf",
        bandwidth: float | str = "std*2",
        step: float | None = None,
        normalization: str = "projection",
        min_bandwidth: float = 1.0,
        tail: float = DEFAULT_TAIL,
        exact_sums: bool = False,
    ) -> None:
        super().__init__()
        if kernel not in KERNELS:
            raise PWGFError(f"pwgf: kernel must be one of {sorted(KERNELS)}, got {kernel!r}")
        if normalization not in NORMALIZATIONS:
            raise PWGFError(
                f"pwgf: normalization must be one of {NORMALIZATIONS}, got {normalization!r}"
            )
        if step is not None and not (float(step) > 0 and float(step) < float("inf")):
            raise PWGFError(f"pwgf: step must be None or a positive float, got {step}")
        self.kernel = KERNELS[kernel]
        self.bandwidth = bandwidth
        self._mult, self._h = _parse_bandwidth(bandwidth)
        self.step = None if step is None else float(step)
        self.normalization = normalization
        self.min_bandwidth = float(min_bandwidth)
        if not self.min_bandwidth > 0:
            raise PWGFError(f"pwgf: min_bandwidth must be positive, got {min_bandwidth}")
        self.tail = tail
        if not isinstance(exact_sums, bool):
            raise PWGFError(f"pwgf: exact_sums must be True or False, got {exact_sums!r}")
        self.exact_sums = exact_sums
        self.pathwise = step is None

    def _rule(self) -> poisson_table.Bandwidth:
        if self._h is not None:
            return poisson_table.Bandwidth(const=self._h)
        return poisson_table.Bandwidth(mult=self._mult, floor=self.min_bandwidth)

    def h(self, fam: Family) -> Tensor:
        """Bandwidth per atom, shape ``atom_shape``, detached."""
        if self._h is not None:
            return torch.full(fam.atom_shape, self._h, dtype=fam.dtype, device=fam.device)
        std = fam.variance().detach().sqrt()
        return torch.clamp(self._mult * std, min=self.min_bandwidth)

    def scale(self, fam: Family, h: Tensor) -> Tensor:
        """``s`` per atom, so that ĝ_μ = s ∇_μ Φ / ε: G⁻¹ or the raw factor."""
        if self.normalization == "raw":
            return self.kernel.raw_scale(h) / 2
        if self.exact_sums and fam.name == "poisson" and self.kernel.name == "rbf":
            return 1.0 / poisson_kernel.reference_metric(fam.mean(), h, self.tail)
        return 1.0 / fam.kernel_metric(self.kernel, h, self.tail)

    def st_constant(self, fam: Family, h: Tensor) -> Tensor:
        """``2 s a`` per atom: pWGF = this times ST on Bernoulli and categorical (and with the
        linear kernel), where ``a = ∂ E[∂_bκ(x, b)]`` along the mean is the same for every b."""
        e = torch.eye(2, dtype=fam.dtype, device=fam.device)
        if fam.name == "categorical":  # component 2 of ∂_bκ(e_2, e_1)
            a = self.kernel.grad_b(e[1], e[0], h)[..., 1]
        elif fam.name == "bernoulli":  # ∂_bκ(1, 0) - ∂_bκ(0, 0)
            one, zero = e[0, :1], e[1, :1]
            a = (self.kernel.grad_b(one, zero, h) - self.kernel.grad_b(zero, zero, h))[..., 0]
        else:  # linear kernel: ∂_λ E[x] = 1
            a = torch.ones_like(h)
        return (2 * self.scale(fam, h) * a).detach()

    def _scalar_constant(self, fam: Family) -> float | None:
        """``st_constant`` as a Python number where h is the same for every atom: a fixed
        bandwidth, or a 'std' rule on Bernoulli whose floor always wins (std <= 1/2)."""
        if self.kernel.name == "linear":
            return 1.0
        h = self._h
        if h is None and fam.name == "bernoulli" and self._mult / 2 <= self.min_bandwidth:
            h = self.min_bandwidth
        if h is None or self.kernel.name != "rbf":
            return None
        # Bernoulli: a = c₀/h², G = 4(1 - c₀); categorical: a = c/h², G = 2(1 - c) (oracles 1, 2)
        c = math.exp(-1 / (2 * h * h)) if fam.name == "bernoulli" else math.exp(-1 / (h * h))
        if self.normalization == "raw":
            return c
        return c / (2 * h * h * (1 - c)) if fam.name == "bernoulli" else c / (h * h * (1 - c))

    def attach(self, fam: Family, z: Tensor) -> Tensor:
        if self.exact_sums:
            return self._attach_sums(fam, z)
        mu = fam.mean()
        if fam.name != "poisson" or self.kernel.name == "linear":
            const = self._scalar_constant(fam)
            if const is not None:
                return z + const * (mu - mu.detach())
        if fam.name == "poisson" and self.kernel.name == "rbf":
            # the gradient of the shift for g_k is g_k · 2s A(λ, z_k); A and G from the rule's
            # table
            table = poisson_table.table(self._rule(), self.tail, mu.device)
            if self.normalization == "raw":
                w = self.kernel.raw_scale(self.h(fam)) * table.mean_grad(mu, z)
            else:
                w = 2 * table.ratio(mu, z)
            return z + w * (mu - mu.detach())
        if fam.name != "poisson" or self.kernel.name == "linear":
            c = self.st_constant(fam, self.h(fam)).expand(fam.atom_shape)
            if fam.name == "categorical":
                c = c.unsqueeze(-1)
            return z + c * (mu - mu.detach())
        return self._attach_sums(fam, z)

    def _attach_sums(self, fam: Family, z: Tensor) -> Tensor:
        values, probs = fam.grid(self.tail)  # (*A, M, V), (*A, M)
        h = self.h(fam)
        b = fam.to_atoms(z).detach()  # (K, *A, V)
        # ∂_b κ(x_m, b) at b = z_k, for every support point x_m: (K, *A, M, V)
        dk = self.kernel.grad_b(values.unsqueeze(0), b.unsqueeze(-2), h.unsqueeze(-1))
        s = (2 * self.scale(fam, h)).detach().unsqueeze(-1)
        # Σ_m ∂_b κ(x_m, z_k) (p_m(θ) - stopgrad p_m): zero in value, and its gradient for the
        # incoming g_k is g_k · ∇_θ E_{x~p_θ}[∂_b κ(x, z_k)].
        shift = s * (dk * (probs - probs.detach()).unsqueeze(-1)).sum(-2)
        return z + fam.from_atoms(shift)

    def surrogate_at(
        self, f: CostFn, fam: Family, z: Tensor, weights: Tensor | None = None
    ) -> Tensor:
        if self.step is None:
            return average(evaluate(f, self.attach(fam, z)), weights)
        eps = self.step
        fz, g = detached_grad(f, z)
        values, probs = fam.grid(self.tail)
        h = self.h(fam)
        b = fam.to_atoms(z).detach()
        y = b - eps * fam.to_atoms(g)
        x = values.unsqueeze(0)
        hk = h.unsqueeze(-1)
        diff = self.kernel.value(x, y.unsqueeze(-2), hk) - self.kernel.value(x, b.unsqueeze(-2), hk)
        # Φ per sample and atom, then averaged over the samples: (K, *A) -> (*A)
        phi_k = -2 * (probs.unsqueeze(0) * diff).sum(-1)
        phi = average(phi_k, weights)
        term = (self.scale(fam, h).detach() * phi / eps).sum()
        n_out = max(fz[0].numel(), 1)
        return average(fz, weights) + (term - term.detach()) / n_out
