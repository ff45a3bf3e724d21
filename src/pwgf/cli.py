"""The ``pwgf`` command. Each subcommand lives in its own module under :mod:`pwgf.experiments`,
imported only when it runs; the library itself never imports them."""

from __future__ import annotations

import argparse
import importlib
import sys

# subcommand -> (module under pwgf.experiments, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("demo", "exact vs estimated gradients of every estimator on small problems"),
    "estimators": ("estimators", "the estimator table: families, cost, bias, options"),
    "diagnose": ("diagnose", "bias, variance, cosine, f-evaluations and time vs exact answers"),
    "toy": ("toy", "the one-Bernoulli toy of REBAR/RELAX/ARM: sigma(phi) and gradient variance"),
    "polynomial": ("polynomial", "ReinMax's polynomial programming benchmark, final loss"),
    "bench": ("bench", "time per forward+backward vs plain autograd; storchastic comparison"),
    "vae": ("vae", "Bernoulli VAE on MNIST-static / MNIST / Fashion-MNIST through an estimator"),
    "vae-table": ("vae_table", "Table 2 grid (estimators x architectures), resumable"),
    "poisson-gan": ("poisson_gan", "paper §3.1: Poisson rate learnt by a GAN (Table 1, Fig. 3)"),
    "poisson-bias": ("poisson_bias", "exact bias of ST and pWGF on Poisson costs, per bandwidth"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pwgf",
        description="Gradient estimators for discrete latents: pWGF, straight-through and "
        "baselines, verified against exact gradients, and the paper's experiments.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module, help_) in COMMANDS.items():
        p = sub.add_parser(name, help=help_, description=help_)
        p.set_defaults(_module=module)
        importlib.import_module(f"pwgf.experiments.{module}").add_arguments(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    module = importlib.import_module(f"pwgf.experiments.{args._module}")
    try:
        return int(module.run(args) or 0)
    except KeyboardInterrupt:
        print("\ninterrupted; finished work is saved where the command writes it", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
