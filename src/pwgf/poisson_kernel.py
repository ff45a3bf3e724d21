"""RBF kernel sums over the Poisson support for pWGF-MMD, at a cost independent of the rate.

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
``n``-point Gauss-Hermite rule (n = 20; 12 when every atom has h² >= 3.5 λ and λ >= 3, as
pWGF's default bandwidth gives) computes it; both integrands are even in the node, so n/2
evaluations per atom and sample, whatever λ.

Accuracy. The rule ignores the periodic copies of the integrand near ω = 2πj, of relative size
``exp(-2π² h²)`` (2.7e-9 at h = 1), and converges fast where the remaining factor is smooth,
which is where the bandwidth is not small against the spread. Measured against exact sums over a
wide window (``tests/test_pwgf_fast.py``, rates 1e-3..1e4), the relative error is below 2e-7
(typically 1e-10) in the regions

    A: (h >= 2.5 and h² >= 2.25 λ) or (λ >= 100 and h >= 1.5)
    G: h >= 1.5, or h >= 1 and (λ <= 0.3 or λ >= 30)

which hold for pWGF's default bandwidth h = max(2√λ, 1) at every rate for G and for λ >= 1.5625
for A. Outside them the sums are exact, each atom on its own window (Poisson window of
:func:`pwgf.truncation.poisson_bounds` intersected, for A, with ``|x - b| <= 8h + 1``): there
the tail left out is at most ``tail`` of the mass (times max|∂_bκ| <= 1/h for A) and the kernel
window loses below 1e-13. Those atoms are grouped by window width, so an atom's cost depends on
its own rate and bandwidth only: at most ~130 points for A; for G, ``M·(16h + 3)`` points, which
grows with √λ only for a bandwidth below 1.

Everything is computed in float64 and returned in the rate's dtype; nothing here is
differentiable (the estimator attaches A and 1/G as constants).
"""

from __future__ import annotations

import math
from functools import lru_cache

import torch
from torch import Tensor

from .truncation import DEFAULT_TAIL, poisson_bounds

GH_NODES = 20
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


def fast_mean_grad_region(rate: Tensor, h: Tensor) -> Tensor:
    """Where :func:`rbf_mean_grad` uses the Gauss-Hermite rule (bool, broadcast shape)."""
    return ((h >= 2.5) & (h * h >= 2.25 * rate)) | ((rate >= 100) & (h >= 1.5))


def fast_metric_region(rate: Tensor, h: Tensor) -> Tensor:
    """Where :func:`rbf_metric` uses the Gauss-Hermite rule (bool, broadcast shape)."""
    return (h >= 1.5) | ((h >= 1) & ((rate <= 0.3) | (rate >= 30)))


# -- the Gauss-Hermite forms ---------------------------------------------------------------------
#: elements per temporary in the rules' inner loops: small enough to stay in cache and to be
#: reused by the allocator instead of mapped and faulted in afresh for every operation
CHUNK = 1 << 14


def _chunked(fn, n_atoms: int, per_atom: int, *arrays: Tensor, chunk: int = CHUNK) -> Tensor:
    """``fn`` over slices of the last (atom) dimension of ``arrays``, concatenated."""
    step = max(1, chunk // max(per_atom, 1))
    if n_atoms <= step:
        return fn(*arrays)
    parts = [fn(*(a[..., i : i + step] for a in arrays)) for i in range(0, n_atoms, step)]
    return torch.cat(parts, -1)


def _gh_mean_grad(lam: Tensor, h: Tensor, b: Tensor, n: int = GH_NODES) -> Tensor:
    """A(λ, b) by the shifted-contour rule; lam, h: (N,), b: (K, N), float64."""
    t, w = _rule(n, lam.device)

    def block(lam: Tensor, h: Tensor, b: Tensor) -> Tensor:
        # The node axis goes first, (n, K, N), so that every broadcast keeps the atoms contiguous
        # in the last dimension (a stride-0 last dimension is many times slower on CPU); terms
        # that depend on the node only, or on the sample only, are formed before broadcasting.
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

    return _chunked(block, lam.shape[-1], t.numel() * b.shape[0], lam, h, b)


def _gh_metric(lam: Tensor, h: Tensor, n: int = GH_NODES) -> Tensor:
    """G(λ) by the rule with the Gaussian exp(-(h² + 2λ)ω²/2) taken out; lam, h: (N,)."""
    t, w = _rule(n, lam.device)

    def block(lam: Tensor, h: Tensor) -> Tensor:
        tau = (h * h + 2 * lam).rsqrt()
        om = t.unsqueeze(-1) * tau  # (n, N)
        s2 = (om / 2).sin_().square_()
        r = (om * om).sub_(4 * s2).mul_(lam).exp_().mul_(s2).mul_(4)
        return 2 * h * tau * torch.tensordot(w, r, dims=1)

    return _chunked(block, lam.shape[-1], t.numel(), lam, h)


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


def rbf_mean_grad(rate: Tensor, h: Tensor, b: Tensor, tail: float = DEFAULT_TAIL) -> Tensor:
    """``A = ∂_λ E_{x~Pois(λ)}[∂_b κ(x, b)]`` for the RBF kernel, per sample and atom.

    rate: ``atom_shape``; h: broadcastable to it; b: ``(K, *atom_shape)``. Returns b's shape in
    the rate's dtype, detached.
    """
    lam, hh = _flat(rate, h)
    bb = b.detach().double().reshape(b.shape[0], -1)
    fast = fast_mean_grad_region(lam, hh)
    n_fast = int(fast.sum())  # one host read: which atoms take which path
    if n_fast == lam.numel():
        # where the bandwidth is at least ~2 standard deviations (pWGF's default) 12 nodes are
        # as accurate as 20 elsewhere (below 5e-8; 1e-10 from λ = 5 on)
        wide = bool(((hh * hh >= 3.5 * lam) & (lam >= 3)).all())
        out = _gh_mean_grad(lam, hh, bb, 12 if wide else GH_NODES)
    elif n_fast == 0:
        out = exact_mean_grad(lam, hh, bb, tail)
    else:
        out = torch.empty_like(bb)
        f_idx = torch.nonzero(fast).squeeze(-1)
        s_idx = torch.nonzero(~fast).squeeze(-1)
        if f_idx.numel():
            out[:, f_idx] = _gh_mean_grad(lam[f_idx], hh[f_idx], bb[:, f_idx])
        out[:, s_idx] = exact_mean_grad(lam[s_idx], hh[s_idx], bb[:, s_idx], tail)
    return out.reshape(b.shape).to(rate.dtype)


def rbf_metric(rate: Tensor, h: Tensor, tail: float = DEFAULT_TAIL) -> Tensor:
    """The kernel metric ``G`` of ``Poisson(rate)`` for the RBF kernel, per atom, detached."""
    lam, hh = _flat(rate, h)
    fast = fast_metric_region(lam, hh)
    n_fast = int(fast.sum())
    if n_fast == lam.numel():
        wide = bool(((hh * hh >= 3.5 * lam) & (lam >= 3)).all())
        out = _gh_metric(lam, hh, 12 if wide else GH_NODES)
    elif n_fast == 0:
        out = exact_metric(lam, hh, tail)
    else:
        out = torch.empty_like(lam)
        f_idx = torch.nonzero(fast).squeeze(-1)
        s_idx = torch.nonzero(~fast).squeeze(-1)
        if f_idx.numel():
            out[f_idx] = _gh_metric(lam[f_idx], hh[f_idx])
        out[s_idx] = exact_metric(lam[s_idx], hh[s_idx], tail)
    return out.reshape(rate.shape).to(rate.dtype)


def reference_metric(rate: Tensor, h: Tensor, tail: float = DEFAULT_TAIL) -> Tensor:
    """G by the plain double sum over the common window (the original implementation)."""
    b = torch.zeros((1, *rate.shape), dtype=rate.dtype, device=rate.device)
    return reference_sums(rate, h, b, tail)[1].to(rate.dtype)


def reference_sums(
    rate: Tensor, h: Tensor, b: Tensor, tail: float = DEFAULT_TAIL, margin: float = 0.0
) -> tuple[Tensor, Tensor]:
    """(A, G) by plain sums over one window common to all atoms (the original implementation,
    kept as the reference): the window of :func:`pwgf.truncation.poisson_window`, widened by
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
