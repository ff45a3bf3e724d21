"""Chebyshev tables of pWGF-MMD's Poisson sums for one bandwidth rule: a few polynomial
evaluations per atom, whatever the rate.

pWGF's bandwidth is a function of the rate, ``h = H(λ)``: a constant, or ``max(c√λ, m)``
(``pwgf.estimators.pwgf_mmd``). The kernel metric ``G(λ)`` is then a function of λ alone and the
per-sample term ``A(λ, b)`` (both defined in ``pwgf.poisson_kernel``) one of λ and the
integer sample b, both smooth in λ. A ``PoissonTable`` holds A, G and the estimator's
``A/G`` for one rule, built once from exact sums, in two regions:

* **cells**, ``λ < λ_top``: ``[0, e_0)`` and cells uniform in ``u(λ) = ln λ + 2√λ``, ``CELL_STEP``
  apart (ratio e^0.2 at small rates; a tenth of a standard deviation of the sample, in √λ, at
  large ones), with the rule's kink ``(m/c)²`` on an edge so that H is smooth inside every cell.
  Per cell, G and, for each integer b with ``|b - λ| <= 8(√λ + 1)`` somewhere in the cell,
  ``A(·, b)`` and ``A(·, b)/G``, as interpolants in λ at ``J`` Chebyshev nodes (J = 6 for
  pWGF's rules). ``λ_top`` is the first edge at or above 32 (64 without a far table).
* **far**, ``λ >= λ_top``, for ``h = c√λ`` with ``c >= 1``: with ``ε = λ^(-1/2)``,
  ``σ² = (1 + c²)λ``, ``σ_G² = (2 + c²)λ`` and ``t = (b - λ)/σ``,

      A = (h/σ³) exp(-t²/2) R(ε, t),        G = (h/σ_G³) S(ε),

  with R and S smooth down to ε = 0, where they take their Gaussian limits (the lattice terms
  are of relative size exp(-2π²h²)). As in an Edgeworth series, R's term in ε^k has the parity
  of k in t and S is even in ε, so ``R = E(ε², t²) + εt O(ε², t²)``: E, O (and R/S alike) as
  interpolants at (J, L) = (4, 8) Chebyshev nodes in ε² on [0, 1/λ_top] and in t² on [0, T²],
  ``T = 8(1 + λ_top^(-1/2))/√(1 + c²)`` (the cells' range of b).
* **far metric**, ``λ >= λ_top``, for every rule: ``G = (h/σ_G³) S`` with ``σ_G² = 2λ + h²``
  and S smooth in ε² (4 nodes for pWGF's rules). It needs no range of b, so a fixed bandwidth,
  or ``c < 1``, whose A above ``λ_top`` takes the general path, still takes G from here.

The interpolants are kept in the power basis and evaluated by Horner's rule on vectors of
atoms, so no temporary is larger than a few numbers per atom. Each is checked when it is built
against the exact sums at points between its nodes and at its ends (for the far table also at
λ = 1e6 and 1e8), to ``CHECK`` = 2.5e-8 relative to the atom's scale (max over b of |A|, and
G), at the lowest degree of ``CELL_DEGREES`` / ``FAR_DEGREES`` / ``FAR_METRIC_DEGREES`` that
passes; a table that fails at every degree is left out. Its atoms, samples outside a table's
range of b (probability below 1e-13 per draw), and rates at or above ``λ_top`` without a far
table take the general path of ``pwgf.poisson_kernel``. ``tests/test_poisson_table.py`` checks every
region against exact sums to 2e-7 (the stated accuracy is ``TOL`` = 5e-8).

Exact sums are over each rate's Poisson window with tail mass ``tail`` left out (the
estimator's ``tail``): for the cells by ``pwgf.poisson_kernel.exact_mean_grad`` and
``pwgf.poisson_kernel.exact_metric``; for the far table A by direct sums at real-valued b
and G as ``2 Σ_d r(d) κ(d)``, r the autocorrelation of ``∂_λ p`` (by FFT). A table takes about
0.5 s to build and is cached per rule, tail and device; each call reads the host twice (which
region, and whether any atom needs the general path).
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch
from numpy.polynomial import chebyshev
from torch import Tensor

from . import poisson_kernel
from .errors import PWGFError
from .truncation import DEFAULT_TAIL, poisson_bounds

#: the stated relative accuracy (the module doc), and the one each interpolant is checked to at
#: points between its nodes, leaving room for the error between those points
TOL = 5e-8
CHECK = TOL / 2
#: degrees (nodes) tried, lowest first: per cell in λ; far table in (ε, t)
CELL_DEGREES = (6, 8, 10)
FAR_DEGREES = ((4, 8), (6, 12), (8, 16))
FAR_METRIC_DEGREES = (4, 6, 8, 12)
#: the far table starts at the first cell edge at or above this (or above the rule's kink)
FAR_RATE = 32.0
#: cells are uniform in u(λ) = ln λ + 2√λ, this far apart: ratio e^0.2 at small rates, a tenth
#: of a standard deviation in √λ (the sample's scale) at large ones
CELL_STEP = 0.2
#: the far table is for h = c√λ with c at least this (below it, no degree on offer passes the
#: checks: the bandwidth is narrow against the spread, and R spans too wide a range of t)
FAR_MIN_MULT = 1.0
#: without a far table the cells end here (the general path above)
CONST_TOP = 64.0
#: the first cell is [0, e_0) with e_0 the first edge at or below this and the kink
FIRST_EDGE = 2.0**-6
#: at most this many cells (a kink far below FIRST_EDGE is then inside the first one)
MAX_CELLS = 120
#: a table covers samples b with |b - λ| <= REACH (√λ + 1)
REACH = 8.0
#: atoms per block on CPU: temporaries of a few per atom stay in cache
BLOCK = 16384


@dataclass(frozen=True)
class Bandwidth:
    """``h = const``, or ``h = max(mult · √λ, floor)``: pWGF's bandwidth rules on Poisson."""

    mult: float | None = None
    floor: float = 1.0
    const: float | None = None

    def __post_init__(self) -> None:
        if (self.mult is None) == (self.const is None):
            raise PWGFError(f"Bandwidth: give mult (and floor) or const, one of the two: {self}")
        for name in ("mult", "floor", "const"):
            v = getattr(self, name)
            if v is not None and not (math.isfinite(v) and v > 0):
                raise PWGFError(f"Bandwidth: {name} must be positive and finite, got {v}")

    def __call__(self, lam: Tensor) -> Tensor:
        if self.const is not None:
            return torch.full_like(lam, self.const)
        return (self.mult * lam.sqrt()).clamp(min=self.floor)

    @property
    def kink(self) -> float | None:
        """The rate where a rule's floor stops binding, (floor/mult)²."""
        return None if self.const is not None else (self.floor / self.mult) ** 2


# -- exact sums, for building and checking -------------------------------------------------------
def _dpmf_window(lam: float, tail: float) -> tuple[Tensor, Tensor]:
    """Points x of the Poisson window and ``∂_λ p(x) = p(x)(x - λ)/λ`` there. The pmf by its
    ratios ``p(x)/p(x - 1) = λ/x`` from the mode, normalised on the window: lgamma's rounding,
    of relative size λ·1e-16 in p, would reach the tolerance at λ ~ 1e8."""
    lo, hi = poisson_bounds(torch.tensor([lam], dtype=torch.float64), tail)
    x = torch.arange(int(lo), int(hi) + 2, dtype=torch.float64)
    if lam == 0.0:
        return x, (x == 1).double() - (x == 0).double()
    step = torch.log1p((lam - x) / x.clamp(min=1)).where(x > 0, 0.0)  # log(λ/x)
    log_p = step.cumsum(0)
    mode = min(max(math.floor(lam) - int(lo), 0), x.numel() - 1)
    p = (log_p - log_p[mode]).exp()
    p = p / p.sum()
    return x, p * (x - lam) / lam


def exact_mean_grad_at(lam: float, h: float, b: Tensor, tail: float) -> Tensor:
    """``A(λ, b) = Σ_x ∂_λp(x) ∂_bκ(x, b)`` at one rate for real-valued b (1-D), float64."""
    x, q = _dpmf_window(lam, tail)
    d = x - b.unsqueeze(-1)
    return (q * d * torch.exp(-d * d / (2 * h * h))).sum(-1) / (h * h)


def exact_metric_at(lam: float, h: float, tail: float) -> float:
    """``G(λ) = 2 Σ_d r(d) κ(d)``, r the autocorrelation of ∂_λp on the window (by FFT)."""
    _, q = _dpmf_window(lam, tail)
    n = 1 << (2 * q.numel()).bit_length()
    f = torch.fft.rfft(q, n)
    r = torch.fft.irfft(f.real**2 + f.imag**2, n)[: q.numel()]
    d = torch.arange(q.numel(), dtype=torch.float64)
    k = torch.exp(-d * d / (2 * h * h))
    return float(2 * (r[0] + 2 * (r[1:] * k[1:]).sum()))


# -- Chebyshev interpolation ---------------------------------------------------------------------
def _nodes(n: int) -> np.ndarray:
    """First-kind Chebyshev nodes on [-1, 1]."""
    return np.cos(np.pi * (np.arange(n) + 0.5) / n)


def _checkpoints(n: int) -> np.ndarray:
    """Extrema of T_n: halfway (in angle) between the n nodes, and the ends."""
    return np.cos(np.pi * np.arange(n + 1) / n)


@lru_cache(maxsize=16)
def _to_power(n: int) -> np.ndarray:
    """(n, n): values at the n first-kind nodes -> power coefficients of their interpolant."""
    x = _nodes(n)
    t = np.cos(np.outer(np.arange(n), np.arccos(x)))  # T_j(x_k)
    cheb = 2 / n * t
    cheb[0] /= 2  # Chebyshev coefficients = cheb @ values (discrete orthogonality)
    power = np.zeros((n, n))  # column j: T_j in the power basis
    for j in range(n):
        c = chebyshev.cheb2poly(np.eye(n)[j])
        power[: c.size, j] = c
    return power @ cheb


def _power_coefficients(values: np.ndarray, axis: int) -> np.ndarray:
    """Power-basis coefficients (in x on [-1, 1]) of the interpolant through ``values`` at the
    first-kind nodes along ``axis``."""
    v = np.moveaxis(values, axis, 0)
    out = np.tensordot(_to_power(v.shape[0]), v, axes=1)
    return np.moveaxis(out, 0, axis)


def _horner(coef: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Σ_j coef[..., j] x^j, coef's last axis the power."""
    out = np.zeros(np.broadcast_shapes(coef.shape[:-1], x.shape))
    for j in range(coef.shape[-1] - 1, -1, -1):
        out = out * x + coef[..., j]
    return out


# -- the table -----------------------------------------------------------------------------------
@dataclass
class _Cells:
    edges: np.ndarray  # (C + 1,) cell edges, edges[0] = 0
    anchor: float
    first: int  # u(edges[1]) = u(anchor) + first · CELL_STEP
    coef_a: np.ndarray  # (rows, J) power coefficients of A(·, b) per (cell, b)
    coef_r: np.ndarray  # (rows, J) the same of A/G
    coef_g: np.ndarray  # (C, J)
    row0: np.ndarray  # (C,) row of b = 0 in coef_a (may be negative)
    b_lo: np.ndarray  # (C,) samples covered; b_lo > b_hi for a cell left out
    b_hi: np.ndarray


def _u(lam: float) -> float:
    """The coordinate the cells are uniform in: ``ln λ + 2√λ``."""
    return math.log(lam) + 2 * math.sqrt(lam)


def _u_inverse(v: float) -> float:
    lo, hi = -1000.0, 30.0  # ln λ
    for _ in range(120):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if _u(math.exp(mid)) < v else (lo, mid)
    return math.exp((lo + hi) / 2)


def _edges(anchor: float, top: float) -> tuple[np.ndarray, int]:
    """Cell edges ``[0, e_first, ..., e_last]`` with ``u(e_j) = u(anchor) + j·CELL_STEP``,
    ``e_first <= min(FIRST_EDGE, anchor)`` and ``e_last`` the first at or above ``top``."""
    u0 = _u(anchor)
    first = min(math.floor((_u(FIRST_EDGE) - u0) / CELL_STEP), 0)
    last = math.ceil((_u(top) - u0) / CELL_STEP - 1e-9)
    first = max(first, last - MAX_CELLS)
    inner = [anchor if j == 0 else _u_inverse(u0 + j * CELL_STEP) for j in range(first, last + 1)]
    return np.array([0.0, *inner]), first


def _build_cells(rule: Bandwidth, top: float, tail: float) -> _Cells:
    anchor = rule.kink or 1.0
    edges, first = _edges(anchor, top)
    rows_a, rows_r, coef_g, row0, b_lo, b_hi = [], [], [], [], [], []
    n_rows = 0
    for lo, hi in itertools.pairwise(edges):
        blo = max(0, math.floor(lo - REACH * (math.sqrt(lo) + 1)))
        bhi = math.ceil(hi + REACH * (math.sqrt(hi) + 1))
        b = torch.arange(blo, bhi + 1, dtype=torch.float64)
        fit = _fit_cell(rule, lo, hi, b, tail)
        if fit is None:
            ca = cr = np.zeros((1, CELL_DEGREES[-1]))
            cg = np.zeros(CELL_DEGREES[-1])
            blo, bhi = 1, 0
        else:
            ca, cr, cg = fit
        rows_a.append(ca)
        rows_r.append(cr)
        coef_g.append(cg)
        row0.append(n_rows - blo)
        b_lo.append(blo)
        b_hi.append(bhi)
        n_rows += ca.shape[0]
    j = max(c.shape[-1] for c in coef_g)

    def pad(c: np.ndarray) -> np.ndarray:
        return np.pad(c, [(0, 0)] * (c.ndim - 1) + [(0, j - c.shape[-1])])

    return _Cells(
        edges=edges,
        anchor=anchor,
        first=first,
        coef_a=np.concatenate([pad(c) for c in rows_a]),
        coef_r=np.concatenate([pad(c) for c in rows_r]),
        coef_g=np.stack([pad(c) for c in coef_g]),
        row0=np.array(row0),
        b_lo=np.array(b_lo),
        b_hi=np.array(b_hi),
    )


def _cell_values(
    rule: Bandwidth, lam: np.ndarray, b: Tensor, tail: float
) -> tuple[np.ndarray, np.ndarray]:
    """Exact A (points, b) and G (points,) at the rates ``lam``."""
    lam_t = torch.from_numpy(lam)
    h = rule(lam_t)
    n, nb = lam.size, b.numel()
    a = poisson_kernel.exact_mean_grad(
        lam_t.repeat_interleave(nb), h.repeat_interleave(nb), b.repeat(n).unsqueeze(0), tail
    ).view(n, nb)
    return a.numpy(), poisson_kernel.exact_metric(lam_t, h, tail).numpy()


def _fit_cell(
    rule: Bandwidth, lo: float, hi: float, b: Tensor, tail: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """Power coefficients in the cell's x of A (b, n), A/G (b, n) and G (n,), at the lowest
    degree whose checks pass; None if none does."""
    check = lo + (_checkpoints(CELL_DEGREES[-1] + 1) + 1) / 2 * (hi - lo)
    a_chk, g_chk = _cell_values(rule, check, b, tail)
    r_chk = a_chk / g_chk[:, None]
    x_chk = (check - lo) / (hi - lo) * 2 - 1
    for n in CELL_DEGREES:
        lam = lo + (_nodes(n) + 1) / 2 * (hi - lo)
        a, g = _cell_values(rule, lam, b, tail)
        ca = _power_coefficients(a, 0).T
        cr = _power_coefficients(a / g[:, None], 0).T
        cg = _power_coefficients(g, 0)
        if (
            _close(_horner(ca[None], x_chk[:, None]), a_chk)
            and _close(_horner(cr[None], x_chk[:, None]), r_chk)
            and _close(_horner(cg, x_chk)[:, None], g_chk[:, None])
        ):
            return ca, cr, cg
    return None


def _close(fit: np.ndarray, exact: np.ndarray, weight: np.ndarray | float = 1.0) -> bool:
    """Whether ``fit`` is within CHECK of ``exact`` (points, b) relative to each point's scale,
    max over b of |exact · weight|, with the error weighted alike."""
    scale = np.abs(exact * weight).max(-1, keepdims=True)
    return bool((np.abs(fit - exact) * weight <= CHECK * scale).all())


@dataclass
class _Far:
    mult: float
    t_max: float
    coef: dict[str, np.ndarray]  # "a": R, "r": R/S; (2L, J): E's then O's power coefficients


def _far_values(
    c: float, eps: np.ndarray, t: np.ndarray, tail: float
) -> tuple[np.ndarray, np.ndarray]:
    """R (ε, t) and S (ε,) from exact sums."""
    r = np.empty((eps.size, t.size))
    s = np.empty(eps.size)
    for i, e in enumerate(eps):
        lam = float(e) ** -2
        h, sig = c * math.sqrt(lam), math.sqrt((1 + c * c) * lam)
        sig_g = math.sqrt((2 + c * c) * lam)
        b = torch.from_numpy(lam + t * sig)
        a = exact_mean_grad_at(lam, h, b, tail).numpy()
        r[i] = a * sig**3 / h * np.exp(t * t / 2)
        s[i] = exact_metric_at(lam, h, tail) * sig_g**3 / h
    return r, s


def _build_far(rule: Bandwidth, start: float, tail: float) -> _Far | None:
    """The far table from ``start``: ``R = E(ε², t²) + εt O(ε², t²)`` and R/S alike, E and O
    polynomials of degree (J - 1, L - 1) in ``x_u = 2ε²·start - 1`` and ``x_v = 2t²/T² - 1``
    (the Edgeworth structure: the term in ε^k has the parity of k in t). S, exact here, is the
    far metric's."""
    c = rule.mult
    u_max = 1 / start
    t_max = REACH * (1 + u_max**0.5) / math.sqrt(1 + c * c)
    nj, nl = FAR_DEGREES[-1]
    # the checks: between the nodes and at the ends in ε² and t (not ε = 0: λ = ∞), and rows
    # at λ = 1e6 and 1e8
    u_chk = np.concatenate([(_checkpoints(nj + 1)[:-1] + 1) / 2 * u_max, [1e-6, 1e-8]])
    t_chk = _checkpoints(2 * nl + 1) * t_max
    r_chk, s_chk = _far_values(c, np.sqrt(u_chk), t_chk, tail)
    gauss = np.exp(-(t_chk**2) / 2)
    xu_chk, xv_chk = u_chk / u_max * 2 - 1, t_chk**2 / t_max**2 * 2 - 1
    odd = np.sqrt(u_chk)[:, None] * t_chk

    def fit(e: np.ndarray, o: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        ce, co = (_power_coefficients(_power_coefficients(v, 0), 1) for v in (e, o))
        ev = [
            _horner(_horner(np.moveaxis(x, 0, -1)[None], xu_chk[:, None])[:, None, :], xv_chk)
            for x in (ce, co)
        ]
        return np.concatenate([ce.T, co.T]), ev[0] + odd * ev[1]

    for nj, nl in FAR_DEGREES:
        u = (_nodes(nj) + 1) / 2 * u_max
        t = np.sqrt((_nodes(nl) + 1) / 2) * t_max
        r_plus, s = _far_values(c, np.sqrt(u), t, tail)
        r_minus, _ = _far_values(c, np.sqrt(u), -t, tail)
        e, o = (r_plus + r_minus) / 2, (r_plus - r_minus) / (2 * np.sqrt(u)[:, None] * t)
        coef_a, fit_a = fit(e, o)
        coef_r, fit_r = fit(e / s[:, None], o / s[:, None])
        if _close(fit_a, r_chk, gauss) and _close(fit_r, r_chk / s_chk[:, None], gauss):
            # (A/(h/σ³) and its ratio to S, each weighted by the Gaussian: A's own scale)
            return _Far(mult=c, t_max=t_max, coef={"a": coef_a, "r": coef_r})
    return None


def _build_far_metric(rule: Bandwidth, start: float, tail: float) -> np.ndarray | None:
    """Power coefficients in ``x_u = 2ε²λ_top - 1`` of ``S = G σ_G³/h``, ``σ_G² = 2λ + h²``,
    for every rule (G needs no range of b: a fixed bandwidth has this table, not the 2-D one)."""

    def values(u: np.ndarray) -> np.ndarray:
        lam = 1 / u
        h = rule(torch.from_numpy(lam)).numpy()
        pairs = zip(lam.tolist(), h.tolist(), strict=True)
        g = np.array([exact_metric_at(v, w, tail) for v, w in pairs])
        return g * (2 * lam + h * h) ** 1.5 / h

    u_max = 1 / start
    u_chk = np.concatenate(
        [(_checkpoints(FAR_METRIC_DEGREES[-1] + 1)[:-1] + 1) / 2 * u_max, [1e-6, 1e-8]]
    )
    s_chk = values(u_chk)
    for n in FAR_METRIC_DEGREES:
        coef = _power_coefficients(values((_nodes(n) + 1) / 2 * u_max), 0)
        if _close(_horner(coef, u_chk / u_max * 2 - 1)[:, None], s_chk[:, None]):
            return coef
    return None


class PoissonTable:
    """A, G and A/G of pWGF-MMD on ``Poisson(λ)`` with the RBF kernel for one bandwidth rule
    (module doc). ``ratio`` is what the estimator needs, ``A/G``; ``mean_grad`` and
    ``metric`` are A and G."""

    def __init__(self, rule: Bandwidth, tail: float = DEFAULT_TAIL, device=None) -> None:
        self.rule, self.tail = rule, tail
        device = torch.device("cpu") if device is None else torch.device(device)
        kink = rule.kink
        self.far = None
        if kink is not None and rule.mult >= FAR_MIN_MULT:
            # the far table starts on an edge of the cells, at or above the kink
            top = float(_edges(kink, max(FAR_RATE, kink))[0][-1])
            self.far = _build_far(rule, top, tail)
        else:
            top = float(_edges(kink or 1.0, max(CONST_TOP, kink or 0.0))[0][-1])
        self.cells = _build_cells(rule, top, tail)
        self.far_metric = _build_far_metric(rule, top, tail)
        self.top = top

        def f64(a):
            return torch.tensor(np.ascontiguousarray(a), dtype=torch.float64, device=device)

        def i64(a):
            return torch.tensor(np.ascontiguousarray(a), dtype=torch.long, device=device)

        # One table of coefficient rows: a zero row, A's rows cell by cell, A/G's the same way,
        # a row of G per cell, a zero row; ``owner`` names each A row's cell (-1 elsewhere), so
        # that a sample outside its cell's range lands on a row that is not its cell's. Per-cell
        # arrays have one more entry, "no cell", for rates at or above the cells' top.
        cl = self.cells
        n_cells = len(cl.edges) - 1
        self._n_a = n_a = cl.coef_a.shape[0]
        zero = np.zeros((1, cl.coef_a.shape[1]))
        self._coef = f64(np.concatenate([zero, cl.coef_a, cl.coef_r, cl.coef_g, zero]))
        owner = np.full(n_a + 2, -1)  # the zero rows and A's; a sample's row is clamped to these
        start = 1 + cl.row0 + cl.b_lo
        for c in range(n_cells):
            owner[start[c] : start[c] + max(cl.b_hi[c] - cl.b_lo[c] + 1, 0)] = c
        self._owner = i64(owner)
        width = np.diff(cl.edges)
        self._scale = f64(np.append(2 / width, 0.0))
        self._shift = f64(np.append(-2 * cl.edges[:-1] / width - 1, 0.0))
        self._row0 = i64(np.append(1 + cl.row0, 0))
        self._g_row = i64(np.append(1 + 2 * n_a + np.arange(n_cells), 0))
        self._n_cells = n_cells
        self._held = torch.tensor([*(cl.b_lo <= cl.b_hi), False], device=device)  # cells kept
        if self.far is not None:
            far = self.far
            self._far = {k: f64(v) for k, v in far.coef.items()}  # (2L, J)
            c2 = far.mult**2
            # A = (h/σ³) e^(-t²/2) R = ε² c (1 + c²)^(-3/2) e^(-t²/2) R;
            # A/G = (σ_G/σ)³ e^(-t²/2) R/S
            self._far_pref = {"a": far.mult * (1 + c2) ** -1.5, "r": ((2 + c2) / (1 + c2)) ** 1.5}
        self._far_metric = None if self.far_metric is None else f64(self.far_metric)

    # -- the cells -------------------------------------------------------------------------------
    def _cell_index(self, lam: Tensor) -> Tensor:
        """Each rate's cell; ``n_cells`` ("no cell") at or above the top (NaN: cell 0)."""
        cl = self.cells
        u = torch.add(lam.clamp(min=1e-300).log(), lam.sqrt(), alpha=2)
        # truncation is the floor where it matters: negative indices are clamped to 0 anyway
        k = u.mul_(1 / CELL_STEP).sub_(_u(cl.anchor) / CELL_STEP + cl.first - 1).long()
        return k.clamp_(0, self._n_cells)

    def _cells(self, lam: Tensor, b: Tensor | None, kind: str) -> tuple[Tensor, Tensor]:
        """The cells' polynomial of ``kind`` ("a", "r": per sample, b (K, n); "g": per atom) and
        whether a cell holds it: b in its cell's range, the cell kept, the rate below the top."""
        cell = self._cell_index(lam)
        x = torch.addcmul(self._shift.index_select(0, cell), lam, self._scale.index_select(0, cell))
        if kind == "g":
            row, ok = self._g_row.index_select(0, cell), self._held.index_select(0, cell)
        else:
            row = (self._row0.index_select(0, cell) + b.long()).clamp_(0, self._owner.numel() - 1)
            ok = self._owner.index_select(0, row.reshape(-1)).view_as(row) == cell
            if kind == "r":
                row = row + self._n_a
        c = self._coef.index_select(0, row.reshape(-1)).view(*row.shape, self._coef.shape[1])
        p = c[..., -1]
        for j in range(c.shape[-1] - 2, -1, -1):
            p = torch.addcmul(c[..., j], p, x)
        return p, ok

    # -- the far table ---------------------------------------------------------------------------
    def _far_powers(self, lam: Tensor, n: int) -> tuple[Tensor, Tensor]:
        """ε² = 1/λ and the first n powers of its coordinate x_u on [-1, 1], (n, atoms)."""
        u = lam.clamp(min=self.top).reciprocal()
        pu = torch.empty((n, *u.shape), dtype=u.dtype, device=u.device)
        pu[0] = 1
        torch.mul(u, 2 * self.top, out=pu[1]).sub_(1)
        for j in range(2, n):
            torch.mul(pu[j - 1], pu[1], out=pu[j])
        return u, pu

    def _far_term(self, lam: Tensor, b: Tensor | None, kind: str) -> tuple[Tensor, Tensor]:
        if kind == "g":  # G = (h/σ_G³) S
            u, pu = self._far_powers(lam, self._far_metric.numel())
            h = self.rule(lam.clamp(min=self.top))
            g = (self._far_metric @ pu).mul_(h).mul_((2 * lam + h * h).pow_(-1.5))
            return g, torch.ones_like(g, dtype=torch.bool)
        far = self.far
        u, pu = self._far_powers(lam, self._far[kind].shape[1])
        m = self._far[kind] @ pu  # (2L, n): E's and O's coefficients in x_v at each atom's ε
        eps = u.sqrt()
        t = (b - lam).mul_(eps * (1 + far.mult**2) ** -0.5)
        t2 = t.square()
        xv = t2 * (2 / far.t_max**2) - 1
        half = m.shape[0] // 2
        e, o = m[half - 1].expand_as(xv), m[-1].expand_as(xv)
        for j in range(half - 2, -1, -1):
            e = torch.addcmul(m[j], e, xv)
            o = torch.addcmul(m[half + j], o, xv)
        p = torch.addcmul(e, o, t.mul_(eps))  # R = E + εt O
        p = p.mul_(torch.exp(t2.mul_(-0.5))).mul_(self._far_pref[kind])
        return (p.mul_(u) if kind == "a" else p), xv <= 1

    # -- evaluation ------------------------------------------------------------------------------
    def _evaluate(self, lam: Tensor, b: Tensor | None, kind: str) -> tuple[Tensor, Tensor]:
        """``kind`` over blocks of atoms, each by its region's path (both, and a choice, in a
        block with atoms in both)."""
        n = lam.numel()
        has_far = self._far_metric is not None if kind == "g" else self.far is not None
        far = lam >= self.top if has_far else None
        n_far = 0 if far is None else int(far.sum())  # host read: which path
        step = BLOCK if lam.device.type == "cpu" else max(n, 1)
        parts = []
        for i in range(0, max(n, 1), step):
            s = slice(i, i + step)
            bs = None if b is None else b[:, s]
            if n_far == 0:
                parts.append(self._cells(lam[s], bs, kind))
            elif n_far == n:
                parts.append(self._far_term(lam[s], bs, kind))
            else:
                pc, okc = self._cells(lam[s], bs, kind)
                pf, okf = self._far_term(lam[s], bs, kind)
                f = far[s]
                parts.append((pc.where(~f, pf), okc.where(~f, okf)))
        if len(parts) == 1:
            return parts[0]
        return torch.cat([q[0] for q in parts], -1), torch.cat([q[1] for q in parts], -1)

    def _general(self, lam: Tensor, b: Tensor, kind: str) -> Tensor:
        """The general path of ``pwgf.poisson_kernel``, for atoms no table holds."""
        h = self.rule(lam)
        if kind == "g":
            return poisson_kernel.rbf_metric(lam, h, self.tail)
        a = poisson_kernel.rbf_mean_grad(lam, h, b, self.tail)
        return a if kind == "a" else a / self._term(lam, None, "g")  # G from a table if held

    # Eager even inside a caller's torch.compile: the path is chosen by host reads, which would
    # be graph breaks with a warning each; a disabled call is one silent break.
    @torch.compiler.disable
    def _term(self, rate: Tensor, b: Tensor | None, kind: str) -> Tensor:
        lam = rate.detach().double().reshape(-1)
        bb = None if b is None else b.detach().double().reshape(b.shape[0], -1)
        p, ok = self._evaluate(lam, bb, kind)
        # atoms no table holds (a cell left out, a sample out of range, a rate above the cells
        # without a far table) take the general path; a host read says whether there are any
        missing = ~(ok if b is None else ok.all(0))
        if missing.any():
            idx = torch.nonzero(missing).squeeze(-1)
            if b is None:
                p[idx] = self._general(lam[idx], None, kind)
            else:
                p[:, idx] = self._general(lam[idx], bb[:, idx], kind)
        shape = rate.shape if b is None else b.shape
        return p.reshape(shape).to(rate.dtype)

    def ratio(self, rate: Tensor, b: Tensor) -> Tensor:
        """``A(λ, b) / G(λ)`` for ``rate`` (any shape) and samples b, ``(K, *rate.shape)``;
        detached, in the rate's dtype."""
        return self._term(rate, b, "r")

    def mean_grad(self, rate: Tensor, b: Tensor) -> Tensor:
        """``A(λ, b)``, as ``ratio``."""
        return self._term(rate, b, "a")

    def metric(self, rate: Tensor) -> Tensor:
        """``G(λ)`` for ``rate`` (any shape); detached, in the rate's dtype."""
        return self._term(rate, None, "g")


@lru_cache(maxsize=32)
def _cached(rule: Bandwidth, tail: float, device: str) -> PoissonTable:
    return PoissonTable(rule, tail, device)


@torch.compiler.disable  # built eagerly (numpy, once) even when the caller is compiled
def table(rule: Bandwidth, tail: float = DEFAULT_TAIL, device=None) -> PoissonTable:
    """The ``PoissonTable`` of ``rule`` on ``device``, built on first use and cached."""
    return _cached(rule, float(tail), str(torch.device("cpu" if device is None else device)))
