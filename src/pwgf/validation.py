"""When pwgf checks its inputs, and the checks themselves.

Rule (torch.distributions' convention): a distribution's parameters are checked (finite, in
range, not on a boundary the estimator cannot handle, not stale) unless validation is off,
either for that distribution (an explicit ``validate_args=False``, which also turns off torch's
own checks) or library-wide (``set_validation``, or the ``validation`` context manager).
A check reads a tensor's value on the host, which on CUDA is a device synchronisation and under
``torch.compile`` a graph break; with validation off nothing on the estimators' paths does that.
Checks that cost no host read (dtypes, shapes, option values) always run.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import Tensor

from .errors import StaleDistributionError

_ENABLED = True


def set_validation(enabled: bool) -> None:
    """Turn pwgf's value checks on (the default) or off, library-wide."""
    global _ENABLED
    if not isinstance(enabled, bool):
        raise TypeError(f"set_validation takes True or False, got {enabled!r}")
    _ENABLED = enabled


def is_validating() -> bool:
    """Whether pwgf's value checks are on library-wide."""
    return _ENABLED


@contextmanager
def validation(enabled: bool) -> Iterator[None]:
    """``with pwgf.validation(False): ...`` turns the checks off (or on) inside the block."""
    old = _ENABLED
    set_validation(enabled)
    try:
        yield
    finally:
        set_validation(old)


def validates(dist: object) -> bool:
    """Whether ``dist`` is to be checked: validation on library-wide and not turned off on the
    distribution by an explicit ``validate_args=False`` (on it or on any distribution it wraps).
    torch's global default (``Distribution.set_default_validate_args``, off under ``python -O``)
    does not turn pwgf's checks off."""
    if not _ENABLED:
        return False
    d = dist
    while d is not None:
        if vars(d).get("_validate_args", None) is False:  # set only when passed explicitly
            return False
        d = getattr(d, "base_dist", None)
    return True


# -- stale distributions -------------------------------------------------------------------------
# A distribution keeps its parameter tensor. When that tensor is a leaf (Bernoulli(logits=w) for a
# parameter w), pwgf reads it afresh at every call, so an optimiser step that changes w in place
# is seen. When it was computed from other tensors (OneHotCategorical normalises its logits in its
# constructor; Bernoulli(logits=net(x))), it is a copy made when the distribution was built, and
# after an in-place change of those tensors it is out of date. Autograd's version counters show
# that change without reading any value: the versions of the leaves under the parameter are
# recorded at pwgf's first use of the distribution and compared at every later use.
_MAX_NODES = 64  # graph nodes searched for leaves under a parameter; bounds the first-use cost
_SEEN: weakref.WeakKeyDictionary[object, list[tuple[Tensor, int]]] = weakref.WeakKeyDictionary()


def _leaves(t: Tensor) -> list[Tensor]:
    out: list[Tensor] = []
    todo = [t.grad_fn]
    seen: set[int] = set()
    while todo and len(seen) < _MAX_NODES:
        node = todo.pop()
        if node is None or id(node) in seen:
            continue
        seen.add(id(node))
        var = getattr(node, "variable", None)  # AccumulateGrad: a leaf that requires grad
        if isinstance(var, Tensor):
            out.append(var)
        todo.extend(n for n, _ in node.next_functions)
    return out


def check_fresh(dist: object, param: Tensor, family: str) -> None:
    """Raise ``StaleDistributionError`` if tensors under ``param`` changed in place since
    pwgf first saw ``dist``. No host read; skipped for leaf parameters (read afresh)."""
    if param.grad_fn is None or torch.compiler.is_compiling():
        return
    try:
        record = _SEEN.get(dist)
    except TypeError:  # not weak-referenceable
        return
    if record is None:
        _SEEN[dist] = [(v, v._version) for v in _leaves(param)]
        return
    changed = [v for v, version in record if v._version != version]
    if changed:
        shapes = ", ".join(str(tuple(v.shape)) for v in changed[:3])
        raise StaleDistributionError(
            f"this {family} distribution is stale: it was built from tensors that have been "
            f"modified in place since pwgf first used it (shape {shapes}; an optimiser step?), "
            "so its parameter is an out-of-date copy and its autograd graph may be spent. "
            "Build the distribution afresh at every step, from the current parameters."
        )
