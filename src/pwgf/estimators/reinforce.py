"""REINFORCE (the score-function estimator), with optional baselines.

Source: Williams 1992; leave-one-out baseline: Kool, van Hoof & Welling 2019 ("Buy 4 REINFORCE
samples, get a baseline for free"); moving average: Mnih & Gregor 2014.

    ĝ_θ = (1/K) Σ_k (f(z_k) - b_k) ∇_θ log p_θ(z_k)

with ``b_k = 0`` (``baseline=None``), ``b_k = (1/(K-1)) Σ_{j≠k} f(z_j)`` (``"loo"``, K >= 2;
unbiased because b_k is independent of z_k), or ``b`` = an exponential moving average of past
mean costs (``"ema"``; unbiased because b is fixed before the current samples are drawn; a batch
whose mean cost is not finite leaves the average as it was and is counted in
``skipped_updates``).

At a parameter on the boundary of its range (Bernoulli probs of exactly 0 or 1, a categorical
probability of 0, a Poisson rate of 0) the score is degenerate and the estimate would be wrong; it
is refused there with ``pwgf.errors.BoundaryError`` (see ``Family.boundary``).
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..errors import PWGFError
from ..families import Family
from .base import CostFn, Estimator, average, evaluate, per_output

BASELINES = (None, "loo", "ema")


class Reinforce(Estimator):
    name = "reinforce"
    biased = False
    #: the score ∇ log p is degenerate on the parameter's boundary: refused there
    interior_only = True
    evaluations = "1 f"
    option_docs = {
        "baseline": "None: none; 'loo': leave-one-out over K >= 2; 'ema': moving average",
        "decay": "0.9: decay of the 'ema' baseline",
        "joint_score": "False: score of all atoms for every output (see pwgf.estimators.base)",
    }

    def __init__(
        self, baseline: str | None = None, decay: float = 0.9, joint_score: bool = False
    ) -> None:
        super().__init__()
        if baseline not in BASELINES:
            raise PWGFError(f"reinforce: baseline must be one of {BASELINES}, got {baseline!r}")
        if not 0.0 <= decay < 1.0:
            raise PWGFError(f"reinforce: decay must lie in [0, 1), got {decay}")
        self.baseline = baseline
        self.decay = decay
        self.joint_score = joint_score
        self.min_samples = 2 if baseline == "loo" else 1
        self.per_sample = baseline is None
        self.register_buffer("running_mean", torch.zeros(()))
        self.register_buffer("n_updates", torch.zeros((), dtype=torch.long))
        # not persistent: checkpoints written before it existed still load
        self.register_buffer("_skipped", torch.zeros((), dtype=torch.long), persistent=False)

    @property
    def skipped_updates(self) -> int:
        """'ema' updates dropped because the batch's mean cost was not finite."""
        return int(self._skipped)

    def surrogate_at(
        self, f: CostFn, fam: Family, z: Tensor, weights: Tensor | None = None
    ) -> Tensor:
        fam.check_interior(self.name)
        fz = evaluate(f, z)
        score = per_output(fam.log_prob(z), fz.shape[1:], fam.batch_shape, self.joint_score)
        b = self._baseline(fz.detach())
        reinforce = (fz.detach() - b) * (score - score.detach())
        return average(fz + reinforce, weights)

    def _baseline(self, fz: Tensor) -> Tensor | float:
        if self.baseline == "loo":
            k = fz.shape[0]
            return (fz.sum(0, keepdim=True) - fz) / (k - 1)
        if self.baseline == "ema":
            # the average before this batch (zero before the first update), copied since the
            # update below is in place; no host read, so no device sync
            b = self.running_mean.to(fz, copy=True)
            if self.training:
                m = fz.mean().to(self.running_mean)
                ok = torch.isfinite(m)
                first = self.n_updates == 0
                new = torch.where(first, m, self.decay * self.running_mean + (1 - self.decay) * m)
                self.running_mean.copy_(torch.where(ok, new, self.running_mean))
                self.n_updates += ok.long()
                self._skipped += (~ok).long()
            return b
        return 0.0


class ReinforceLOO(Reinforce):
    """REINFORCE with the leave-one-out baseline (needs K >= 2 samples)."""

    name = "reinforce-loo"
    option_docs = {"joint_score": Reinforce.option_docs["joint_score"]}

    def __init__(self, joint_score: bool = False) -> None:
        super().__init__(baseline="loo", joint_score=joint_score)
