"""The Poisson VAE (P-VAE; Vafaii, Galor & Yates, NeurIPS 2024, arXiv 2405.14473) with a linear
decoder, and its exact expected loss.

Generative side: ``K`` Poisson latents with learned prior log-rates ``r`` (initialised
``U(-6, -4)``, the P-VAE code's ``prior_clamp = -4`` for linear decoders), a linear decoder
``x̂ = Φ z`` (no bias). Inference side: the encoder outputs ``log δr``; the posterior is
``Pois(λ)`` with ``log λ = r + log δr`` (the P-VAE's residual parameterisation), soft-clamped
above at 5.3 as in the P-VAE code so that rates stay below ``e^5.3 ≈ 200``.

Per image the loss is ``SSE(x, Φz) + β KL(Pois(λ) ‖ Pois(e^r))`` (the P-VAE's objective, nats up
to the Gaussian decoder's constants), with

    E‖x - Φz‖² = ‖x - Φλ‖² + Σ_k λ_k ‖φ_k‖²           (z_k independent, Var z_k = λ_k)
    KL = Σ_k [λ_k log(λ_k / ρ_k) - λ_k + ρ_k],       ρ = e^r

so the exact negative ELBO and its gradient are closed form (the P-VAE's "exact" method).
In log-rates ``u = log λ`` the Hessian of the expected loss of one image is

    H_u = D_λ H_λ D_λ + diag(g_λ ⊙ λ),    H_λ = 2 ΦᵀΦ + β diag(1/λ),
    g_λ = -2 Φᵀ(x - Φλ) + ‖φ‖² + β log(λ/ρ)

(``hessian_vector_product``), used by the gradient-quality measures.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

ENCODERS = ("linear", "conv")
LOG_RATE_MAX = 5.3


def softclamp_upper(u: Tensor, c: float = LOG_RATE_MAX) -> Tensor:
    """``c - softplus(c - u)``: ≈ u well below c, never above c, smooth."""
    return c - F.softplus(c - u)


class ConvEncoder(nn.Module):
    """A small convolutional encoder (28×28 → log δr): two stride-2 convolutions with SiLU (the
    P-VAE's 'swish'), then a linear map. A simplification of the P-VAE's conv encoder, which
    adds squeeze-and-excitation and residual blocks."""

    def __init__(self, n_latents: int, channels: int = 32) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, channels, 4, stride=2, padding=1)
        self.conv2 = nn.Conv2d(channels, 2 * channels, 4, stride=2, padding=1)
        self.fc = nn.Linear(2 * channels * 7 * 7, n_latents)
        nn.init.normal_(self.fc.weight, std=0.01)
        nn.init.zeros_(self.fc.bias)

    def forward(self, x: Tensor) -> Tensor:
        h = x.reshape(-1, 1, 28, 28)
        h = F.silu(self.conv1(h))
        h = F.silu(self.conv2(h))
        return self.fc(h.flatten(1))


class PoissonVAE(nn.Module):
    def __init__(
        self,
        n_latents: int = 512,
        n_pixels: int = 784,
        encoder: str = "linear",
        init_scale: float = 0.05,
        prior_range: tuple[float, float] = (-6.0, -4.0),
        dtype: torch.dtype = torch.float32,
    ) -> None:
        super().__init__()
        if encoder not in ENCODERS:
            raise ValueError(f"encoder must be one of {ENCODERS}, got {encoder!r}")
        if encoder == "conv" and n_pixels != 784:
            raise ValueError("the conv encoder takes 28×28 images (784 pixels)")
        self.n_latents, self.n_pixels, self.encoder_kind = n_latents, n_pixels, encoder
        if encoder == "linear":
            # the P-VAE code: no bias, weights N(0, init_scale²) with init_scale 0.05
            self.encoder = nn.Linear(n_pixels, n_latents, bias=False)
            nn.init.normal_(self.encoder.weight, std=init_scale)
        else:
            self.encoder = ConvEncoder(n_latents)
        self.decoder = nn.Linear(n_latents, n_pixels, bias=False)
        lo, hi = prior_range
        self.prior_log_rate = nn.Parameter(torch.empty(n_latents).uniform_(lo, hi))
        self.to(dtype)

    @property
    def phi(self) -> Tensor:
        """Φ, shape ``(pixels, latents)``."""
        return self.decoder.weight

    def log_rate(self, x: Tensor) -> Tensor:
        """Posterior log-rates ``u = log λ``, shape ``(B, latents)``."""
        return softclamp_upper(self.prior_log_rate + self.encoder(x))

    # -- the loss -------------------------------------------------------------------------------
    def sse(self, x: Tensor, z: Tensor) -> Tensor:
        """``‖x - Φz‖²`` per sample and image: z ``(S, B, K)`` → ``(S, B)``."""
        return (x - self.decoder(z)).pow(2).sum(-1)

    def expected_sse(self, x: Tensor, rate: Tensor) -> Tensor:
        """``E‖x - Φz‖² = ‖x - Φλ‖² + Σ_k λ_k ‖φ_k‖²`` per image, ``(B,)``."""
        col2 = self.phi.pow(2).sum(0)
        return (x - self.decoder(rate)).pow(2).sum(-1) + rate @ col2

    def kl(self, log_rate: Tensor) -> Tensor:
        """``KL(Pois(λ) ‖ Pois(ρ))`` summed over latents, per image, from log-rates."""
        r = self.prior_log_rate
        lam, rho = log_rate.exp(), r.exp()
        return (lam * (log_rate - r) - lam + rho).sum(-1)

    def loss(
        self, x: Tensor, estimator: object | None, n_samples: int = 1, beta: float = 1.0
    ) -> Tensor:
        """Per-image training loss ``(B,)``: the estimator's surrogate of E[SSE] (``None``: the
        exact expectation) plus β times the closed-form KL."""
        u = self.log_rate(x)
        return self.recon(x, u, estimator, n_samples) + beta * self.kl(u)

    def recon(self, x: Tensor, u: Tensor, estimator: object | None, n_samples: int = 1) -> Tensor:
        rate = u.exp()
        if estimator is None:
            return self.expected_sse(x, rate)
        dist = torch.distributions.Poisson(rate, validate_args=False)
        return estimator.surrogate(lambda z: self.sse(x, z), dist, n_samples)  # type: ignore[attr-defined]

    @torch.no_grad()
    def evaluate(self, data: Tensor, batch: int = 1000) -> dict[str, float]:
        """Exact mean negative ELBO (β = 1), E[SSE], KL and mean rate per image over ``data``."""
        tot = {"neg_elbo": 0.0, "sse": 0.0, "kl": 0.0, "mean_rate": 0.0}
        for i in range(0, len(data), batch):
            x = data[i : i + batch]
            u = self.log_rate(x)
            sse, kl = self.expected_sse(x, u.exp()), self.kl(u)
            tot["sse"] += float(sse.sum())
            tot["kl"] += float(kl.sum())
            tot["mean_rate"] += float(u.exp().mean(-1).sum())
        n = max(len(data), 1)
        tot = {k: v / n for k, v in tot.items()}
        tot["neg_elbo"] = tot["sse"] + tot["kl"]
        return tot


# -- the exact gradient and Hessian in log-rates ---------------------------------------------------
def exact_grad_u(model: PoissonVAE, x: Tensor, u: Tensor, beta: float = 1.0) -> Tensor:
    """``∇_u`` of Σ_b (E[SSE_b] + β KL_b), closed form, ``(B, K)``."""
    phi = model.phi.detach()
    lam = u.exp()
    r = model.prior_log_rate.detach()
    g_lam = -2 * (x - lam @ phi.T) @ phi + phi.pow(2).sum(0) + beta * (u - r)
    return g_lam * lam


def hessian_vector_product(
    model: PoissonVAE, x: Tensor, u: Tensor, v: Tensor, beta: float = 1.0
) -> Tensor:
    """``H_u v`` per image for ``v`` of shape ``(..., B, K)`` (block-diagonal over images)."""
    phi = model.phi.detach()
    lam = u.exp()
    w = lam * v
    h_lam_w = 2 * (w @ phi.T) @ phi + beta * w / lam
    return lam * h_lam_w + exact_grad_u(model, x, u, beta) * v
