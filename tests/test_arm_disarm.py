"""ARM and DisARM (Bernoulli logits): unbiasedness, DisARM's variance <= ARM's, f's parameters.

Exact checks integrate over the uniform noise u with a tensor-product Gauss-Legendre rule: per
coordinate, [0, 1) splits at min(p, 1-p) and max(p, 1-p) into three intervals on which the pair
(b, b̃) is constant, so an estimate is a polynomial of degree <= 1 in u_d there (degree <= 2 for
its square) and two nodes per interval integrate the mean and the second moment exactly.
Monte Carlo checks use 5 standard errors estimated from the draws.
"""

import math

import pytest
import torch
from stats import Decoder, assert_mean_matches, draw_gradients, row_draws
from torch.distributions import Bernoulli, Independent, OneHotCategorical, Poisson

import pwgf

NAMES = ["arm", "disarm"]
D = 3
LOGITS = torch.tensor([-1.2, 0.4, 2.0], dtype=torch.float64)
T = torch.tensor([0.2, 0.9, 0.5], dtype=torch.float64)
W = torch.tensor([[0.0, 1.5, -0.7], [0.3, 0.0, 1.1], [-0.8, 0.6, 0.0]], dtype=torch.float64)


def f_interact(z):  # nonlinear, with interactions between coordinates
    return ((z - T) ** 2).sum(-1) + torch.sin(3 * z @ W).sum(-1) + z[..., 0] * z[..., 2]


def f_simple(z):
    return torch.exp(0.5 * z).sum(-1)


FS = {"interact": f_interact, "simple": f_simple}


def _param_and_make(build):
    if build == "logits":
        return LOGITS.clone(), lambda p: Independent(Bernoulli(logits=p), 1)
    return torch.sigmoid(LOGITS), lambda p: Independent(Bernoulli(probs=p), 1)


def _gauss_legendre_grid(p):
    """Nodes ``(P, D)`` in (0,1)^D and weights ``(P,)`` integrating ARM/DisARM's terms exactly."""
    a, c = torch.minimum(p, 1 - p), torch.maximum(p, 1 - p)
    edges = torch.stack([torch.zeros_like(p), a, c, torch.ones_like(p)], -1)  # (D, 4)
    lo, hi = edges[:, :-1], edges[:, 1:]
    mid, half = (lo + hi) / 2, (hi - lo) / 2
    off = half / math.sqrt(3)
    nodes = torch.cat([mid - off, mid + off], -1)  # (D, 6)
    weights = torch.cat([half, half], -1)  # (D, 6), sums to 1 per coordinate
    idx = torch.cartesian_prod(*[torch.arange(6)] * p.numel())  # (6^D, D)
    cols = torch.arange(p.numel())
    return nodes[cols, idx], weights[cols, idx].prod(-1)


def _per_point_estimates(est, f, param, make, u):
    """One single-sample estimate per row of ``u`` ``(P, D)``: P independent copies of the
    problem as the batch of one distribution, f applied row by row (valid: each output is
    credited only to its own row, and each row's estimate uses only its own noise)."""
    rows = u.shape[0]
    leaf = param.expand(rows, *param.shape).clone().requires_grad_(True)
    fam = est.family(make(leaf))
    loss = est.surrogate_at(f, fam, u.unsqueeze(0)).sum()
    (g,) = torch.autograd.grad(loss, leaf)
    return g


@pytest.mark.parametrize("build", ["logits", "probs"])
@pytest.mark.parametrize("fname", list(FS))
def test_exact_mean_is_exact_gradient_and_disarm_variance_below_arm(build, fname):
    f = FS[fname]
    param, make = _param_and_make(build)
    u, w = _gauss_legendre_grid(torch.sigmoid(LOGITS))
    exact = pwgf.exact_gradient(f, make(param))
    moments = {}
    for name in NAMES:
        g = _per_point_estimates(pwgf.get_estimator(name), f, param, make, u)
        mean = (w[:, None] * g).sum(0)
        torch.testing.assert_close(mean, exact, rtol=1e-10, atol=1e-12)
        moments[name] = (w[:, None] * g**2).sum(0) - mean**2
    # Rao-Blackwell: per coordinate, for any f; strict here since f is not constant
    assert bool((moments["disarm"] <= moments["arm"] + 1e-12).all()), moments
    assert bool((moments["disarm"] < 0.99 * moments["arm"]).any()), moments


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("build", ["logits", "probs"])
@pytest.mark.parametrize("fname", list(FS))
def test_monte_carlo_mean_matches_exact_gradient(name, build, fname):
    f = FS[fname]
    param, make = _param_and_make(build)
    est = pwgf.get_estimator(name)
    draws, _ = row_draws(est, f, make, param, rows=1000, k=2)
    assert_mean_matches(draws, pwgf.exact_gradient(f, make(param)))


@pytest.mark.parametrize("name", NAMES)
def test_batched_rows_each_get_their_own_unbiased_estimate(name):
    """An Independent-wrapped batch of 4 rows, f with one output per row; each row's gradient
    comes only from its own output, and all rows match the exact gradient."""
    logits = torch.tensor([[-1.0, 0.5, 1.5], [0.3, -0.2, 0.0], [2.0, -2.0, 0.7], [0.0, 1.0, -1.0]])

    def f(z):  # (K, 4, 3) -> (K, 4)
        return f_interact(z) + z.sum(-1) ** 2 / 3

    def make(p):
        return Independent(Bernoulli(logits=p), 1)

    est = pwgf.get_estimator(name)
    leaf = logits.clone().requires_grad_(True)
    loss = est.surrogate(f, make(leaf), n_samples=3)
    assert loss.shape == (4,)
    (g,) = torch.autograd.grad(loss[1], leaf)
    assert g[[0, 2, 3]].abs().sum() == 0 and g[1].abs().sum() > 0
    draws = draw_gradients(est, f, make, logits, draws=300, k=2)
    assert_mean_matches(draws, pwgf.exact_gradient(f, make(logits)))


@pytest.mark.parametrize("name", NAMES)
def test_joint_score_is_unbiased_when_outputs_couple_rows(name):
    logits = torch.tensor([[-0.5, 1.0], [0.8, -1.5]])

    def f(z):  # (K, 2, 2) -> (K, 2): each output depends on both rows
        flat = z.reshape(z.shape[0], -1)
        return torch.stack(
            [torch.sin(flat @ T.new_tensor([1.0, 2.0, -1.0, 0.5])), flat.sum(-1) ** 2], -1
        )

    def make(p):
        return Independent(Bernoulli(logits=p), 1)

    est = pwgf.get_estimator(name, joint_score=True)
    draws = draw_gradients(est, f, make, logits, draws=400, k=2)
    assert_mean_matches(draws, pwgf.exact_gradient(f, make(logits)))


@pytest.mark.parametrize("name", NAMES)
def test_surrogate_value_is_monte_carlo_mean_of_f(name):
    param, make = _param_and_make("logits")
    est = pwgf.get_estimator(name)
    _, vals = row_draws(est, f_interact, make, param, rows=1000, k=3)
    assert_mean_matches(vals, pwgf.exact_expectation(f_interact, make(param)))


@pytest.mark.parametrize("name", NAMES)
def test_gradient_of_f_parameters_is_ordinary(name):
    dec = Decoder(D)
    dist = Independent(Bernoulli(logits=LOGITS), 1)
    (exact,) = torch.autograd.grad(pwgf.exact_expectation(dec, dist), dec.w)
    est = pwgf.get_estimator(name)
    draws = []
    for _ in range(200):
        (g,) = torch.autograd.grad(est.surrogate(dec, dist, n_samples=2), dec.w)
        draws.append(g)
    assert_mean_matches(torch.stack(draws), exact)


@pytest.mark.parametrize("name", NAMES)
def test_one_call_of_f_on_both_evaluations(name):
    calls = []

    def f(z):
        calls.append(tuple(z.shape))
        assert set(z.unique().tolist()) <= {0.0, 1.0}
        return f_interact(z)

    pwgf.get_estimator(name).surrogate(f, Independent(Bernoulli(logits=LOGITS), 1), 5)
    assert calls == [(10, D)]


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_dtype_follows_the_parameters(name, dtype):
    leaf = LOGITS.to(dtype).requires_grad_(True)
    out = pwgf.get_estimator(name).surrogate(
        lambda z: (z.sum(-1) - 1) ** 2, Independent(Bernoulli(logits=leaf), 1), 4
    )
    (g,) = torch.autograd.grad(out, leaf)
    assert out.dtype == dtype and g.dtype == dtype and bool(torch.isfinite(g).all())


@pytest.mark.parametrize("name", NAMES)
def test_unsupported_family_names_the_estimators_that_can(name):
    est = pwgf.get_estimator(name)
    for dist, family in [
        (OneHotCategorical(logits=torch.zeros(3)), "categorical"),
        (Poisson(torch.ones(2)), "poisson"),
    ]:
        with pytest.raises(pwgf.UnsupportedFamilyError, match=family) as info:
            est.surrogate(lambda z: z.sum(-1), dist)
        assert "reinforce" in str(info.value) and "muprop" in str(info.value)
