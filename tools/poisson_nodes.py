"""Regenerate the Gauss-Hermite node tables of :mod:`pwgf.poisson_kernel`.

For every bin of (τ, s) (module doc) it samples a grid of points on and inside the bin, finds at
each the smallest rule in ``pwgf.poisson_kernel.RULES`` whose error against plain sums over a wide
window (tail 1e-16, two extra standard deviations each side) is below ``TOL / 4``, and keeps the
largest over the bin; 0 where no rule is accurate (those atoms take exact sums). Prints the two
tables as Python literals. ``python tools/poisson_nodes.py`` takes two to three minutes;
``tests/test_pwgf_fast.py`` compares its output with the module when ``PWGF_SLOW_TESTS=1``.
"""

from __future__ import annotations

import math
import sys

import torch

from pwgf import poisson_kernel as pk

TOL = 2e-7 / 4
POINTS = 4  # per bin and axis, the two edges included
MAX_RATE = 3e4
S_TOP = 1 - 1e-5  # past it a bin is sampled at its smaller rates only (τ -> 0 only helps)


def _samples(lam: float) -> list[float]:
    sd = math.sqrt(lam)
    q = [-6, -4, -2, -1, 0, 1, 2, 4, 6]
    return sorted({max(0.0, round(lam + c * sd)) for c in q} | {0.0, 1.0})


def _bin_points(t_lo: float, t_hi: float, s_lo: float, s_hi: float, metric: bool):
    for i in range(POINTS):
        tau = t_lo + (t_hi - t_lo) * i / (POINTS - 1)
        for j in range(POINTS):
            # s = 1 is h = 0: the top bin is sampled up to S_TOP instead
            s = min(s_lo + (s_hi - s_lo) * j / (POINTS - 1), S_TOP)
            if tau <= 0:
                continue
            # A: τ² = 1/(h² + λ), s = λτ²; G: τ² = 1/(h² + 2λ), s = 2λτ²
            lam = s / tau**2 / (2 if metric else 1)
            h2 = (1 - s) / tau**2
            if lam <= MAX_RATE:
                yield lam, math.sqrt(h2)


def _needed(lam: float, h: float, metric: bool) -> int:
    rate = torch.tensor([lam], dtype=torch.float64)
    hh = torch.tensor([h], dtype=torch.float64)
    b = torch.tensor(_samples(lam), dtype=torch.float64).unsqueeze(-1)
    a_ref, g_ref = pk.reference_sums(rate, hh, b, tail=1e-16, margin=2.0)
    for n in pk.RULES:
        if metric:
            err = float((pk._gh_metric(rate, hh, n) - g_ref).abs() / g_ref)
        else:
            a = pk._gh_mean_grad(rate, hh, b, n)
            err = float((a - a_ref).abs().max() / a_ref.abs().max().clamp(min=1e-300))
        if err <= TOL:
            return n
    return 0


def table(metric: bool) -> list[list[int]]:
    t_edges = (0.0, *pk.TAU_EDGES)
    s_edges = (0.0, *pk.S_EDGES)
    rows = []
    for j in range(len(pk.S_EDGES)):
        row = []
        for i in range(len(pk.TAU_EDGES)):
            box = (t_edges[i], t_edges[i + 1], s_edges[j], s_edges[j + 1])
            need = [_needed(lam, h, metric) for lam, h in _bin_points(*box, metric)]
            row.append(None if not need else (0 if 0 in need else max(need)))
        # a bin whose points all lie past MAX_RATE takes the value of its right neighbour
        # (larger τ), as a smaller τ only makes the integrand smoother on the rule's scale
        for i in range(len(row) - 2, -1, -1):
            if row[i] is None:
                row[i] = row[i + 1]
        rows.append([0 if v is None else v for v in row])
    return _monotone(rows)


def _monotone(rows: list[list[int]]) -> list[list[int]]:
    """The table made non-decreasing in τ and in s (0, exact sums, counting as the largest), so
    that the bin of an atom's largest τ and s names a rule good for the whole bin below it."""
    big = max(pk.RULES) + 1
    out = [[big if v == 0 else v for v in r] for r in rows]
    for j, r in enumerate(out):
        for i in range(len(r)):
            r[i] = max(r[i], r[i - 1] if i else 0, out[j - 1][i] if j else 0)
    return [[0 if v == big else v for v in r] for r in out]


def main() -> None:
    for name, metric in (("NODES_A", False), ("NODES_G", True)):
        rows = table(metric)
        print(f"{name} = (")
        for r in rows:
            print("    (" + ", ".join(f"{v:2d}" for v in r) + "),")
        print(")")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
