"""IndeCateR: the unbiased CatLog-derivative estimator for independent categoricals.

Source: De Smet, Sansone & Zuidberg Dos Martires, "Differentiable Sampling of Categorical
Distributions Using the CatLog-Derivative Trick" (NeurIPS 2023), the IndeCateR estimator.

For independent atoms ``z = (z_1, …, z_D)`` with ``p_θ(z) = Π_d p_d(z_d)``, each atom's
contribution to the gradient can be summed over its own categories exactly while the others are
sampled:

    ∇_θ E[f(z)] = Σ_d E_{z_{-d}} [ Σ_c ∇_θ p_d(c) f(z_{-d}, z_d = c) ],

so with K samples (the same samples serve every atom)

    ĝ = (1/K) Σ_k Σ_d Σ_c ∇_θ p_d(c) f(z_k with atom d set to c).

It is unbiased, and Rao-Blackwellised per atom (the score of atom d is replaced by its
conditional expectation given the others). The price is cost: ``D·C`` extra evaluations of f per
sample (D atoms, C categories; Bernoulli: C = 2). Where the outputs are per batch entry (``S`` a
prefix of the batch shape, see ``pwgf.estimators.base``), D counts the atoms of one entry and
every entry's atom d is varied at once, so a VAE with L latents of C classes costs ``L·C``
decoder passes over the batch per sample; ``joint_score=True`` varies every atom of the whole
batch separately.

``Σ_c ∇p_d(c) = 0``, so no baseline is needed (any one would cancel exactly). The estimate is a
function of the discrete samples alone (``per_sample``), so its exact mean is a sum over the
support, and equals ``pwgf.exact_gradient``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ..families import Family
from .base import CostFn, Estimator, average, evaluate, per_entry


class IndeCateR(Estimator):
    name = "indecater"
    aliases = ("catlog",)
    families = ("bernoulli", "categorical")
    biased = False
    per_sample = True
    evaluations = "1 + D·C f (D atoms per output, C categories)"
    option_docs = {
        "joint_score": "False: vary every atom of the batch separately, for outputs that couple "
        "batch entries (costs batch-size times more f)",
    }

    def __init__(self, joint_score: bool = False) -> None:
        super().__init__()
        self.joint_score = bool(joint_score)

    def surrogate_at(
        self, f: CostFn, fam: Family, z: Tensor, weights: Tensor | None = None
    ) -> Tensor:
        fz = evaluate(f, z)
        k, out_shape = z.shape[0], fz.shape[1:]
        atom_shape = fam.atom_shape
        s = len(out_shape)
        # leading atom dimensions that are batch entries (the batch shape is a prefix of the
        # atom shape)
        nb = s if per_entry(out_shape, fam.batch_shape, self.joint_score) else 0
        lead = atom_shape[:nb]
        j = math.prod(atom_shape[nb:])
        values, probs = fam.grid()  # (*A, M, V) detached, (*A, M) differentiable
        m, v = values.shape[-2:]
        atoms = fam.to_atoms(z).reshape(k, *lead, j, v)
        vals = values.reshape(*lead, j, m, v).movedim(-2, 0).reshape(1, m, 1, *lead, j, v)
        # variant (i, c): every entry's atom i set to category c, the other atoms as sampled
        eye = torch.eye(j, dtype=torch.bool, device=z.device).reshape(j, 1, 1, *[1] * nb, j, 1)
        variants = torch.where(eye, vals, atoms.reshape(1, 1, k, *lead, j, v))
        variants = fam.from_atoms(variants.reshape(j * m * k, *atom_shape, v))
        with torch.no_grad():
            fv = evaluate(f, variants).reshape(j, m, k, *out_shape)
        live = probs.reshape(*lead, j, m)
        live = (live - live.detach()).movedim(-2, 0).movedim(-1, 1)  # (J, M, *lead)
        live = live.reshape(j, m, 1, *lead, *[1] * (s - nb))
        score = (live * fv).sum((0, 1))
        return average(fz + score, weights)

    def extra_repr(self) -> str:
        return f"{self.name}, joint_score={self.joint_score}"
