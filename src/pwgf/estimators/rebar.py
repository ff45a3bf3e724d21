"""REBAR: REINFORCE with a concrete-relaxation control variate, tuned online for low variance.

Source: Tucker, Mnih, Maddison, Lawson & Sohl-Dickstein, "REBAR: Low-variance, unbiased gradient
estimates for discrete latent variable models" (NeurIPS 2017): the estimator, its appendix on
conditional Gumbel/logistic samples, and its online tuning of η and λ. The general form with a
learned control variate c is RELAX (``pwgf.estimators.relax``); REBAR is its special case
``c(z) = η f(σ_λ(z))``.

For the logits ℓ (Bernoulli: logistic noise; one-hot categorical: Gumbel noise on log π),

    z = ℓ + log u - log(1 - u)                  (Bernoulli),   z_c = log π_c - log(-log u_c)
    b = H(z) = 1[z > 0]                         (Bernoulli),   b = one_hot(argmax_c z_c)
    z̃ ~ p(z | b), reparameterised with v ~ U(0, 1) and b held fixed:
        Bernoulli  b = 1: z̃ = softplus(ℓ + log v) - log(1 - v)
                   b = 0: z̃ = -softplus(-ℓ + log v) + log(1 - v)
        categorical       z̃_b = -log(-log v_b),  z̃_c = -log(-log v_c / π_c - log v_b)  (c ≠ b)

and the single-sample estimate, with σ_λ the relaxation at temperature λ (sigmoid(z/λ), or
softmax(z/λ) over the categories),

    ĝ_ℓ = [f(b) - c(z̃)] ∇_ℓ log p(b) + ∇_ℓ c(z(ℓ, u)) - ∇_ℓ c(z̃(ℓ, v, b)),   c(z) = η f(σ_λ(z)).

``E[∇_ℓ c(z)] = ∇_ℓ E[c(z)] = E[c(z̃) ∇_ℓ log p(b) + ∇_ℓ c(z̃)]`` (z and (b, z̃) have the same
joint law), so the estimate is unbiased for every value of λ > 0 and η. For the one-hot
categorical the estimate is taken in the tangent directions, ``ĝ - π ⟨1, ĝ⟩``: the gradient for
unnormalised logits, which is what reaches any parameterisation (its mean is unchanged, since the
true gradient has ⟨1, ∇⟩ = 0). With K samples the estimate is the average of K such terms.

Where the gradient goes (``Rebar.surrogate``):

* the estimate is computed for a detached, per-sample copy of the logits tensor
  ``dist.logits`` (``fam.base.logits``; torch derives it from the probs differentiably when the
  distribution was built from probs), by ``torch.autograd.grad`` with respect to that copy only,
  and attached to the real logits as ``ĝ · ℓ``: the model's gradient reaches the logits (and the
  encoder that produced them) through that term alone;
* f's own parameters get the ordinary gradient ``(1/K) Σ_k ∇_w f(b_k)`` of the surrogate's value
  ``(1/K) Σ_k f(b_k)``. The relaxed evaluations ``f(σ_λ(z))`` used by the control variate are only
  differentiated with respect to the logits copy (and, for tuning, the estimator's parameters),
  so they give f's parameters no gradient at all, not even a zero-mean one;
* the estimator's own parameters (``log_temperature``, ``eta``, and RELAX's network) get no
  gradient from the surrogate; they are trained by ``Rebar.variance_loss``.

Tuning (as in both papers): E[ĝ] does not depend on the estimator's
parameters φ, so ``∇_φ Var(ĝ) = ∇_φ E[‖ĝ‖²]``. In training mode with ``tune=True`` (and grad
enabled) each ``surrogate`` call computes the single-sample estimates ĝ_k with
``create_graph=True``, forms ``V = (1/K) Σ_k ‖ĝ_k‖²`` (summed over the elements of the logits
tensor; ĝ_k is for the sum of f's outputs) and its gradient ∇_φ V at once. ``variance_loss()``
returns V as a scalar whose gradient reaches the estimator's parameters only. One line in a
training loop whose optimiser holds ``est.parameters()`` as well as the model's::

    loss = est.surrogate(f, dist, n_samples)
    (loss.mean() + est.variance_loss()).backward()
    opt.step()

``variance_loss()`` sums over the surrogates computed since its last call (several stochastic
layers or gradient accumulation), then forgets them; it raises if there are none. The estimator's
parameters never receive gradient from the model's loss, so nothing is double counted, and the
model's gradient is the same with or without tuning.

Outputs are credited to batch entries as in REINFORCE (``joint_score``, see
``pwgf.estimators.base``): when f's output shape S is a prefix of the batch shape, output s's
control variate and score are those of batch entry s, and the surrogate gives the right gradient
for any reduction of the outputs. Otherwise (or with ``joint_score=True``) the estimate is for the
sum of the outputs and is spread equally over them: right for ``sum`` or ``mean``.
"""

from __future__ import annotations

import math
import warnings
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import InvalidCostError, PWGFError, UntunedEstimatorWarning
from ..families import Family
from .base import CostFn, Estimator, average, evaluate, per_entry


def check_positive(name: str, option: str, value: object) -> float:
    try:
        x = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise PWGFError(f"{name}: {option} must be a positive float, got {value!r}") from None
    if isinstance(value, bool) or not (x > 0 and math.isfinite(x)):
        raise PWGFError(f"{name}: {option} must be positive and finite, got {value!r}")
    return x


def check_finite(name: str, option: str, value: object) -> float:
    try:
        x = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise PWGFError(f"{name}: {option} must be a finite float, got {value!r}") from None
    if isinstance(value, bool) or not math.isfinite(x):
        raise PWGFError(f"{name}: {option} must be finite, got {value!r}")
    return x


def check_bool(name: str, option: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise PWGFError(f"{name}: {option} must be True or False, got {value!r}")
    return value


# -- the noise, the discrete sample and the conditional sample, as functions of the logits ------
def perturbed(fam: Family, logits: Tensor, u: Tensor) -> Tensor:
    """z(ℓ, u): logistic noise on ℓ (Bernoulli), Gumbel noise on log π (categorical)."""
    if fam.name == "bernoulli":
        return logits + torch.log(u) - torch.log1p(-u)
    return torch.log_softmax(logits, -1) - torch.log(-torch.log(u))


def hard(fam: Family, z: Tensor) -> Tensor:
    """b = H(z), detached."""
    z = z.detach()
    if fam.name == "bernoulli":
        return (z > 0).to(z.dtype)
    return torch.zeros_like(z).scatter_(-1, z.argmax(-1, keepdim=True), 1.0)


def conditional(fam: Family, logits: Tensor, v: Tensor, b: Tensor) -> Tensor:
    """z̃(ℓ, v, b) ~ p(z | b), differentiable in ℓ with b held fixed (formulas: module doc)."""
    if fam.name == "bernoulli":
        log_v, tail = torch.log(v), torch.log1p(-v)
        pos = F.softplus(logits + log_v) - tail
        neg = -F.softplus(-logits + log_v) + tail
        return torch.where(b > 0.5, pos, neg)
    log_pi = torch.log_softmax(logits, -1)
    log_e = torch.log(-torch.log(v))  # log of Exp(1) variables
    log_e_b = (log_e * b).sum(-1, keepdim=True)
    others = -torch.logaddexp(log_e - log_pi, log_e_b)
    return torch.where(b > 0.5, -log_e_b, others)


def relaxed(fam: Family, z: Tensor, temperature: Tensor) -> Tensor:
    """σ_λ(z): sigmoid(z/λ) (Bernoulli) or softmax(z/λ) over the categories."""
    if fam.name == "bernoulli":
        return torch.sigmoid(z / temperature)
    return torch.softmax(z / temperature, -1)


def score_grad(fam: Family, logits: Tensor, b: Tensor) -> Tensor:
    """∇_ℓ log p(b) per atom: b - σ(ℓ), or b - softmax(ℓ)."""
    if fam.name == "bernoulli":
        return b - torch.sigmoid(logits)
    return b - torch.softmax(logits, -1)


class _Draws(NamedTuple):
    """What the estimate ĝ needs of one ``surrogate_at`` call: f, the family, the logits (a
    detached copy), the noises u (for z) and v (for z̃ given b), b = H(z), f(b) (detached), and
    whether one control variate serves all outputs (``joint``) or one each."""

    f: CostFn
    fam: Family
    logits: Tensor
    u: Tensor
    v: Tensor
    b: Tensor
    fb: Tensor
    joint: bool


class Rebar(Estimator):
    """REBAR (Tucker et al. 2017); see the module docstring for the formula and the tuning API.

    Parameters (``nn.Parameter``, tuned by ``variance_loss``): ``log_temperature`` (log λ)
    and ``eta`` (η). They are kept in the default dtype at construction; computations follow the
    distribution's dtype and device (the parameters are cast, differentiably). Move the estimator
    with ``.to(device)`` like any module.
    """

    name = "rebar"
    families = ("bernoulli", "categorical")
    biased = False
    learnable = True
    #: the score term is degenerate at probs of exactly 0 or 1 (or 0 for a category): refused
    interior_only = True
    #: surrogates prepared for tuning without a variance_loss() call, after which it warns
    untuned_warn_after = 32
    per_sample = False  # the randomness is the noise (u, v), not the discrete sample
    evaluations = "3 f, 2 ∇f (1 f at the sample; f, ∇f at 2 relaxed points)"
    option_docs = {
        "temperature": "0.5: initial temperature λ > 0 of the relaxation (learned as log λ)",
        "eta": "1.0: initial scale η of the control variate (learned)",
        "tune": "True: in training mode, each surrogate prepares est.variance_loss()",
        "joint_score": "False: credit every output to all atoms (see pwgf.estimators.base)",
    }

    def __init__(
        self,
        temperature: float = 0.5,
        eta: float = 1.0,
        tune: bool = True,
        joint_score: bool = False,
    ) -> None:
        super().__init__()
        tau = check_positive(self.name, "temperature", temperature)
        scale = check_finite(self.name, "eta", eta)
        self.tune = check_bool(self.name, "tune", tune)
        self.joint_score = check_bool(self.name, "joint_score", joint_score)
        self.log_temperature = nn.Parameter(torch.tensor(math.log(tau)))
        self.eta = nn.Parameter(torch.tensor(scale))
        self._pending_value: Tensor | None = None
        # counted on the device, so that dropping a step needs no host read; not persistent, so
        # checkpoints written before it existed still load
        self.register_buffer("_skipped", torch.zeros((), dtype=torch.long), persistent=False)
        self._pending_grads: dict[nn.Parameter, Tensor] = {}
        self._pending_count = 0
        self._warned_untuned = False

    @property
    def skipped_tuning_steps(self) -> int:
        """Tuning steps dropped because their variance or its gradient was not finite."""
        return int(self._skipped)

    @property
    def temperature(self) -> Tensor:
        """λ = exp(log_temperature)."""
        return self.log_temperature.exp()

    # -- public ----------------------------------------------------------------------------------
    def variance_loss(self) -> Tensor:
        """``V = (1/K) Σ_k ‖ĝ_k‖²`` of the surrogates computed since the last call (summed), as a
        scalar whose gradient reaches only this estimator's parameters (``∇_φ V``, already
        computed by ``surrogate``). Add it to the model's loss, or call ``.backward()`` on it."""
        if self._pending_value is None:
            raise PWGFError(
                f"{self.name}: variance_loss() needs a surrogate computed in training mode with "
                "tune=True and grad enabled since its last call; none is pending (was the "
                "estimator in eval() mode, tune=False, or variance_loss() already called?)"
            )
        value, grads = self._pending_value, self._pending_grads
        self.clear_variance_loss()
        # every trainable parameter takes part (with a zero gradient where a step was dropped),
        # so the result can always be backpropagated on its own
        params = [p for p in self.parameters() if p.requires_grad]
        pull = sum(
            ((p * grads[p].to(p)).sum() if p in grads else (p * 0).sum() for p in params),
            start=value.new_zeros(()),
        )
        return value + (pull - pull.detach()).to(value)

    def clear_variance_loss(self) -> None:
        """Forget the pending variance losses (``variance_loss`` does this itself)."""
        self._pending_value, self._pending_grads = None, {}
        self._pending_count = 0

    # -- the estimator ---------------------------------------------------------------------------
    def draw(self, fam: Family, n: int) -> Tensor:
        """Uniform noise ``(n, 2, *fam.shape)``: u for z and v for z̃, inside (0, 1)."""
        u = torch.rand((n, 2, *fam.shape), dtype=fam.dtype, device=fam.device)
        return u.clamp_(min=torch.finfo(fam.dtype).tiny)

    def _network(self, x: Tensor) -> Tensor | None:
        """The learned part r_ρ of the control variate (RELAX); REBAR has none."""
        return None

    def surrogate_at(
        self, f: CostFn, fam: Family, z: Tensor, weights: Tensor | None = None
    ) -> Tensor:
        # ``z`` is the noise drawn by ``draw``: z[:, 0] = u, z[:, 1] = v.
        fam.check_interior(self.name)
        if z.ndim != len(fam.shape) + 2 or z.shape[1] != 2 or z.shape[2:] != fam.shape:
            raise PWGFError(
                f"{self.name}: surrogate_at takes the noise from draw(), shape (K, 2, "
                f"{', '.join(map(str, fam.shape))}), got {tuple(z.shape)}"
            )
        logits = fam.base.logits
        u, v = z[:, 0].to(logits), z[:, 1].to(logits)
        b = hard(fam, perturbed(fam, logits.detach(), u))
        fb = evaluate(f, b)  # attached to f's parameters: their ordinary gradient
        value = average(fb, weights)
        tuning = self.tune and self.training and torch.is_grad_enabled()
        if not torch.is_grad_enabled() or not (logits.requires_grad or tuning):
            return value

        out_shape = fb.shape[1:]
        joint = not per_entry(out_shape, fam.batch_shape, self.joint_score)
        draws = _Draws(f, fam, logits.detach(), u, v, b, fb.detach(), joint)
        g = self._tuned_estimate(draws, weights) if tuning else self._estimate(draws, False)
        if tuning and self._pending_count >= self.untuned_warn_after and not self._warned_untuned:
            self._warned_untuned = True
            warnings.warn(
                f"{self.name}: {self._pending_count} surrogates were prepared for tuning but "
                "variance_loss() was not called, so the estimator's parameters (temperature, "
                "eta, ...) are never tuned. Add est.variance_loss() to the loss (and "
                "est.parameters() to the optimiser), or pass tune=False or call est.eval().",
                UntunedEstimatorWarning,
                stacklevel=3,  # the caller of surrogate()
            )
        # a -inf logit masks its category (π = 0, gradient 0); inf - inf would be nan
        masked = torch.isneginf(logits.detach())
        live = logits.masked_fill(masked, 0.0)
        g_mean = average(g.detach(), weights).masked_fill(masked, 0.0)
        attach = g_mean * (live - live.detach())  # zero in value; gradient ĝ for the logits
        if joint:
            credit = (attach.sum() / max(out_shape.numel(), 1)).expand(out_shape)
        else:
            credit = attach.reshape(*out_shape, -1).sum(-1)
        return value + credit

    def _estimate(self, draws: _Draws, tuning: bool) -> Tensor:
        """Single-sample estimates ĝ_k for the logits, ``(K, *fam.shape)``; a function of the
        estimator's parameters when ``tuning`` (graph kept for the second-order gradient)."""
        f, fam, logits, u, v, b, fb, joint = draws
        k = u.shape[0]
        groups = torch.Size(()) if joint else fb.shape[1:]  # one control variate per group
        with torch.enable_grad():
            leaf = logits.unsqueeze(0).expand(k, *logits.shape).clone().requires_grad_(True)
            z = perturbed(fam, leaf, u)
            z_tilde = conditional(fam, leaf, v, b)
            temperature = self.log_temperature.to(leaf).exp()
            eta = self.eta.to(leaf)
            x = relaxed(fam, torch.cat([z, z_tilde]), temperature)  # (2K, *shape)
            fx = evaluate(f, x)
            if fx.shape[1:] != fb.shape[1:]:
                raise InvalidCostError(
                    f"f returned shape {tuple(fx.shape[1:])} per sample for relaxed inputs but "
                    f"{tuple(fb.shape[1:])} for discrete ones"
                )
            c = eta * _group(fx, joint)  # (2K, *groups)
            r = self._network(x.reshape(2 * k, *groups, -1))
            if r is not None:
                c = c + r
            c_z, c_tilde = c[:k], c[k:]
            (dc,) = torch.autograd.grad(
                (c_z - c_tilde).sum(), leaf, create_graph=tuning, allow_unused=True
            )
            coef = _group(fb, joint) - c_tilde  # (K, *groups)
            coef = coef.reshape(k, *groups, *([1] * (len(fam.shape) - len(groups))))
            g = coef * score_grad(fam, logits, b)
            if dc is not None:
                g = g + dc
            if fam.name == "categorical":  # tangent directions: ĝ - π <1, ĝ>
                g = g - torch.softmax(logits, -1) * g.sum(-1, keepdim=True)
        return g

    @torch.compiler.disable
    def _tuned_estimate(self, draws: _Draws, weights: Tensor | None) -> Tensor:
        """The estimates with tuning: V and ∇_φ V recorded, ĝ_k returned detached. Runs eagerly
        under ``torch.compile`` (a graph break): ∇_φ V is a second-order gradient, which
        aot_autograd cannot trace, and nothing of it flows back into the compiled graph."""
        g = self._estimate(draws, True)
        self._record(average(g.reshape(g.shape[0], -1).pow(2).sum(-1), weights))
        return g.detach()

    def _record(self, variance: Tensor) -> None:
        """Add V and ∇_φ V to the pending variance loss; frees the second-order graph."""
        params = [p for p in self.parameters() if p.requires_grad]
        grads: tuple[Tensor | None, ...] = (None,) * len(params)
        if variance.requires_grad and params:
            grads = torch.autograd.grad(variance, params, allow_unused=True)
        value = variance.detach()
        # A relaxed sample can land where f's derivative is singular (|z - c|^1.5 at z = c) and
        # make one tuning gradient non-finite; stepping on it would turn the temperature, and
        # then every later estimate, into nan. Such a step tunes nothing instead.
        finite = (
            torch.isfinite(value)
            & torch.stack(
                [torch.isfinite(g).all() for g in grads if g is not None]
                or [value.new_ones((), dtype=torch.bool)]
            ).all()
        )
        # dropped on the device, without reading `finite` on the host
        self._skipped += (~finite).to(self._skipped)
        value = torch.where(finite, value, torch.zeros_like(value))
        grads = tuple(
            None if g is None else torch.where(finite.to(g.device), g, torch.zeros_like(g))
            for g in grads
        )
        self._pending_count += 1
        if self._pending_value is None:
            self._pending_value = value
        else:
            self._pending_value = self._pending_value + value.to(self._pending_value)
        for p, g in zip(params, grads, strict=True):
            if g is not None:
                old = self._pending_grads.get(p)
                self._pending_grads[p] = g if old is None else old + g

    def extra_repr(self) -> str:
        return (
            f"{self.name}, temperature={float(self.temperature.detach()):.4g}, "
            f"eta={float(self.eta.detach()):.4g}, tune={self.tune}"
        )


def _group(out: Tensor, joint: bool) -> Tensor:
    """f's outputs ``(n, *S)`` per control-variate group: as they are, or summed (joint)."""
    return out.reshape(out.shape[0], -1).sum(-1) if joint else out
