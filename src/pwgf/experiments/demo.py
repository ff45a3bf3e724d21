"""``pwgf demo``: exact vs estimated gradients of every estimator on small problems.

For each problem (see ``pwgf.experiments.problems``) and each estimator that supports its
family: the exact gradient by enumeration, the estimator's own exact mean (for estimators whose
mean is a sum over the support), and the Monte Carlo mean of ``--draws`` independent estimates
with its standard error. Needs no data; takes seconds on a CPU.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

import pwgf

from . import diagkit as dk
from .problems import Problem, default_problems


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--draws", type=dk.positive_int, default=400, help="independent estimates per estimator"
    )
    parser.add_argument(
        "--samples",
        type=dk.positive_int,
        default=2,
        help="samples K per estimate (raised to an estimator's least)",
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed")
    parser.add_argument("--out", type=Path, default=None, help="write DIR/demo.json")


def monte_carlo(est: pwgf.Estimator, prob: Problem, draws: int, k: int) -> torch.Tensor:
    """``draws`` independent estimates of the gradient for ``prob.param``, stacked."""
    leaf = prob.param.detach().clone().requires_grad_(True)
    grads = []
    for _ in range(draws):  # independent estimates, each with its own backward
        loss = est.surrogate(prob.f, prob.make(leaf), n_samples=k).sum()
        (g,) = torch.autograd.grad(loss, leaf)
        grads.append(g)
    return torch.stack(grads)


def _fmt(t: torch.Tensor) -> str:
    return "[" + ", ".join(f"{v:+.3f}" for v in t.flatten().tolist()[:4]) + "]"


def run(args: argparse.Namespace) -> int:
    torch.manual_seed(args.seed)
    report = []
    print(
        "Exact gradient vs each estimator. 'own mean': the estimator's exact expectation by\n"
        "enumeration (where it is a sum over the support); 'MC': mean ± standard error of\n"
        f"{args.draws} independent estimates of K = {args.samples} samples; 'z': largest\n"
        "|MC - own mean| / s.e. (or against the exact gradient for unbiased estimators);\n"
        "'bias': |E ĝ - ∇| / |∇| from the exact mean where known, else from the MC mean."
    )
    for prob in default_problems():
        dist = prob.dist()
        exact = pwgf.exact_gradient(prob.f, dist)
        print(f"\n== {prob.name}: {prob.description}")
        print(f"   gradient for '{pwgf.as_family(dist).param_name}' (first coordinates)")
        print(f"   {'estimator':<15}{'own mean':<34}{'MC mean':<34}{'z':>6}{'bias':>8}")
        print(f"   {'exact':<15}{_fmt(exact):<34}")
        for info in pwgf.list_estimators():
            if prob.family not in info.families or info.name == "exact":
                continue
            est = pwgf.get_estimator(info.name)
            k = max(args.samples, est.min_samples)
            grads = monte_carlo(est, prob, args.draws, k)
            mean, se = grads.mean(0), grads.std(0) / args.draws**0.5
            own = pwgf.estimator_expectation(est, prob.f, dist) if est.per_sample else None
            target = own if own is not None else (exact if not info.biased else None)
            z = (mean - target).abs() / se.clamp(min=1e-12) if target is not None else None
            bias = ((own if own is not None else mean) - exact).norm() / exact.norm()
            own_txt = _fmt(own) if own is not None else "(not a support sum)"
            z_txt = f"{z.max():6.2f}" if z is not None else "     -"
            print(f"   {info.name:<15}{own_txt:<34}{_fmt(mean):<34}{z_txt}{bias:8.3f}")
            report.append(
                {
                    "problem": prob.name,
                    "estimator": info.name,
                    "biased": info.biased,
                    "exact_gradient": exact.tolist(),
                    "estimator_exact_mean": None if own is None else own.tolist(),
                    "mc_mean": mean.tolist(),
                    "mc_stderr": se.tolist(),
                    "relative_bias": float(bias),
                    "draws": args.draws,
                    "samples": k,
                }
            )
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "demo.json").write_text(json.dumps(report, indent=1))
        print(f"\nwrote {args.out / 'demo.json'}")
    return 0
