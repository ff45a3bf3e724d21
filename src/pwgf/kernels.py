"""Kernels for the MMD projection of pWGF, on atoms with a trailing value dimension V.

``value(a, b, h)`` is κ(a, b) for arrays whose last dimension holds the atom's value (V = 1 for
Bernoulli and Poisson, V = C for one-hot categorical); ``h`` broadcasts against
``a.shape[:-1]``. ``grad_b`` is ∂κ/∂b, same shape as the broadcast of a and b.
``raw_scale(h)`` is the factor that turns the raw MMD gradient into ST's scale as h -> ∞
(ESTIMATORS.md, "raw form"): h² for RBF, since MMD²_RBF ≈ (μ - ȳ)²/h², and 1 for the linear
kernel, whose MMD² is (μ - ȳ)² exactly.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

from torch import Tensor


class Kernel(ABC):
    name: str

    @abstractmethod
    def value(self, a: Tensor, b: Tensor, h: Tensor) -> Tensor: ...

    @abstractmethod
    def grad_b(self, a: Tensor, b: Tensor, h: Tensor) -> Tensor: ...

    @abstractmethod
    def raw_scale(self, h: Tensor) -> Tensor: ...


class RBF(Kernel):
    """κ(a, b) = exp(-|a - b|² / (2h²)); ∂_b κ(a, b) = (a - b)/h² κ(a, b)."""

    name = "rbf"

    def value(self, a: Tensor, b: Tensor, h: Tensor) -> Tensor:
        return (-((a - b) ** 2).sum(-1) / (2 * h**2)).exp()

    def grad_b(self, a: Tensor, b: Tensor, h: Tensor) -> Tensor:
        h2 = (h**2).unsqueeze(-1)
        return (a - b) / h2 * self.value(a, b, h).unsqueeze(-1)

    def raw_scale(self, h: Tensor) -> Tensor:
        return h**2


class Linear(Kernel):
    """κ(a, b) = <a, b>; ∂_b κ(a, b) = a. With it every form of pWGF-MMD is exactly ST."""

    name = "linear"

    def value(self, a: Tensor, b: Tensor, h: Tensor) -> Tensor:
        return (a * b).sum(-1) + 0 * h

    def grad_b(self, a: Tensor, b: Tensor, h: Tensor) -> Tensor:
        return (a + 0 * b) + 0 * h.unsqueeze(-1)

    def raw_scale(self, h: Tensor) -> Tensor:
        return h**0


KERNELS: dict[str, Kernel] = {k.name: k for k in (RBF(), Linear())}
