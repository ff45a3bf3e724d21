"""Measure-valued (finite-difference) gradients, one coordinate at a time.

Source: Pflug 1989; Mohamed, Rosca, Figurnov & Mnih 2020 ("Monte Carlo Gradient Estimation in
Machine Learning", §6). For a factorised p_θ and the mean parameter μ_d of coordinate d:

    Poisson:    ∂_{λ_d} E f(z) = E[ f(z + e_d) - f(z) ]
    Bernoulli:  ∂_{p_d} E f(z) = E[ f(z | z_d = 1) - f(z | z_d = 0) ]

both unbiased; other parameterisations follow by the chain rule through μ(θ). Each sample costs
1 + D evaluations of f (D = number of coordinates); they are batched, ``chunk`` neighbours at a
time, to bound memory.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..errors import PWGFError
from ..families import Family
from .base import CostFn, Estimator, average, evaluate


class MeasureValued(Estimator):
    name = "mvd"
    aliases = ("finite-difference",)
    families = ("bernoulli", "poisson")
    biased = False
    per_sample = True
    evaluations = "1 + D f"
    option_docs = {"chunk": "4096: neighbours evaluated per call of f"}

    def __init__(self, chunk: int = 4096) -> None:
        super().__init__()
        if chunk < 1:
            raise PWGFError(f"mvd: chunk must be >= 1, got {chunk}")
        self.chunk = chunk

    def surrogate_at(
        self, f: CostFn, fam: Family, z: Tensor, weights: Tensor | None = None
    ) -> Tensor:
        k, d = z.shape[0], fam.shape.numel()
        fz = evaluate(f, z)
        step, coef = fam.mvd_step(z)
        flat, step, coef = z.reshape(k, d), step.reshape(k, d), coef.reshape(k, d)
        mu = fam.mean().reshape(d)
        dmu = mu - mu.detach()
        term = torch.zeros_like(fz)
        tail = [1] * (fz.ndim - 1)
        for start in range(0, d, self.chunk):  # chunks of coordinates, not single ones
            idx = torch.arange(start, min(start + self.chunk, d), device=z.device)
            n = idx.numel()
            nb = flat.unsqueeze(1).repeat(1, n, 1)
            nb[:, torch.arange(n, device=z.device), idx] += step[:, idx]
            fn = evaluate(f, nb.reshape(k * n, *fam.shape)).reshape(k, n, *fz.shape[1:])
            diff = ((fn - fz.unsqueeze(1)) * coef[:, idx].reshape(k, n, *tail)).detach()
            term = term + (diff * dmu[idx].reshape(1, n, *tail)).sum(1)
        return average(fz + term, weights)
