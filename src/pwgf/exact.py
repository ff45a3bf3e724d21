"""Exact expectations and gradients by enumerating the joint support.

``E[f(z)] = Σ_z p_θ(z) f(z)`` over every joint configuration of the atoms: 2^D for D Bernoulli
coordinates, C^D for D categoricals, and for Poisson the product of the truncated windows of
``pwgf.truncation`` (tail mass below ``tail`` per coordinate). Configurations are evaluated
in chunks, so memory stays bounded; a problem with more than ``max_configs`` configurations is
refused with an error rather than attempted.

The gradients are bitwise reproducible between identical calls (for a deterministic f), with any
number of threads: the probability of a configuration is a one-hot product rather than an indexed
gather, whose backward (an accumulating scatter) sums in a thread-dependent order. They work under
``torch.no_grad()`` and ``torch.inference_mode()`` too (their graph is internal).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from functools import wraps
from typing import ParamSpec, TypeVar

import torch
from torch import Tensor

from .errors import PWGFError, TooLargeToEnumerateError
from .estimators.base import CostFn, Estimator, evaluate
from .families import Family, as_family
from .truncation import DEFAULT_TAIL

DEFAULT_MAX_CONFIGS = 2**22
DEFAULT_CHUNK = 8192

_P = ParamSpec("_P")
_R = TypeVar("_R")


def _with_grad(fn: Callable[_P, _R]) -> Callable[_P, _R]:
    """Run ``fn`` with autograd on, even inside ``no_grad`` or ``inference_mode``; it returns
    detached results, built from its own leaf copy of the parameter."""

    @wraps(fn)
    def run(*args: _P.args, **kwargs: _P.kwargs) -> _R:
        with torch.inference_mode(False), torch.enable_grad():
            return fn(*args, **kwargs)

    return run


def _leaf_family(fam: Family) -> tuple[Family, Tensor]:
    # clone() outside inference mode turns an inference tensor into a normal one
    leaf = fam.param.detach().clone().requires_grad_(True)
    return fam.rebuild(leaf), leaf


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
        z = values[atoms, digits]  # (n, A, V), detached
        z = fam.from_atoms(z.reshape(len(idx), *fam.atom_shape, -1))
        # Σ_m 1[d = m] p_m rather than p[atoms, digits]: same values, a deterministic backward
        onehot = torch.nn.functional.one_hot(digits, m).to(probs.dtype)  # (n, A, M)
        yield z, (onehot * probs).sum(-1).prod(-1)


def exact_expectation(
    f: CostFn,
    dist: object,
    *,
    max_configs: int = DEFAULT_MAX_CONFIGS,
    chunk: int = DEFAULT_CHUNK,
    tail: float = DEFAULT_TAIL,
) -> Tensor:
    """``E[f(z)] = Σ_z p_θ(z) f(z)`` by enumeration of the joint support.

    Args:
        f: the cost, samples ``(K, *dist.batch_shape, *dist.event_shape)`` -> costs ``(K, *S)``;
            called on chunks of the support, K = the chunk's size.
        dist: a ``Bernoulli``, ``OneHotCategorical`` or ``Poisson`` (or ``Independent`` of one).
        max_configs: refuse problems with more joint configurations than this.
        chunk: configurations per call of ``f`` (memory stays at one chunk).
        tail: Poisson only: the support is truncated to a window that leaves out at most this
            mass per coordinate (``pwgf.truncation``).

    Returns:
        ``E[f(z)]``, shape ``S``, differentiable in θ and in f's parameters.

    Raises:
        TooLargeToEnumerateError: more than ``max_configs`` joint configurations.
        UnsupportedDistributionError: ``dist`` is not one of the supported families.
        InvalidCostError: ``f`` returns something other than a floating ``(K, *S)`` tensor.
    """
    fam = as_family(dist)
    total = None
    for z, p in _configurations(fam, max_configs, chunk, tail):
        fz = evaluate(f, z)
        part = (p.reshape(-1, *([1] * (fz.ndim - 1))) * fz).sum(0)
        total = part if total is None else total + part
    return total


@_with_grad
def exact_gradient(
    f: CostFn,
    dist: object,
    *,
    max_configs: int = DEFAULT_MAX_CONFIGS,
    chunk: int = DEFAULT_CHUNK,
    tail: float = DEFAULT_TAIL,
) -> Tensor:
    """The exact gradient ``∇_θ E[Σ_S f(z)] = Σ_z ∇_θ p_θ(z) f(z)`` by enumeration.

    θ is the tensor ``dist`` was built from (``logits``, ``probs`` or ``rate``). Memory stays at
    one chunk's graph. This is the ground truth the estimators are tested against.

    Args:
        f: the cost, samples ``(K, *dist.batch_shape, *dist.event_shape)`` -> costs ``(K, *S)``;
            the outputs are summed.
        dist: a ``Bernoulli``, ``OneHotCategorical`` or ``Poisson`` (or ``Independent`` of one).
        max_configs: refuse problems with more joint configurations than this.
        chunk: configurations per call of ``f``.
        tail: Poisson only: tail mass per coordinate left out of the truncated support.

    Returns:
        The gradient, detached, with θ's shape.

    Raises:
        TooLargeToEnumerateError: more than ``max_configs`` joint configurations.
        UnsupportedDistributionError: ``dist`` is not one of the supported families.
        InvalidCostError: ``f`` returns something other than a floating ``(K, *S)`` tensor.
    """
    fam, leaf = _leaf_family(as_family(dist))
    grad = torch.zeros_like(leaf)
    for z, p in _configurations(fam, max_configs, chunk, tail):
        fz = evaluate(f, z)
        loss = (p.reshape(-1, *([1] * (fz.ndim - 1))) * fz).sum()
        (g,) = torch.autograd.grad(loss, leaf, retain_graph=True, allow_unused=True)
        if g is not None:
            grad += g
    return grad.detach()


def _per_sample_setup(estimator: Estimator, dist: object) -> tuple[Family, Tensor]:
    if not estimator.per_sample:
        raise PWGFError(
            f"estimator '{estimator.name}' does not average per-sample terms, so its exact "
            "moments are not sums over the support"
        )
    return _leaf_family(estimator.family(dist))


@_with_grad
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
    Monte Carlo mean converges to; for an unbiased one it equals ``exact_gradient``.

    Args:
        estimator: a ``per_sample`` estimator (``pwgf.get_estimator(name)``).
        f: the cost, samples ``(K, *batch_shape, *event_shape)`` -> costs ``(K, *S)``.
        dist: a supported distribution; θ is the tensor it was built from.
        max_configs: refuse problems with more joint configurations than this.
        chunk: configurations per call of ``f``.
        tail: Poisson only: tail mass per coordinate left out of the truncated support.

    Returns:
        ``E[ĝ]``, detached, with θ's shape.

    Raises:
        PWGFError: the estimator is not ``per_sample`` (its randomness is not the sample, as
            for ARM or the Gumbel forms): compare its Monte Carlo mean instead.
        TooLargeToEnumerateError: more than ``max_configs`` joint configurations.
        UnsupportedFamilyError: the estimator does not support ``dist``'s family.
    """
    fam, leaf = _per_sample_setup(estimator, dist)
    grad = torch.zeros_like(leaf)
    for z, p in _configurations(fam, max_configs, chunk, tail):
        loss = estimator.surrogate_at(f, fam, z, weights=p.detach()).sum()
        (g,) = torch.autograd.grad(loss, leaf, retain_graph=True, allow_unused=True)
        if g is not None:
            grad += g
    return grad.detach()


@_with_grad
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

    Args:
        estimator: a ``per_sample`` estimator.
        f: the cost, samples ``(K, *batch_shape, *event_shape)`` -> costs ``(K, *S)``.
        dist: a supported distribution; θ is the tensor it was built from.
        n_samples: K, the samples one estimate averages.
        max_configs: refuse problems with more joint configurations than this (the whole
            support is one chunk here).
        tail: Poisson only: tail mass per coordinate left out of the truncated support.

    Returns:
        ``(mean, var)``, both detached, with θ's shape.

    Raises:
        PWGFError: the estimator is not ``per_sample``.
        TooLargeToEnumerateError: more than ``max_configs`` joint configurations.
    """
    fam, leaf = _per_sample_setup(estimator, dist)
    z, p = next(_configurations(fam, max_configs, max_configs, tail))  # one chunk: all of it
    w = p.detach().clone().requires_grad_(True)
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
