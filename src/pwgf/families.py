"""The discrete families pwgf handles, behind one small interface.

A ``Family`` wraps a user's ``torch.distributions`` object (``Bernoulli``,
``OneHotCategorical`` or ``Poisson``, possibly inside ``Independent``) and exposes what the
estimators need: the mean μ(θ) as a tensor still attached to the user's graph, detached samples,
log-probabilities, and the support as a grid of points with differentiable probabilities.

Terms used throughout:

* *shape*: the shape of one sample, ``dist.batch_shape + dist.event_shape``.
* *atom*: one independent discrete coordinate. A Bernoulli or Poisson atom is a scalar; a one-hot
  categorical atom is a vector of length C. ``atom_shape`` is the shape of the array of atoms.
* *grid*: for every atom, M support points (``values``, shape ``(*atom_shape, M, V)``, V = 1 for
  scalar families and C for categorical) with their probabilities (``probs``, ``(*atom_shape, M)``).
  Expectations under p_θ are ``Σ_m probs[..., m] ψ(values[..., m, :])``, exact for Bernoulli and
  categorical, and truncated for Poisson (see ``pwgf.truncation``).

``as_family`` reads the user's parameter tensor as it is now and builds a fresh distribution
from it, so torch's lazily cached probs/logits on the user's object (stale after an optimiser
step) are never used; a parameter that is itself a stale copy is refused
(``pwgf.validation.check_fresh``). Value checks run only when validating
(``pwgf.validation``).
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch
from torch import Tensor
from torch.distributions import (
    Bernoulli,
    Categorical,
    Distribution,
    Independent,
    OneHotCategorical,
    Poisson,
)

from .errors import BoundaryError, InvalidParameterError, UnsupportedDistributionError
from .kernels import Kernel
from .truncation import DEFAULT_TAIL, poisson_grid
from .validation import check_fresh, validates


class Family(ABC):
    """A discrete, factorised distribution seen the way the estimators need it.

    Made by ``as_family`` from a ``torch.distributions`` object: ``Bernoulli``,
    ``OneHotCategorical`` or ``Poisson``, optionally inside ``Independent``, built from logits,
    probabilities or rates. ``shape`` is ``batch_shape + event_shape``; samples have shape
    ``(K, *shape)``. ``param`` is the tensor the distribution was built from: gradients are
    reported for it (and reach whatever produced it). An estimator reads from the family the
    atoms' means μ(θ) and variances, samples and their log-probabilities, the kernel metric of
    pWGF-MMD, and, for exact sums, the support grid (truncated for Poisson,
    ``pwgf.truncation``).
    """

    name: str
    value_dim: int

    def __init__(
        self, dist: Distribution, base: Distribution, validate: bool | None = None
    ) -> None:
        self.dist = dist
        self.base = base
        self.shape = torch.Size(dist.batch_shape + dist.event_shape)
        self.batch_shape = torch.Size(dist.batch_shape)
        #: whether value checks run (``pwgf.validation``); they read tensors on the host
        self.validate = validates(dist) if validate is None else validate
        _check_dtype(self.param_name, self.param)
        if self.validate:
            self._check_parameters()

    # -- parameters -------------------------------------------------------------------------
    @property
    @abstractmethod
    def param_name(self) -> str:
        """Name of the tensor the distribution was built from (``logits``, ``probs``, ``rate``)."""

    @property
    def param(self) -> Tensor:
        """The tensor the distribution was built from (torch keeps it as ``_param``)."""
        return self._param_owner()._param

    def _param_owner(self) -> Distribution:
        return self.base

    def _built_from_logits(self) -> bool:
        # lazy_property caches the derived parameter in __dict__ too, so compare identities.
        owner = self._param_owner()
        return owner.__dict__.get("logits") is owner._param

    @abstractmethod
    def rebuild(self, param: Tensor) -> Family:
        """The same family and wrapping, built from a new parameter tensor of the same kind."""

    @abstractmethod
    def _check_parameters(self) -> None:
        """Value checks (host reads), run only when ``validate``."""

    def boundary(self) -> Tensor | None:
        """Atoms whose parameter lies where a score ∇ log p is degenerate, ``atom_shape`` bool:
        a Bernoulli probability of exactly 0 or 1, a categorical with a zero probability, a
        Poisson rate of 0. There the exact gradient still moves mass onto values the
        distribution never draws, which a score-function estimate cannot see. ``None`` when the
        parameterisation has no such boundary (logits: a -inf logit is a mask whose exact
        gradient is zero)."""
        return None

    def check_interior(self, estimator: str) -> None:
        """Refuse, with ``BoundaryError``, a parameter on the boundary (see
        ``boundary``) for an estimator whose formula is degenerate there. Only when
        validating and a gradient for the parameter is wanted."""
        if not (self.validate and torch.is_grad_enabled() and self.param.requires_grad):
            return
        at = self.boundary()
        if at is None or not bool(at.any()):
            return
        from .registry import _load, estimators_for  # the registry imports the estimators

        ok = [n for n in estimators_for(self.name) if not getattr(_load(n), "interior_only", False)]
        raise BoundaryError(
            f"estimator '{estimator}' cannot estimate the gradient at {self._boundary_text()} "
            f"({int(at.sum())} of {at.numel()} atoms): the score ∇ log p is degenerate there, and "
            "the exact gradient moves mass onto values that are never drawn, so a score-function "
            f"estimate would be silently wrong. Estimators that handle it: {', '.join(ok)}; or "
            "keep the parameter inside its range (build the distribution from logits)."
        )

    def _boundary_text(self) -> str:
        return "the boundary"

    @property
    def dtype(self) -> torch.dtype:
        return self.param.dtype

    @property
    def device(self) -> torch.device:
        return self.param.device

    # -- moments, sampling ------------------------------------------------------------------
    @abstractmethod
    def mean(self) -> Tensor:
        """μ(θ), shape ``self.shape``, differentiable with respect to θ."""

    @abstractmethod
    def variance(self) -> Tensor:
        """Variance of each atom (for categorical, the trace of its covariance), ``atom_shape``."""

    def sample(self, n: int) -> Tensor:
        """``n`` detached samples, shape ``(n, *self.shape)``, in the parameter's dtype."""
        with torch.no_grad():
            return self.base.sample((n,)).to(self.dtype)

    def log_prob(self, z: Tensor) -> Tensor:
        """Log-probability of each atom, shape ``(n, *atom_shape)``."""
        return self.base.log_prob(z)

    @property
    def atom_shape(self) -> torch.Size:
        return torch.Size(self.base.batch_shape)

    @property
    def n_atoms(self) -> int:
        return self.atom_shape.numel()

    # -- atom view and support grid -----------------------------------------------------------
    @abstractmethod
    def to_atoms(self, z: Tensor) -> Tensor:
        """``(n, *shape)`` -> ``(n, *atom_shape, V)``."""

    @abstractmethod
    def from_atoms(self, v: Tensor) -> Tensor:
        """``(n, *atom_shape, V)`` -> ``(n, *shape)``."""

    @abstractmethod
    def grid(self, tail: float = DEFAULT_TAIL) -> tuple[Tensor, Tensor]:
        """Support points ``(*atom_shape, M, V)`` (detached) and their probabilities
        ``(*atom_shape, M)`` (differentiable in θ)."""

    @abstractmethod
    def kernel_metric(self, kernel: Kernel, h: Tensor, tail: float = DEFAULT_TAIL) -> Tensor:
        """``G(θ) = ∇²_{μ'} MMD²_κ(p_{μ'}, p_μ)|_{μ'=μ}`` per atom, in mean coordinates.

        A scalar per atom: for Bernoulli and Poisson the mean is one number; for the one-hot
        categorical G is a multiple of the identity on the simplex's tangent space whenever κ is
        invariant under permutations of the coordinates (RBF and linear are), and that multiple is
        returned. ``h`` is the bandwidth, a scalar or one per atom. Shape ``atom_shape``.
        """


def _check_dtype(name: str, value: Tensor) -> None:
    if not value.dtype.is_floating_point:
        raise InvalidParameterError(
            f"distribution parameter '{name}' must be a floating-point tensor, got {value.dtype}"
        )


def _check_finite(name: str, value: Tensor) -> None:
    if not bool(torch.isfinite(value).all()):
        raise InvalidParameterError(
            f"distribution parameter '{name}' has non-finite values (nan or inf)"
        )


class BernoulliFamily(Family):
    name = "bernoulli"
    value_dim = 1

    @property
    def param_name(self) -> str:
        return "logits" if self._built_from_logits() else "probs"

    def _check_parameters(self) -> None:
        p = self.param
        _check_finite(self.param_name, p)
        if self.param_name == "probs" and bool(((p < 0) | (p > 1)).any()):
            raise InvalidParameterError("Bernoulli 'probs' must lie in [0, 1]")

    def rebuild(self, param: Tensor) -> Family:
        base = _fresh(Bernoulli, self.param_name, param)
        return _wrap_like(self.dist, base, BernoulliFamily, self.validate)

    def boundary(self) -> Tensor | None:
        if self.param_name == "logits":
            return None
        p = self.param.detach()
        return (p == 0) | (p == 1)

    def _boundary_text(self) -> str:
        return "Bernoulli probs of exactly 0 or 1"

    def log_prob(self, z: Tensor) -> Tensor:
        if self.param_name == "logits":
            return self.base.log_prob(z)
        # From the probabilities themselves: torch's clamps them to [eps, 1 - eps] first, which
        # below eps (1.2e-7 in float32) gives a wrong score with a zero gradient.
        p = self.base.probs
        return torch.where(z > 0.5, torch.log(p), torch.log1p(-p))

    def mean(self) -> Tensor:
        return self.base.probs

    def variance(self) -> Tensor:
        p = self.base.probs
        return p * (1 - p)

    def to_atoms(self, z: Tensor) -> Tensor:
        return z.unsqueeze(-1)

    def from_atoms(self, v: Tensor) -> Tensor:
        return v.squeeze(-1)

    def grid(self, tail: float = DEFAULT_TAIL) -> tuple[Tensor, Tensor]:
        p = self.base.probs
        values = torch.tensor([0.0, 1.0], dtype=p.dtype, device=p.device)
        values = values.expand(*p.shape, 2).unsqueeze(-1)
        return values, torch.stack([1 - p, p], dim=-1)

    def kernel_metric(self, kernel: Kernel, h: Tensor, tail: float = DEFAULT_TAIL) -> Tensor:
        # MMD²(p', p) = (p' - p)² (κ00 + κ11 - 2κ01), so G = 2(κ00 + κ11 - 2κ01).
        zero = torch.zeros(1, dtype=self.dtype, device=self.device)
        one = torch.ones(1, dtype=self.dtype, device=self.device)
        k = kernel.value
        g = 2 * (k(zero, zero, h) + k(one, one, h) - 2 * k(zero, one, h))
        return g.expand(self.atom_shape)

    def mvd_step(self, z: Tensor) -> tuple[Tensor, Tensor]:
        """The neighbour of each coordinate (its other value) and the sign that makes
        ``sign·(f(z with z_d flipped) - f(z))`` equal ``f(z|z_d=1) - f(z|z_d=0)``."""
        sign = 1 - 2 * z
        return sign, sign


class CategoricalFamily(Family):
    name = "categorical"

    @property
    def value_dim(self) -> int:  # type: ignore[override]
        return self.base.event_shape[-1]

    def _param_owner(self) -> Distribution:
        return self.base._categorical

    @property
    def param_name(self) -> str:
        return "logits" if self._built_from_logits() else "probs"

    def _check_parameters(self) -> None:
        p = self.param
        # -inf logits are the usual mask of an impossible category; nan and +inf are errors.
        _check_finite(self.param_name, p.masked_fill(p == float("-inf"), 0.0))
        if self.param_name == "probs" and bool((p < 0).any()):
            raise InvalidParameterError("OneHotCategorical 'probs' must be non-negative")
        if self.value_dim < 2:
            raise InvalidParameterError("OneHotCategorical needs at least 2 categories")

    def rebuild(self, param: Tensor) -> Family:
        base = _fresh(OneHotCategorical, self.param_name, param)
        return _wrap_like(self.dist, base, CategoricalFamily, self.validate)

    def boundary(self) -> Tensor | None:
        if self.param_name == "logits":
            return None
        return (self.param.detach() == 0).any(-1)

    def _boundary_text(self) -> str:
        return "a OneHotCategorical with probs of exactly 0 (use -inf logits to mask a category)"

    def mean(self) -> Tensor:
        return self.base.probs

    def variance(self) -> Tensor:
        p = self.base.probs
        return 1 - (p**2).sum(-1)

    def to_atoms(self, z: Tensor) -> Tensor:
        return z

    def from_atoms(self, v: Tensor) -> Tensor:
        return v

    def grid(self, tail: float = DEFAULT_TAIL) -> tuple[Tensor, Tensor]:
        p = self.base.probs
        c = p.shape[-1]
        eye = torch.eye(c, dtype=p.dtype, device=p.device)
        return eye.expand(*p.shape[:-1], c, c), p

    def kernel_metric(self, kernel: Kernel, h: Tensor, tail: float = DEFAULT_TAIL) -> Tensor:
        # Gram on the vertices is a I + b 11ᵀ; on the tangent space (Σδ = 0) MMD² = a|δ|²,
        # so G = 2a = 2(κ(e1, e1) - κ(e1, e2)).
        eye = torch.eye(2, dtype=self.dtype, device=self.device)
        e1, e2 = eye[0], eye[1]
        g = 2 * (kernel.value(e1, e1, h) - kernel.value(e1, e2, h))
        return g.expand(self.atom_shape)


class PoissonFamily(Family):
    name = "poisson"
    value_dim = 1

    @property
    def param_name(self) -> str:
        return "rate"

    @property
    def param(self) -> Tensor:
        return self.base.rate

    def _check_parameters(self) -> None:
        _check_finite("rate", self.param)
        if bool((self.param < 0).any()):
            raise InvalidParameterError("Poisson 'rate' must be non-negative")

    def rebuild(self, param: Tensor) -> Family:
        base = _fresh(Poisson, "rate", param)
        return _wrap_like(self.dist, base, PoissonFamily, self.validate)

    def boundary(self) -> Tensor | None:
        return self.param.detach() == 0

    def _boundary_text(self) -> str:
        return "a Poisson rate of exactly 0"

    def mean(self) -> Tensor:
        return self.base.rate

    def variance(self) -> Tensor:
        return self.base.rate

    def to_atoms(self, z: Tensor) -> Tensor:
        return z.unsqueeze(-1)

    def from_atoms(self, v: Tensor) -> Tensor:
        return v.squeeze(-1)

    def _pmf(self, x: Tensor, rate: Tensor) -> Tensor:
        # exp(x log λ - λ - log x!). The three terms are O(λ) and cancel to O(log λ): float32
        # would lose 1e-3 of the mass at λ = 1e4, so the sum is formed in float64 and the result
        # cast back. At λ = 0, x log λ has an infinite derivative (0·∞ = nan in the chain rule),
        # so there the pmf is its first-order expansion, e^{-λ} at 0, λe^{-λ} at 1, O(λ²) beyond:
        # the point mass at 0 with the right derivative ∂_λ p(x) = p(x - 1) - p(x).
        lam, xd = rate.unsqueeze(-1).double(), x.double()
        pos = lam > 0
        safe = torch.where(pos, lam, torch.ones_like(lam))
        log_p = torch.special.xlogy(xd, safe) - safe - torch.lgamma(xd.clamp(min=0) + 1)
        decay = torch.exp(-lam)
        zero = torch.zeros_like(log_p)
        at_zero = torch.where(xd == 0, decay, torch.where(xd == 1, lam * decay, zero))
        pmf = torch.where(pos, torch.exp(log_p), at_zero)
        pmf = torch.where(xd >= 0, pmf, zero)
        return pmf.to(rate.dtype)

    def grid(self, tail: float = DEFAULT_TAIL) -> tuple[Tensor, Tensor]:
        rate = self.base.rate
        x = poisson_grid(rate, tail)
        return x.unsqueeze(-1), self._pmf(x, rate)

    def kernel_metric(self, kernel: Kernel, h: Tensor, tail: float = DEFAULT_TAIL) -> Tensor:
        # G = 2 Σ_{x,x'} ∂p(x) ∂p(x') κ(x, x'), with ∂_λ p(x) = p(x-1) - p(x). Linear kernel:
        # 2 (∂_λ E x)² = 2; RBF: pwgf.poisson_kernel, at a cost independent of the rate.
        rate = self.base.rate.detach()
        if kernel.name == "linear":
            return torch.full_like(rate, 2.0)
        if kernel.name == "rbf":
            from .poisson_kernel import rbf_metric

            return rbf_metric(rate, h, tail)
        x = poisson_grid(rate, tail)
        dp = self._pmf(x - 1, rate) - self._pmf(x, rate)
        h = torch.as_tensor(h, dtype=x.dtype, device=x.device).expand(rate.shape)
        gram = kernel.value(x[..., :, None, None], x[..., None, :, None], h[..., None, None])
        return 2 * torch.einsum("...i,...ij,...j->...", dp, gram, dp)

    def mvd_step(self, z: Tensor) -> tuple[Tensor, Tensor]:
        """Neighbour ``z + 1`` with coefficient 1: ``∂_λ E f = E[f(z + 1) - f(z)]``."""
        one = torch.ones_like(z)
        return one, one


_FAMILIES: dict[type, type[Family]] = {
    Bernoulli: BernoulliFamily,
    OneHotCategorical: CategoricalFamily,
    Poisson: PoissonFamily,
}

SUPPORTED = "Bernoulli, OneHotCategorical, Poisson (each possibly inside Independent)"


def _unwrap(dist: object) -> Distribution:
    base = dist
    while isinstance(base, Independent):
        base = base.base_dist
    return base  # type: ignore[return-value]


def _wrap_like(
    template: Distribution, base: Distribution, cls: type[Family], validate: bool
) -> Family:
    # Rebuild the stack of Independent wrappers the user had, innermost first.
    wrappers = []
    d = template
    while isinstance(d, Independent):
        wrappers.append(d.reinterpreted_batch_ndims)
        d = d.base_dist
    dist = base
    for ndims in reversed(wrappers):
        dist = Independent(dist, ndims, validate_args=False)
    return cls(dist, base, validate)


def _fresh(kind: type[Distribution], name: str, param: Tensor) -> Distribution:
    """A new, unchecked distribution of ``kind`` built from ``param``: its derived parameters
    (probs from logits, logits from probs) are computed now, from the tensor's current value,
    never taken from a cache filled before an optimiser step."""
    if kind is OneHotCategorical:
        # as OneHotCategorical.__init__, whose inner Categorical would ignore validate_args
        base = OneHotCategorical.__new__(OneHotCategorical)
        base._categorical = Categorical(**{name: param}, validate_args=False)
        shape = base._categorical.batch_shape, base._categorical.param_shape[-1:]
        Distribution.__init__(base, *shape, validate_args=False)
    else:
        base = kind(**{name: param}, validate_args=False)
    if name == "probs":
        # torch derives logits from probs clamped to [eps, 1 - eps], which is wrong, with a zero
        # gradient, below eps (1.2e-7 in float32); clamp only to the normal range, so that only
        # probabilities of exactly 0 or 1 (refused where that matters) are moved.
        owner = base._categorical if kind is OneHotCategorical else base
        p = owner._param
        info = torch.finfo(p.dtype)
        if kind is OneHotCategorical:
            logits = torch.log(p.clamp(min=info.tiny))
        else:
            q = p.clamp(min=info.tiny, max=1 - info.eps / 2)
            logits = torch.log(q) - torch.log1p(-q)
        owner.__dict__["logits"] = logits  # fills torch's lazy_property cache
    return base


def as_family(dist: object) -> Family:
    """Wrap ``dist`` as a ``Family``.

    Args:
        dist: ``Bernoulli``, ``OneHotCategorical`` or ``Poisson``, optionally inside
            ``Independent``.

    Returns:
        The family; a ``Family`` is returned unchanged.

    Raises:
        UnsupportedDistributionError: any other distribution (the message names the supported
            ones).
        InvalidParameterError: non-finite or out-of-range parameters, when validation is on
            (``pwgf.validation``).
    """
    if isinstance(dist, Family):
        return dist
    if not isinstance(dist, Distribution):
        raise UnsupportedDistributionError(
            f"expected a torch.distributions object ({SUPPORTED}), got {type(dist).__name__}"
        )
    base = _unwrap(dist)
    cls = _FAMILIES.get(type(base))
    if cls is None:
        raise UnsupportedDistributionError(
            f"unsupported distribution {type(base).__name__}; pwgf handles {SUPPORTED}"
        )
    # The user's distribution is read, never used: its parameter tensor is taken as it is now
    # and a fresh distribution built from it (see _fresh and pwgf.validation).
    validate = validates(dist)
    user = cls(dist, base, validate=False)
    param = user.param
    if validate:
        check_fresh(dist, param, user.name)
    return _wrap_like(dist, _fresh(type(base), user.param_name, param), cls, validate)
