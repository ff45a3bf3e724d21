"""Gumbel-softmax and straight-through Gumbel on Poisson (the generalised Gumbel-softmax).

Reference: an independent construction in float64 on the fixed support {0..59} (which holds all
but ~1e-30 of the mass for λ <= 8), logits from ``torch.distributions.Poisson.log_prob`` and
Gumbel noise from ``torch.distributions.Gumbel``; its Monte Carlo mean over 40000 draws is the
target, and estimator and reference must agree within 5 combined standard errors. The window of
the library (tail 1e-10) differs from the reference support by less than the noise.
"""

from __future__ import annotations

import math

import pytest
import torch
from test_eat import chi_square
from torch.distributions import Bernoulli, Gumbel, Independent, Poisson

import pwgf

SUPPORT = torch.arange(60, dtype=torch.float64)


def cost(z):
    return ((z - 2.0) ** 2 + 3 * torch.sin(z)).sum(-1)


def reference_gradients(name, lam, tau, rows, seed):
    """Per-draw gradients for the rates (rows, A) and per-draw costs, built independently."""
    gen = torch.Generator().manual_seed(seed)
    leaf = lam.expand(rows, *lam.shape).clone().requires_grad_(True)
    logits = Poisson(leaf.unsqueeze(-1)).log_prob(SUPPORT)
    u = torch.rand((*logits.shape,), generator=gen, dtype=torch.float64)
    g = Gumbel(torch.tensor(0.0, dtype=torch.float64), torch.tensor(1.0, dtype=torch.float64))
    noise = g.icdf(u.clamp(min=1e-300))
    y = torch.softmax((logits + noise) / tau, -1)
    soft = (y * SUPPORT).sum(-1)
    if name == "st-gumbel":
        hard = SUPPORT[(logits + noise).argmax(-1)]
        soft = hard + (soft - soft.detach())
    out = cost(soft.unsqueeze(0)).squeeze(0)
    (grad,) = torch.autograd.grad(out.sum(), leaf)
    return grad, out.detach()


def estimator_gradients(name, lam, tau, rows, seed):
    torch.manual_seed(seed)
    leaf = lam.expand(rows, *lam.shape).clone().requires_grad_(True)
    est = pwgf.get_estimator(name, temperature=tau)
    out = est.surrogate(cost, Independent(Poisson(leaf), 1), n_samples=1)
    assert out.shape == (rows,)
    (grad,) = torch.autograd.grad(out.sum(), leaf)
    return grad, out.detach()


def assert_same_mean(a, b, n_se=5.0):
    se = (a.var(0) / a.shape[0] + b.var(0) / b.shape[0]).sqrt()
    z = (a.mean(0) - b.mean(0)).abs() / se.clamp(min=1e-12)
    assert bool((z <= n_se).all()), f"{a.mean(0)} vs {b.mean(0)}: z = {z}"


@pytest.mark.parametrize("name", ["gumbel-softmax", "st-gumbel"])
@pytest.mark.parametrize("tau", [0.3, 1.0])
def test_mean_gradient_and_value_match_the_reference(name, tau):
    lam = torch.tensor([0.5, 3.0, 8.0], dtype=torch.float64)
    g_est, v_est = estimator_gradients(name, lam, tau, 4000, seed=1)
    g_ref, v_ref = reference_gradients(name, lam, tau, 40000, seed=2)
    assert_same_mean(g_est, g_ref)
    assert_same_mean(v_est[:, None], v_ref[:, None])


@pytest.mark.parametrize("tau", [1.0, 0.1, 0.01])
@pytest.mark.parametrize("lam", [0.4, 6.0, 40.0])
def test_st_gumbel_forward_is_an_exact_poisson_draw(lam, tau):
    torch.manual_seed(7)
    dist = Poisson(torch.tensor([lam], dtype=torch.float64))
    z = pwgf.sample(dist, "st-gumbel", n_samples=20000, temperature=tau)
    assert torch.equal(z, z.round())
    stat, df = chi_square(z.detach(), lam)
    assert stat < df + 5 * math.sqrt(2 * df), (stat, df)


def test_relaxed_value_tends_to_the_hard_draw_as_tau_goes_to_zero():
    lam = torch.tensor([0.4, 6.0, 40.0], dtype=torch.float64)
    fam = pwgf.as_family(Poisson(lam))
    est = pwgf.get_estimator("gumbel-softmax", temperature=1e-3)
    u = est.draw(fam, 20000)
    relaxed = est.transform(fam, u)
    hard = pwgf.get_estimator("st-gumbel", temperature=1e-3).transform(fam, u).detach()
    close = (relaxed - hard).abs() < 1e-2
    assert float(close.double().mean()) > 0.99  # only near-ties of the Gumbel-max stay apart
    for j, rate in enumerate(lam.tolist()):
        stat, df = chi_square(relaxed[:, j].round(), rate)
        assert stat < df + 5 * math.sqrt(2 * df), (rate, stat, df)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("name", ["gumbel-softmax", "st-gumbel"])
def test_shapes_dtypes_and_extreme_rates_stay_finite(name, dtype):
    torch.manual_seed(0)
    rate = torch.tensor([[0.0, 1e-3, 2.0], [30.0, 1e4, 0.5]], dtype=dtype, requires_grad=True)
    z = pwgf.sample(Independent(Poisson(rate), 1), name, n_samples=3, temperature=0.5)
    assert z.shape == (3, 2, 3) and z.dtype == dtype
    assert bool((z[:, 0, 0] == 0).all())
    assert bool(((z[:, 1, 1] - 1e4).abs() < 1e3).all())
    z.sum().backward()
    assert rate.grad.dtype == dtype and bool(torch.isfinite(rate.grad).all())


def test_bernoulli_relaxation_is_unchanged():
    """Bernoulli is still the binary Concrete on the same noise draw (bit for bit)."""
    logits = torch.tensor([-1.0, 0.3, 2.0])
    torch.manual_seed(4)
    y = pwgf.sample(Bernoulli(logits=logits), "gumbel-softmax", 5, temperature=0.7)
    torch.manual_seed(4)
    u = torch.rand(5, 3).clamp_(min=torch.finfo(torch.float32).tiny)
    assert torch.equal(y, torch.sigmoid((logits + torch.logit(u)) / 0.7))
