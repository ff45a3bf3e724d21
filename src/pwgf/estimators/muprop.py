"""MuProp: REINFORCE with a first-order Taylor control variate and its analytic correction.

Source: Gu, Levine, Sutskever & Mnih, "MuProp: Unbiased Backpropagation for Stochastic Neural
Networks" (ICLR 2016). With μ̄ = stopgrad μ(θ) (the mean of p_θ: p for Bernoulli, π for the
one-hot categorical, the rate λ for Poisson) and the linearisation of f at μ̄,

    f̄(z) = f(μ̄) + ∇f(μ̄)ᵀ (z - μ̄),     E_{p_θ}[f̄(z)] = f(μ̄) + ∇f(μ̄)ᵀ (μ(θ) - μ̄),

the estimate is

    ĝ_θ = (1/K) Σ_k (f(z_k) - f̄(z_k) - b_k) ∇_θ log p_θ(z_k)  +  (∂μ/∂θ)ᵀ ∇f(μ̄),

unbiased for any f that is differentiable on relaxed inputs (the control variate's mean is added
back exactly; ``b_k`` is an optional baseline independent of z_k). f is evaluated at μ, so it
must accept real-valued inputs (probabilities, or real rates for Poisson).

Every output of f gets its own control variate: the linear terms ∇f_s(μ̄)ᵀ(z_k - μ̄) for all
outputs s and samples k are one forward-mode Jacobian-vector product of f at μ̄ (expanded to K
copies) in the directions z_k - μ̄ (``torch.autograd.forward_ad``; if f has an operation without
a forward-mode rule, a double backward computes the same product). The analytic term is
``f(μ̄ + (μ - stopgrad μ)) - f(μ̄)``: zero in value, gradient ``∇f(μ̄)ᵀ ∂μ/∂θ`` for θ, and
exactly zero for f's own parameters. Its two evaluations ride in the same call of f as the K
samples (a batch of K + 2), so f's parameters get the ordinary gradient of the mean of f(z_k).

Costs per call: one f on K + 2 points and one forward-mode product (about 1-3 f) on K points.
Outputs are credited to batch entries as in REINFORCE (``joint_score``).
"""

from __future__ import annotations

import warnings

import torch
import torch.autograd.forward_ad as fwad
from torch import Tensor

from ..errors import PWGFError
from ..families import Family
from .base import CostFn, Estimator, average, evaluate, per_output

BASELINES = (None, "loo")


@torch.compiler.disable
def linear_term(f: CostFn, x: Tensor, t: Tensor) -> Tensor:
    """The Jacobian-vector product ``J_f(x) t`` of every output (detached), shape ``(K, *S)``.

    Forward mode when f supports it; otherwise the double-backward trick: the vector-Jacobian
    product ``u(v) = J_f(x)ᵀ v`` is linear in v, so ``J_f(x) t = ∇_v ⟨u(v), t⟩``.

    Under ``torch.compile`` this runs eagerly (a graph break): neither forward mode nor double
    backward can be traced by aot_autograd, and the product is detached, so nothing is lost.
    """
    try:
        with torch.no_grad(), fwad.dual_level():
            with warnings.catch_warnings():
                # torch's first make_dual loads its jvp decompositions through torch.jit.script,
                # which warns (torch >= 2.9) about something the user did not do
                warnings.filterwarnings("ignore", "`torch.jit.script` is deprecated", Warning)
                dual = fwad.make_dual(x, t)
            out = evaluate(f, dual)
            tangent = fwad.unpack_dual(out).tangent
            if tangent is not None:
                return tangent.clone()
            return torch.zeros_like(out)
    except (RuntimeError, NotImplementedError):
        pass  # an operation without a forward-mode rule: use two backward passes
    with torch.enable_grad():
        xx = x.detach().requires_grad_(True)
        out = evaluate(f, xx)
        v = torch.zeros_like(out, requires_grad=True)
        (vjp,) = torch.autograd.grad(out, xx, v, create_graph=True, allow_unused=True)
        if vjp is None or not vjp.requires_grad:
            return torch.zeros_like(out).detach()
        (jvp,) = torch.autograd.grad(vjp, v, t, allow_unused=True)
    return torch.zeros_like(out).detach() if jvp is None else jvp.detach()


class MuProp(Estimator):
    name = "muprop"
    biased = False
    #: the score ∇ log p is degenerate on the parameter's boundary: refused there
    interior_only = True
    per_sample = True
    evaluations = "1 f, 1 JVP of f at μ (+2 f per call)"
    option_docs = {
        "baseline": "None: none; 'loo': leave-one-out mean of the residuals f - f̄ (K >= 2)",
        "joint_score": "False: score of all atoms for every output (see pwgf.estimators.base)",
    }

    def __init__(self, baseline: str | None = None, joint_score: bool = False) -> None:
        super().__init__()
        if baseline not in BASELINES:
            raise PWGFError(f"muprop: baseline must be one of {BASELINES}, got {baseline!r}")
        self.baseline = baseline
        self.joint_score = bool(joint_score)
        self.min_samples = 2 if baseline == "loo" else 1
        self.per_sample = baseline is None

    def surrogate_at(
        self, f: CostFn, fam: Family, z: Tensor, weights: Tensor | None = None
    ) -> Tensor:
        fam.check_interior(self.name)
        k = z.shape[0]
        mu = fam.mean()
        mu_bar = mu.detach()
        # samples, then μ̄ + (μ - μ̄) and μ̄: one call of f on K + 2 points
        x = torch.cat([z, (mu_bar + (mu - mu_bar)).unsqueeze(0), mu_bar.unsqueeze(0)])
        out = evaluate(f, x)
        fz, f_mu, f_bar = out[:k], out[k], out[k + 1]
        lin = linear_term(f, mu_bar.expand(k, *mu_bar.shape), z - mu_bar)
        resid = fz.detach() - f_bar.detach() - lin
        if self.baseline == "loo":
            resid = resid - (resid.sum(0, keepdim=True) - resid) / (k - 1)
        score = per_output(fam.log_prob(z), fz.shape[1:], fam.batch_shape, self.joint_score)
        # the analytic term is the same for every sample; averaging it with the samples keeps
        # chunked weighted sums (pwgf.estimator_expectation) right
        analytic = (f_mu - f_bar).unsqueeze(0)
        return average(fz + resid * (score - score.detach()) + analytic, weights)
