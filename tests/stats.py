"""Statistical assertions with tolerances derived from the measured variance."""

from __future__ import annotations

import torch
from torch.distributions import Bernoulli, Independent, OneHotCategorical

N_SE = 5.0  # tolerance in standard errors


def assert_mean_matches(draws: torch.Tensor, target: torch.Tensor, n_se: float = N_SE) -> None:
    """``draws`` (R, *shape) are independent estimates; their mean must lie within ``n_se``
    standard errors of ``target`` in every coordinate (the s.e. is estimated from the draws,
    with a floor of 1e-9 relative to the target's scale for coordinates with zero variance)."""
    r = draws.shape[0]
    mean = draws.mean(0)
    se = draws.std(0) / r**0.5
    floor = 1e-9 * (1 + target.abs().max())
    z = (mean - target).abs() / torch.clamp(se, min=floor)
    worst = int(z.flatten().argmax())
    assert bool((z <= n_se).all()), (
        f"mean {mean.flatten()[worst]:.6g} vs target {target.flatten()[worst]:.6g}: "
        f"{z.flatten()[worst]:.2f} standard errors (se {se.flatten()[worst]:.3g}, R={r}); "
        f"tolerance {n_se} s.e."
    )


def draw_gradients(est, f, make, param: torch.Tensor, draws: int, k: int) -> torch.Tensor:
    """``draws`` independent gradient estimates for ``param`` (each its own backward)."""
    leaf = param.detach().clone().requires_grad_(True)
    out = []
    for _ in range(draws):
        loss = est.surrogate(f, make(leaf), n_samples=k).sum()
        (g,) = torch.autograd.grad(loss, leaf)
        out.append(g)
    return torch.stack(out)


def seeded_grad(est, f, make, param: torch.Tensor, seed: int, k: int) -> torch.Tensor:
    """One gradient estimate for ``param`` with torch's generator seeded first, so that two
    estimators called with the same seed see the same samples."""
    leaf = param.detach().clone().requires_grad_(True)
    torch.manual_seed(seed)
    loss = est.surrogate(f, make(leaf), n_samples=k).sum()
    (g,) = torch.autograd.grad(loss, leaf)
    return g


def row_draws(est, f, make, param, rows, k):
    """``rows`` independent estimates from one call: ``rows`` copies of the problem form the batch
    of one distribution and f acts row by row (output r depends only on row r). Valid because
    output r is credited only to row r's atoms (score-function terms, default ``joint_score``)
    or reaches only row r (pathwise terms), and rows use independent randomness; so row r's
    gradient is distributed as one K-sample estimate of the single problem."""
    leaf = param.expand(rows, *param.shape).clone().requires_grad_(True)
    out = est.surrogate(f, make(leaf), n_samples=k)
    assert out.shape == (rows,)
    (g,) = torch.autograd.grad(out.sum(), leaf)
    return g, out.detach()


class Decoder(torch.nn.Module):
    """A cost with a parameter of its own, for checking that the surrogate's gradient for f's
    parameters is the ordinary one of E[f]: samples (K, ...) flattened to (K, d)."""

    def __init__(self, d):
        super().__init__()
        self.w = torch.nn.Parameter(torch.linspace(-1, 1, d))

    def forward(self, z):
        z = z.reshape(z.shape[0], -1)
        return torch.tanh(z @ self.w + 0.3).pow(2) + (z * self.w).sum(-1) ** 2 / 4


def categorical_cases(logits: torch.Tensor, f) -> dict:
    """``{"categorical-logits", "categorical-probs"}`` cases ``(param, make, f)``: the same
    one-hot categoricals (classes on the last dimension, the rest one event) given by
    ``logits`` and by ``softmax(logits)``, so that both parametrisations are checked."""
    return {
        "categorical-logits": (
            logits,
            lambda p: Independent(OneHotCategorical(logits=p), 1),
            f,
        ),
        "categorical-probs": (
            logits.softmax(-1),
            lambda p: Independent(OneHotCategorical(probs=p), 1),
            f,
        ),
    }


def bernoulli_cases(logits: torch.Tensor, f, probs: bool = True) -> dict:
    """``{"bernoulli-logits", "bernoulli-probs"}`` cases ``(param, make, f)``: the same
    Bernoulli coordinates (one event) given by ``logits`` and, with ``probs``, by
    ``sigmoid(logits)``."""
    cases = {"bernoulli-logits": (logits, lambda p: Independent(Bernoulli(logits=p), 1), f)}
    if probs:
        cases["bernoulli-probs"] = (
            logits.sigmoid(),
            lambda p: Independent(Bernoulli(probs=p), 1),
            f,
        )
    return cases


def assert_finite_at_extreme_logits(est, dtype: torch.dtype, k: int) -> None:
    """``est``'s surrogate of ``f(z) = |z|²`` and its gradient keep ``dtype`` and stay finite at
    logits of ±25-30, where a sigmoid or softmax saturates, for Bernoulli (by logits and by
    probs) and one-hot categorical, each with ``k`` samples."""
    logits = torch.tensor([[-30.0, 0.0, 25.0], [3.0, -3.0, 0.0]], dtype=dtype)
    for make in (
        lambda p: Independent(Bernoulli(logits=p), 1),
        lambda p: Independent(OneHotCategorical(logits=p), 1),
        lambda p: Independent(Bernoulli(probs=torch.sigmoid(p)), 1),
    ):
        leaf = logits.clone().requires_grad_(True)
        out = est.surrogate(lambda z: z.reshape(z.shape[0], -1).pow(2).sum(-1), make(leaf), k)
        (g,) = torch.autograd.grad(out, leaf)
        assert out.dtype == dtype and g.dtype == dtype and bool(torch.isfinite(g).all())
