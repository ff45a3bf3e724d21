"""Bernoulli VAEs of the ARM / DisARM benchmarks, trained through any pwgf estimator by name.

Architectures (200 Bernoulli latents per stochastic layer; the decoder mirrors the encoder):

* ``linear``: x -> z (784 -> 200), linear maps;
* ``two-layer``: x -> z1 -> z2 (784 -> 200 -> 200), both stochastic, linear maps; generative
  model p(z2) p(z1 | z2) p(x | z1);
* ``nonlinear``: x -> 200 -> 200 (LeakyReLU) -> z (200 logits); decoder z -> 200 -> 200
  (LeakyReLU) -> 784. Slope 0.1 in ARM's code, 0.3 in DisARM's.

The prior on the top layer is a factorised Bernoulli with logits that are either learnable (ARM's
linear models, DisARM: trained by SGD at 1e-2) or fixed at 0 (ARM's nonlinear model). Inputs enter
the encoder as 0/1 values (as in ARM's MNIST-static scripts).

Objective: the single-sample negative ELBO ``f(z) = -[log p(x|z) + log p(z) - log q(z|x)]``.
The estimator under test handles the expectation over the discrete z:
``estimator.surrogate(f, q(z|x), K)``. Inside f, ``log q(z|x)`` is evaluated with the encoder's
logits *detached*: the gradient of ``E_q[log q]`` then comes entirely from the estimator (which
sees ``log q`` as part of the cost, as in ARM's code, where the cost function includes it), and
the zero-mean term ``E_q[∇_φ log q(z|x)] = 0`` is left out, as ARM's code leaves it out
("sticking the landing", Roeder et al. 2017). For ST this is exact for the entropy part: log q is
linear in z, so ``∂f/∂z = ℓ`` and ST returns ``σ'(ℓ) ℓ``, the exact gradient of ``-H(q)``.

Two stochastic layers: the estimator is applied to each layer, nested. The outer surrogate is over
z1 ~ q(z1|x); its cost f1(z1) is the z1-only terms plus the inner surrogate over z2 ~ q(z2|z1),
evaluated with a fresh z2 for every z1 the outer estimator asks for (ARM's two-layer code does
the same: each of its antithetic z1 gets its own z2). The surrogate is differentiable, so the
composition is valid for every estimator: pathwise ones (ST, pWGF) backpropagate through the
inner attachment and through q(z2|z1)'s dependence on z1; score-function ones (REINFORCE, ARM,
...) treat the inner surrogate's value as a (noisy, unbiased) cost of z1. Terms of f that do not
depend on z2 are left out of the inner surrogate, so they add no variance to its estimate.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torch.distributions import Bernoulli

import pwgf

ARCHS = ("linear", "two-layer", "nonlinear")


def bernoulli_log_prob(z: Tensor, logits: Tensor) -> Tensor:
    """``Σ_d log Bernoulli(z_d; σ(ℓ_d))`` over the last dimension, also for relaxed z in [0, 1]
    (``pwgf.bernoulli_log_prob``, so the cost works under every estimator, relaxed ones
    included)."""
    return pwgf.bernoulli_log_prob(z, logits).sum(-1)


def _mlp(sizes: list[int], slope: float, dtype: torch.dtype) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(itertools.pairwise(sizes)):
        layers.append(nn.Linear(a, b, dtype=dtype))
        if i < len(sizes) - 2:
            layers.append(nn.LeakyReLU(slope))
    return nn.Sequential(*layers)


class BernoulliVAE(nn.Module):
    def __init__(
        self,
        arch: str = "linear",
        latent: int = 200,
        hidden: int = 200,
        x_dim: int = 784,
        slope: float = 0.1,
        learn_prior: bool = True,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        super().__init__()
        if arch not in ARCHS:
            raise ValueError(f"arch must be one of {ARCHS}, got {arch!r}")
        self.arch, self.latent, self.x_dim = arch, latent, x_dim
        if arch == "nonlinear":
            self.encoder = _mlp([x_dim, hidden, hidden, latent], slope, dtype)
            self.decoder = _mlp([latent, hidden, hidden, x_dim], slope, dtype)
        else:
            self.encoder = nn.Linear(x_dim, latent, dtype=dtype)  # x -> z1 logits
            self.decoder = nn.Linear(latent, x_dim, dtype=dtype)  # z1 -> x logits
        if arch == "two-layer":
            self.encoder2 = nn.Linear(latent, latent, dtype=dtype)  # z1 -> z2 logits
            self.decoder2 = nn.Linear(latent, latent, dtype=dtype)  # z2 -> z1 logits
        self.prior_logits = nn.Parameter(
            torch.zeros(latent, dtype=dtype), requires_grad=bool(learn_prior)
        )

    # -- parameter groups (separate optimisers) -------------------------------------------------
    def prior_parameters(self) -> list[nn.Parameter]:
        return [self.prior_logits] if self.prior_logits.requires_grad else []

    def network_parameters(self) -> list[nn.Parameter]:
        return [p for n, p in self.named_parameters() if n != "prior_logits"]

    # -- pieces ---------------------------------------------------------------------------------
    def q_dist(self, logits: Tensor) -> Bernoulli:
        return Bernoulli(logits=logits, validate_args=False)

    def log_px(self, x: Tensor, z1: Tensor) -> Tensor:
        """``log p(x | z1)``, shape ``z1.shape[:-1]``."""
        return bernoulli_log_prob(x, self.decoder(z1))

    def log_prior(self, z: Tensor) -> Tensor:
        return bernoulli_log_prob(z, self.prior_logits)

    # -- training objective ---------------------------------------------------------------------
    @property
    def n_stochastic(self) -> int:
        return 2 if self.arch == "two-layer" else 1

    def surrogate(self, x: Tensor, estimators: Sequence[nn.Module], n_samples: int = 1) -> Tensor:
        """Per-example surrogate ``(B,)``: value ≈ negative ELBO, gradient = the estimators'
        (for the encoder) and the ordinary one (for the decoder and the prior).

        ``estimators``: one per stochastic layer (their own state and learnable parameters),
        bottom layer first."""
        if len(estimators) != self.n_stochastic:
            raise ValueError(f"{self.arch} needs {self.n_stochastic} estimators")
        estimator = estimators[0]
        logits1 = self.encoder(x)  # (B, D)
        q1 = self.q_dist(logits1)
        l1 = logits1.detach()
        if self.arch != "two-layer":

            def f(z: Tensor) -> Tensor:  # (K, B, D) -> (K, B)
                return -self.log_px(x, z) - self.log_prior(z) + bernoulli_log_prob(z, l1)

            return estimator.surrogate(f, q1, n_samples)

        def f1(z1: Tensor) -> Tensor:  # (K, B, D) -> (K, B)
            logits2 = self.encoder2(z1)  # (K, B, D)
            l2 = logits2.detach()

            def f2(z2: Tensor) -> Tensor:  # (K2, K, B, D) -> (K2, K, B)
                return (
                    -bernoulli_log_prob(z1, self.decoder2(z2))
                    - self.log_prior(z2)
                    + bernoulli_log_prob(z2, l2)
                )

            own = -self.log_px(x, z1) + bernoulli_log_prob(z1, l1)
            return own + estimators[1].surrogate(f2, self.q_dist(logits2), n_samples)

        return estimator.surrogate(f1, q1, n_samples)

    # -- evaluation -----------------------------------------------------------------------------
    @torch.no_grad()
    def log_weights(self, x: Tensor, n_samples: int = 1) -> Tensor:
        """``log p(x, z) - log q(z | x)`` for ``n_samples`` exact draws from q: ``(S, B)``."""
        logits1 = self.encoder(x)
        z1 = torch.bernoulli(torch.sigmoid(logits1).expand(n_samples, *logits1.shape))
        lw = self.log_px(x, z1) - bernoulli_log_prob(z1, logits1)
        if self.arch != "two-layer":
            return lw + self.log_prior(z1)
        logits2 = self.encoder2(z1)
        z2 = torch.bernoulli(torch.sigmoid(logits2))
        return (
            lw
            + bernoulli_log_prob(z1, self.decoder2(z2))
            + self.log_prior(z2)
            - bernoulli_log_prob(z2, logits2)
        )

    @torch.no_grad()
    def evaluate(
        self, data: Tensor, batch_size: int = 1000, iw_samples: int = 0, iw_batch: int = 100
    ) -> dict[str, float]:
        """Mean single-sample negative ELBO over ``data`` (0/1 rows), and the ``iw_samples``-sample
        importance-weighted bound ``-log (1/S) Σ_s w_s`` (an upper bound on -log p(x)) if asked."""
        total, n = 0.0, len(data)
        for i in range(0, n, batch_size):
            x = data[i : i + batch_size].to(self.prior_logits.dtype)
            total -= float(self.log_weights(x, 1).sum())
        out = {"neg_elbo": total / n}
        if iw_samples > 0:
            total = 0.0
            for i in range(0, n, iw_batch):
                x = data[i : i + iw_batch].to(self.prior_logits.dtype)
                lw = self.log_weights(x, iw_samples)
                total -= float((torch.logsumexp(lw, 0) - math.log(iw_samples)).sum())
            out[f"iw{iw_samples}"] = total / n
        return out
