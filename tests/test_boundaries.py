"""Every registered estimator at the boundaries of every family it supports.

The cases are the edges of the parameter ranges the library accepts: Bernoulli probabilities of
exactly 0 or 1 and below the float epsilon, categorical masks (-inf logits) and zero
probabilities, Poisson rates of 0. The estimator list is read from the registry when the tests
are collected, so an estimator added later is checked without editing this file. Each estimator
must either refuse with a clear pwgf error naming itself, or give finite values and gradients,
zero for masked categories, and, when it is unbiased, the exact gradient in expectation: exactly
(by enumeration, ``pwgf.estimator_expectation``) for ``per_sample`` estimators, within 5 standard
errors of Monte Carlo draws for the others.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import pytest
import torch
from stats import assert_mean_matches
from torch.distributions import Bernoulli, Independent, OneHotCategorical, Poisson

import pwgf
from pwgf.errors import PWGFError

INF = float("inf")


def bernoulli_cost(z):
    c = torch.tensor([0.2, 0.9, 0.5], dtype=z.dtype)[: z.shape[-1]]
    w = torch.tensor([0.7, 1.3, 0.4], dtype=z.dtype)[: z.shape[-1]]
    return ((z - c) ** 2 * w).sum(-1) + z[..., 0] * z[..., -1]


def categorical_cost(z):
    w = torch.tensor([0.3, -1.0, 2.0, 0.5], dtype=z.dtype)
    return (z * w).sum(-1) ** 2 + z[..., 1]


def poisson_cost(z):
    return ((z - 1.5) ** 2 * torch.tensor([1.0, 0.5], dtype=z.dtype)).sum(-1)


def bernoulli_probs(p):
    return Independent(Bernoulli(probs=p), 1)


def categorical_logits(lg):
    return OneHotCategorical(logits=lg)


def categorical_probs(p):
    return OneHotCategorical(probs=p)


def poisson(rate):
    return Independent(Poisson(rate), 1)


@dataclass(frozen=True)
class Case:
    family: str
    make: Callable[[torch.Tensor], object]
    param: tuple[float, ...]
    f: Callable[[torch.Tensor], torch.Tensor]
    dtype: torch.dtype = torch.float64
    #: Monte Carlo can check the mean (False where the boundary event is too rare to be drawn)
    mc: bool = True

    def tensor(self) -> torch.Tensor:
        return torch.tensor(self.param, dtype=self.dtype)


CASES = {
    "bernoulli-probs-0-1": Case("bernoulli", bernoulli_probs, (0.0, 1.0, 0.3), bernoulli_cost),
    "bernoulli-probs-all-0-1": Case("bernoulli", bernoulli_probs, (1.0, 0.0), bernoulli_cost),
    "bernoulli-probs-below-eps": Case(
        "bernoulli", bernoulli_probs, (1e-20, 1 - 2**-53, 0.3), bernoulli_cost, mc=False
    ),
    "bernoulli-probs-below-eps-float32": Case(
        "bernoulli",
        bernoulli_probs,
        (1e-8, 1 - 2**-24, 0.3),
        bernoulli_cost,
        dtype=torch.float32,
        mc=False,
    ),
    "categorical-mask-some": Case(
        "categorical", categorical_logits, (0.2, -INF, 0.5, -INF), categorical_cost
    ),
    "categorical-mask-all-but-one": Case(
        "categorical", categorical_logits, (-INF, -INF, 0.5, -INF), categorical_cost
    ),
    "categorical-probs-zero": Case(
        "categorical", categorical_probs, (0.2, 0.0, 0.8, 0.0), categorical_cost
    ),
    "poisson-rate-0": Case("poisson", poisson, (0.0, 2.0), poisson_cost),
    "poisson-rate-all-0": Case("poisson", poisson, (0.0, 0.0), poisson_cost),
}

DRAWS = 64  # Monte Carlo draws where the mean is checked that way


def _pairs():
    return [
        pytest.param(info.name, case, id=f"{info.name}-{case}")
        for info in pwgf.list_estimators()
        for case, c in CASES.items()
        if c.family in info.families
    ]


def _draw(est, case: Case):
    """One surrogate and its gradient for a fresh leaf, both checked finite."""
    leaf = case.tensor().requires_grad_(True)
    out = est.surrogate(case.f, case.make(leaf), max(2, est.min_samples))
    assert bool(torch.isfinite(out).all()), f"non-finite surrogate value {out}"
    (g,) = torch.autograd.grad(out.sum(), leaf)
    assert bool(torch.isfinite(g).all()), f"non-finite gradient {g}"
    if est.learnable:  # the tuning path must stay finite too
        try:
            v = est.variance_loss()
        except PWGFError:  # nothing pending (not tuning)
            pass
        else:
            assert bool(torch.isfinite(v).all())
    return g


@pytest.mark.parametrize(("name", "case_name"), _pairs())
def test_estimator_at_boundary(name, case_name):
    case = CASES[case_name]
    est = pwgf.get_estimator(name)
    exact = pwgf.exact_gradient(case.f, case.make(case.tensor()))
    assert bool(torch.isfinite(exact).all()), f"exact gradient {exact}"
    unbiased = not est.biased
    mc = unbiased and not est.per_sample and case.mc
    try:
        draws = torch.stack([_draw(est, case) for _ in range(DRAWS if mc else 4)])
    except PWGFError as err:  # a refusal is allowed if it is a pwgf error naming the estimator
        assert name in str(err), f"the error does not name the estimator: {err}"
        return
    masked = torch.isneginf(case.tensor())
    if bool(masked.any()):
        assert bool((draws[:, masked] == 0).all()), "masked categories must get zero gradient"
    if unbiased and est.per_sample:
        mean = pwgf.estimator_expectation(est, case.f, case.make(case.tensor()))
        tol = 1e-9 if case.dtype == torch.float64 else 1e-5
        scale = 1 + float(exact.abs().max())
        torch.testing.assert_close(mean, exact, rtol=0, atol=tol * scale)
    elif mc:
        assert_mean_matches(draws, exact)
