"""pWGF's Poisson tables (``pwgf.poisson_table``) against exact sums.

* A, G and A/G for the bandwidth rules pWGF offers (the default h = max(2√λ, 1), 'std', a wider
  rule with a higher floor, a rule too narrow for the far table, constant bandwidths), at rates
  from 0 to 1e4 on both sides of every region's edge, against plain sums over a window wider
  than the truncation rule's; and the far table out to λ = 1e8 against window sums whose pmf is
  not rounded by lgamma. Tolerance 2e-7 relative to the atom's scale (the module states 5e-8).
* What no table holds (a sample far out, a cell whose fit failed, a rate above the cells with no
  far table) gives the general path's answer, not a silent wrong one; NaN rates give NaN.
"""

from __future__ import annotations

import math

import pytest
import torch

import pwgf
from pwgf import poisson_kernel as pk
from pwgf import poisson_table as pt

TOL = 2e-7
RULES = {
    "std*2": pt.Bandwidth(mult=2.0, floor=1.0),
    "std": pt.Bandwidth(mult=1.0, floor=1.0),
    "std*3, floor 2": pt.Bandwidth(mult=3.0, floor=2.0),
    "std*0.5": pt.Bandwidth(mult=0.5, floor=1.0),
    "h=1.5": pt.Bandwidth(const=1.5),
    "h=0.5": pt.Bandwidth(const=0.5),
}
RATES = [0.0, 1e-3, 0.1, 0.25, 0.26, 1.0, 2.0, 5.0, 31.0, 33.0, 63.0, 65.0, 100.0, 1e3, 1e4]


def _samples(lam: float) -> torch.Tensor:
    sd = math.sqrt(lam)
    pts = {0, 1, 2, int(lam), int(max(0.0, lam - 6 * sd)), int(lam + 2 * sd), int(lam + 6 * sd) + 2}
    return torch.tensor(sorted(pts), dtype=torch.float64)


def _check(tab: pt.PoissonTable, lam: float, a_ref, g_ref, b) -> None:
    rate = torch.full((b.numel(),), lam, dtype=torch.float64)
    a = tab.mean_grad(rate, b.unsqueeze(0))[0]
    r = tab.ratio(rate, b.unsqueeze(0))[0]
    g = tab.metric(rate)
    scale = a_ref.abs().max()
    assert (a - a_ref).abs().max() <= TOL * scale, ((a - a_ref).abs().max() / scale).item()
    assert (r - a_ref / g_ref).abs().max() <= TOL * scale / g_ref
    assert ((g - g_ref).abs() <= TOL * g_ref).all(), ((g - g_ref).abs().max() / g_ref).item()


@pytest.fixture(scope="module")
def tables():
    return {name: pt.table(rule) for name, rule in RULES.items()}


@pytest.mark.parametrize("name", list(RULES))
@pytest.mark.parametrize("lam", RATES)
def test_tables_match_exact_sums(tables, name, lam):
    tab = tables[name]
    b = _samples(lam)
    rate = torch.tensor([lam], dtype=torch.float64)
    h = tab.rule(rate)
    a_ref, g_ref = pk.reference_sums(rate, h, b.view(-1, 1), tail=1e-16, margin=2.0)
    _check(tab, lam, a_ref[:, 0], g_ref[0], b)


@pytest.mark.parametrize("lam", [3e4, 1e6, 1e8])
def test_far_table_matches_window_sums_out_to_1e8(tables, lam):
    tab = tables["std*2"]
    b = _samples(lam)
    h = 2 * math.sqrt(lam)
    a_ref = pt.exact_mean_grad_at(lam, h, b, 1e-16)
    g_ref = torch.tensor(pt.exact_metric_at(lam, h, 1e-16), dtype=torch.float64)
    _check(tab, lam, a_ref, g_ref, b)


@pytest.mark.parametrize("name", ["h=1.5", "std*0.5"])
@pytest.mark.parametrize("lam", [3e4, 1e6, 1e8])
def test_far_metric_without_a_far_table_matches_window_sums(tables, name, lam):
    tab = tables[name]
    rate = torch.tensor([lam], dtype=torch.float64)
    g_ref = pt.exact_metric_at(lam, float(tab.rule(rate)), 1e-16)
    assert abs(float(tab.metric(rate)) - g_ref) <= TOL * g_ref


def test_every_rule_has_its_regions(tables):
    # the rules wide enough for the far table have one; all cells pass their checks
    assert {n for n, t in tables.items() if t.far is not None} == {"std*2", "std", "std*3, floor 2"}
    assert all(t.far_metric is not None for t in tables.values())  # G needs no range of b
    for tab in tables.values():
        assert (tab.cells.b_lo <= tab.cells.b_hi).all()
        assert tab.cells.coef_a.shape[1] == pt.CELL_DEGREES[0]


def test_random_batches_match_the_general_path(tables):
    gen = torch.Generator().manual_seed(0)
    lam = 10 ** (torch.rand(400, generator=gen, dtype=torch.float64) * 8 - 3)  # 1e-3 .. 1e5
    lam[:5] = torch.tensor([0.0, 32.16, 32.17, 1e-300, 1e5])
    b = torch.poisson(lam.expand(3, -1), generator=gen)
    tab = tables["std*2"]
    h = tab.rule(lam)
    a_ref = pk.rbf_mean_grad(lam, h, b)
    g_ref = pk.rbf_metric(lam, h)
    scale = a_ref.abs().amax(0)
    assert ((tab.mean_grad(lam, b) - a_ref).abs() <= TOL * scale).all()
    assert ((tab.metric(lam) - g_ref).abs() <= TOL * g_ref).all()
    assert ((tab.ratio(lam, b) - a_ref / g_ref).abs() <= TOL * scale / g_ref).all()


def test_shapes_and_dtypes_follow_the_inputs(tables):
    tab = tables["std*2"]
    rate = torch.tensor([[0.5, 50.0], [5.0, 5000.0]], dtype=torch.float32)
    b = torch.poisson(rate.expand(4, 2, 2))
    out = tab.ratio(rate, b)
    assert out.shape == (4, 2, 2) and out.dtype == torch.float32
    assert tab.metric(rate).shape == (2, 2)
    assert tab.ratio(torch.zeros(0), torch.zeros(1, 0)).shape == (1, 0)


def test_samples_outside_the_tables_take_the_general_path(tables):
    tab = tables["std*2"]
    lam = torch.tensor([1.0, 100.0, 1e4], dtype=torch.float64)
    out = lam + 9 * (lam.sqrt() + 1)  # past the cells' 8(√λ + 1)
    out[2] = lam[2] + 5 * (5 * lam[2]).sqrt()  # past the far table's T = 4.2 standard deviations
    b = torch.stack([lam.round(), out])
    a_ref = pk.reference_sums(lam, tab.rule(lam), b, tail=1e-16, margin=2.0)[0]
    a = tab.mean_grad(lam, b)
    assert tab._evaluate(lam, b, "a")[1].tolist() == [[True] * 3, [False] * 3]
    assert ((a - a_ref).abs() <= TOL * a_ref.abs().amax(0)).all()


def test_what_fails_its_checks_takes_the_general_path(monkeypatch):
    # no degree on offer: every cell and the far table are left out
    monkeypatch.setattr(pt, "CELL_DEGREES", (2,))
    monkeypatch.setattr(pt, "FAR_DEGREES", ((2, 2),))
    monkeypatch.setattr(pt, "FAR_METRIC_DEGREES", (1,))
    tab = pt.PoissonTable(pt.Bandwidth(mult=2.0, floor=1.0))
    assert tab.far is None and tab.far_metric is None and (tab.cells.b_lo > tab.cells.b_hi).all()
    lam = torch.tensor([0.3, 3.0, 300.0], dtype=torch.float64)
    b = torch.poisson(lam.expand(2, -1), generator=torch.Generator().manual_seed(1))
    h = tab.rule(lam)
    assert torch.equal(tab.mean_grad(lam, b), pk.rbf_mean_grad(lam, h, b))
    assert torch.equal(tab.metric(lam), pk.rbf_metric(lam, h))


def test_a_nan_rate_gives_nan_and_the_others_stay_right(tables):
    tab = tables["std*2"]
    lam = torch.tensor([float("nan"), 2.0, float("nan"), 200.0], dtype=torch.float64)
    b = torch.tensor([[1.0, 2.0, 3.0, 190.0]], dtype=torch.float64)
    r = tab.ratio(lam, b)
    assert r[0, [0, 2]].isnan().all()
    good = lam[[1, 3]]
    expected = tab.ratio(good, b[:, [1, 3]])
    assert torch.equal(r[:, [1, 3]], expected)


def test_tables_are_cached_per_rule_tail_and_device():
    rule = pt.Bandwidth(mult=2.0, floor=1.0)
    assert pt.table(rule) is pt.table(rule, device="cpu")
    assert pt.table(rule) is not pt.table(pt.Bandwidth(mult=2.0, floor=1.0), tail=1e-12)


@pytest.mark.parametrize(
    "kwargs", [{}, {"mult": 2.0, "const": 1.0}, {"mult": -1.0}, {"const": float("nan")}]
)
def test_a_bad_rule_is_refused(kwargs):
    with pytest.raises(pwgf.PWGFError, match="Bandwidth"):
        pt.Bandwidth(**kwargs)
