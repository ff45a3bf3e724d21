"""MuProp on the three families, and REINFORCE's moving-average baseline.

MuProp is unbiased and its estimate averages per-sample terms, so its exact mean (a sum over the
support, ``pwgf.estimator_expectation``) must equal the exact gradient to rounding; Monte Carlo
means must match within 5 standard errors estimated from the draws.
"""

import pytest
import torch
from stats import Decoder, assert_mean_matches, draw_gradients, row_draws
from torch.distributions import Bernoulli, Independent, OneHotCategorical, Poisson

import pwgf
from pwgf.estimators.muprop import linear_term
from pwgf.experiments import problems

W3 = torch.tensor([[0.0, 1.5, -0.7], [0.3, 0.0, 1.1], [-0.8, 0.6, 0.0]], dtype=torch.float64)


def f_bern(z):  # (K, 3): nonlinear with interactions
    return torch.sin(3 * z @ W3).sum(-1) + (z - 0.3).pow(2).sum(-1) + 2 * z[..., 0] * z[..., 2]


def f_bern_simple(z):
    return torch.exp(0.5 * z).sum(-1)


def f_cat(z):  # (K, 2, 3): couples the two categoricals nonlinearly
    a = z[..., 0, :] @ torch.tensor([1.0, -2.0, 0.5])
    b = z[..., 1, :] @ torch.tensor([0.3, 1.0, -1.0])
    return torch.tanh(a * b + a) + (a - b) ** 2 / 4


def f_cat_simple(z):
    return (z * torch.arange(3.0)).sum((-1, -2)) ** 2


def f_pois(z):  # (K, 3)
    return (
        torch.sqrt(1 + z).mul(torch.tensor([1.0, -0.5, 0.25])).sum(-1)
        + 0.05 * z[..., 0] * z[..., 2]
    )


def f_pois_simple(z):
    return ((z - 2.0) ** 2).sum(-1)


BERN_LOGITS = torch.tensor([-1.2, 0.4, 2.0], dtype=torch.float64)
CAT_LOGITS = torch.tensor([[0.2, -1.0, 0.5], [1.0, 0.0, -0.3]], dtype=torch.float64)
RATES = torch.tensor([0.5, 2.0, 4.0], dtype=torch.float64)

CASES = {
    "bernoulli-logits": (
        BERN_LOGITS,
        lambda p: Independent(Bernoulli(logits=p), 1),
        [f_bern, f_bern_simple],
    ),
    "bernoulli-probs": (
        torch.sigmoid(BERN_LOGITS),
        lambda p: Independent(Bernoulli(probs=p), 1),
        [f_bern, f_bern_simple],
    ),
    "categorical-logits": (
        CAT_LOGITS,
        lambda p: Independent(OneHotCategorical(logits=p), 1),
        [f_cat, f_cat_simple],
    ),
    "categorical-probs": (
        torch.softmax(CAT_LOGITS, -1),
        lambda p: Independent(OneHotCategorical(probs=p), 1),
        [f_cat, f_cat_simple],
    ),
    "poisson": (RATES, lambda p: Independent(Poisson(p), 1), [f_pois, f_pois_simple]),
}


@pytest.mark.parametrize("case", list(CASES))
def test_exact_mean_equals_exact_gradient(case):
    param, make, fs = CASES[case]
    est = pwgf.get_estimator("muprop")
    for f in fs:
        mean = pwgf.estimator_expectation(est, f, make(param))
        torch.testing.assert_close(mean, pwgf.exact_gradient(f, make(param)), rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize("prob", problems.default_problems(), ids=lambda p: p.name)
def test_exact_mean_on_the_shared_problems(prob):
    """Includes Poisson with chunked enumeration (more configurations than one chunk)."""
    mean = pwgf.estimator_expectation(pwgf.get_estimator("muprop"), prob.f, prob.dist())
    torch.testing.assert_close(
        mean, pwgf.exact_gradient(prob.f, prob.dist()), rtol=1e-9, atol=1e-10
    )


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("which", [0, 1])
def test_monte_carlo_mean_matches_exact_gradient(case, which):
    param, make, fs = CASES[case]
    f = fs[which]
    draws, _ = row_draws(pwgf.get_estimator("muprop"), f, make, param, rows=1000, k=2)
    assert_mean_matches(draws, pwgf.exact_gradient(f, make(param)))


@pytest.mark.parametrize("case", ["bernoulli-logits", "categorical-probs", "poisson"])
def test_leave_one_out_baseline_is_unbiased(case):
    param, make, fs = CASES[case]
    est = pwgf.get_estimator("muprop", baseline="loo")
    assert not est.per_sample and est.min_samples == 2
    draws, _ = row_draws(est, fs[0], make, param, rows=1000, k=3)
    assert_mean_matches(draws, pwgf.exact_gradient(fs[0], make(param)))


@pytest.mark.parametrize("case", ["bernoulli-logits", "categorical-logits", "poisson"])
def test_each_output_gets_its_own_control_variate(case):
    """For f linear in z the Taylor control variate is exact for every output, so the gradient
    of any single output is the exact gradient at every draw (zero variance). A control variate
    built from the summed outputs would leave noise in each output."""
    param, make, _ = CASES[case]
    n = param.numel()
    a = torch.linspace(-1, 1, n * 3).reshape(n, 3) + torch.eye(n, 3)

    def f(z):  # (K, *shape) -> (K, 3), three different linear functions of all atoms
        return 1.0 + z.reshape(z.shape[0], -1) @ a

    est = pwgf.get_estimator("muprop", joint_score=True)
    for j in range(3):

        def fj(z, j=j):
            return f(z)[:, j]

        exact = pwgf.exact_gradient(fj, make(param))
        for _ in range(5):
            leaf = param.clone().requires_grad_(True)
            out = est.surrogate(f, make(leaf), n_samples=2)
            assert out.shape == (3,)
            (g,) = torch.autograd.grad(out[j], leaf)
            torch.testing.assert_close(g, exact, rtol=1e-10, atol=1e-12)


def test_batched_rows_each_get_their_own_unbiased_estimate():
    logits = torch.tensor([[-1.0, 0.5, 1.5], [0.3, -0.2, 0.0], [2.0, -2.0, 0.7]])

    def f(z):  # (K, 3, 3) -> (K, 3)
        return f_bern(z) + z.sum(-1) ** 2 / 3

    def make(p):
        return Independent(Bernoulli(logits=p), 1)

    est = pwgf.get_estimator("muprop")
    leaf = logits.clone().requires_grad_(True)
    loss = est.surrogate(f, make(leaf), n_samples=3)
    assert loss.shape == (3,)
    (g,) = torch.autograd.grad(loss[1], leaf)
    assert g[[0, 2]].abs().sum() == 0 and g[1].abs().sum() > 0
    draws = draw_gradients(est, f, make, logits, draws=200, k=2)
    assert_mean_matches(draws, pwgf.exact_gradient(f, make(logits)))


def test_surrogate_value_is_monte_carlo_mean_of_f():
    param, make, fs = CASES["poisson"]
    est = pwgf.get_estimator("muprop")
    _, vals = row_draws(est, fs[0], make, param, rows=1000, k=3)
    assert_mean_matches(vals, pwgf.exact_expectation(fs[0], make(param)))


@pytest.mark.parametrize("case", ["bernoulli-logits", "categorical-logits", "poisson"])
def test_gradient_of_f_parameters_is_ordinary(case):
    param, make, _ = CASES[case]
    dec = Decoder(param.numel())
    dist = make(param)
    (exact,) = torch.autograd.grad(pwgf.exact_expectation(dec, dist), dec.w)
    est = pwgf.get_estimator("muprop")
    # at fixed samples, f's parameters get exactly the gradient of the mean of f(z_k): the
    # analytic term's two evaluations cancel
    fam = pwgf.as_family(dist)
    z = fam.sample(4)
    (g_est,) = torch.autograd.grad(est.surrogate_at(dec, fam, z), dec.w)
    (g_mean,) = torch.autograd.grad(dec(z).mean(0), dec.w)
    torch.testing.assert_close(g_est, g_mean, rtol=1e-12, atol=1e-14)
    draws = []
    for _ in range(200):
        (g,) = torch.autograd.grad(est.surrogate(dec, dist, n_samples=2), dec.w)
        draws.append(g)
    assert_mean_matches(torch.stack(draws), exact)


class _NoForwardAD(torch.autograd.Function):
    """tanh with a backward rule only (no forward-mode rule), as a user's custom op might be."""

    @staticmethod
    def forward(ctx, x):
        y = torch.tanh(x)
        ctx.save_for_backward(y)
        return y

    @staticmethod
    def backward(ctx, g):
        (y,) = ctx.saved_tensors
        return g * (1 - y**2)


def test_linear_term_falls_back_to_double_backward():
    x, t = torch.randn(4, 3), torch.randn(4, 3)
    w = torch.randn(3, 2)

    def smooth(z):
        return torch.tanh(z @ w) ** 2

    def custom(z):
        return _NoForwardAD.apply(z @ w) ** 2

    with pytest.raises(RuntimeError):  # the premise: forward mode is unavailable for `custom`
        import torch.autograd.forward_ad as fwad

        with fwad.dual_level():
            custom(fwad.make_dual(x, t))
    torch.testing.assert_close(linear_term(custom, x, t), linear_term(smooth, x, t))
    # and the estimator gives the same estimate with either
    dist = Independent(Bernoulli(logits=torch.tensor([0.3, -0.5, 1.0])), 1)
    fam = pwgf.as_family(dist)
    z = fam.sample(3)
    est = pwgf.get_estimator("muprop")
    grads = []
    for f in (smooth, custom):
        leaf = torch.tensor([0.3, -0.5, 1.0], requires_grad=True)
        fam = pwgf.as_family(Independent(Bernoulli(logits=leaf), 1))
        (g,) = torch.autograd.grad(est.surrogate_at(f, fam, z).sum(), leaf)
        grads.append(g)
    torch.testing.assert_close(grads[0], grads[1])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_dtype_follows_the_parameters(dtype):
    for make, param in [
        (lambda p: Independent(Bernoulli(logits=p), 1), BERN_LOGITS),
        (lambda p: Independent(OneHotCategorical(logits=p), 1), CAT_LOGITS),
        (lambda p: Independent(Poisson(p), 1), RATES),
    ]:
        leaf = param.to(dtype).requires_grad_(True)
        out = pwgf.get_estimator("muprop").surrogate(
            lambda z: z.reshape(z.shape[0], -1).pow(2).sum(-1), make(leaf), 4
        )
        (g,) = torch.autograd.grad(out, leaf)
        assert out.dtype == dtype and g.dtype == dtype and bool(torch.isfinite(g).all())


def test_bad_options_raise_clear_errors():
    with pytest.raises(pwgf.PWGFError, match="baseline"):
        pwgf.get_estimator("muprop", baseline="ema2")
    with pytest.raises(pwgf.PWGFError, match=">= 2"):
        pwgf.get_estimator("muprop", baseline="loo").surrogate(
            f_bern, Independent(Bernoulli(logits=BERN_LOGITS), 1), 1
        )


# -- REINFORCE with the moving-average baseline (reinforce.py) ---------------------------------
def test_reinforce_ema_baseline_is_unbiased_and_reduces_variance():
    """The baseline is fixed before each call's samples are drawn, so every estimate is
    conditionally unbiased. With f offset by a large constant, plain REINFORCE's variance grows
    with the offset and the moving average removes it (asserted: a factor > 5 in every
    coordinate; measured: 300 to 900)."""
    param, make, _ = CASES["bernoulli-logits"]

    def f(z):
        return f_bern(z) + 20.0

    exact = pwgf.exact_gradient(f, make(param))
    ema = pwgf.get_estimator("reinforce", baseline="ema", decay=0.8)
    draws_ema = draw_gradients(ema, f, make, param, draws=200, k=2)
    assert_mean_matches(draws_ema, exact)
    draws_none = draw_gradients(pwgf.get_estimator("reinforce"), f, make, param, draws=200, k=2)
    assert_mean_matches(draws_none, exact)
    assert bool((draws_ema[10:].var(0) * 5 < draws_none.var(0)).all())


def test_reinforce_ema_baseline_state():
    param, make, _ = CASES["bernoulli-logits"]
    est = pwgf.get_estimator("reinforce", baseline="ema", decay=0.5)
    assert not est.per_sample
    vals = []
    for _ in range(3):
        vals.append(est.surrogate(f_bern, make(param), 4).detach())
    # surrogate values are the mean f; the first call starts the average, then decay 0.5
    expected = 0.5 * (0.5 * vals[0] + 0.5 * vals[1]) + 0.5 * vals[2]
    torch.testing.assert_close(est.running_mean, expected)
    assert int(est.n_updates) == 3
    est.eval()  # frozen in evaluation mode
    est.surrogate(f_bern, make(param), 4)
    torch.testing.assert_close(est.running_mean, expected)
    assert int(est.n_updates) == 3
    with pytest.raises(pwgf.PWGFError, match="decay"):
        pwgf.get_estimator("reinforce", baseline="ema", decay=1.0)
