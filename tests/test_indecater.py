"""IndeCateR: unbiased (its exact mean is the exact gradient, and its Monte Carlo mean matches
it), per-entry and joint crediting, f's own parameters, its cost in evaluations of f, errors."""

import pytest
import torch
from stats import Decoder, assert_mean_matches, bernoulli_cases, categorical_cases, row_draws
from torch.distributions import Bernoulli, Independent, OneHotCategorical, Poisson

import pwgf

CAT_LOGITS = torch.tensor([[0.2, -1.0, 0.5], [1.0, 0.0, -0.3]], dtype=torch.float64)
BERN_LOGITS = torch.tensor([-1.2, 0.4, 2.0], dtype=torch.float64)


def f_cat(z):  # couples the two categoricals nonlinearly
    a = z[..., 0, :] @ torch.tensor([1.0, -2.0, 0.5])
    b = z[..., 1, :] @ torch.tensor([0.3, 1.0, -1.0])
    return torch.tanh(a * b + a) + (a - b) ** 2 / 4


def f_bern(z):
    return torch.sin(3 * z).sum(-1) + 2 * z[..., 0] * z[..., 2] - z[..., 1] * z[..., 2]


CASES = {**categorical_cases(CAT_LOGITS, f_cat), **bernoulli_cases(BERN_LOGITS, f_bern)}


@pytest.mark.parametrize("case", list(CASES))
def test_exact_mean_is_the_exact_gradient(case):
    param, make, f = CASES[case]
    exact = pwgf.exact_gradient(f, make(param))
    for joint in (False, True):
        est = pwgf.get_estimator("indecater", joint_score=joint)
        mean = pwgf.estimator_expectation(est, f, make(param))
        torch.testing.assert_close(mean, exact, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("case", ["categorical-logits", "bernoulli-probs"])
def test_monte_carlo_mean_matches_exact_gradient(case):
    param, make, f = CASES[case]
    draws, values = row_draws(pwgf.get_estimator("indecater"), f, make, param, rows=1000, k=2)
    assert_mean_matches(draws, pwgf.exact_gradient(f, make(param)))
    assert_mean_matches(values.unsqueeze(-1), pwgf.exact_expectation(f, make(param)).reshape(1))


def test_per_entry_outputs_and_joint_crediting_agree_in_mean():
    """A batch of 3 entries, each 2 categoricals, one output per entry: per-entry crediting
    varies each entry's atom i at once (2·3 variants), the joint form every atom (6·3)."""
    logits = torch.randn(3, 2, 3)

    def make(p):
        return Independent(OneHotCategorical(logits=p), 1)

    def f(z):  # (K, 3, 2, 3) -> (K, 3)
        return f_cat(z) * torch.tensor([1.0, -2.0, 0.5])

    exact = pwgf.exact_gradient(f, make(logits))
    for joint in (False, True):
        est = pwgf.get_estimator("indecater", joint_score=joint)
        torch.testing.assert_close(
            pwgf.estimator_expectation(est, f, make(logits)), exact, rtol=1e-10, atol=1e-12
        )
    rows = []

    def counted(z):
        rows.append(z.shape[0])
        return f(z)

    pwgf.get_estimator("indecater").surrogate(counted, make(logits), n_samples=4)
    assert rows == [4, 4 * 2 * 3]  # K samples, then K·(2 atoms per entry)·(3 classes)
    rows.clear()
    pwgf.get_estimator("indecater", joint_score=True).surrogate(counted, make(logits), 4)
    assert rows == [4, 4 * 6 * 3]


def test_gradient_of_f_parameters_is_ordinary():
    param, make, _ = CASES["categorical-logits"]
    dec = Decoder(param.numel())
    dist = make(param)
    (exact,) = torch.autograd.grad(pwgf.exact_expectation(dec, dist), dec.w)
    est = pwgf.get_estimator("indecater")
    draws = []
    for _ in range(200):
        (g,) = torch.autograd.grad(est.surrogate(dec, dist, n_samples=2), dec.w)
        draws.append(g)
    assert_mean_matches(torch.stack(draws), exact)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_dtype_follows_the_parameters(dtype):
    leaf = CAT_LOGITS.to(dtype).requires_grad_(True)
    out = pwgf.get_estimator("indecater").surrogate(
        lambda z: z.reshape(z.shape[0], -1).pow(2).sum(-1).sin(),
        Independent(OneHotCategorical(logits=leaf), 1),
        3,
    )
    (g,) = torch.autograd.grad(out, leaf)
    assert out.dtype == dtype and g.dtype == dtype and bool(torch.isfinite(g).all())


def test_poisson_is_refused_and_it_is_not_pathwise():
    est = pwgf.get_estimator("indecater")
    with pytest.raises(pwgf.UnsupportedFamilyError, match="poisson"):
        est.surrogate(lambda z: z.sum(-1), Poisson(torch.ones(2)))
    with pytest.raises(pwgf.NeedsCostFunctionError, match="indecater"):
        pwgf.sample(Bernoulli(logits=torch.zeros(2)), "indecater")
    with pytest.raises(pwgf.PWGFError, match="no option"):
        pwgf.get_estimator("indecater", m=3)
