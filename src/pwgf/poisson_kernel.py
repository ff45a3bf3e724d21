"""RBF kernel sums over the Poisson support for pWGF-MMD, at a cost independent of the rate:
the general path, for any bandwidth per atom. The estimator takes its rule's tables
(``pwgf.poisson_table``, built from these exact sums), and comes here for what they do not hold.

pWGF-MMD on ``Poisson(λ)`` with ``κ(a, b) = exp(-(a-b)²/(2h²))`` needs, per atom,

    A(λ, b) = ∂_λ E_{x~Pois(λ)}[∂_b κ(x, b)]              (one per sample b = z_k)
    G(λ)    = 2 Σ_{x,x'} ∂_λp(x) ∂_λp(x') κ(x, x')        (the kernel metric)

Summed over a truncated support of M ≈ 13√λ points these cost O(M) and O(M²). Both have exact
one-dimensional Fourier forms. With ω ~ N(0, 1/h²), ``κ(x - b) = E_ω cos(ω(x - b))`` and the
Poisson characteristic function ``φ(ω) = exp(λ(e^{iω} - 1))`` give

    A = E_ω Re[-iω (e^{iω} - 1) φ(ω) e^{-iωb}]
    G = 2 E_ω[4 sin²(ω/2) exp(-4λ sin²(ω/2))]          (X - X' is Skellam: φ_{X-X'} = |φ|²)

The Gaussian part of each integrand, ``exp(-(h² + λ)ω²/2 + iω(λ - b))`` for A and
``exp(-(h² + 2λ)ω²/2)`` for G, is taken out exactly (for A by moving the contour to
``Im ω = (λ - b)/(h² + λ)``, which turns the oscillation into a Gaussian factor), and what
remains is smooth and nearly polynomial on the scale of that Gaussian, so an
``n``-point Gauss-Hermite rule computes it; both integrands are even in the node, so n/2
evaluations per atom and sample, whatever λ.

Which rule. How many nodes an atom needs depends on two numbers: ``τ``, the width of the
Gaussian against the 2π-periodic structure of the integrand, and ``s``, the share of the Poisson
in the smoothed variance, which sets how far the remaining factor is from a constant:

    A: τ = (h² + λ)^(-1/2), s = λτ²          G: τ = (h² + 2λ)^(-1/2), s = 2λτ²

``NODES_A`` and ``NODES_G`` give, per bin of (τ, s), the smallest rule of ``RULES`` whose
relative error against exact sums over a wide window is below 5e-8 at every sampled point of the
bin (``tools/poisson_nodes.py`` regenerates them; samples at the bin's edges and inside, and for
A at b within ±6 standard deviations of λ), made non-decreasing in both, so that the largest τ and
s of a batch name a rule for all of it (one rule, no gather, in the common case). pWGF's default
bandwidth h = max(2√λ, 1) takes 6 nodes for A and 4 for G at λ >= 100, 12-20 and 6-12 in between.
The rule ignores the periodic copies of the integrand near ω = 2πj, of relative size
``exp(-2π² h²)``; bins where no rule is accurate (h small against 1 or against the spread) are 0.

Exact sums. Atoms of rate at most ``SMALL_RATE`` whose rule would cost more passes take the sum
over the common window [0, w) (summation by parts, pmf by its ratio: a few points for small λ);
atoms in a 0 bin take exact sums on their own window (Poisson window of
``pwgf.truncation.poisson_bounds`` intersected, for A, with ``|x - b| <= 8h + 1``). There the
tail left out is at most ``tail`` of the mass (times max|∂_bκ| <= 1/h for A) and the kernel
window loses below 1e-13. Those atoms are grouped by window width, so an atom's cost depends on
its own rate and bandwidth only: at most ~130 points for A; for G, ``M·(16h + 3)`` points, which
grows with √λ only for a bandwidth below 1. ``tests/test_pwgf_fast.py`` checks every path
against exact sums to 2e-7, at rates 0..1e4 and bandwidths 0.5..200 and at random points.

Everything is computed in float64 and returned in the rate's dtype; nothing here is
differentiable (the estimator attaches A and 1/G as constants). The rules and the small-rate
sums are ``pwgf.fused`` kernels: eager by default, in slices of the atoms that keep temporaries
in cache; compiled by ``torch.compile`` in one call when fused kernels are on.
"""

from __future__ import annotations

import bisect
import math
from functools import lru_cache

import torch
from torch import Tensor

from .fused import Kernel, kernel
from .truncation import DEFAULT_TAIL, poisson_bounds

#: the Gauss-Hermite rules on offer (total nodes; the positive half is evaluated)
RULES = (4, 6, 8, 12, 16, 20, 24, 32, 48)
#: upper edges of the bins of τ and s that index ``NODES_A`` / ``NODES_G`` (module doc)
TAU_EDGES = (0.005, 0.01, 0.02, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.5, 0.6, 0.7, 0.8)
TAU_EDGES += (1.0, 1.25, 1.5, 2.0, 3.0)
S_EDGES = (0.02, 0.05, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.98, 0.99)
S_EDGES += (0.995, 0.998, 0.999, 0.9995, 0.9998, 0.9999, 1.0)
#: half-width of the kernel window, in bandwidths: |∂_bκ| beyond it is below 1e-13/h
KERNEL_REACH = 8.0


@lru_cache(maxsize=8)
def _hermite(n: int) -> tuple[Tensor, Tensor]:
    """The positive half of the probabilists' Gauss-Hermite rule (n even): nodes t_j > 0 and
    weights w_j with ``Σ w_j (g(t_j) + g(-t_j)) ≈ E_{t~N(0,1)} g(t)``, by Golub-Welsch. Both
    integrands below are even in t (their real parts), so the negative half is not evaluated."""
    off = torch.arange(1, n, dtype=torch.float64).sqrt()
    jacobi = torch.diag(off, 1) + torch.diag(off, -1)
    nodes, vecs = torch.linalg.eigh(jacobi)
    weights = vecs[0] ** 2
    keep = nodes > 0
    return nodes[keep], 2 * weights[keep] / weights.sum()


def _rule(n: int, device: torch.device) -> tuple[Tensor, Tensor]:
    t, w = _hermite(n)
    return t.to(device), w.to(device)


#: the smallest Gauss-Hermite rule accurate to ``TOL / 4`` on each bin (row: s, column: τ) of
#: ``TAU_EDGES`` x ``S_EDGES``; 0: none is (exact sums). Generated by ``tools/poisson_nodes.py``.
NODES_A = (
    ( 4,  4,  6,  6,  6,  6,  6,  8,  8,  8,  8, 12, 12, 12, 12, 16, 24, 32,  0,  0),
    ( 4,  6,  6,  6,  6,  8,  8,  8, 12, 12, 12, 12, 16, 16, 20, 20, 32, 48,  0,  0),
    ( 6,  6,  6,  6,  8,  8,  8, 12, 12, 12, 12, 16, 20, 24, 32, 48,  0,  0,  0,  0),
    ( 6,  6,  6,  6,  8,  8, 12, 12, 12, 16, 16, 20, 24, 32, 48,  0,  0,  0,  0,  0),
    ( 6,  6,  6,  6,  8, 12, 12, 12, 16, 16, 20, 24, 32, 48,  0,  0,  0,  0,  0,  0),
    ( 6,  6,  6,  8,  8, 12, 12, 16, 20, 24, 32, 48,  0,  0,  0,  0,  0,  0,  0,  0),
    ( 6,  6,  6,  8, 12, 12, 16, 20, 24, 32, 48,  0,  0,  0,  0,  0,  0,  0,  0,  0),
    ( 6,  6,  6,  8, 12, 16, 20, 24, 48, 48,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0),
    ( 6,  6,  6,  8, 12, 16, 24, 32, 48,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0),
    ( 6,  6,  8,  8, 12, 20, 32, 48,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0),
    ( 6,  6,  8, 12, 12, 24, 48,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0),
    ( 6,  6,  8, 12, 16, 32, 48,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0),
    ( 6,  6,  8, 12, 16, 32,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0),
    ( 6,  6,  8, 12, 16,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0),
    ( 6,  6,  8, 12,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0),
    ( 6,  6,  8, 12,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0),
    ( 6,  6,  8,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0),
    ( 6,  6,  8,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0),
    ( 6,  6,  8,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0),
    ( 6,  6,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0),
    ( 0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0),
    ( 0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0),
)  # fmt: skip
NODES_G = (
    ( 4,  4,  4,  4,  6,  6,  6,  6,  6,  8,  8,  8,  8, 12, 12, 12, 16, 16, 20, 32),
    ( 4,  4,  4,  4,  6,  6,  6,  6,  8,  8,  8,  8, 12, 12, 12, 12, 16, 16, 24, 48),
    ( 4,  4,  4,  4,  6,  6,  6,  8,  8,  8,  8, 12, 12, 12, 12, 16, 16, 20, 32, 48),
    ( 4,  4,  4,  4,  6,  6,  8,  8,  8,  8, 12, 12, 12, 12, 12, 16, 20, 20, 32, 48),
    ( 4,  4,  4,  4,  6,  6,  8,  8,  8,  8, 12, 12, 12, 12, 16, 16, 20, 24, 32, 48),
    ( 4,  4,  4,  4,  6,  6,  8,  8,  8, 12, 12, 12, 12, 16, 16, 16, 20, 24, 32, 48),
    ( 4,  4,  4,  6,  6,  8,  8, 12, 12, 12, 12, 16, 16, 16, 16, 20, 24, 24, 48,  0),
    ( 4,  4,  4,  6,  6,  8,  8, 12, 12, 12, 16, 16, 16, 16, 16, 20, 24, 32, 48,  0),
    ( 4,  4,  4,  6,  6,  8, 12, 12, 12, 16, 16, 20, 24, 24, 24, 24, 24, 32, 48,  0),
    ( 4,  4,  4,  6,  8,  8, 12, 12, 12, 16, 20, 32, 32, 32, 32, 32, 32, 32, 48,  0),
    ( 4,  4,  4,  6,  8,  8, 12, 12, 16, 20, 48, 48, 48, 48, 48, 48, 48, 48, 48,  0),
    ( 4,  4,  4,  6,  8, 12, 12, 12, 20,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0),
    ( 4,  4,  4,  6,  8, 12, 12,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0),
    ( 4,  4,  4,  6,  8,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0),
    ( 4,  4,  6,  6,  8,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0),
    ( 4,  4,  6,  6,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0),
    ( 4,  4,  6,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0),
    ( 4,  4,  6,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0),
    ( 4,  4,  6,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0),
    ( 4,  4,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0),
    ( 4,  4,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0),
    ( 0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0),
)  # fmt: skip
#: below this rate an atom may take exact sums on the common window [0, w) instead of a rule,
#: whichever costs fewer passes (``_SMALL_COST`` per point against ``_GH_COST`` per node)
SMALL_RATE = 4.0
_GH_COST, _SMALL_COST = 11.0, 9.0


@lru_cache(maxsize=8)
def _tables(device: torch.device) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    def f64(x):
        return torch.tensor(x, dtype=torch.float64, device=device)

    def flat(t):  # one extra column (τ past the last edge) of zeros: exact sums
        rows = [[*r, 0] for r in t]
        return torch.tensor(rows, dtype=torch.long, device=device).reshape(-1)

    return f64(TAU_EDGES), f64(S_EDGES), flat(NODES_A), flat(NODES_G)


def _coords(lam: Tensor, h: Tensor, metric: bool) -> tuple[Tensor, Tensor]:
    """(τ, s) per atom: ``τ = (h² + λ)^(-1/2), s = λτ²`` for A and ``τ = (h² + 2λ)^(-1/2),
    s = 2λτ²`` for G."""
    lam2 = 2 * lam if metric else lam
    inv = 1 / (h * h + lam2)
    return inv.sqrt(), lam2 * inv


def _rule_per_atom(lam: Tensor, h: Tensor, metric: bool) -> Tensor:
    """The node count each atom needs (0: exact sums), from its bin of (τ, s)."""
    tau_e, s_e, na, ng = _tables(lam.device)
    tau, s = _coords(lam, h, metric)
    i = torch.bucketize(tau, tau_e)
    j = torch.bucketize(s, s_e).clamp(max=len(S_EDGES) - 1)
    return (ng if metric else na)[j * (len(TAU_EDGES) + 1) + i]


def _rule_at(tau: float, s: float, metric: bool) -> int:
    """``_rule_per_atom`` for one point (the tables are non-decreasing in τ and s, so the
    largest τ and s of a batch name a rule good for all of it)."""
    i = bisect.bisect_left(TAU_EDGES, tau)
    if i == len(TAU_EDGES):
        return 0
    j = min(bisect.bisect_left(S_EDGES, s), len(S_EDGES) - 1)
    return (NODES_G if metric else NODES_A)[j][i]


def _small_cost(lam: float | Tensor) -> float | Tensor:
    """Passes of the small-rate exact sum, from an estimate of its window ``hi(λ) + 2``."""
    return _SMALL_COST * (6 + 4 * lam + 5 * lam**0.5)


def _batch_plan(lam: Tensor, h: Tensor, metric: bool) -> tuple[str, int, float]:
    """("gh", n, _), ("small", _, max λ) when one path serves every atom, else ("mixed", 0, _):
    one host read of the batch's extremes of (τ, s, λ)."""
    if not lam.numel():
        return "gh", 4, 0.0
    tau, s = _coords(lam, h, metric)
    ext = torch.stack([tau.amax(), s.amax(), tau.amin(), s.amin(), lam.amin(), lam.amax()])
    t_hi, s_hi, t_lo, s_lo, l_lo, l_hi = ext.tolist()
    n = _rule_at(t_hi, s_hi, metric)
    if metric:
        return ("gh", n, l_hi) if n else ("mixed", 0, l_hi)
    cheapest = _rule_at(t_lo, s_lo, metric)
    if l_hi <= SMALL_RATE and (not cheapest or _small_cost(l_hi) < _GH_COST * cheapest):
        return "small", 0, l_hi
    if n and (l_lo > SMALL_RATE or _small_cost(l_lo) >= _GH_COST * n):
        return "gh", n, l_hi
    return "mixed", 0, l_hi


def _small_width(top: float, tail: float) -> int:
    """Points of [0, w) holding all but ``tail`` of Poisson(λ) for every λ <= top. The bound's
    upper end grows with λ, so it is taken at ``top`` rounded up to a grid of 16 steps per
    doubling (from 2^-20), and cached: a few hundred values cover every call."""
    k = max(math.ceil(16 * math.log2(max(top, 2.0**-20))), -320)
    return _window_at(k, tail)


@lru_cache(maxsize=1024)
def _window_at(k: int, tail: float) -> int:
    lam = torch.tensor([2.0 ** (k / 16)], dtype=torch.float64)
    return int(poisson_bounds(lam, tail)[1]) + 1


def fast_mean_grad_region(rate: Tensor, h: Tensor) -> Tensor:
    """Where ``rbf_mean_grad`` may use a Gauss-Hermite rule (bool, broadcast shape)."""
    rate, h = torch.broadcast_tensors(rate.double(), torch.as_tensor(h, dtype=torch.float64))
    return _rule_per_atom(rate.reshape(-1), h.reshape(-1), False).reshape(rate.shape) > 0


def fast_metric_region(rate: Tensor, h: Tensor) -> Tensor:
    """Where ``rbf_metric`` uses a Gauss-Hermite rule (bool, broadcast shape)."""
    rate, h = torch.broadcast_tensors(rate.double(), torch.as_tensor(h, dtype=torch.float64))
    return _rule_per_atom(rate.reshape(-1), h.reshape(-1), True).reshape(rate.shape) > 0


# -- the Gauss-Hermite forms ---------------------------------------------------------------------
#: elements per temporary in the rules' inner loops: small enough to stay in cache and to be
#: reused by the allocator instead of mapped and faulted in afresh for every operation
CHUNK = 1 << 14


def _chunked(
    fn, n_atoms: int, per_atom: int, *arrays: Tensor, shared: tuple = (), chunk: int = CHUNK
) -> Tensor:
    """``fn(*shared, *arrays)`` over slices of the last (atom) dimension of ``arrays``,
    concatenated; in one call where ``fn`` runs fused (no temporaries to keep in cache)."""
    step = max(1, chunk // max(per_atom, 1))
    if n_atoms <= step or (isinstance(fn, Kernel) and fn.runs_fused()):
        return fn(*shared, *arrays)
    parts = [fn(*shared, *(a[..., i : i + step] for a in arrays)) for i in range(0, n_atoms, step)]
    return torch.cat(parts, -1)


def _gh_mean_grad(lam: Tensor, h: Tensor, b: Tensor, n: int) -> Tensor:
    """A(λ, b) by the shifted-contour rule; lam, h: (N,), b: (K, N), float64."""
    t, w = _rule(n, lam.device)
    per_atom = t.numel() * b.shape[0]
    return _chunked(_gh_mean_grad_kernel, lam.shape[-1], per_atom, lam, h, b, shared=(t, w))


@kernel
def _gh_mean_grad_kernel(t: Tensor, w: Tensor, lam: Tensor, h: Tensor, b: Tensor) -> Tensor:
    """A at the rule's positive nodes t and weights w (n/2,), for lam, h (N,) and b (K, N)."""
    # The node axis goes first, (n, K, N), so that every broadcast keeps the atoms contiguous in
    # the last dimension (a stride-0 last dimension is many times slower on CPU); terms that
    # depend on the node only, or on the sample only, are formed before broadcasting.
    p = h * h + lam
    tau = p.rsqrt()
    a = lam - b  # (K, N)
    # ω = i a/P + τ t, so iω = u + i v with u = -a/P, v = τ t; e^{iω} = e^u (cos v + i sin v)
    u = -a / p  # (K, N)
    v = t.unsqueeze(-1) * tau  # (n, N)
    c, s = v.cos().unsqueeze(1), v.sin().unsqueeze(1)  # (n, 1, N)
    vv = v.unsqueeze(1)
    eu = u.exp()
    lam_eu = lam * eu
    # λ(e^{iω} - 1 - iω - (iω)²/2), the Gaussian part exp(λ(iω) + λ(iω)²/2) being taken out
    e_re = (lam_eu * c).add_((lam * (v * v) / 2).unsqueeze(1)).sub_(lam * (1 + u + u * u / 2))
    e_im = (lam_eu * s).sub_((lam * v).unsqueeze(1) * (1 + u))
    # -iω (e^{iω} - 1) = -(u + iv)(e^u c - 1 + i e^u s)
    m_re = (vv * s - u * c).mul_(eu).add_(u)
    m_im = (u * s).add_(vv * c).mul_(eu).neg_().add_(vv)
    re = e_im.cos().mul_(m_re).sub_(e_im.sin_().mul_(m_im)).mul_(e_re.exp_())
    total = torch.tensordot(w, re, dims=1)
    return h * tau * torch.exp(-a * a / (2 * p)) * total


def _gh_metric(lam: Tensor, h: Tensor, n: int) -> Tensor:
    """G(λ) by the rule with the Gaussian exp(-(h² + 2λ)ω²/2) taken out; lam, h: (N,)."""
    t, w = _rule(n, lam.device)
    return _chunked(_gh_metric_kernel, lam.shape[-1], t.numel(), lam, h, shared=(t, w))


@kernel
def _gh_metric_kernel(t: Tensor, w: Tensor, lam: Tensor, h: Tensor) -> Tensor:
    """G at the rule's positive nodes t and weights w (n/2,), for lam, h (N,)."""
    tau = (h * h + 2 * lam).rsqrt()
    om = t.unsqueeze(-1) * tau  # (n, N)
    s2 = (om / 2).sin_().square_()
    r = (om * om).sub_(4 * s2).mul_(lam).exp_().mul_(s2).mul_(4)
    return 2 * h * tau * torch.tensordot(w, r, dims=1)


# -- exact sums on each atom's own window --------------------------------------------------------
def _log_factorial(top: int, device: torch.device) -> Tensor:
    return torch.lgamma(torch.arange(top + 1, dtype=torch.float64, device=device) + 1)


def _pmf_at(x: Tensor, lam: Tensor, table: Tensor) -> Tensor:
    """Poisson pmf at integer-valued ``x`` (any shape broadcasting with ``lam``), float64;
    0 for x < 0. ``table[n] = log n!``."""
    xi = x.clamp(min=0).long()
    log_p = torch.special.xlogy(x.clamp(min=0), lam) - lam - table[xi]
    return torch.where(x >= 0, log_p.exp(), torch.zeros_like(log_p))


def _window_dpmf(start: Tensor, w: int, lam: Tensor) -> tuple[Tensor, Tensor]:
    """Points ``x = start + j`` (j < w) and ``∂_λ p(x) = p(x-1) - p(x) = p(x)(x - λ)/λ``, shape
    ``(w, *start.shape)``, for integer ``start >= 0``. The pmf runs along the window by its ratio
    ``p(x)/p(x-1) = λ/x`` (a cumulative product: one lgamma per window, not per point);
    at λ = 0 it is the point mass at 0, with ∂_λp = 1 at x = 1 and -1 at x = 0."""
    steps = torch.arange(w, dtype=lam.dtype, device=lam.device).view(-1, *([1] * start.ndim))
    x = start + steps  # atoms last, contiguous
    pos = lam > 0
    safe = torch.where(pos, lam, torch.ones_like(lam))
    log_p0 = torch.special.xlogy(start, safe) - safe - torch.lgamma(start + 1)
    pmf = torch.empty_like(x)
    pmf[0] = log_p0.exp()
    torch.cumprod(safe / x[1:], 0, out=pmf[1:])
    pmf[1:] *= pmf[0]
    q = pmf.mul_((x - safe) / safe)
    at_zero = (x == 1).to(x.dtype) - (x == 0).to(x.dtype)
    return x, torch.where(pos, q, at_zero)


def _groups(width: Tensor) -> list[tuple[Tensor, int]]:
    """(indices, padded width) per power-of-two class of ``width`` (1-D integer tensor); widths up
    to 32 form one class (padding a window to 32 points is cheaper than a gather)."""
    top = int(width.max()) if width.numel() else 1
    if top <= 32:
        return [(torch.arange(width.numel(), device=width.device), top)]
    cls = torch.ceil(torch.log2(width.clamp(min=32).double())).long()
    out = []
    for c in torch.unique(cls).tolist():
        idx = torch.nonzero(cls == c).squeeze(-1)
        out.append((idx, int(width[idx].max())))
    return out


def exact_mean_grad(lam: Tensor, h: Tensor, b: Tensor, tail: float = DEFAULT_TAIL) -> Tensor:
    """A(λ, b) as an exact sum ``Σ_x (p(x-1) - p(x)) ∂_bκ(x, b)`` over each atom's Poisson
    window intersected with ``|x - b| <= 8h + 1``; lam, h: (N,), b: (K, N), float64."""
    lo, hi = poisson_bounds(lam, tail)
    reach = torch.ceil(KERNEL_REACH * h) + 1
    start = torch.maximum(lo, b - reach)  # (K, N)
    stop = torch.minimum(hi + 1, b + reach)  # ∂_λp(x) lives on [lo, hi + 1]
    width = (stop - start + 1).clamp(min=1).amax(0).long()  # (N,)
    groups = _groups(width)
    k = b.shape[0]
    if len(groups) == 1:  # one width class: no gather and scatter
        w = groups[0][1]
        return _chunked(_window_mean_grad(w), lam.numel(), w * k, lam, h, b, start, chunk=4 * CHUNK)
    out = torch.zeros_like(b)
    for idx, w in groups:
        args = (lam[idx], h[idx], b[:, idx], start[:, idx])
        out[:, idx] = _chunked(_window_mean_grad(w), idx.numel(), w * k, *args, chunk=4 * CHUNK)
    return out


def _window_mean_grad(w: int):
    def block(lam: Tensor, h: Tensor, b: Tensor, start: Tensor) -> Tensor:
        x, q = _window_dpmf(start, w, lam)
        d = x.sub_(b)
        e = (d * d).mul_(-0.5 / (h * h)).exp_()
        return q.mul_(d).mul_(e).sum(0) / (h * h)

    return block


def exact_metric(lam: Tensor, h: Tensor, tail: float = DEFAULT_TAIL) -> Tensor:
    """G(λ) as an exact sum ``2 Σ_x Σ_{|d|<=D} q(x) q(x+d) κ(d)``, q = ∂_λp, over each atom's
    window, ``D = min(8h + 1, window)``; lam, h: (N,), float64."""
    lo, hi = poisson_bounds(lam, tail)
    span = hi + 2 - lo  # q lives on [lo, hi + 1]
    reach = torch.minimum(torch.ceil(KERNEL_REACH * h) + 1, span)
    out = torch.zeros_like(lam)
    cost = (span * (2 * reach + 1)).long()
    for idx, _ in _groups(cost):
        wx, dd = int(span[idx].max()), int(reach[idx].max())
        lam_i = lam[idx].view(-1, 1, 1)
        x = (lo[idx].view(-1, 1) + torch.arange(wx, dtype=lam.dtype, device=lam.device)).unsqueeze(
            -1
        )  # (n, wx, 1)
        d = torch.arange(-dd, dd + 1, dtype=lam.dtype, device=lam.device)  # (2D+1,)
        table = _log_factorial(int(x.max()) + dd + 1, lam.device)
        inside = (x < (hi[idx] + 2).view(-1, 1, 1)).to(lam.dtype)

        h2 = (h[idx] ** 2).view(-1, 1, 1)
        kern = torch.exp(-d * d / (2 * h2)) * (d.abs() <= reach[idx].view(-1, 1, 1))
        qx = _pmf_at(x - 1, lam_i, table) - _pmf_at(x, lam_i, table)
        qy = _pmf_at(x + d - 1, lam_i, table) - _pmf_at(x + d, lam_i, table)
        out[idx] = 2 * (inside * qx * qy * kern).sum((-1, -2))
    return out


# -- the public entry points ---------------------------------------------------------------------
def _flat(rate: Tensor, h: Tensor) -> tuple[Tensor, Tensor]:
    lam = rate.detach().double().reshape(-1)
    hh = torch.as_tensor(h, device=rate.device).detach().double().expand(rate.shape).reshape(-1)
    return lam, hh


def _dispatch(code: Tensor, extra: Tensor | None = None) -> tuple[list[int], list[float]]:
    """The classes present in ``code`` (-1: the small-rate window, 0: exact sums, else a node
    count of ``RULES``) and ``extra``'s values, in one host read: which atoms take which path,
    and the size of the window."""
    counts = torch.bincount(code + 1, minlength=max(RULES) + 2).double()
    vals = counts if extra is None else torch.cat([counts, extra.reshape(-1).double()])
    out = vals.tolist()
    n = counts.numel()
    present = [c - 1 for c in range(n) if out[c] > 0]
    return present, out[n:]


def _classes(code: Tensor, present: list[int]) -> list[tuple[int, Tensor]]:
    """(class, indices of its atoms) for each class present."""
    return [(c, torch.nonzero(code == c).squeeze(-1)) for c in present]


def small_mean_grad(lam: Tensor, h: Tensor, b: Tensor, width: int) -> Tensor:
    """A(λ, b) as the exact sum ``Σ_{x<w} p(x) (∂_bκ(x+1, b) - ∂_bκ(x, b))`` over the common
    window [0, w) (summation by parts of ``Σ_x ∂_λp(x) ∂_bκ(x, b)``); the pmf by the ratio
    ``p(x)/p(x-1) = λ/x`` from ``p(0) = e^{-λ}`` (λ = 0 gives the point mass at 0). For small
    rates, where the window is a few points; lam, h: (N,), b: (K, N), float64."""

    x = torch.arange(width + 1, dtype=lam.dtype, device=lam.device)
    per_atom = (width + 1) * b.shape[0]
    return _chunked(_small_mean_grad_kernel, lam.numel(), per_atom, lam, h, b, shared=(x,))


def _small_mean_grad_eager(x: Tensor, lam: Tensor, h: Tensor, b: Tensor) -> Tensor:
    """``small_mean_grad`` on the window's points x = 0..w (w + 1,), for eager runs: the pmf by
    its ratio, as a cumulative product (fewer passes than from its log, eagerly)."""
    ratio = lam / x[1:-1].unsqueeze(-1)  # (w - 1, N)
    pmf = torch.cat([torch.ones_like(lam).unsqueeze(0), ratio.cumprod_(0)]).mul_((-lam).exp())
    return _sum_by_parts(x, pmf, h, b)


@kernel(eager=_small_mean_grad_eager)
def _small_mean_grad_kernel(x: Tensor, lam: Tensor, h: Tensor, b: Tensor) -> Tensor:
    """``small_mean_grad`` on the window's points x = 0..w (w + 1,), fused, as the equal sum
    ``Σ_{x<=w} ∂_λp(x) ∂_bκ(x, b)`` with ``∂_λp(x) = (x - λ) λ^(x-1) e^{-λ} / x!`` from its log
    at each point: no cumulative product, which compiled stays a library call writing a
    temporary of the whole window on every call."""
    # the points counted, not loaded: a reduction over values loaded from a short vector makes
    # inductor vectorise along that vector instead of along the atoms
    x = torch.arange(x.shape[0], dtype=lam.dtype, device=lam.device)
    xs = x.unsqueeze(-1)  # (w + 1, 1)
    pos = lam > 0
    log_lam = torch.where(pos, lam, torch.ones_like(lam)).log()
    dp = (xs - lam) * ((xs - 1) * log_lam - lam - torch.lgamma(xs + 1)).exp()
    dp = torch.where(pos, dp, (xs == 1).to(lam) - (xs == 0).to(lam))  # λ = 0: the point mass
    inv_h2 = 1 / (h * h)
    d = x.view(-1, 1, 1) - b  # (w + 1, K, N)
    g = (d * d * (-0.5 * inv_h2)).exp() * d * inv_h2
    return (g * dp.unsqueeze(1)).sum(0)


def _sum_by_parts(x: Tensor, pmf: Tensor, h: Tensor, b: Tensor) -> Tensor:
    """``Σ_{x<w} p(x) (∂_bκ(x+1, b) - ∂_bκ(x, b))``: pmf (w, N), b (K, N)."""
    inv_h2 = 1 / (h * h)
    d = x.view(-1, 1, 1) - b  # (w + 1, K, N)
    g = (d * d).mul_(-0.5 * inv_h2).exp_().mul_(d).mul_(inv_h2)
    return ((g[1:] - g[:-1]) * pmf.unsqueeze(1)).sum(0)


def rbf_mean_grad(rate: Tensor, h: Tensor, b: Tensor, tail: float = DEFAULT_TAIL) -> Tensor:
    """``A = ∂_λ E_{x~Pois(λ)}[∂_b κ(x, b)]`` for the RBF kernel, per sample and atom.

    rate: ``atom_shape``; h: broadcastable to it; b: ``(K, *atom_shape)``. Returns b's shape in
    the rate's dtype, detached. Each atom takes the cheapest accurate path: the Gauss-Hermite rule
    its (τ, s) bin names, exact sums on [0, w) for small rates, or exact sums on its own window.
    """
    lam, hh = _flat(rate, h)
    bb = b.detach().double().reshape(b.shape[0], -1)
    plan, n, top = _batch_plan(lam, hh, False)
    if plan == "gh":
        out = _gh_mean_grad(lam, hh, bb, n)
    elif plan == "small":
        out = small_mean_grad(lam, hh, bb, _small_width(top, tail))
    else:
        out = _mixed_mean_grad(lam, hh, bb, tail)
    return out.reshape(b.shape).to(rate.dtype)


def _mixed_mean_grad(lam: Tensor, hh: Tensor, bb: Tensor, tail: float) -> Tensor:
    """A where the atoms take different paths: each group of atoms on its own."""
    n = _rule_per_atom(lam, hh, False)
    gh_cost = torch.where(n > 0, _GH_COST * n, torch.full_like(lam, math.inf))
    small = (lam <= SMALL_RATE) & (_small_cost(lam) < gh_cost)
    code = torch.where(small, -1, n)
    top = torch.where(small, lam, torch.zeros_like(lam)).amax()
    present, extra = _dispatch(code, top)
    out = torch.empty_like(bb)
    for c, idx in _classes(code, present):
        args = (lam[idx], hh[idx], bb[:, idx])
        if c == -1:
            out[:, idx] = small_mean_grad(*args, _small_width(extra[0], tail))
        elif c == 0:
            out[:, idx] = exact_mean_grad(*args, tail)
        else:
            out[:, idx] = _gh_mean_grad(*args, c)
    return out


def rbf_metric(rate: Tensor, h: Tensor, tail: float = DEFAULT_TAIL) -> Tensor:
    """The kernel metric ``G`` of ``Poisson(rate)`` for the RBF kernel, per atom, detached: the
    Gauss-Hermite rule of the atom's (τ, s) bin, or exact sums on its own window."""
    lam, hh = _flat(rate, h)
    plan, n, _ = _batch_plan(lam, hh, True)
    if plan == "gh":
        return _gh_metric(lam, hh, n).reshape(rate.shape).to(rate.dtype)
    code = _rule_per_atom(lam, hh, True)
    present, _ = _dispatch(code)
    out = torch.empty_like(lam)
    for c, idx in _classes(code, present):
        args = (lam[idx], hh[idx])
        out[idx] = exact_metric(*args, tail) if c == 0 else _gh_metric(*args, c)
    return out.reshape(rate.shape).to(rate.dtype)


def reference_metric(rate: Tensor, h: Tensor, tail: float = DEFAULT_TAIL) -> Tensor:
    """G by the plain double sum over the common window (the original implementation)."""
    b = torch.zeros((1, *rate.shape), dtype=rate.dtype, device=rate.device)
    return reference_sums(rate, h, b, tail)[1].to(rate.dtype)


def reference_sums(
    rate: Tensor, h: Tensor, b: Tensor, tail: float = DEFAULT_TAIL, margin: float = 0.0
) -> tuple[Tensor, Tensor]:
    """(A, G) by plain sums over one window common to all atoms (the original implementation,
    kept as the reference): the window of ``pwgf.truncation.poisson_window``, widened by
    ``margin`` standard deviations each side. O(M) and O(M²) per atom, for tests."""
    lam, hh = _flat(rate, h)
    bb = b.detach().double().reshape(b.shape[0], -1)
    sd = float(lam.max().sqrt()) if lam.numel() else 0.0
    lo, hi = poisson_bounds(lam, tail)
    lo = (lo - math.ceil(margin * sd)).clamp(min=0)
    width = int((hi - lo).max()) + 2 + 2 * math.ceil(margin * sd)
    x = lo.unsqueeze(-1) + torch.arange(width, dtype=torch.float64, device=lam.device)
    table = _log_factorial(int(x.max()) + 1, lam.device)
    lam_x = lam.unsqueeze(-1)
    q = _pmf_at(x - 1, lam_x, table) - _pmf_at(x, lam_x, table)  # (N, M)
    h2 = (hh * hh).unsqueeze(-1)
    d = x.unsqueeze(0) - bb.unsqueeze(-1)  # (K, N, M)
    a = (q * d / h2.unsqueeze(0) * torch.exp(-d * d / (2 * h2.unsqueeze(0)))).sum(-1)
    gram = torch.exp(-((x.unsqueeze(-1) - x.unsqueeze(-2)) ** 2) / (2 * h2.unsqueeze(-1)))
    g = 2 * torch.einsum("ni,nij,nj->n", q, gram, q)
    return a.reshape(b.shape), g.reshape(rate.shape)
