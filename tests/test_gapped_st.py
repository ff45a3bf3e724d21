"""Gapped straight-through (GST): its own exact expectation, the definition at every sample, the
consistency and gap of its perturbed logits, Bernoulli as the 2-class categorical, and errors."""

import math

import pytest
import torch
from stats import assert_mean_matches, bernoulli_cases, categorical_cases, row_draws
from torch.distributions import Bernoulli, Independent, OneHotCategorical, Poisson

import pwgf
from pwgf.estimators.gapped_st import gapped_logits

CAT_LOGITS = torch.tensor([[0.2, -1.0, 0.5], [1.0, 0.0, -0.3]], dtype=torch.float64)
BERN_LOGITS = torch.tensor([-1.2, 0.4, 2.0], dtype=torch.float64)


def f_cat(z):
    a = z[..., 0, :] @ torch.tensor([1.0, -2.0, 0.5])
    b = z[..., 1, :] @ torch.tensor([0.3, 1.0, -1.0])
    return torch.tanh(a * b + a) + (a - b) ** 2 / 4


def f_bern(z):
    return torch.sin(3 * z).sum(-1) + (z - 0.3).pow(2).sum(-1) + 2 * z[..., 0] * z[..., 2]


CASES = {
    **categorical_cases(CAT_LOGITS, f_cat),
    **bernoulli_cases(BERN_LOGITS, f_bern, probs=False),
}


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("gap,tau", [(1.0, 1.0), (0.5, 0.7)])
def test_monte_carlo_mean_matches_own_exact_expectation(case, gap, tau):
    param, make, f = CASES[case]
    est = pwgf.get_estimator("gapped-st", gap=gap, temperature=tau)
    target = pwgf.estimator_expectation(est, f, make(param))
    draws, _ = row_draws(est, f, make, param, rows=2000, k=2)
    assert_mean_matches(draws, target)


def test_biased_unlike_an_unbiased_estimator():
    param, make, f = CASES["categorical-logits"]
    exact = pwgf.exact_gradient(f, make(param))
    mean = pwgf.estimator_expectation(pwgf.get_estimator("gapped-st"), f, make(param))
    assert float((mean - exact).abs().max()) > 1e-2


def _jacobian(p):
    return torch.diag(p) - torch.outer(p, p)


@pytest.mark.parametrize("gap,tau", [(1.0, 1.0), (0.0, 0.5), (2.5, 2.0)])
def test_matches_the_definition_at_every_sample(gap, tau):
    """f(z) = g·z: ĝ = (1/τ) J(softmax(x/τ)) g with x_D = max θ, x_c = min(θ_c, max θ - κ)."""
    theta = torch.tensor([0.3, -1.2, 0.8, 0.1])
    g = torch.tensor([1.0, -0.5, 2.0, 0.25])
    est = pwgf.get_estimator("gapped-st", gap=gap, temperature=tau)
    for i in range(4):
        d = torch.eye(4)[i]
        leaf = theta.clone().requires_grad_(True)
        fam = est.family(OneHotCategorical(logits=leaf))
        (got,) = torch.autograd.grad(est.surrogate_at(lambda z: z @ g, fam, d.unsqueeze(0)), leaf)
        top = theta.max()
        x = torch.where(d > 0, top, torch.minimum(theta, top - gap))
        want = _jacobian(torch.softmax(x / tau, -1)) @ g / tau
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-14)


def test_perturbed_logits_are_consistent_and_gapped():
    logits = torch.randn(5, 6) * 3
    d = OneHotCategorical(logits=logits).sample((40,))
    x = gapped_logits(logits, d, 1.5)
    assert torch.equal(x.argmax(-1), d.argmax(-1))
    top = (x * d).sum(-1, keepdim=True)
    others = torch.where(d > 0, torch.full_like(x, -math.inf), x)
    assert bool((top - others.max(-1, keepdim=True).values >= 1.5 - 1e-12).all())


def test_bernoulli_is_the_two_class_categorical():
    est = pwgf.get_estimator("gapped-st", gap=0.8, temperature=0.6)
    mean_b = pwgf.estimator_expectation(est, f_bern, Independent(Bernoulli(logits=BERN_LOGITS), 1))
    cat_logits = torch.stack([torch.zeros_like(BERN_LOGITS), BERN_LOGITS], -1)
    mean_c = pwgf.estimator_expectation(
        est, lambda y: f_bern(y[..., 1]), Independent(OneHotCategorical(logits=cat_logits), 1)
    )
    torch.testing.assert_close(mean_b, mean_c[:, 1], rtol=1e-12, atol=1e-14)


def test_sample_is_discrete_and_masked_classes_stay_finite():
    leaf = torch.tensor([[0.2, float("-inf"), 0.5, 1.0]], requires_grad=True)
    z = pwgf.sample(OneHotCategorical(logits=leaf), "gapped-st", n_samples=8)
    hard = z.detach()
    assert torch.all(hard.sum(-1) == 1) and float(hard[..., 1].abs().sum()) == 0
    (g,) = torch.autograd.grad((z * torch.arange(4.0)).sum(), leaf)
    assert bool(torch.isfinite(g).all()) and float(g[0, 1]) == 0


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_dtype_follows_the_parameters(dtype):
    leaf = torch.tensor([[-30.0, 0.0, 25.0], [3.0, -3.0, 0.0]], dtype=dtype, requires_grad=True)
    out = pwgf.get_estimator("gapped-st").surrogate(
        lambda z: z.reshape(z.shape[0], -1).pow(2).sum(-1).sin(),
        Independent(OneHotCategorical(logits=leaf), 1),
        4,
    )
    (g,) = torch.autograd.grad(out, leaf)
    assert out.dtype == dtype and g.dtype == dtype and bool(torch.isfinite(g).all())


@pytest.mark.parametrize("bad", [-0.1, math.inf, math.nan, "wide", True])
def test_bad_gap_is_rejected(bad):
    with pytest.raises(pwgf.PWGFError, match="gapped-st: gap"):
        pwgf.get_estimator("gapped-st", gap=bad)


@pytest.mark.parametrize("bad", [0.0, -1.0, "hot"])
def test_bad_temperature_is_rejected(bad):
    with pytest.raises(pwgf.PWGFError, match="temperature"):
        pwgf.get_estimator("gapped-st", temperature=bad)


def test_poisson_is_refused():
    with pytest.raises(pwgf.UnsupportedFamilyError, match="poisson"):
        pwgf.get_estimator("gapped-st").surrogate(lambda z: z.sum(-1), Poisson(torch.ones(2)))
