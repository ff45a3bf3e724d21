"""ReinMax (categorical and Bernoulli): its own exact expectation, the reference algorithm, and the
property that makes it second order (exact in expectation for quadratic f at τ = 1)."""

import math

import pytest
import torch
from stats import Decoder, assert_mean_matches, draw_gradients, row_draws
from torch.distributions import Bernoulli, Independent, OneHotCategorical, Poisson

import pwgf

CAT_LOGITS = torch.tensor([[0.2, -1.0, 0.5], [1.0, 0.0, -0.3]], dtype=torch.float64)
BERN_LOGITS = torch.tensor([-1.2, 0.4, 2.0], dtype=torch.float64)
W3 = torch.tensor([[0.0, 1.5, -0.7], [0.3, 0.0, 1.1], [-0.8, 0.6, 0.0]], dtype=torch.float64)


def f_bern(z):  # nonlinear, with interactions
    return torch.sin(3 * z @ W3).sum(-1) + (z - 0.3).pow(2).sum(-1) + 2 * z[..., 0] * z[..., 2]


def f_bern_quadratic(z):  # quadratic in z, with interactions
    return (z @ W3).pow(2).sum(-1) + (z - 0.3).pow(2).sum(-1) + 2 * z[..., 0] * z[..., 2]


def f_cat(z):  # (K, 2, 3): nonlinear coupling of the two categoricals
    a = z[..., 0, :] @ torch.tensor([1.0, -2.0, 0.5])
    b = z[..., 1, :] @ torch.tensor([0.3, 1.0, -1.0])
    return torch.tanh(a * b + a) + (a - b) ** 2 / 4


def f_cat_quadratic(z):  # quadratic: squares and cross products of the one-hot coordinates
    a = z[..., 0, :] @ torch.tensor([1.0, -2.0, 0.5])
    b = z[..., 1, :] @ torch.tensor([0.3, 1.0, -1.0])
    return (a - b) ** 2 + 0.7 * a * b + (z**2).sum((-1, -2)) * 0.1


CASES = {
    "categorical-logits": (
        CAT_LOGITS,
        lambda p: Independent(OneHotCategorical(logits=p), 1),
        f_cat,
        f_cat_quadratic,
    ),
    "categorical-probs": (
        torch.softmax(CAT_LOGITS, -1),
        lambda p: Independent(OneHotCategorical(probs=p), 1),
        f_cat,
        f_cat_quadratic,
    ),
    "bernoulli-logits": (
        BERN_LOGITS,
        lambda p: Independent(Bernoulli(logits=p), 1),
        f_bern,
        f_bern_quadratic,
    ),
    "bernoulli-probs": (
        torch.sigmoid(BERN_LOGITS),
        lambda p: Independent(Bernoulli(probs=p), 1),
        f_bern,
        f_bern_quadratic,
    ),
}


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("tau", [1.0, 2.0])
def test_monte_carlo_mean_matches_own_exact_expectation(case, tau):
    param, make, f, _ = CASES[case]
    est = pwgf.get_estimator("reinmax", temperature=tau)
    target = pwgf.estimator_expectation(est, f, make(param))
    draws, _ = row_draws(est, f, make, param, rows=1000, k=2)
    assert_mean_matches(draws, target)


@pytest.mark.parametrize("case", list(CASES))
def test_second_order_exact_for_quadratic_f_at_unit_temperature(case):
    """The trapezoid rule is exact for quadratic f: E[ĝ] = ∇E[f] at τ = 1. Not so for ST (first
    order), nor for a nonquadratic f, nor at τ = 2, so the check is not vacuous."""
    param, make, f, fq = CASES[case]
    exact_q = pwgf.exact_gradient(fq, make(param))
    reinmax = pwgf.get_estimator("reinmax")
    mean = pwgf.estimator_expectation(reinmax, fq, make(param))
    torch.testing.assert_close(mean, exact_q, rtol=1e-10, atol=1e-12)
    scale = exact_q.abs().max()
    st_mean = pwgf.estimator_expectation(pwgf.get_estimator("st"), fq, make(param))
    assert (st_mean - exact_q).abs().max() > 1e-2 * scale
    hot = pwgf.estimator_expectation(
        pwgf.get_estimator("reinmax", temperature=2.0), fq, make(param)
    )
    assert (hot - exact_q).abs().max() > 1e-3 * scale
    exact = pwgf.exact_gradient(f, make(param))
    assert (pwgf.estimator_expectation(reinmax, f, make(param)) - exact).abs().max() > 1e-3


def test_batch_of_categoricals_with_one_output_each():
    """OneHotCategorical with batch shape (2,), f with one output per batch entry; independent
    backward passes (draw_gradients) against the exact mean of the summed outputs."""

    def f(z):  # (K, 2, 3) -> (K, 2)
        return torch.sin(z @ torch.tensor([1.0, -2.0, 0.5])) * torch.tensor([1.0, 3.0]) + z[..., 0]

    def make(p):
        return OneHotCategorical(logits=p)

    est = pwgf.get_estimator("reinmax", temperature=1.5)
    target = pwgf.estimator_expectation(est, f, make(CAT_LOGITS))
    draws = draw_gradients(est, f, make, CAT_LOGITS, draws=200, k=2)
    assert_mean_matches(draws, target)


def _softmax_jacobian(p):
    return torch.diag(p) - torch.outer(p, p)


@pytest.mark.parametrize("tau", [1.0, 0.5, 3.0])
def test_matches_the_reference_algorithm_at_every_sample(tau):
    """Per sample D and incoming gradient g (f linear, f(z) = g·z):
    ĝ = 2 J((softmax(θ/τ) + D)/2) g - ½ J(softmax θ) g, J(p) = diag(p) - ppᵀ."""
    theta = torch.tensor([0.3, -1.2, 0.8, 0.1])
    g = torch.tensor([1.0, -0.5, 2.0, 0.25])
    est = pwgf.get_estimator("reinmax", temperature=tau)
    for i in range(4):
        d = torch.eye(4)[i]
        leaf = theta.clone().requires_grad_(True)
        fam = est.family(OneHotCategorical(logits=leaf))
        out = est.surrogate_at(lambda z: z @ g, fam, d.unsqueeze(0))
        (got,) = torch.autograd.grad(out, leaf)
        half = 0.5 * (torch.softmax(theta / tau, -1) + d)
        want = 2 * _softmax_jacobian(half) @ g - 0.5 * _softmax_jacobian(theta.softmax(-1)) @ g
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("tau", [1.0, 2.0])
def test_bernoulli_is_the_two_class_categorical(tau):
    """Bernoulli(ℓ) = OneHotCategorical(logits (0, ℓ)) on (1 - z, z): the same exact mean."""
    est = pwgf.get_estimator("reinmax", temperature=tau)
    bern = est.family(Independent(Bernoulli(logits=BERN_LOGITS), 1))
    cat_logits = torch.stack([torch.zeros_like(BERN_LOGITS), BERN_LOGITS], -1)

    def f_two(y):  # (K, 3, 2) -> (K,)
        return f_bern(y[..., 1])

    mean_b = pwgf.estimator_expectation(est, f_bern, bern)
    mean_c = pwgf.estimator_expectation(
        est, f_two, Independent(OneHotCategorical(logits=cat_logits), 1)
    )
    torch.testing.assert_close(mean_b, mean_c[:, 1], rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(mean_c.sum(-1), torch.zeros(3), atol=1e-14, rtol=0)


@pytest.mark.parametrize("case", ["categorical-logits", "bernoulli-logits"])
def test_gradient_of_f_parameters_is_ordinary(case):
    param, make, _, _ = CASES[case]
    dec = Decoder(param.numel())
    dist = make(param)
    (exact,) = torch.autograd.grad(pwgf.exact_expectation(dec, dist), dec.w)
    est = pwgf.get_estimator("reinmax")
    draws = []
    for _ in range(200):
        (g,) = torch.autograd.grad(est.surrogate(dec, dist, n_samples=2), dec.w)
        draws.append(g)
    assert_mean_matches(torch.stack(draws), exact)


def test_sample_is_discrete_and_its_backward_is_the_surrogate():
    leaf = CAT_LOGITS.clone().requires_grad_(True)
    torch.manual_seed(3)
    z = pwgf.sample(Independent(OneHotCategorical(logits=leaf), 1), "reinmax", n_samples=4)
    assert z.shape == (4, 2, 3) and torch.all(z.sum(-1) == 1)
    (g_sample,) = torch.autograd.grad(f_cat(z).mean(0), leaf)
    torch.manual_seed(3)
    est = pwgf.get_estimator("reinmax")
    out = est.surrogate(f_cat, Independent(OneHotCategorical(logits=leaf), 1), 4)
    (g_sur,) = torch.autograd.grad(out, leaf)
    torch.testing.assert_close(g_sample, g_sur)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_dtype_follows_the_parameters(dtype):
    for make, param in [
        (lambda p: Independent(Bernoulli(logits=p), 1), BERN_LOGITS),
        (lambda p: Independent(OneHotCategorical(probs=p), 1), CAT_LOGITS.softmax(-1)),
    ]:
        leaf = param.to(dtype).requires_grad_(True)
        out = pwgf.get_estimator("reinmax").surrogate(
            lambda z: z.reshape(z.shape[0], -1).pow(2).sum(-1).sin(), make(leaf), 4
        )
        (g,) = torch.autograd.grad(out, leaf)
        assert out.dtype == dtype and g.dtype == dtype and bool(torch.isfinite(g).all())


@pytest.mark.parametrize("bad", [0.0, -1.0, math.nan, math.inf, "hot"])
def test_bad_temperature_is_rejected(bad):
    with pytest.raises(pwgf.PWGFError, match="temperature"):
        pwgf.get_estimator("reinmax", temperature=bad)


def test_unsupported_family_names_the_estimators_that_can():
    with pytest.raises(pwgf.UnsupportedFamilyError, match="poisson") as info:
        pwgf.get_estimator("reinmax").surrogate(lambda z: z.sum(-1), Poisson(torch.ones(2)))
    can = str(info.value).split("estimators that do:")[1]
    assert "muprop" in can and "reinmax" not in can
