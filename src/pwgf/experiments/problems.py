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
    #: ``v ↦ H v``, H the exact Hessian of ``E f`` in ``param`` (``v``: ``(..., *param.shape)``);
    #: where known, the diagnostics add the BiasEnergy / NoiseEnergy measures
    hvp: Callable[[Tensor], Tensor] | None = None

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


def poisson_linear_gaussian(
    rates: tuple[float, ...] = (0.05, 0.5, 2.0),
    pixels: int = 6,
    seed: int = 0,
    dtype=torch.float64,
) -> Problem:
    """A small P-VAE (Vafaii et al. 2024) decoder: Poisson latents z of rates λ, a linear
    Gaussian decoder, ``f(z) = ‖x - Φz‖²``. ``E f = ‖x - Φλ‖² + Σ_k λ_k ‖φ_k‖²``, so the exact
    gradient ``-2Φᵀ(x - Φλ) + ‖φ_k‖²`` and Hessian ``2ΦᵀΦ`` (in λ) are closed form; ST's mean
    misses the ``‖φ_k‖²`` term, the one that makes a P-VAE sparse."""
    g = torch.Generator().manual_seed(seed)
    lam = torch.tensor(rates, dtype=dtype)
    phi = torch.randn(pixels, len(rates), generator=g, dtype=dtype) / len(rates) ** 0.5
    x = torch.rand(pixels, generator=g, dtype=dtype)
    gram = 2 * phi.T @ phi

    def f(z: Tensor) -> Tensor:
        return (x - z @ phi.T).pow(2).sum(-1)

    return Problem(
        f"poisson-pvae-{len(rates)}",
        "poisson",
        lam,
        lambda p: Independent(Poisson(p), 1),
        f,
        f"P-VAE-like: {len(rates)} Poisson(λ = {', '.join(f'{r:g}' for r in rates)}), "
        f"f(z) = ‖x - Φz‖², Φ {pixels}x{len(rates)}",
        hvp=lambda v: v @ gram,
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
