"""Small problems with exact answers, shared by the demo, the diagnostics and the tests."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor
from torch.distributions import Bernoulli, Distribution, Independent, OneHotCategorical, Poisson


@dataclass
class Problem:
    name: str
    family: str
    param: Tensor  # a leaf the distribution is built from
    make: Callable[[Tensor], Distribution]
    f: Callable[[Tensor], Tensor]
    description: str

    def dist(self) -> Distribution:
        return self.make(self.param)


def poisson_quadratic(rate: float = 5.0, target: float = 7.0, dtype=torch.float64) -> Problem:
    """``f(z) = (z - 7)²`` under Poisson(5): exact gradient -3, ST's mean -4 (ESTIMATORS.md)."""
    lam = torch.tensor([rate], dtype=dtype)
    return Problem(
        "poisson-quadratic",
        "poisson",
        lam,
        lambda p: Independent(Poisson(p), 1),
        lambda z: ((z - target) ** 2).sum(-1),
        f"Poisson(λ={rate}), f(z) = (z - {target:g})²",
    )


def poisson_nonlinear(dtype=torch.float64) -> Problem:
    """Three rates, a cost with curvature and interactions."""
    lam = torch.tensor([0.5, 3.0, 12.0], dtype=dtype)
    w = torch.tensor([1.0, -0.5, 0.25], dtype=dtype)
    return Problem(
        "poisson-nonlinear",
        "poisson",
        lam,
        lambda p: Independent(Poisson(p), 1),
        lambda z: torch.sqrt(1 + z).mul(w).sum(-1) + 0.05 * z[..., 0] * z[..., 2],
        "Poisson(λ = 0.5, 3, 12), f(z) = Σ w_d sqrt(1 + z_d) + 0.05 z_1 z_3",
    )


def bernoulli_nonlinear(d: int = 8, seed: int = 0, dtype=torch.float64) -> Problem:
    """D Bernoulli logits, a quadratic-plus-sine cost with interactions."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(d, generator=g, dtype=dtype)
    w = torch.randn(d, d, generator=g, dtype=dtype) / d
    t = torch.rand(d, generator=g, dtype=dtype)

    def f(z: Tensor) -> Tensor:
        return ((z - t) ** 2).sum(-1) + torch.sin(z @ w * 3).sum(-1)

    return Problem(
        f"bernoulli-{d}",
        "bernoulli",
        logits,
        lambda p: Independent(Bernoulli(logits=p), 1),
        f,
        f"{d} Bernoulli(logits), f(z) = Σ(z - t)² + Σ sin(3 zW)",
    )


def categorical_nonlinear(n: int = 3, c: int = 4, seed: int = 0, dtype=torch.float64) -> Problem:
    """n one-hot categoricals of C classes, a cost coupling them."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, c, generator=g, dtype=dtype)
    w = torch.randn(n * c, generator=g, dtype=dtype)

    def f(z: Tensor) -> Tensor:
        flat = z.reshape(*z.shape[:-2], -1)
        return (flat @ w) ** 2 / 4 + flat[..., ::2].sum(-1)

    return Problem(
        f"categorical-{n}x{c}",
        "categorical",
        logits,
        lambda p: Independent(OneHotCategorical(logits=p), 1),
        f,
        f"{n} one-hot categoricals of {c} (logits), f(z) = (z·w)²/4 + Σ z_even",
    )


def default_problems() -> list[Problem]:
    return [
        poisson_quadratic(),
        poisson_nonlinear(),
        bernoulli_nonlinear(),
        categorical_nonlinear(),
    ]
