"""Gumbel-Rao: the same mean as ST-Gumbel (exact, by quadrature over ST-Gumbel's noise), lower
variance (fixed-seed comparison with a tolerance from the variances' standard errors), samples
consistent with the hard sample, and clear errors.

Quadrature: ST-Gumbel's randomness is u ~ U(0,1)^n (n = 1 for a Bernoulli coordinate, n = 2 for
a 2-class categorical); its ``surrogate_at`` with ``weights`` turns a midpoint grid of u into a
quadrature of its estimate (as in test_gumbel.py), and halving the resolution must move the
result by less than 1% of the Monte Carlo tolerance.
"""

import math

import pytest
import torch
from stats import assert_finite_at_extreme_logits, assert_mean_matches, row_draws
from torch.distributions import Bernoulli, Independent, OneHotCategorical, Poisson

import pwgf
from pwgf.estimators.gumbel_rao import conditional_gumbel_logits

F64 = torch.float64


def h(y):
    return torch.exp(1.5 * y) + torch.sin(4 * y)


PROBLEMS = {
    "bernoulli-logits": (
        torch.tensor([0.7], dtype=F64),
        lambda p: Independent(Bernoulli(logits=p), 1),
        lambda z: h(z[..., 0]),
    ),
    "categorical-logits": (
        torch.tensor([0.2, 0.7], dtype=F64),
        lambda p: OneHotCategorical(logits=p),
        lambda z: h(z[..., 1]) + 0.3 * z[..., 0],
    ),
    "categorical-probs": (
        torch.softmax(torch.tensor([-0.4, 0.9], dtype=F64), -1),
        lambda p: OneHotCategorical(probs=p),
        lambda z: h(z[..., 1]) + 0.3 * z[..., 0],
    ),
}


def quadrature(est, f, make, param, m):
    leaf = param.clone().requires_grad_(True)
    fam = est.family(make(leaf))
    n = fam.shape.numel()
    axis = (torch.arange(m, dtype=F64) + 0.5) / m
    u = torch.cartesian_prod(*[axis] * n).reshape(m**n, *fam.shape)
    out = est.surrogate_at(f, fam, u, weights=torch.full((m**n,), 1.0 / m**n))
    (g,) = torch.autograd.grad(out, leaf)
    return g


def st_gumbel_mean(f, make, param, tau, tol):
    est = pwgf.get_estimator("st-gumbel", temperature=tau)
    m = 2**16 if pwgf.as_family(make(param)).shape.numel() == 1 else 512
    fine, coarse = quadrature(est, f, make, param, m), quadrature(est, f, make, param, m // 2)
    assert bool(((fine - coarse).abs() < 0.01 * tol).all()), (fine - coarse, tol)
    return fine


@pytest.mark.parametrize("problem", list(PROBLEMS))
@pytest.mark.parametrize("tau", [0.5, 1.0])
def test_mean_equals_st_gumbel_exact_expectation(problem, tau):
    param, make, f = PROBLEMS[problem]
    est = pwgf.get_estimator("gumbel-rao", m=4, temperature=tau)
    draws, _ = row_draws(est, f, make, param, rows=4000, k=1)
    tol = float(5 * draws.std(0).max() / draws.shape[0] ** 0.5)
    assert_mean_matches(draws, st_gumbel_mean(f, make, param, tau, tol))


def _var_and_se(draws):
    dev2 = (draws - draws.mean(0)) ** 2
    return dev2.mean(0), dev2.std(0) / draws.shape[0] ** 0.5


@pytest.mark.parametrize("problem", ["bernoulli-logits", "categorical-logits"])
def test_variance_is_lower_than_st_gumbel_and_falls_with_m(problem):
    """Rao-Blackwell: Var[GR_M] <= Var[ST-GS], decreasing in M. Each gap must exceed 5 standard
    errors of the difference of the two estimated variances."""
    param, make, f = PROBLEMS[problem]
    rows = 6000
    est = {
        "st-gumbel": pwgf.get_estimator("st-gumbel", temperature=0.5),
        "m2": pwgf.get_estimator("gumbel-rao", m=2, temperature=0.5),
        "m32": pwgf.get_estimator("gumbel-rao", m=32, temperature=0.5),
    }
    var = {k: _var_and_se(row_draws(e, f, make, param, rows=rows, k=1)[0]) for k, e in est.items()}
    for hi, lo in (("st-gumbel", "m2"), ("m2", "m32")):
        gap = var[hi][0] - var[lo][0]
        se = (var[hi][1] ** 2 + var[lo][1] ** 2).sqrt()
        assert bool((gap > 5 * se).all()), (hi, lo, gap, se)


def test_three_classes_match_st_gumbel_by_monte_carlo():
    """Beyond two classes (no quadrature): the Monte Carlo means of GR and ST-GS agree within 5
    standard errors of their difference, on a batch of 2 categoricals with 3 classes."""
    logits = torch.tensor([[0.3, -0.8, 1.1], [0.0, 0.5, -1.5]], dtype=F64)

    def make(p):
        return Independent(OneHotCategorical(logits=p), 1)

    def f(z):
        a = z[..., 0, :] @ torch.tensor([1.0, -2.0, 0.5])
        b = z[..., 1, :] @ torch.tensor([0.3, 1.0, -1.0])
        return torch.tanh(a * b + a) + (a - b) ** 2 / 4

    rows = 20000
    gr, _ = row_draws(pwgf.get_estimator("gumbel-rao", m=8), f, make, logits, rows=rows, k=1)
    st, _ = row_draws(pwgf.get_estimator("st-gumbel"), f, make, logits, rows=rows, k=1)
    diff = gr.mean(0) - st.mean(0)
    se = ((gr.var(0) + st.var(0)) / rows).sqrt()
    assert bool((diff.abs() <= 5 * se).all()), (diff, se)
    assert bool((gr.var(0) < st.var(0)).all())


def test_conditional_noise_is_consistent_with_the_sample():
    logits = torch.tensor([[0.3, -0.8, 1.1, float("-inf")], [4.0, -4.0, 0.0, 1.0]], dtype=F64)
    d = OneHotCategorical(logits=logits).sample((50,))
    x = conditional_gumbel_logits(logits, d, 7)
    assert x.shape == (7, 50, 2, 4)
    torch.testing.assert_close(torch.nn.functional.one_hot(x.argmax(-1), 4).to(F64), d.expand_as(x))
    assert bool(torch.isneginf(x[..., 0, 3]).all())


def test_sample_is_the_hard_sample_with_gumbel_rao_backward():
    leaf = torch.tensor([[0.2, -1.0, 0.5]], requires_grad=True)
    z = pwgf.sample(OneHotCategorical(logits=leaf), "gumbel-rao", n_samples=5, m=3)
    assert z.shape == (5, 1, 3) and torch.all(z.sum(-1) == 1)
    (g,) = torch.autograd.grad((z * torch.arange(3.0)).sum(), leaf)
    assert bool(torch.isfinite(g).all()) and float(g.abs().sum()) > 0
    torch.testing.assert_close(g.sum(-1), torch.zeros(1), atol=1e-12, rtol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_dtype_and_extreme_logits_stay_finite(dtype):
    assert_finite_at_extreme_logits(pwgf.get_estimator("gumbel-rao", temperature=0.1), dtype, 16)


@pytest.mark.parametrize("bad", [0, -2, 1.5, True, "ten"])
def test_bad_m_is_rejected(bad):
    with pytest.raises(pwgf.PWGFError, match="gumbel-rao: m must be"):
        pwgf.get_estimator("gumbel-rao", m=bad)


@pytest.mark.parametrize("bad", [0.0, -1.0, math.nan, math.inf, "warm"])
def test_bad_temperature_is_rejected(bad):
    with pytest.raises(pwgf.PWGFError, match="temperature"):
        pwgf.get_estimator("gumbel-rao", temperature=bad)


def test_poisson_is_refused_and_not_per_sample():
    with pytest.raises(pwgf.UnsupportedFamilyError, match="poisson"):
        pwgf.get_estimator("gumbel-rao").surrogate(lambda z: z.sum(-1), Poisson(torch.ones(2)))
    with pytest.raises(pwgf.PWGFError, match="per-sample"):
        pwgf.estimator_expectation(
            pwgf.get_estimator("gumbel-rao"), lambda z: z.sum(-1), Bernoulli(torch.ones(1) / 2)
        )
