"""The test oracles of ESTIMATORS.md (pWGF-MMD vs ST), plus exact gradient vs finite differences."""

import math

import pytest
import torch
from stats import seeded_grad
from torch.distributions import Bernoulli, Independent, OneHotCategorical, Poisson

import pwgf
from pwgf.experiments import problems


def _ratio_to_st(prob, seed, **options):
    st = pwgf.get_estimator("st")
    mmd = pwgf.get_estimator("pwgf", **options)
    g_st = seeded_grad(st, prob.f, prob.make, prob.param, seed, k=3)
    g_mmd = seeded_grad(mmd, prob.f, prob.make, prob.param, seed, k=3)
    return g_st, g_mmd


@pytest.mark.parametrize("h", [0.3, 1.0, 2.5])
def test_oracle1_bernoulli_rbf_is_st_times_constant(h):
    prob = problems.bernoulli_nonlinear()
    c0 = math.exp(-1 / (2 * h**2))
    for normalization, const in (("raw", c0), ("projection", c0 / (2 * h**2 * (1 - c0)))):
        for seed in range(3):
            g_st, g_mmd = _ratio_to_st(prob, seed, bandwidth=h, normalization=normalization)
            torch.testing.assert_close(g_mmd, const * g_st, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("h", [0.5, 1.0, 3.0])
def test_oracle2_categorical_rbf_is_st_times_constant(h):
    prob = problems.categorical_nonlinear()
    c = math.exp(-1 / h**2)
    for normalization, const in (("raw", c), ("projection", c / (h**2 * (1 - c)))):
        for seed in range(3):
            g_st, g_mmd = _ratio_to_st(prob, seed, bandwidth=h, normalization=normalization)
            torch.testing.assert_close(g_mmd, const * g_st, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("prob", problems.default_problems(), ids=lambda p: p.name)
@pytest.mark.parametrize("normalization", ["raw", "projection"])
@pytest.mark.parametrize("step", [None, 0.3])
def test_oracle3_linear_kernel_is_st_exactly(prob, normalization, step):
    for seed in range(2):
        g_st, g_mmd = _ratio_to_st(
            prob, seed, kernel="linear", normalization=normalization, step=step
        )
        torch.testing.assert_close(g_mmd, g_st, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("prob", problems.default_problems(), ids=lambda p: p.name)
@pytest.mark.parametrize("normalization", ["raw", "projection"])
def test_oracle4_large_bandwidth_tends_to_st(prob, normalization):
    st = pwgf.estimator_expectation(pwgf.get_estimator("st"), prob.f, prob.dist())
    gaps = []
    for h in (10.0, 100.0, 1000.0):
        est = pwgf.get_estimator("pwgf", bandwidth=h, normalization=normalization)
        mean = pwgf.estimator_expectation(est, prob.f, prob.dist())
        gaps.append(float((mean - st).norm() / st.norm()))
    # The kernel's deviation from a quadratic is O(1/h²): ten times h, a hundredth of the gap.
    assert gaps[1] < gaps[0] / 50 and gaps[2] < gaps[1] / 50 and gaps[2] < 1e-4, gaps


@pytest.mark.parametrize("prob", problems.default_problems(), ids=lambda p: p.name)
def test_oracle4_small_step_tends_to_infinitesimal_form(prob):
    limit = pwgf.estimator_expectation(pwgf.get_estimator("pwgf"), prob.f, prob.dist())
    gaps = []
    for eps in (1e-2, 1e-4):
        est = pwgf.get_estimator("pwgf", step=eps)
        mean = pwgf.estimator_expectation(est, prob.f, prob.dist())
        gaps.append(float((mean - limit).norm() / limit.norm()))
    assert gaps[1] < gaps[0] and gaps[1] < 1e-3, gaps


def test_oracle5_poisson_numbers():
    prob = problems.poisson_quadratic()
    dist = prob.dist()
    exact = pwgf.exact_gradient(prob.f, dist)
    torch.testing.assert_close(exact, torch.tensor([-3.0]), atol=1e-8, rtol=0)
    st = pwgf.estimator_expectation(pwgf.get_estimator("st"), prob.f, dist)
    torch.testing.assert_close(st, torch.tensor([-4.0]), atol=1e-8, rtol=0)
    for h, expected in ((0.5, -3.28), (1.0, -3.90)):
        est = pwgf.get_estimator("pwgf", bandwidth=h, normalization="projection")
        mean = pwgf.estimator_expectation(est, prob.f, dist)
        assert abs(mean.item() - expected) < 0.005, (h, mean.item())


def _finite_difference(f, make, param, eps=1e-6):
    flat = param.detach().clone().reshape(-1)
    grad = torch.zeros_like(flat)
    for i in range(flat.numel()):  # a test oracle, coordinate by coordinate on purpose
        up, down = flat.clone(), flat.clone()
        up[i] += eps
        down[i] -= eps
        e_up = pwgf.exact_expectation(f, make(up.reshape(param.shape))).sum()
        e_down = pwgf.exact_expectation(f, make(down.reshape(param.shape))).sum()
        grad[i] = (e_up - e_down) / (2 * eps)
    return grad.reshape(param.shape)


CASES = {
    "bernoulli-logits": problems.bernoulli_nonlinear(d=5),
    "categorical-logits": problems.categorical_nonlinear(n=2, c=3),
    "poisson": problems.poisson_nonlinear(),
}


@pytest.mark.parametrize("name", list(CASES))
def test_exact_gradient_matches_finite_differences(name):
    prob = CASES[name]
    exact = pwgf.exact_gradient(prob.f, prob.dist())
    fd = _finite_difference(prob.f, prob.make, prob.param)
    torch.testing.assert_close(exact, fd, rtol=1e-6, atol=1e-8)


def test_exact_gradient_for_probs_parameterisations():
    probs = torch.tensor([0.2, 0.7, 0.5])

    def f(z):
        return (z * torch.tensor([1.0, -2.0, 0.5])).sum(-1) ** 2

    def make(p):
        return Independent(Bernoulli(probs=p), 1)

    torch.testing.assert_close(
        pwgf.exact_gradient(f, make(probs)),
        _finite_difference(f, make, probs),
        rtol=1e-6,
        atol=1e-8,
    )
    cat = torch.tensor([[0.2, 0.3, 0.5], [0.6, 0.3, 0.1]])

    def g(z):
        return (z[..., 0, :] * z[..., 1, :].flip(-1)).sum(-1) + z[..., 1, 2]

    def make_cat(p):
        return Independent(OneHotCategorical(probs=p), 1)

    torch.testing.assert_close(
        pwgf.exact_gradient(g, make_cat(cat)),
        _finite_difference(g, make_cat, cat),
        rtol=1e-6,
        atol=1e-8,
    )


def test_exact_gradient_of_poisson_log_rate_is_chain_rule():
    log_rate = torch.tensor([0.3, 1.7], requires_grad=True)

    def f(z):
        return torch.cos(z).sum(-1)

    loss = pwgf.exact_expectation(f, Independent(Poisson(log_rate.exp()), 1))
    loss.backward()
    by_rate = pwgf.exact_gradient(f, Independent(Poisson(log_rate.detach().exp()), 1))
    torch.testing.assert_close(log_rate.grad, by_rate * log_rate.detach().exp())
