"""The exact gradient, by enumerating the support (ground truth for small problems)."""

from __future__ import annotations

from torch import Tensor

from ..exact import DEFAULT_MAX_CONFIGS, exact_expectation
from ..families import Family
from .base import CostFn, Estimator


class Exact(Estimator):
    name = "exact"
    biased = False
    evaluations = "all of the support"
    option_docs = {
        "max_configs": f"{DEFAULT_MAX_CONFIGS}: refuse problems with more joint support points",
        "tail": "1e-10: Poisson tail mass left out of the truncated support",
    }

    def __init__(self, max_configs: int = DEFAULT_MAX_CONFIGS, tail: float = 1e-10) -> None:
        super().__init__()
        self.max_configs = max_configs
        self.tail = tail

    def draw(self, fam: Family, n: int) -> Tensor:
        return fam.mean().detach().reshape(-1)[:0]  # no randomness

    def surrogate_at(
        self, f: CostFn, fam: Family, z: Tensor, weights: Tensor | None = None
    ) -> Tensor:
        return exact_expectation(f, fam, max_configs=self.max_configs, tail=self.tail)
