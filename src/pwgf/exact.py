"""Exact expectations and gradients by enumerating the joint support.

``E[f(z)] = Σ_z p_θ(z) f(z)`` over every joint configuration of the atoms: 2^D for D Bernoulli
coordinates, C^D for D categoricals, and for Poisson the product of the truncated windows of
:mod:`pwgf.truncation` (tail mass below ``tail`` per coordinate). Configurations are evaluated
in chunks, so memory stays bounded; a problem with more than ``max_configs`` configurations is
refused with an error rather than attempted.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch
from torch import Tensor

from .errors import PWGFError, TooLargeToEnumerateError
from .estimators.base import CostFn, Estimator, evaluate
from .families import Family, as_family
from .truncation import DEFAULT_TAIL

DEFAULT_MAX_CONFIGS = 2**22
DEFAULT_CHUNK = 8192


def _configurations(
    fam: Family, max_configs: int, chunk: int, tail: float
) -> Iterator[tuple[Tensor, Tensor]]:
    """Chunks of (configurations ``(n, *shape)``, their probabilities ``(n,)``)."""
    values, probs = fam.grid(tail)
    m = probs.shape[-1]
    a = fam.n_atoms
    if a * math.log(m) > math.log(max_configs) + 1e-9:
        raise TooLargeToEnumerateError(
            f"exact enumeration needs {m}^{a} joint support points ({fam.name}, {a} atoms), "
            f"more than max_configs={max_configs}; use a smaller problem or a Monte Carlo "
            "estimator"
        )
    total = m**a
    values = values.reshape(a, m, -1)
    probs = probs.reshape(a, m)
    strides = torch.tensor([m**i for i in range(a)], device=fam.device, dtype=torch.long)
    atoms = torch.arange(a, device=fam.device)
    for start in range(0, total, chunk):
        idx = torch.arange(start, min(start + chunk, total), device=fam.device)
        digits = (idx.unsqueeze(1) // strides) % m  # (n, A)
        z = values[atoms, digits]  # (n, A, V)
        z = fam.from_atoms(z.reshape(len(idx), *fam.atom_shape, -1))
        yield z, probs[atoms, digits].prod(-1)


def exact_expectation(
    f: CostFn,
    dist: object,
    *,
    max_configs: int = DEFAULT_MAX_CONFIGS,
    chunk: int = DEFAULT_CHUNK,
    tail: float = DEFAULT_TAIL,
) -> Tensor:
    """``E[f(z)]`` by enumeration, shape ``S``; differentiable in θ and in f's parameters."""
    fam = as_family(dist)
    total = None
    for z, p in _configurations(fam, max_configs, chunk, tail):
        fz = evaluate(f, z)
        part = (p.reshape(-1, *([1] * (fz.ndim - 1))) * fz).sum(0)
        total = part if total is None else total + part
    return total


def exact_gradient(
    f: CostFn,
    dist: object,
    *,
    max_configs: int = DEFAULT_MAX_CONFIGS,
    chunk: int = DEFAULT_CHUNK,
    tail: float = DEFAULT_TAIL,
) -> Tensor:
    """``∇ E[Σ_S f(z)]`` with respect to the tensor ``dist`` was built from (logits, probs or
    rate), by enumeration; same shape as that tensor. Memory stays at one chunk's graph."""
    fam = as_family(dist)
    leaf = fam.param.detach().clone().requires_grad_(True)
    fam = fam.rebuild(leaf)
    grad = torch.zeros_like(leaf)
    with torch.enable_grad():
        for z, p in _configurations(fam, max_configs, chunk, tail):
            fz = evaluate(f, z)
            loss = (p.reshape(-1, *([1] * (fz.ndim - 1))) * fz).sum()
            (g,) = torch.autograd.grad(loss, leaf, retain_graph=True, allow_unused=True)
            if g is not None:
                grad += g
    return grad


def _per_sample_setup(estimator: Estimator, dist: object) -> tuple[Family, Tensor]:
    if not estimator.per_sample:
        raise PWGFError(
            f"estimator '{estimator.name}' does not average per-sample terms, so its exact "
            "moments are not sums over the support"
        )
    fam = estimator.family(dist)
    leaf = fam.param.detach().clone().requires_grad_(True)
    return fam.rebuild(leaf), leaf


def estimator_expectation(
    estimator: Estimator,
    f: CostFn,
    dist: object,
    *,
    max_configs: int = DEFAULT_MAX_CONFIGS,
    chunk: int = DEFAULT_CHUNK,
    tail: float = DEFAULT_TAIL,
) -> Tensor:
    """The exact mean of ``estimator``'s gradient for the tensor ``dist`` was built from.

    For estimators whose estimate averages terms that each depend on one sample
    (``estimator.per_sample``), ``E[ĝ] = Σ_z p_θ(z) ĝ(z)``: the support is fed to the estimator
    as its samples, weighted by their probabilities. For a biased estimator this is what its
    Monte Carlo mean converges to; for an unbiased one it equals :func:`exact_gradient`.
    """
    fam, leaf = _per_sample_setup(estimator, dist)
    grad = torch.zeros_like(leaf)
    with torch.enable_grad():
        for z, p in _configurations(fam, max_configs, chunk, tail):
            loss = estimator.surrogate_at(f, fam, z, weights=p.detach()).sum()
            (g,) = torch.autograd.grad(loss, leaf, retain_graph=True, allow_unused=True)
            if g is not None:
                grad += g
    return grad


def estimator_moments(
    estimator: Estimator,
    f: CostFn,
    dist: object,
    *,
    n_samples: int = 1,
    max_configs: int = 2**18,
    tail: float = DEFAULT_TAIL,
) -> tuple[Tensor, Tensor]:
    """Exact mean and per-coordinate variance of ``estimator``'s gradient with ``n_samples``
    samples, by enumeration (for ``per_sample`` estimators).

    With ``ĝ(z)`` the one-sample estimate at support point z, the K-sample estimate averages K
    independent ones, so ``mean = Σ_z p(z) ĝ(z)`` and ``var = (Σ_z p(z) ĝ(z)² - mean²) / K``.
    The per-point estimates come from one double-backward pass per parameter coordinate:
    the surrogate is ``Σ_z w_z ℓ_z(θ)`` and ``∂²/∂w_z∂θ`` of it is ``ĝ(z)``.
    """
    fam, leaf = _per_sample_setup(estimator, dist)
    z, p = next(_configurations(fam, max_configs, max_configs, tail))  # one chunk: all of it
    w = p.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        loss = estimator.surrogate_at(f, fam, z, weights=w).sum()
        (g,) = torch.autograd.grad(loss, leaf, create_graph=True)
        flat = g.reshape(-1)
        rows = [
            torch.autograd.grad(flat[i], w, retain_graph=True, allow_unused=True)[0]
            for i in range(flat.numel())  # one pass per parameter coordinate, not per point
        ]
    per_point = torch.stack([torch.zeros_like(w) if r is None else r for r in rows], -1)
    pw = p.detach().unsqueeze(-1)
    mean = (pw * per_point).sum(0)
    var = ((pw * per_point**2).sum(0) - mean**2).clamp(min=0) / n_samples
    return mean.reshape(leaf.shape).detach(), var.reshape(leaf.shape).detach()
