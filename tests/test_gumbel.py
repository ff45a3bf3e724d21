"""Gumbel-Softmax (relaxed) and straight-through Gumbel-Softmax, against their own exact
expectations by quadrature over the noise, and their limits as the temperature goes to 0.

Quadrature: the estimators' randomness is u ~ U(0,1)^n (n = 1 for a Bernoulli coordinate, n = 2
for a 2-class categorical), and ``surrogate_at`` with ``weights`` turns a grid of u into a
quadrature of the estimate. Against Monte Carlo, the midpoint rule on 2^18 points (1-D) or 1024²
points (2-D) is used, and each test checks that halving the resolution moves the result by less
than 1% of the Monte Carlo tolerance (measured: <= 3e-5 against tolerances of ~5e-2), so the
quadrature error is negligible. The τ -> 0 limits use 2^20 points: the error of the midpoint rule
at the jump of the hard sample is O(1/(m τ)), about 1e-4 at τ = 0.01, against thresholds of 5e-3.

Monte Carlo draws: R independent copies of the problem form the batch of one distribution and f
acts row by row; each row's gradient is then an independent single-sample estimate (pathwise
estimators, independent noise per row), giving R draws from one call. Tolerance 5 s.e.
"""

import math

import pytest
import torch
from stats import assert_finite_at_extreme_logits, assert_mean_matches, draw_gradients
from torch.distributions import Bernoulli, Independent, OneHotCategorical, Poisson

import pwgf

NAMES = ["gumbel-softmax", "st-gumbel"]
ELL = 0.7
F64 = torch.float64  # module-level tensors are made before conftest sets the default


def h(y):  # nonlinear cost of one relaxed coordinate
    return torch.exp(1.5 * y) + torch.sin(4 * y)


def h_prime(y):
    return 1.5 * torch.exp(1.5 * y) + 4 * torch.cos(4 * y)


def f_bern(z):  # (K, [R,] 1) -> (K, [R])
    return h(z[..., 0])


def f_cat(z):  # (K, [R,] 2) -> (K, [R]): the same cost on the second class
    return h(z[..., 1]) + 0.3 * z[..., 0] ** 2


PROBLEMS = {
    "bernoulli-logits": (
        torch.tensor([ELL], dtype=F64),
        lambda p: Independent(Bernoulli(logits=p), 1),
        f_bern,
    ),
    "bernoulli-probs": (
        torch.sigmoid(torch.tensor([ELL], dtype=F64)),
        lambda p: Independent(Bernoulli(probs=p), 1),
        f_bern,
    ),
    "categorical-logits": (
        torch.tensor([0.2, ELL], dtype=F64),
        lambda p: OneHotCategorical(logits=p),
        f_cat,
    ),
    "categorical-probs": (
        torch.softmax(torch.tensor([0.2, ELL], dtype=F64), -1),
        lambda p: OneHotCategorical(probs=p),
        f_cat,
    ),
}


def quadrature(est, f, make, param, m, wrt_f=None):
    """E_u[ĝ] by the midpoint rule, m points per noise dimension; for ``param`` or, if given,
    for the tensor ``wrt_f`` inside f."""
    leaf = param.clone().requires_grad_(True)
    fam = est.family(make(leaf))
    n = fam.shape.numel()
    axis = (torch.arange(m) + 0.5) / m
    u = torch.cartesian_prod(*[axis] * n).reshape(m**n, *fam.shape)
    out = est.surrogate_at(f, fam, u, weights=torch.full((m**n,), 1.0 / m**n))
    (g,) = torch.autograd.grad(out, leaf if wrt_f is None else wrt_f)
    return g


def quadrature_checked(est, f, make, param, tol, wrt_f=None):
    n = pwgf.as_family(make(param)).shape.numel()
    m = 2**18 if n == 1 else 1024
    fine = quadrature(est, f, make, param, m, wrt_f)
    coarse = quadrature(est, f, make, param, m // 2, wrt_f)
    assert bool(((fine - coarse).abs() < 0.01 * tol).all()), (fine - coarse, tol)
    return fine


def row_draws(est, f, make, param, rows):
    """``rows`` independent single-sample estimates from one call (see the module docstring)."""
    leaf = param.expand(rows, *param.shape).clone().requires_grad_(True)
    out = est.surrogate(f, make(leaf), n_samples=1)
    assert out.shape == (rows,)
    (g,) = torch.autograd.grad(out.sum(), leaf)
    return g


def _tolerance(draws):
    return float(5 * draws.std(0).max() / draws.shape[0] ** 0.5)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("problem", list(PROBLEMS))
@pytest.mark.parametrize("tau", [0.5, 1.0])
def test_monte_carlo_mean_matches_quadrature(name, problem, tau):
    param, make, f = PROBLEMS[problem]
    est = pwgf.get_estimator(name, temperature=tau)
    draws = row_draws(est, f, make, param, rows=4000)
    target = quadrature_checked(est, f, make, param, _tolerance(draws))
    assert_mean_matches(draws, target)


@pytest.mark.parametrize("name", NAMES)
def test_two_class_categorical_equals_binary_concrete(name):
    """G₁ - G₀ is logistic, so Gumbel-softmax on logits (a, b) relaxes the second class exactly
    as the binary Concrete on b - a: the expected gradients agree (up to quadrature error)."""
    for tau in (0.3, 1.0):
        est = pwgf.get_estimator(name, temperature=tau)
        cat = quadrature(
            est,
            lambda z: h(z[..., 1]),
            PROBLEMS["categorical-logits"][1],
            torch.tensor([0.0, ELL]),
            1024,
        )
        bern = quadrature(est, f_bern, PROBLEMS["bernoulli-logits"][1], torch.tensor([ELL]), 2**18)
        torch.testing.assert_close(cat, torch.cat([-bern, bern]), rtol=0, atol=2e-4)


def test_relaxed_gradient_converges_to_exact_as_temperature_goes_to_zero():
    """The relaxed objective E_u f(y_τ) tends to E f(z) with its gradient: the bias of
    gumbel-softmax shrinks monotonically (about linearly in τ) to 0."""
    param, make, f = PROBLEMS["bernoulli-logits"]
    exact = pwgf.exact_gradient(f, make(param))
    est = lambda tau: pwgf.get_estimator("gumbel-softmax", temperature=tau)  # noqa: E731
    bias = [
        float((quadrature(est(t), f, make, param, 2**20) - exact).abs()) for t in (1, 0.1, 0.01)
    ]
    assert bias[0] > 0.1  # clearly biased at τ = 1
    assert bias[0] > 5 * bias[1] > 25 * bias[2]
    assert bias[2] < 5e-3


def test_straight_through_gumbel_tends_to_the_trapezoid_rule_not_the_gradient():
    """As τ -> 0 the relaxed Jacobian concentrates where z jumps, half on each side, so for one
    coordinate ST-Gumbel's mean tends to p(1-p)(f'(0) + f'(1))/2: the exact gradient
    p(1-p)(f(1) - f(0)) only when f is quadratic. The bias does not vanish in general."""
    param, make, f = PROBLEMS["bernoulli-logits"]
    p = torch.sigmoid(param)
    zero, one = torch.zeros(1), torch.ones(1)
    trapezoid = p * (1 - p) * (h_prime(zero) + h_prime(one)) / 2
    exact = pwgf.exact_gradient(f, make(param))
    means = [
        quadrature(pwgf.get_estimator("st-gumbel", temperature=t), f, make, param, 2**20)
        for t in (1.0, 0.1, 0.01)
    ]
    errs = [float((m - trapezoid).abs()) for m in means]
    assert errs[0] > 5 * errs[1] > 25 * errs[2] and errs[2] < 5e-3
    assert float((means[2] - exact).abs()) > 0.3

    def quad(z):  # quadratic: the trapezoid rule is exact, and so is the limit
        return (2 * z[..., 0] - 0.4) ** 2

    exact_q = pwgf.exact_gradient(quad, make(param))
    errs_q = [
        float(
            (
                quadrature(pwgf.get_estimator("st-gumbel", temperature=t), quad, make, param, 2**20)
                - exact_q
            ).abs()
        )
        for t in (0.1, 0.01)
    ]
    assert errs_q[0] > 5 * errs_q[1] and errs_q[1] < 6e-3  # bias about 0.4 τ here


@pytest.mark.parametrize("name", NAMES)
def test_independent_batch_rows_match_quadrature(name):
    """An Independent-wrapped batch of 3 coordinates with different logits and a per-row cost;
    each row's estimate against its own quadrature (draw_gradients: independent backward passes)."""
    logits = torch.tensor([[-1.0], [0.3], [1.8]])
    make = PROBLEMS["bernoulli-logits"][1]

    def make_batch(p):
        return Independent(Bernoulli(logits=p), 2)

    def f(z):  # (K, 3, 1) -> (K,)
        return h(z[..., 0]).sum(-1)

    est = pwgf.get_estimator(name, temperature=0.5)
    draws = draw_gradients(est, f, make_batch, logits, draws=400, k=4)
    target = torch.stack(
        [quadrature_checked(est, f_bern, make, row, _tolerance(draws)) for row in logits]
    )
    assert_mean_matches(draws, target)


@pytest.mark.parametrize("name", NAMES)
def test_gradient_of_f_parameters(name):
    """ST-Gumbel forwards the hard sample, so f's parameters get the ordinary ∂E[f(z)]/∂w; the
    relaxed estimator gives ∂/∂w of its relaxed objective (its own expectation, by quadrature)."""
    param, make, _ = PROBLEMS["bernoulli-logits"]
    w = torch.tensor(0.8, requires_grad=True)

    def f(z):
        return torch.exp(w * z[..., 0]) + w * torch.sin(4 * z[..., 0])

    est = pwgf.get_estimator(name, temperature=0.5)
    draws = []
    for _ in range(400):
        (g,) = torch.autograd.grad(est.surrogate(f, make(param), n_samples=4), w)
        draws.append(g)
    draws = torch.stack(draws)
    if name == "st-gumbel":
        (target,) = torch.autograd.grad(pwgf.exact_expectation(f, make(param)), w)
    else:
        target = quadrature_checked(est, f, make, param, _tolerance(draws), wrt_f=w)
        (exact,) = torch.autograd.grad(pwgf.exact_expectation(f, make(param)), w)
        assert float((target - exact).abs()) > 0.05  # the relaxed target is not E[f]'s
    assert_mean_matches(draws, target)


def test_sample_relaxed_and_hard():
    logits = torch.randn(3, 4, requires_grad=True)
    y = pwgf.sample(
        OneHotCategorical(logits=logits), "gumbel-softmax", n_samples=5, temperature=0.5
    )
    assert y.shape == (5, 3, 4) and bool(((y > 0) & (y < 1)).all())
    torch.testing.assert_close(y.sum(-1), torch.ones(5, 3))
    z = pwgf.sample(OneHotCategorical(logits=logits), "st-gumbel", n_samples=5)
    assert torch.all(z.sum(-1) == 1) and set(z.detach().unique().tolist()) <= {0.0, 1.0}
    (g,) = torch.autograd.grad((z * torch.arange(4.0)).sum(), logits)
    assert g.abs().sum() > 0
    b = pwgf.sample(Bernoulli(logits=torch.zeros(2)), "concrete", n_samples=3)
    assert bool(((b > 0) & (b < 1)).all())


@pytest.mark.parametrize("family", ["bernoulli", "categorical"])
def test_hard_samples_have_the_distribution_of_p(family):
    if family == "bernoulli":
        dist = Bernoulli(logits=torch.tensor([-1.0, 0.0, 2.0]))
    else:
        dist = OneHotCategorical(logits=torch.tensor([0.5, -1.0, 1.0]))
    mean = dist.mean
    z = pwgf.sample(dist, "st-gumbel", n_samples=20000).detach()
    assert_mean_matches(z, mean)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_dtype_and_extreme_logits_stay_finite(name, dtype):
    assert_finite_at_extreme_logits(pwgf.get_estimator(name, temperature=0.1), dtype, 64)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("bad", [0.0, -0.5, math.inf, math.nan, "cold"])
def test_bad_temperature_is_rejected(name, bad):
    with pytest.raises(pwgf.PWGFError, match="temperature"):
        pwgf.get_estimator(name, temperature=bad)


@pytest.mark.parametrize("name", NAMES)
def test_every_family_is_served(name):
    """Poisson too (the generalised Gumbel-softmax; its checks are in test_gumbel_poisson.py)."""
    assert pwgf.get_estimator(name).families == ("bernoulli", "categorical", "poisson")
    loss = pwgf.get_estimator(name).surrogate(lambda z: z.sum(-1), Poisson(torch.ones(2)))
    assert loss.shape == () and bool(torch.isfinite(loss))
