"""Monte Carlo means of the core estimators against exact answers (5 standard errors)."""

import pytest
import torch
from stats import Decoder, assert_mean_matches, draw_gradients
from torch.distributions import Bernoulli, Independent, OneHotCategorical, Poisson

import pwgf
from pwgf.experiments import problems

PROBLEMS = {p.name: p for p in problems.default_problems()}
CORE = [
    ("st", {}),
    ("pwgf", {}),
    ("pwgf", {"bandwidth": 0.5, "normalization": "raw"}),
    ("pwgf", {"bandwidth": "std*0.5", "step": 0.2}),
    ("reinforce", {}),
    ("reinforce", {"baseline": "loo"}),
    ("reinforce-loo", {}),
    ("reinforce", {"baseline": "ema"}),
    ("mvd", {}),
]


def _cases():
    for prob in PROBLEMS.values():
        for name, opts in CORE:
            if prob.family in pwgf.get_estimator(name, **opts).families:
                yield pytest.param(prob, name, opts, id=f"{prob.name}-{name}-{opts}")


@pytest.mark.parametrize(("prob", "name", "opts"), list(_cases()))
def test_mean_matches_exact_or_own_expectation(prob, name, opts):
    est = pwgf.get_estimator(name, **opts)
    draws = draw_gradients(est, prob.f, prob.make, prob.param, draws=300, k=2)
    if est.biased:
        target = pwgf.estimator_expectation(est, prob.f, prob.dist())
    else:
        target = pwgf.exact_gradient(prob.f, prob.dist())
    assert_mean_matches(draws, target)


@pytest.mark.parametrize("prob", list(PROBLEMS.values()), ids=lambda p: p.name)
def test_unbiased_estimators_exact_mean_is_exact_gradient(prob):
    exact = pwgf.exact_gradient(prob.f, prob.dist())
    for name in ("reinforce", "mvd"):
        est = pwgf.get_estimator(name)
        if prob.family in est.families:
            mean = pwgf.estimator_expectation(est, prob.f, prob.dist())
            torch.testing.assert_close(mean, exact, rtol=1e-9, atol=1e-10)


def test_st_is_biased_where_f_is_nonlinear_and_exact_where_linear():
    prob = PROBLEMS["bernoulli-8"]
    st = pwgf.get_estimator("st")
    assert (
        pwgf.estimator_expectation(st, prob.f, prob.dist())
        - pwgf.exact_gradient(prob.f, prob.dist())
    ).norm() > 0.1
    w = torch.randn(8)

    def linear(z):
        return z @ w

    torch.testing.assert_close(
        pwgf.estimator_expectation(st, linear, prob.dist()),
        pwgf.exact_gradient(linear, prob.dist()),
    )


@pytest.mark.parametrize("name", ["st", "pwgf", "reinforce", "reinforce-loo", "mvd"])
@pytest.mark.parametrize("family", ["bernoulli", "poisson"])
def test_gradient_of_f_parameters_is_ordinary(name, family):
    """The surrogate's gradient for f's own parameters estimates ∂E[f]/∂w, unbiasedly."""
    d = 4
    dec = Decoder(d)
    if family == "bernoulli":
        dist = Independent(Bernoulli(logits=torch.linspace(-1, 1, d)), 1)
    else:
        dist = Independent(Poisson(torch.tensor([0.5, 1.0, 2.0, 3.0])), 1)
    (exact,) = torch.autograd.grad(pwgf.exact_expectation(dec, dist), dec.w)
    est = pwgf.get_estimator(name)
    draws = []
    for _ in range(300):
        (g,) = torch.autograd.grad(est.surrogate(dec, dist, n_samples=2), dec.w)
        draws.append(g)
    assert_mean_matches(torch.stack(draws), exact)


def test_batch_outputs_credit_their_own_rows():
    """f returns one cost per batch row; each row's gradient reaches only its own logits."""
    logits = torch.randn(3, 4, requires_grad=True)

    def f(z):  # (K, 3, 4) -> (K, 3)
        return (z * torch.arange(4.0)).sum(-1) ** 2

    for name in ("st", "pwgf", "reinforce", "mvd"):
        dist = Independent(Bernoulli(logits=logits), 1)  # torch caches probs' graph per object
        loss = pwgf.get_estimator(name).surrogate(f, dist, n_samples=5)
        assert loss.shape == (3,)
        (g,) = torch.autograd.grad(loss[1], logits)
        assert g[0].abs().sum() == 0 and g[2].abs().sum() == 0, name
        assert g[1].abs().sum() > 0, name


def test_surrogate_value_is_monte_carlo_mean():
    prob = PROBLEMS["poisson-nonlinear"]
    for name in ("st", "pwgf", "reinforce", "reinforce-loo", "mvd"):
        vals = torch.stack(
            [pwgf.get_estimator(name).surrogate(prob.f, prob.dist(), 4) for _ in range(300)]
        )
        assert_mean_matches(vals, pwgf.exact_expectation(prob.f, prob.dist()))


def test_sample_shape_and_values_are_discrete():
    logits = torch.randn(2, 5, requires_grad=True)
    z = pwgf.sample(Independent(Bernoulli(logits=logits), 1), estimator="pwgf", n_samples=4)
    assert z.shape == (4, 2, 5)
    assert set(z.detach().unique().tolist()) <= {0.0, 1.0}
    c = pwgf.sample(OneHotCategorical(logits=torch.randn(3, 6)), estimator="st", n_samples=2)
    assert c.shape == (2, 3, 6) and torch.all(c.sum(-1) == 1)
    p = pwgf.sample(Poisson(torch.tensor([2.0, 30.0])), estimator="pwgf", n_samples=7)
    assert p.shape == (7, 2) and torch.all(p == p.round())


def test_gradient_reaches_an_upstream_network():
    enc = torch.nn.Linear(3, 5)
    x = torch.randn(7, 3)
    z = pwgf.sample(Bernoulli(logits=enc(x)), estimator="st", n_samples=2)
    (z.sum(-1) ** 2).mean().backward()
    assert enc.weight.grad is not None and enc.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("prob", list(PROBLEMS.values()), ids=lambda p: p.name)
def test_exact_moments_agree_with_measured_ones(prob):
    """Exact mean and variance by enumeration vs 400 draws, both within 5 standard errors: the
    squared deviations from the exact mean have expectation exactly the variance, and their own
    spread gives the standard error of that comparison."""
    for name in ("st", "pwgf", "reinforce", "mvd"):
        est = pwgf.get_estimator(name)
        if prob.family not in est.families:
            continue
        mean, var = pwgf.estimator_moments(est, prob.f, prob.dist(), n_samples=2)
        torch.testing.assert_close(mean, pwgf.estimator_expectation(est, prob.f, prob.dist()))
        draws = draw_gradients(est, prob.f, prob.make, prob.param, draws=400, k=2)
        assert_mean_matches(draws, mean)
        centred = (draws - mean) ** 2  # unbiased for var since the mean is exact
        assert_mean_matches(centred, var)


@pytest.mark.parametrize("joint", [False, True])
@pytest.mark.parametrize("family", ["bernoulli", "poisson"])
def test_mvd_per_entry_fast_path_is_exact_and_cheap(joint, family):
    """With one cost per batch entry, mvd flips coordinate d of every entry in one evaluation:
    1 + D evaluations per sample instead of 1 + B·D, and the same exact mean."""
    param = torch.tensor([[-0.7, -1.1], [-1.3, -0.4]])
    w = torch.tensor([0.8, -1.5])

    def make(p):
        base = Bernoulli(logits=p) if family == "bernoulli" else Poisson(p.exp())
        return Independent(base, 1)

    calls = []

    def f(z):  # (K, 2, 2) -> (K, 2): entry b's cost depends on entry b only
        calls.append(z.shape[0])
        return torch.sin(z @ w) * z.sum(-1)

    est = pwgf.get_estimator("mvd", joint_score=joint)
    torch.testing.assert_close(
        pwgf.estimator_expectation(est, f, make(param)), pwgf.exact_gradient(f, make(param))
    )
    calls.clear()
    est.surrogate(f, make(param), n_samples=3)
    assert sum(calls) == 3 * (1 + (4 if joint else 2))
