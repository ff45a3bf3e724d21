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
from .base import CostFn, Estimator, average, evaluate, per_entry


class MeasureValued(Estimator):
    name = "mvd"
    aliases = ("finite-difference",)
    families = ("bernoulli", "poisson")
    biased = False
    per_sample = True
    evaluations = "1 + D f (D: coordinates of one batch entry when f is per entry)"
    option_docs = {
        "chunk": "4096: neighbours evaluated per call of f",
        "joint_score": "False: when f returns one cost per batch entry, perturb coordinate d of "
        "every entry in one evaluation (assumes cost s depends only on entry s)",
    }

    def __init__(self, chunk: int = 4096, joint_score: bool = False) -> None:
        super().__init__()
        if chunk < 1:
            raise PWGFError(f"mvd: chunk must be >= 1, got {chunk}")
        self.chunk = chunk
        self.joint_score = joint_score

    def surrogate_at(
        self, f: CostFn, fam: Family, z: Tensor, weights: Tensor | None = None
    ) -> Tensor:
        k = z.shape[0]
        fz = evaluate(f, z)
        out_shape = fz.shape[1:]
        # With one cost per batch entry (the usual per-example loss), flipping coordinate d of
        # every entry at once gives each entry's own difference in one evaluation: D instead of
        # B·D evaluations. Otherwise each coordinate of the whole sample is flipped alone.
        entries = per_entry(out_shape, fam.batch_shape, self.joint_score)
        groups = out_shape.numel() if entries else 1
        d = fam.shape.numel() // groups
        step, coef = fam.mvd_step(z)
        flat = z.reshape(k, groups, d)
        step, coef = step.reshape(k, groups, d), coef.reshape(k, groups, d)
        mu = fam.mean().reshape(groups, d)
        dmu = mu - mu.detach()
        term = torch.zeros_like(fz).reshape(k, groups, -1)  # (K, G, S/G)
        for start in range(0, d, self.chunk):  # chunks of coordinates, not single ones
            idx = torch.arange(start, min(start + self.chunk, d), device=z.device)
            n = idx.numel()
            onehot = torch.nn.functional.one_hot(idx, d).to(z.dtype).reshape(1, n, 1, d)
            nb = flat.unsqueeze(1) + step.unsqueeze(1) * onehot  # (K, n, G, D)
            fn = evaluate(f, nb.reshape(k * n, *fam.shape)).reshape(k, n, groups, -1)
            base = fz.reshape(k, 1, groups, -1)
            c = coef[:, :, idx].permute(0, 2, 1).unsqueeze(-1)  # (K, n, G, 1)
            # per entry: (K, n, G, 1), entry g's cost against its own coordinate; otherwise
            # (K, n, 1, S), every output against every coordinate
            diff = ((fn - base) * c).detach()
            term = term + (diff * dmu[:, idx].T.unsqueeze(-1)).sum(1)
        return average(fz + term.reshape(fz.shape), weights)
