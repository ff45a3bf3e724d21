"""The exponential-arrival-times relaxation (``eat``): Campbell's moments of the relaxed count,
the Monte Carlo mean of its gradient against its own closed-form expectation for quadratic
costs (relaxed and hard forms), the hard form's count being an exact Poisson draw, bad options,
and the plumbing (``pwgf.sample``, ``surrogate``, dtypes, batch shapes, rate 0).

Tolerances: 5 standard errors estimated from the draws (``tests/stats.py``); the truncation of
the arrivals leaves out at most ``tail`` = 1e-6 of the mean per atom, far below every s.e. here.
"""

from __future__ import annotations

import math

import pytest
import torch
from stats import assert_mean_matches
from torch.distributions import Bernoulli, Independent, Poisson

import pwgf
from pwgf.estimators.eat import campbell_moments

INDICATORS = ("sigmoid", "cubic", "linear")
# F₁(0) = ∫_{-∞}^0 H: log 2 for σ, and 2∫_0^{1/2}(3u² - 2u³)du = 3/16, 2∫_0^{1/2} u du = 1/4
F1_AT_0 = {"sigmoid": math.log(2.0), "cubic": 3 / 16, "linear": 1 / 4}


def test_campbell_moments_are_the_closed_forms_of_the_issue():
    lam = torch.tensor([0.5, 3.0, 40.0], dtype=torch.float64)
    for tau in (0.05, 0.3, 1.0):
        m, v = campbell_moments("cubic", lam, tau)
        torch.testing.assert_close(m, lam)
        torch.testing.assert_close(v, lam * (1 - 9 * tau / 35))
        m, v = campbell_moments("linear", lam, tau)
        torch.testing.assert_close(m, lam)
        torch.testing.assert_close(v, lam * (1 - tau / 3))
        m, v = campbell_moments("sigmoid", lam, tau)
        sp = math.log1p(math.exp(1 / tau))
        torch.testing.assert_close(m, lam * tau * sp)
        torch.testing.assert_close(v, lam * tau * (sp - 1 / (1 + math.exp(-1 / tau))))


@pytest.mark.parametrize("indicator", INDICATORS)
@pytest.mark.parametrize("tau", [0.1, 0.6])
def test_relaxed_count_has_campbell_mean_and_variance(indicator, tau):
    torch.manual_seed(11)
    lam = torch.tensor([0.7, 4.0, 20.0], dtype=torch.float64)
    est = pwgf.get_estimator("eat", indicator=indicator, temperature=tau)
    z = est.sample(Poisson(lam), 20000)
    mean, var = campbell_moments(indicator, lam, tau)
    assert_mean_matches(z, mean)
    centred = (z - z.mean(0)) ** 2  # its mean is the variance, its s.e. that of the variance
    assert_mean_matches(centred * 20000 / 19999, var)


def quadratic(c):
    return lambda z: (z - c).pow(2).sum(-1)


def expected_gradient(indicator, lam, tau, c, hard):
    """d/dλ of the estimator's own expectation for f(z) = Σ (z - c)²: relaxed, E f(z̃) =
    Var z̃ + (E z̃ - c)²; hard, E[2(N - c) ∂z̃/∂λ] by Mecke's formula (module docstring)."""
    mean, var = campbell_moments(indicator, lam, tau)
    f1 = mean / (lam * tau)  # F₁(1/τ)
    if not hard:
        return var / lam + 2 * (mean - c) * tau * f1
    n_dz = lam * tau * f1 + tau * (f1 - F1_AT_0[indicator]) - 0.5  # E[N ∂z̃/∂λ]
    return 2 * (n_dz - c * tau * f1)


@pytest.mark.parametrize("indicator", INDICATORS)
@pytest.mark.parametrize("hard", [False, True])
def test_mean_gradient_matches_its_closed_form_expectation(indicator, hard):
    torch.manual_seed(3)
    tau, rows = 0.3, 6000
    lam = torch.tensor([0.4, 2.5, 9.0], dtype=torch.float64)
    c = torch.tensor([1.0, 1.0, 12.0], dtype=torch.float64)
    est = pwgf.get_estimator("eat", indicator=indicator, temperature=tau, hard=hard)
    leaf = lam.expand(rows, 3).clone().requires_grad_(True)  # rows independent estimates
    out = est.surrogate(quadratic(c), Independent(Poisson(leaf), 1), n_samples=1)
    assert out.shape == (rows,)
    (g,) = torch.autograd.grad(out.sum(), leaf)
    assert_mean_matches(g, expected_gradient(indicator, lam, tau, c, hard))


def test_hard_gradient_tends_to_the_exact_one_for_quadratics_as_tau_goes_to_zero():
    lam, c = torch.tensor([3.0], dtype=torch.float64), torch.tensor([1.0], dtype=torch.float64)
    exact = pwgf.exact_gradient(quadratic(c), Independent(Poisson(lam.requires_grad_()), 1))
    limit = expected_gradient("sigmoid", lam.detach(), 1e-3, c, hard=True)
    torch.testing.assert_close(limit, exact.reshape(limit.shape), atol=1e-2, rtol=0)


def chi_square(draws: torch.Tensor, lam: float) -> tuple[float, int]:
    """Pearson's statistic of integer draws against Poisson(λ), bins with expected count >= 5
    (the two tails merged into the end bins), and its degrees of freedom."""
    n = draws.numel()
    k = torch.arange(int(lam + 12 * math.sqrt(lam) + 20), dtype=torch.float64)
    pmf = Poisson(torch.tensor(lam, dtype=torch.float64)).log_prob(k).exp()
    keep = (n * pmf >= 5).nonzero().flatten()
    lo, hi = int(keep[0]), int(keep[-1])
    counts = torch.bincount(draws.flatten().long(), minlength=k.numel() + 1).double()
    obs = torch.cat([counts[: lo + 1].sum()[None], counts[lo + 1 : hi], counts[hi:].sum()[None]])
    exp = n * torch.cat([pmf[: lo + 1].sum()[None], pmf[lo + 1 : hi], (1 - pmf[:hi].sum())[None]])
    return float(((obs - exp) ** 2 / exp).sum()), obs.numel() - 1


@pytest.mark.parametrize("n_exp", [2, "auto"])
@pytest.mark.parametrize("lam", [0.3, 4.0, 30.0])
def test_hard_count_is_an_exact_poisson_draw(n_exp, lam):
    torch.manual_seed(5)
    est = pwgf.get_estimator("eat", hard=True, n_exp=n_exp)
    z = est.sample(Poisson(torch.tensor([lam], dtype=torch.float64)), 20000)
    assert torch.equal(z, z.round()) and bool((z >= 0).all())
    stat, df = chi_square(z, lam)
    assert stat < df + 5 * math.sqrt(2 * df), (stat, df)


def test_auto_arrivals_cover_the_horizon_the_indicator_sees():
    lam = torch.tensor([0.1, 50.0])
    for indicator, tau in (("cubic", 0.5), ("sigmoid", 0.1), ("sigmoid", 1.0)):
        est = pwgf.get_estimator("eat", indicator=indicator, temperature=tau)
        n = est.arrivals(pwgf.as_family(Poisson(lam)))
        s = tau if indicator == "cubic" else tau * math.log(2 * 50 * tau / est.tail)
        mu = 50 * (1 + s)
        assert n >= mu + 4 * math.sqrt(mu)  # beyond the 1e-6 tail of Poisson(λ t*)


@pytest.mark.parametrize(
    "options, match",
    [
        ({"temperature": 0.0}, "temperature"),
        ({"temperature": -1.0}, "temperature"),
        ({"n_exp": 0}, "n_exp"),
        ({"n_exp": 2.5}, "n_exp"),
        ({"n_exp": "many"}, "n_exp"),
        ({"indicator": "tanh"}, "indicator"),
        ({"tail": 0.0}, "tail"),
        ({"hard": "yes"}, "hard"),
    ],
)
def test_bad_options_are_rejected_by_name(options, match):
    with pytest.raises(pwgf.PWGFError, match=match):
        pwgf.get_estimator("eat", **options)


def test_only_poisson_is_supported():
    with pytest.raises(pwgf.UnsupportedFamilyError, match="bernoulli"):
        pwgf.sample(Bernoulli(logits=torch.zeros(2)), "eat")
    assert "eat" in pwgf.estimators_for("poisson")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("hard", [False, True])
def test_sample_and_surrogate_shapes_dtypes_and_rate_zero(dtype, hard):
    torch.manual_seed(0)
    log_rate = torch.tensor([[-30.0, 0.0, 2.0], [1.0, -1.0, 4.0]], dtype=dtype)
    log_rate.requires_grad_(True)
    rate = torch.cat([torch.zeros(1, 3, dtype=dtype), log_rate.exp()])  # a row of λ = 0
    dist = Independent(Poisson(rate), 1)
    z = pwgf.sample(dist, "eat", n_samples=4, hard=hard)
    assert z.shape == (4, 3, 3) and z.dtype == dtype
    assert bool((z[:, 0] == 0).all())
    est = pwgf.get_estimator("eat", hard=hard, indicator="cubic")
    loss = est.surrogate(lambda v: (v - 1).pow(2).sum(-1), dist, n_samples=3)
    assert loss.shape == (3,) and loss.dtype == dtype
    (g,) = torch.autograd.grad(loss.sum() + z.sum(), log_rate)
    assert g.dtype == dtype and bool(torch.isfinite(g).all())


def test_a_fixed_n_exp_is_used_as_given():
    est = pwgf.get_estimator("eat", n_exp=7)
    gamma = est.draw(pwgf.as_family(Poisson(torch.ones(2))), 3)
    assert gamma.shape == (3, 2, 7) and bool((gamma.diff(dim=-1) > 0).all())
