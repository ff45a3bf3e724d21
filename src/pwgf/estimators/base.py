"""The interface every estimator implements, and the helpers they share.

An estimator turns a cost ``f`` and a distribution ``p_θ`` into a *surrogate*: a tensor whose value
is the Monte Carlo estimate of ``E[f(z)]`` and whose gradient, by ordinary autograd, is the
estimator's estimate of ``∇ E[f(z)]`` for θ (and, through θ, for whatever produced it) and the
ordinary gradient for the parameters inside ``f``.

Conventions:

* ``f`` takes samples with a leading sample dimension K, shape ``(K, *dist.batch_shape,
  *dist.event_shape)``, and returns costs of shape ``(K, *S)``; the surrogate has shape ``S``.
* When ``S`` is a prefix of the distribution's batch shape (the usual per-example loss),
  score-function estimators credit output ``s`` only to the atoms of batch entry ``s``; that is
  unbiased when ``f_s`` depends on ``z`` only through ``z_s``. Pass ``joint_score=True`` where
  outputs couple batch entries (it is always unbiased, with more variance).
* Estimators that need ∇f as a value (not as a backward rule) use the gradient of ``f``'s outputs
  summed; their surrogate gives the right gradient for any reduction that weights outputs equally
  (``sum`` or ``mean``). Pathwise and score-function estimators are right for any reduction.
* ``weights`` (internal): a probability vector over the K samples replacing the uniform 1/K, used
  to take exact expectations of an estimate by enumeration (``pwgf.estimator_expectation``).
  Enumeration calls ``surrogate_at`` once per chunk of the support, so every term, including one
  that does not depend on the samples, must go through ``average(..., weights)``; a term added
  outside it would be counted once per chunk.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from ..errors import InvalidCostError, NeedsCostFunctionError, PWGFError, UnsupportedFamilyError
from ..families import Family, as_family

CostFn = Callable[[Tensor], Tensor]

ALL_FAMILIES = ("bernoulli", "categorical", "poisson")

#: estimators that evaluate f at non-discrete points (a relaxation, or the mean): f must accept
#: values between the support points there. The class attribute ``relaxed_inputs`` overrides this
#: list for an estimator that sets it; the list is checked against what each estimator really
#: passes to f by a test over the whole registry (tests/test_api_traps.py).
RELAXED_INPUTS = frozenset({"gumbel-softmax", "muprop", "rebar", "relax"})

_HOW_TO_WRITE_F = (
    "write f so that it accepts values between the support points: use pwgf.log_prob(dist, z) "
    "or pwgf.bernoulli_log_prob / pwgf.categorical_log_prob / pwgf.poisson_log_prob, which "
    "hold for relaxed values, or build torch distributions inside f with validate_args=False"
)


class RelaxedInputError(InvalidCostError):
    """f raised on a relaxed (non-discrete) input that the estimator evaluates it at."""


class Estimator(nn.Module):
    """Base class. Subclasses set the class attributes and implement ``surrogate_at``."""

    name: ClassVar[str]
    aliases: ClassVar[tuple[str, ...]] = ()
    families: ClassVar[tuple[str, ...]] = ALL_FAMILIES
    biased: ClassVar[bool]
    #: evaluations of f (and ∇f) per sample, as shown in the estimator table
    evaluations: ClassVar[str]
    #: option -> "default: meaning", the estimator's keyword arguments
    option_docs: ClassVar[dict[str, str]] = {}
    #: needs only ∇f at its samples, so ``pwgf.sample`` can serve it
    pathwise: ClassVar[bool] = False
    #: the estimate is an average of terms that each depend on one sample (and θ), so its exact
    #: expectation is a sum over the support
    per_sample: ClassVar[bool] = False
    #: has parameters of its own, tuned to reduce variance
    learnable: ClassVar[bool] = False
    #: least number of samples the estimator works with
    min_samples: ClassVar[int] = 1
    #: evaluates f at non-discrete points; None: whether the name is in ``RELAXED_INPUTS``
    relaxed_inputs: ClassVar[bool | None] = None

    @classmethod
    def evaluates_relaxed(cls) -> bool:
        """Whether f is evaluated at non-discrete (relaxed) points, not only at samples."""
        if cls.relaxed_inputs is not None:
            return bool(cls.relaxed_inputs)
        return getattr(cls, "name", None) in RELAXED_INPUTS

    # -- public --------------------------------------------------------------------------------
    def surrogate(self, f: CostFn, dist: object, n_samples: int = 1) -> Tensor:
        """Surrogate loss of shape ``S``: value ≈ E[f(z)], gradient = this estimator's estimate."""
        fam = self.family(dist)
        n = self._check_n(n_samples)
        if self.evaluates_relaxed():
            f = _RelaxedGuard(f, self.name)
        return self.surrogate_at(f, fam, self.draw(fam, n))

    def sample(self, dist: object, n_samples: int = 1) -> Tensor:
        """Discrete samples whose backward pass is this estimator (pathwise estimators only)."""
        if not self.pathwise:
            raise NeedsCostFunctionError(self._not_pathwise_message())
        fam = self.family(dist)
        return self.attach(fam, fam.sample(self._check_n(n_samples)))

    # -- for subclasses ------------------------------------------------------------------------
    def draw(self, fam: Family, n: int) -> Tensor:
        """The estimator's randomness for ``n`` samples; by default the samples themselves."""
        return fam.sample(n)

    def surrogate_at(
        self, f: CostFn, fam: Family, z: Tensor, weights: Tensor | None = None
    ) -> Tensor:
        raise NotImplementedError

    def attach(self, fam: Family, z: Tensor) -> Tensor:
        """Pathwise estimators: ``z`` unchanged in value, with the estimator as backward rule."""
        raise NotImplementedError

    def family(self, dist: object) -> Family:
        fam = as_family(dist)
        if fam.name not in self.families:
            from ..registry import estimators_for  # the registry imports this module

            raise UnsupportedFamilyError(
                f"estimator '{self.name}' does not support the {fam.name} family; "
                f"estimators that do: {', '.join(estimators_for(fam.name))}"
            )
        return fam

    def _check_n(self, n_samples: int) -> int:
        if isinstance(n_samples, bool) or not isinstance(n_samples, int):
            raise PWGFError(f"n_samples must be an int, got {type(n_samples).__name__}")
        if n_samples < self.min_samples:
            raise PWGFError(
                f"n_samples must be >= {self.min_samples} for estimator '{self.name}', "
                f"got {n_samples}"
            )
        return n_samples

    def extra_repr(self) -> str:
        return self.name

    def _options_given(self) -> dict[str, Any]:
        """The keyword options this instance was made with (as far as they can be known)."""
        given = getattr(self, "spec_options", None)
        if given is not None:
            return dict(given)
        out = {}
        for p in inspect.signature(type(self).__init__).parameters.values():
            if p.default is not inspect.Parameter.empty and hasattr(self, p.name):
                value = getattr(self, p.name)
                if not isinstance(value, Tensor | nn.Module) and value != p.default:
                    out[p.name] = value
        return out

    def _not_pathwise_message(self) -> str:
        call = f"pwgf.get_estimator('{self.name}'"
        given = self._options_given()
        call += "".join(f", {k}={v!r}" for k, v in given.items()) + ")"
        use = f"use {call}.surrogate(f, dist, n_samples)"
        if type(self).pathwise and given:
            # the class works through pwgf.sample: find the options that stop this instance
            params = inspect.signature(type(self).__init__).parameters
            culprits = []
            for key in given:
                try:
                    rest = {k: v for k, v in given.items() if k != key}
                    if type(self)(**rest).pathwise:
                        culprits.append(key)
                except Exception:  # an option that cannot go alone: not the single reason
                    continue
            if culprits:
                why = ", ".join(f"{k}={given[k]!r}" for k in culprits)
                defaults = ", ".join(
                    f"{k}={params[k].default!r}"
                    for k in culprits
                    if k in params and params[k].default is not inspect.Parameter.empty
                )
                return (
                    f"estimator '{self.name}' with {why} must evaluate f itself (that option "
                    f"needs ∇f as a value, not only a backward rule at the samples), so it cannot "
                    f"work through pwgf.sample: leave it at its default ({defaults}) to use "
                    f"pwgf.sample, or {use}"
                )
        return (
            f"estimator '{self.name}' must evaluate f itself, so it cannot work through "
            f"pwgf.sample; {use}"
        )


class _RelaxedGuard:
    """f as given, but an exception f raises on a non-discrete input is re-raised (chained) as
    ``RelaxedInputError``, naming the estimator and how to write f. Costs nothing unless f
    raises: the input is inspected only then."""

    def __init__(self, f: CostFn, estimator: str) -> None:
        self.f = f
        self.estimator = estimator

    def __call__(self, z: Tensor) -> Tensor:
        try:
            return self.f(z)
        except RelaxedInputError:
            raise
        except Exception as exc:
            if not _is_relaxed(z):
                raise
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            first = first if len(first) <= 200 else first[:200] + "..."
            raise RelaxedInputError(
                f"estimator '{self.estimator}' evaluates f at relaxed (non-discrete) points, "
                f"and f raised {type(exc).__name__} on one ({first}); {_HOW_TO_WRITE_F}. "
                "Estimators that evaluate f only at discrete samples: "
                + ", ".join(_discrete_estimators())
            ) from exc


def _is_relaxed(z: object) -> bool:
    if not isinstance(z, Tensor) or not z.dtype.is_floating_point:
        return False
    try:
        with torch.no_grad():
            zz = z.detach()
            return bool(((zz != zz.round()) & torch.isfinite(zz)).any())
    except Exception:  # e.g. a tensor subclass that cannot be inspected: say nothing more
        return False


def _discrete_estimators() -> list[str]:
    from ..registry import list_estimators  # the registry imports this module

    return [i.name for i in list_estimators() if not i.relaxed_inputs and i.name != "exact"]


class PathwiseEstimator(Estimator):
    """An estimator defined by a backward rule at each sample: the surrogate is f averaged over
    the samples after ``attach``."""

    pathwise = True
    per_sample = True

    def surrogate_at(
        self, f: CostFn, fam: Family, z: Tensor, weights: Tensor | None = None
    ) -> Tensor:
        return average(evaluate(f, self.attach(fam, z)), weights)


# -- shared helpers --------------------------------------------------------------------------------
def evaluate(f: CostFn, z: Tensor) -> Tensor:
    """``f(z)``, checked: a floating tensor of shape ``(K, *S)`` with K = ``z.shape[0]``."""
    out = f(z)
    if not isinstance(out, Tensor):
        raise InvalidCostError(f"f must return a torch.Tensor, got {type(out).__name__}")
    if not out.dtype.is_floating_point:
        raise InvalidCostError(f"f must return a floating-point tensor, got {out.dtype}")
    if out.ndim == 0 or out.shape[0] != z.shape[0]:
        raise InvalidCostError(
            f"f must return costs of shape (K, *S) with K = {z.shape[0]} samples first; it "
            f"returned shape {tuple(out.shape)} for input of shape {tuple(z.shape)}"
        )
    return out


def average(values: Tensor, weights: Tensor | None) -> Tensor:
    """Mean over the leading sample dimension, or the weighted sum when ``weights`` is given."""
    if weights is None:
        return values.mean(0)
    return (weights.reshape(-1, *([1] * (values.ndim - 1))) * values).sum(0)


def per_output(x: Tensor, out_shape: torch.Size, batch_shape: torch.Size, joint: bool) -> Tensor:
    """Reduce an atom-level quantity ``(K, *batch_shape, ...)`` to broadcast against ``(K, *S)``.

    If ``S`` is a prefix of the batch shape (and not ``joint``), output ``s`` gets the sum over
    batch entry ``s``'s atoms; otherwise every output gets the sum over all atoms.
    """
    k = x.shape[0]
    if per_entry(out_shape, batch_shape, joint):
        return x.reshape(k, *out_shape, -1).sum(-1)
    return x.reshape(k, -1).sum(-1).reshape(k, *([1] * len(out_shape)))


def per_entry(out_shape: torch.Size, batch_shape: torch.Size, joint: bool) -> bool:
    """Whether output ``s`` is credited only to batch entry ``s``: ``S`` is a prefix of the batch
    shape and not ``joint`` (the convention in this module's docstring)."""
    return not joint and tuple(batch_shape[: len(out_shape)]) == tuple(out_shape)


def detached_grad(f: CostFn, z: Tensor) -> tuple[Tensor, Tensor]:
    """``f(z)`` (still attached to f's parameters) and ``∇_z Σ f(z)`` at the detached samples."""
    zz = z.detach().requires_grad_(True)
    with torch.enable_grad():
        out = evaluate(f, zz)
        (g,) = torch.autograd.grad(out.sum(), zz, retain_graph=True, allow_unused=True)
    return out, torch.zeros_like(zz) if g is None else g
