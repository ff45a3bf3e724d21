import math

import pytest
import torch
from torch.distributions import Poisson

import pwgf
from pwgf.truncation import DEFAULT_TAIL, poisson_grid, poisson_window


def test_window_meets_tail_bound_from_1e_minus_3_to_1e4():
    rate = torch.logspace(-3, 4, 57, dtype=torch.float64)
    lo, width = poisson_window(rate)
    hi = lo + width - 1
    # P(X <= lo - 1) = Q(lo, λ) and P(X >= hi + 1) = P(hi + 1, λ), regularised incomplete gammas.
    lower = torch.where(
        lo > 0, torch.special.gammaincc(lo.clamp(min=1), rate), torch.zeros_like(lo)
    )
    upper = torch.special.gammainc(hi + 1, rate)
    lost = lower + upper
    assert torch.isfinite(lost).all()
    assert lost.max() <= DEFAULT_TAIL, f"worst tail mass {lost.max():.3g}"


def test_window_is_narrow_for_large_rates():
    lo, width = poisson_window(torch.tensor([1e4], dtype=torch.float64))
    assert width < 2000  # O(sqrt(λ)), not O(λ)
    assert 8000 < lo.item() < 10000


def test_grid_probabilities_sum_to_one_without_overflow():
    for dtype in (torch.float32, torch.float64):
        rate = torch.tensor([1e-3, 0.5, 5.0, 50.0, 1e3, 1e4], dtype=dtype)
        fam = pwgf.as_family(Poisson(rate))
        values, probs = fam.grid()
        assert values.shape[:-2] == rate.shape
        assert torch.isfinite(probs).all()
        tol = 1e-9 if dtype == torch.float64 else 1e-4
        torch.testing.assert_close(probs.sum(-1), torch.ones_like(rate), atol=tol, rtol=0)


def test_tail_must_be_a_probability():
    with pytest.raises(ValueError, match="tail"):
        poisson_grid(torch.tensor([1.0]), tail=0.0)


@pytest.mark.parametrize("rate", [0.01, 3.0, 400.0, 1e4])
def test_exact_expectation_of_poisson_moments(rate):
    lam = torch.tensor([rate])
    m1 = pwgf.exact_expectation(lambda z: z, Poisson(lam))
    torch.testing.assert_close(m1, lam, rtol=1e-9, atol=1e-9)
    var = pwgf.exact_expectation(lambda z: (z - lam) ** 2, Poisson(lam))
    torch.testing.assert_close(var, lam, rtol=1e-8, atol=1e-9)
    assert not math.isnan(float(var.sum()))
