"""Fused kernels: ``torch.compile`` of pwgf's elementwise hot loops, opt-in, with the eager code as
fallback.

The general path of pWGF's Poisson sums (``pwgf.poisson_kernel``: any bandwidth per atom, and
what the estimator's tables in ``pwgf.poisson_table`` do not hold) is a few dozen elementwise
float64 operations per quadrature node or window point. Eagerly, each is a pass over memory,
and torch's float64 cos and sin are scalar; compiled by inductor they become a loop or two with
vectorised transcendentals and no temporaries (``pwgf bench --fused`` measures the
difference on that path). Off by
default: ``set_fused(True)``, the ``fused_mode`` context manager, or ``PWGF_FUSED=1`` in the
environment (read at the first call that asks) turn it on, on every device.

The first call of each kernel compiles it: tens of seconds on a small machine, a few once
inductor's on-disk cache holds it (``TORCHINDUCTOR_CACHE_DIR``). Shapes are dynamic, so new
sizes do not recompile. It needs what inductor needs: a C++ compiler on CPU, Triton on CUDA. A
kernel that fails to compile warns once (``FusedKernelWarning``, with the reason) and runs
eagerly from then on; inside a caller's own ``torch.compile`` the eager code is traced, so that
the caller's compiler fuses it.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

import torch

from .errors import PWGFError

__all__ = ["FusedKernelWarning", "Kernel", "fused_mode", "is_fused", "kernel", "set_fused"]

F = TypeVar("F", bound=Callable[..., torch.Tensor])


class FusedKernelWarning(RuntimeWarning):
    """A fused kernel could not be compiled; pwgf runs the eager code instead."""


def _from_env() -> bool:
    text = os.environ.get("PWGF_FUSED", "").strip().lower() or "0"
    table = {"1": True, "true": True, "on": True, "0": False, "false": False, "off": False}
    if text not in table:
        raise PWGFError(f"the environment variable PWGF_FUSED must be 1 or 0, got {text!r}")
    return table[text]


#: None until first asked: the environment is read then, so that a bad PWGF_FUSED is reported
#: by the call that needs it (a command's one-line error), not as a traceback at import
_MODE: bool | None = None


def set_fused(enabled: bool) -> None:
    """Fused kernels on (True) or off (False, the default), library-wide."""
    global _MODE
    if not isinstance(enabled, bool):
        raise TypeError(f"set_fused takes True or False, got {enabled!r}")
    _MODE = enabled


def is_fused() -> bool:
    """Whether fused kernels are on: as last set, else as ``PWGF_FUSED`` says (default off)."""
    global _MODE
    if _MODE is None:
        _MODE = _from_env()
    return _MODE


@contextmanager
def fused_mode(enabled: bool) -> Iterator[None]:
    """``with pwgf.fused.fused_mode(True): ...`` turns fused kernels on (or off) in the block."""
    old = is_fused()
    set_fused(enabled)
    try:
        yield
    finally:
        set_fused(old)


class Kernel:
    """``fn``, compiled on first use while fused kernels are on; ``eager`` (default ``fn``)
    otherwise and after a failed compile."""

    def __init__(
        self, fn: Callable[..., torch.Tensor], eager: Callable[..., torch.Tensor] | None = None
    ) -> None:
        self.fn = fn
        self.eager = fn if eager is None else eager
        self.__doc__ = fn.__doc__
        self.__name__ = fn.__name__
        self._compiled: Callable[..., torch.Tensor] | None = None
        self.failed: str | None = None

    def runs_fused(self) -> bool:
        """Whether a call now runs the compiled kernel."""
        return self.failed is None and is_fused() and not torch.compiler.is_compiling()

    def __call__(self, *args: torch.Tensor) -> torch.Tensor:
        if not self.runs_fused():
            return self.eager(*args)
        if self._compiled is None:
            self._compiled = torch.compile(self.fn, dynamic=True, fullgraph=True)
        try:
            with torch.no_grad():
                return self._compiled(*args)
        except Exception as err:  # any compiler failure falls back to eager
            self.failed = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
            warnings.warn(
                f"pwgf: the fused kernel {self.__name__} could not be compiled ({self.failed}); "
                "running it eagerly (pwgf.fused.set_fused(False) skips the attempt)",
                FusedKernelWarning,
                stacklevel=3,
            )
            return self.eager(*args)


def kernel(
    fn: F | None = None, *, eager: Callable[..., torch.Tensor] | None = None
) -> F | Callable[[F], F]:
    """Decorator: ``fn`` (tensor arguments only, no autograd) as a fused kernel; ``eager``, a
    version of the same formula cheaper to run op by op, where it does not run fused."""
    if fn is None:
        return lambda f: Kernel(f, eager)  # type: ignore[return-value]
    return Kernel(fn, eager)  # type: ignore[return-value]
