"""A Bernoulli VAE trained through any pwgf estimator, on binary data it makes itself.

    python examples/vae_quickstart.py                       # pwgf, 1500 steps, a few seconds
    python examples/vae_quickstart.py --estimator relax     # any estimator for Bernoulli latents
    python examples/vae_quickstart.py --estimator "pwgf:step=0.5,bandwidth=2" --samples 4

The data are noisy copies of a few random binary prototypes, so a handful of latent bits explain
them. The cost is the single-sample negative ELBO, one value per image, written with
``pwgf.log_prob``, which (unlike ``Bernoulli(...).log_prob`` with its support check) also holds
at the relaxed points where gumbel-softmax, rebar, relax and muprop evaluate the cost.
"""

from __future__ import annotations

import argparse

import torch
from torch import Tensor, nn
from torch.distributions import Bernoulli, Independent

import pwgf


def make_data(n: int = 512, dim: int = 24, prototypes: int = 6, flip: float = 0.05) -> Tensor:
    """``n`` binary images of ``dim`` pixels: a random prototype with ``flip`` of its pixels
    flipped."""
    g = torch.Generator().manual_seed(0)
    protos = torch.rand(prototypes, dim, generator=g).round()
    which = torch.randint(prototypes, (n,), generator=g)
    noise = torch.rand(n, dim, generator=g) < flip
    return (protos[which] != noise).to(torch.get_default_dtype())


class VAE(nn.Module):
    """Linear encoder and decoder; a fixed Bernoulli(1/2) prior on ``latents`` bits."""

    def __init__(self, dim: int, latents: int = 8) -> None:
        super().__init__()
        self.encoder = nn.Linear(dim, latents)
        self.decoder = nn.Linear(latents, dim)
        self.prior = Independent(Bernoulli(logits=torch.zeros(latents)), 1)

    def posterior(self, x: Tensor) -> Independent:
        """q(z | x): batch shape ``(B,)``, event shape ``(latents,)``."""
        return Independent(Bernoulli(logits=self.encoder(x)), 1)

    def cost(self, x: Tensor, q: Independent):
        """The negative ELBO of each image, ``f(z)``: ``(K, B, latents)`` -> ``(K, B)``."""
        q_fixed = Independent(Bernoulli(logits=q.base_dist.logits.detach()), 1)

        def f(z: Tensor) -> Tensor:
            recon = pwgf.log_prob(Independent(Bernoulli(logits=self.decoder(z)), 1), x)
            # q's logits are detached: the estimator supplies the gradient for q's parameters,
            # the cost only says how good each z is (the term E_q[∇ log q] is zero)
            return -(recon + pwgf.log_prob(self.prior, z) - pwgf.log_prob(q_fixed, z))

        return f


def negative_elbo(model: VAE, x: Tensor, samples: int = 16) -> float:
    """Monte Carlo estimate of the mean negative ELBO over ``x`` (exact discrete samples)."""
    with torch.no_grad():
        q = model.posterior(x)
        return model.cost(x, q)(q.sample((samples,))).mean().item()


def train(
    estimator: str = "pwgf",
    steps: int = 1500,
    samples: int = 1,
    batch: int = 64,
    lr: float = 3e-3,
    seed: int = 0,
) -> tuple[float, float]:
    """Train a VAE through ``estimator`` (a name or spec); return the negative ELBO on the data
    before and after training."""
    torch.manual_seed(seed)
    data = make_data()
    model = VAE(data.shape[1])
    est = pwgf.get_estimator(estimator)
    samples = max(samples, est.min_samples)
    # a learnable estimator (rebar, relax) trains its own parameters on est.variance_loss()
    opt = torch.optim.Adam([*model.parameters(), *est.parameters()], lr=lr)
    before = negative_elbo(model, data)
    for _ in range(steps):
        x = data[torch.randint(len(data), (batch,))]
        q = model.posterior(x)
        loss = est.surrogate(model.cost(x, q), q, n_samples=samples).mean()
        if est.learnable:
            loss = loss + est.variance_loss()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return before, negative_elbo(model, data)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--estimator", default="pwgf", help="name or spec (pwgf)")
    parser.add_argument("--steps", type=int, default=1500, help="training steps (1500)")
    parser.add_argument("--samples", type=int, default=1, help="samples K per step (1)")
    args = parser.parse_args(argv)
    before, after = train(args.estimator, args.steps, args.samples)
    print(f"{args.estimator}: negative ELBO {before:.2f} before, {after:.2f} after {args.steps}")


if __name__ == "__main__":
    main()
