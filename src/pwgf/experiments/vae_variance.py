"""Gradient variance of several estimators on a VAE in training (``pwgf vae --variance-every``).

At the chosen steps, for each estimator named, ``draws`` independent estimates of the gradient
for the encoder's parameters are taken on the *same* parameters and the *same* batch, and their
variance (the trace of the covariance, summed over all encoder parameters) is recorded beside the
squared norm of their mean, as DisARM's and REBAR's code do. The estimator being trained is
measured with its own (trained) state; the others are fresh instances, so REBAR/RELAX measured
that way sit at their initial parameters. Every estimator is put in ``eval()`` mode for the
measurement (no tuning, no moving-average updates), and the measurement runs under its own random
seed, so training is unchanged whether it is on or off.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

import pwgf

from . import diagkit as dk
from .vae_model import BernoulliVAE


def encoder_parameters(model: BernoulliVAE) -> list[nn.Parameter]:
    mods = [model.encoder] + ([model.encoder2] if hasattr(model, "encoder2") else [])
    return [p for m in mods for p in m.parameters()]


def measure(
    model: BernoulliVAE,
    x: torch.Tensor,
    names: Sequence[str],
    draws: int,
    samples: int,
    trained: dict[str, list[nn.Module]],
    seed: int,
) -> dict[str, float]:
    """``{"var_<name>": trace of the covariance, "sqnorm_<name>": |mean|²}`` per estimator."""
    params = encoder_parameters(model)
    out: dict[str, float] = {}
    devices = [x.device] if x.device.type == "cuda" else []
    for name in names:
        ests = trained.get(name) or [
            pwgf.get_estimator(name).to(x.device) for _ in range(model.n_stochastic)
        ]
        modes = [e.training for e in ests]
        for e in ests:
            e.eval()
        k = max(samples, *(e.min_samples for e in ests))
        grads = []
        try:
            with torch.random.fork_rng(devices=devices):
                torch.manual_seed(seed)
                for _ in range(draws):  # independent estimates, each its own backward
                    loss = model.surrogate(x, ests, k).mean()
                    gs = torch.autograd.grad(loss, params, allow_unused=True)
                    grads.append(
                        torch.cat(
                            [
                                (torch.zeros_like(p) if g is None else g).reshape(-1)
                                for p, g in zip(params, gs, strict=True)
                            ]
                        )
                    )
        finally:
            for e, m in zip(ests, modes, strict=True):
                e.train(m)
        g = torch.stack(grads).double()
        out[f"var_{name}"] = float(g.var(0).sum())
        out[f"sqnorm_{name}"] = float(g.mean(0).pow(2).sum())
    return out


def plot(history: list[dict[str, Any]], title: str, path: Path) -> bool:
    """Variance per estimator against the training step (log scale); False without matplotlib
    or without measurements."""
    keys = sorted({k for h in history for k in h if k.startswith("var_")})
    if not keys:
        return False
    plt = dk.pyplot(quiet=True)
    if plt is None:
        return False
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for key in keys:
        pts = [(h["step"], h[key]) for h in history if h.get(key) is not None]
        ax.plot(*zip(*pts, strict=True), marker=".", label=key[4:])
    ax.set_yscale("log")
    ax.set_xlabel("training step")
    ax.set_ylabel("variance of the encoder gradient (trace)")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    dk.save_figure(fig, path, dpi=110)
    return True
