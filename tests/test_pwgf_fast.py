"""pWGF's fast forms against the exact sums they replace.

* Poisson, RBF: the per-sample term A(λ, b) and the kernel metric G of
  :mod:`pwgf.poisson_kernel` against plain sums over a window wider than the truncation rule's,
  at rates 1e-3..1e4 and bandwidths on both sides of the regions where the Gauss-Hermite rule is
  used; stated tolerance 2e-7 relative (the module's docstring).
* The estimator's gradient with the fast forms against ``exact_sums=True`` (the original
  implementation), on every family, for several bandwidth rules.
* Each atom's cost depends on its own rate: one atom at 1e4 next to many at 2 costs no more
  points per atom than without it (the exact path's work is grouped by window width).
* Categorical with thousands of classes runs without a (K, B, L, C, C) tensor.
"""

from __future__ import annotations

import importlib.util
import math
import os
from pathlib import Path

import pytest
import torch
from stats import seeded_grad
from torch.distributions import Bernoulli, Independent, OneHotCategorical, Poisson

import pwgf
from pwgf import poisson_kernel as pk

RATES = [0.0, 1e-3, 0.1, 1.0, 2.0, 5.0, 30.0, 100.0, 1e3, 1e4]
TOL = 2e-7


def _bandwidths(lam: float) -> list[float]:
    sd = math.sqrt(lam)
    return sorted({0.5, 1.0, 1.5, 3.0, max(2 * sd, 1.0), max(sd, 1.0)})


def _samples(lam: float) -> torch.Tensor:
    sd = math.sqrt(lam)
    pts = {0, 1, int(lam), int(max(0.0, lam - 6 * sd)), int(lam + 2 * sd), int(lam + 6 * sd) + 1}
    return torch.tensor(sorted(pts), dtype=torch.float64)


@pytest.mark.parametrize("lam", RATES)
def test_poisson_kernel_sums_match_exact_sums(lam):
    hs = _bandwidths(lam)
    b = _samples(lam)
    rate = torch.full((len(hs),), lam, dtype=torch.float64)
    h = torch.tensor(hs, dtype=torch.float64)
    bb = b.unsqueeze(-1).expand(-1, len(hs))
    a = pk.rbf_mean_grad(rate, h, bb)
    g = pk.rbf_metric(rate, h)
    # reference: the plain sums over a window 2 standard deviations wider each side, tail 1e-16
    a_ref, g_ref = pk.reference_sums(rate, h, bb, tail=1e-16, margin=2.0)
    scale = a_ref.abs().amax(0)
    assert ((a - a_ref).abs().amax(0) <= TOL * scale).all(), (a - a_ref).abs().amax(0) / scale
    assert ((g - g_ref).abs() <= TOL * g_ref).all(), (g - g_ref).abs() / g_ref


def test_both_paths_are_exercised():
    lam = torch.tensor([1.0, 1e4, 1e4, 0.01])
    h = torch.tensor([2.0, 200.0, 0.5, 1.0])
    assert pk.fast_mean_grad_region(lam, h).tolist() == [True, True, False, True]
    assert pk.fast_metric_region(lam, h).tolist() == [True, True, False, True]


@pytest.mark.parametrize("lam", [0.0, 1e-3, 0.5, 1.0, 3.0, 10.0, 100.0, 1e4])
def test_one_plan_batches_match_exact_sums(lam):
    # pWGF's default bandwidth on a batch of nearby rates: one path for the whole batch (a single
    # rule, or the small-rate window), the common case the batch plan serves without a gather
    rate = lam * torch.linspace(0.9, 1.1, 7, dtype=torch.float64)
    h = (2 * rate.sqrt()).clamp(min=1.0)
    plan, _, _ = pk._batch_plan(rate, h, False)
    assert plan in ("gh", "small")
    assert pk._batch_plan(rate, h, True)[0] == "gh"
    gens = [torch.Generator().manual_seed(i) for i in range(3)]
    b = torch.stack([torch.poisson(rate, generator=g) for g in gens])
    a = pk.rbf_mean_grad(rate, h, b)
    g = pk.rbf_metric(rate, h)
    a_ref, g_ref = pk.reference_sums(rate, h, b, tail=1e-16, margin=2.0)
    assert ((a - a_ref).abs().amax(0) <= TOL * a_ref.abs().amax(0)).all()
    assert ((g - g_ref).abs() <= TOL * g_ref).all()


def test_random_points_match_exact_sums():
    # points of (λ, h) anywhere in the tables' range, not only where they were sampled: every
    # path (rules of all sizes, small-rate window, per-atom exact sums) in one mixed batch
    gen = torch.Generator().manual_seed(7)
    n = 300
    rate = 10 ** (torch.rand(n, generator=gen, dtype=torch.float64) * 6 - 3)  # 1e-3..1e3
    h = 10 ** (torch.rand(n, generator=gen, dtype=torch.float64) * 2.3 - 0.3)  # 0.5..100
    sd = rate.sqrt()
    z = torch.randn(3, n, generator=gen, dtype=torch.float64)
    b = (rate + 3 * z * sd).round().clamp(min=0)
    codes = pk._rule_per_atom(rate, h, False)
    small = rate <= pk.SMALL_RATE
    assert (codes == 0).any() and (codes > 0).any() and (small & (codes > 0)).any()
    a = pk.rbf_mean_grad(rate, h, b)
    g = pk.rbf_metric(rate, h)
    # the reference in groups of similar rates, each on its own common window
    order = rate.argsort()
    a_ref, g_ref = torch.empty_like(a), torch.empty_like(g)
    for idx in order.split(30):
        a_ref[:, idx], g_ref[idx] = pk.reference_sums(
            rate[idx], h[idx], b[:, idx], tail=1e-16, margin=2.0
        )
    err_a = (a - a_ref).abs().amax(0) / a_ref.abs().amax(0)
    err_g = (g - g_ref).abs() / g_ref
    assert (err_a <= TOL).all(), err_a.max()
    assert (err_g <= TOL).all(), err_g.max()


@pytest.mark.skipif(
    not os.environ.get("PWGF_SLOW_TESTS"), reason="slow (about three minutes): PWGF_SLOW_TESTS=1"
)
def test_node_tables_are_the_generated_ones():
    tools = Path(__file__).resolve().parents[1] / "tools"
    spec = importlib.util.spec_from_file_location("poisson_nodes", tools / "poisson_nodes.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert tuple(map(tuple, mod.table(False))) == pk.NODES_A
    assert tuple(map(tuple, mod.table(True))) == pk.NODES_G


def test_node_tables_are_monotone():
    for table in (pk.NODES_A, pk.NODES_G):
        big = max(pk.RULES) + 1
        t = torch.tensor([[big if v == 0 else v for v in r] for r in table])
        assert t.shape == (len(pk.S_EDGES), len(pk.TAU_EDGES))
        assert (t[:, 1:] >= t[:, :-1]).all() and (t[1:] >= t[:-1]).all()
        assert set(t.unique().tolist()) <= set(pk.RULES) | {big}


def _cost(z):
    w = torch.linspace(-1.0, 1.0, z[0].numel(), dtype=z.dtype).reshape(z.shape[1:])
    return ((z * w).sum(tuple(range(1, z.ndim))) - 0.3) ** 2 + z.reshape(z.shape[0], -1).sin().sum(
        -1
    )


CASES = {
    "bernoulli": (
        lambda p: Independent(Bernoulli(logits=p), 1),
        torch.randn(3, 5, generator=torch.Generator().manual_seed(1), dtype=torch.float64),
    ),
    "categorical": (
        lambda p: Independent(OneHotCategorical(logits=p), 1),
        torch.randn(2, 3, 6, generator=torch.Generator().manual_seed(2), dtype=torch.float64),
    ),
    "poisson": (
        lambda p: Independent(Poisson(p.exp()), 1),
        torch.log(torch.tensor([[0.0 + 1e-3, 0.3, 1.0, 2.0], [7.0, 40.0, 300.0, 1e4]]).double()),
    ),
}


@pytest.mark.parametrize("family", list(CASES))
@pytest.mark.parametrize(
    "options",
    [
        {},
        {"normalization": "raw"},
        {"bandwidth": 0.5},
        {"bandwidth": 3.0},
        {"bandwidth": "std", "min_bandwidth": 0.3},
        {"kernel": "linear"},
    ],
    ids=str,
)
def test_fast_gradient_equals_exact_sums(family, options):
    make, param = CASES[family]
    fast = pwgf.get_estimator("pwgf", **options)
    ref = pwgf.get_estimator("pwgf", exact_sums=True, **options)
    for seed in range(2):
        g_fast = seeded_grad(fast, _cost, make, param, seed, k=4)
        g_ref = seeded_grad(ref, _cost, make, param, seed, k=4)
        torch.testing.assert_close(g_fast, g_ref, rtol=1e-6, atol=1e-10)


def test_bernoulli_and_categorical_are_st_times_a_constant():
    st = pwgf.get_estimator("st")
    for family in ("bernoulli", "categorical"):
        make, param = CASES[family]
        h = 1.7
        c = math.exp(-1 / (2 * h**2)) if family == "bernoulli" else math.exp(-1 / h**2)
        const = c / (2 * h**2 * (1 - c)) if family == "bernoulli" else c / (h**2 * (1 - c))
        est = pwgf.get_estimator("pwgf", bandwidth=h)
        g = seeded_grad(est, _cost, make, param, 0, k=4)
        g_st = seeded_grad(st, _cost, make, param, 0, k=4)
        torch.testing.assert_close(g, const * g_st, rtol=1e-12, atol=0)


def test_each_poisson_atom_costs_its_own_window():
    # 1000 atoms at rate 2 with one at 1e4: the exact path (h = 0.5 keeps A exact) groups the
    # atoms by window width, so the rate-2 atoms are not padded to the wide atom's window.
    rate = torch.full((1000,), 2.0, dtype=torch.float64)
    rate[0] = 1e4
    h = torch.full_like(rate, 0.5)
    b = torch.poisson(rate.expand(2, -1), generator=torch.Generator().manual_seed(0))
    lo, hi = pwgf.truncation.poisson_bounds(rate)
    groups = pk._groups(torch.tensor([10, 10, 1400, 9]))
    assert sorted((idx.tolist(), w) for idx, w in groups) == [([0, 1, 3], 10), ([2], 1400)]
    assert len(pk._groups(torch.tensor([3, 30, 12]))) == 1
    a = pk.rbf_mean_grad(rate, h, b)
    a_ref = pk.exact_mean_grad(rate[1:], h[1:], b[:, 1:])
    torch.testing.assert_close(a[:, 1:], a_ref, rtol=1e-12, atol=0)
    g = pk.rbf_metric(rate, h)
    assert torch.isfinite(g).all() and (g > 0).all()
    assert (hi - lo)[1:].max() < 40


def test_categorical_with_thousands_of_classes_stays_small():
    logits = torch.randn(2, 3, 4096, requires_grad=True)
    est = pwgf.get_estimator("pwgf")
    dist = Independent(OneHotCategorical(logits=logits), 1)
    z = est.sample(dist, 2)
    (z * torch.randn_like(z)).sum().backward()
    assert logits.grad is not None and torch.isfinite(logits.grad).all()


def test_exact_sums_option_is_checked():
    with pytest.raises(pwgf.PWGFError, match="exact_sums"):
        pwgf.get_estimator("pwgf", exact_sums="yes")


def test_small_rate_window_covers_every_rate_below_its_grid_point():
    rates = torch.cat([torch.tensor([0.0, 1e-9]), torch.linspace(1e-4, pk.SMALL_RATE, 400)])
    _, hi = pwgf.truncation.poisson_bounds(rates.double())
    widths = torch.tensor([pk._small_width(float(r), pwgf.truncation.DEFAULT_TAIL) for r in rates])
    assert (widths >= hi.long() + 1).all()
    assert (widths <= hi.long() + 3).all()  # and not much wider
