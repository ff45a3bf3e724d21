"""The ``pwgf`` command. Each subcommand lives in its own module under ``pwgf.experiments``,
imported only when it runs; the library itself never imports them.

Conventions for every command (docs/guide/cli.md): bad input is one line on stderr,
``pwgf <command>: error: ...``, and exit code 2, never a traceback (``PWGFError``, which includes
``diagkit.UsageError`` and ``DataError``, and argparse's own errors); ``--help`` shows every
option's default; ``--threads`` has the same default everywhere (``diagkit.DEFAULT_THREADS``,
one thread; 0: torch's default) and is applied here, around the command.
"""

from __future__ import annotations

import argparse
import errno
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
    "cat-vae": ("cat_vae", "ReinMax's categorical VAE on MNIST: estimators x latent shapes"),
    "poisson-vae": ("poisson_vae", "the Poisson VAE (P-VAE) on MNIST with exact gradients"),
}


class _Parser(argparse.ArgumentParser):
    """argparse with a one-line error: ``pwgf vae: error: ...`` (exit code 2), no usage dump."""

    def error(self, message: str) -> None:  # type: ignore[override]
        print(f"{self.prog}: error: {message} (see '{self.prog} --help')", file=sys.stderr)
        raise SystemExit(2)


class _Formatter(argparse.ArgumentDefaultsHelpFormatter):
    """Every option's default in its help; options without a help text get one."""

    def _get_help_string(self, action: argparse.Action) -> str:
        help_ = action.help or ""
        if "%(default)" in help_ or action.default in (None, False, argparse.SUPPRESS, []):
            return help_
        if help_.rstrip().endswith(f"({action.default})"):
            return help_  # the help text ends with its default already
        if not action.option_strings and action.nargs not in (argparse.OPTIONAL, "*"):
            return help_
        return help_ + " (default: %(default)s)"


def _threads_option(p: argparse.ArgumentParser) -> None:
    """One thread policy: the command's own ``--threads`` takes the common default and type,
    or the command gets one."""
    from .experiments import diagkit as dk

    action = p._option_string_actions.get("--threads")
    if action is None:
        dk.add_thread_arguments(p)
        return
    action.default = dk.DEFAULT_THREADS
    action.type = dk.nonnegative_int
    action.help = dk.THREADS_HELP
    p.set_defaults(**{action.dest: dk.DEFAULT_THREADS})


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The parser of every command, or with ``only``, of that one command's options (the
    others, or all where ``only`` names none, are listed but their modules not imported: a
    faster start)."""
    from . import __version__

    parser = _Parser(
        prog="pwgf",
        description="Gradient estimators for discrete latents: pWGF, straight-through and "
        "baselines, verified against exact gradients, and the paper's experiments.",
    )
    parser.add_argument("--version", action="version", version=f"pwgf {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for name, (module, help_) in COMMANDS.items():
        p = sub.add_parser(name, help=help_, description=help_, formatter_class=_Formatter)
        p.set_defaults(_module=module)
        if only is not None and name != only:
            continue
        importlib.import_module(f"pwgf.experiments.{module}").add_arguments(p)
        _threads_option(p)
        for action in p._actions:  # an option with no help still shows its default
            if action.help is None and action.default not in (None, False, argparse.SUPPRESS):
                action.help = "default: %(default)s"
    return parser


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text


def main(argv: list[str] | None = None) -> int:
    """Run ``pwgf`` with ``argv`` (default: ``sys.argv[1:]``); returns the exit code: 0, 2 for
    bad input (message on stderr), 130 when interrupted."""
    from .errors import PWGFError
    from .experiments import diagkit as dk
    from .fused import is_fused

    argv = sys.argv[1:] if argv is None else list(argv)
    # ``pwgf`` itself takes no option with a value: the first word is the command, and without
    # a known one parsing stops at the top level, so no command's module is needed
    command = next((a for a in argv if not a.startswith("-")), "")
    parser = build_parser(command)
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    module = importlib.import_module(f"pwgf.experiments.{args._module}")
    try:
        is_fused()  # the environment's switch, read before any work so that a bad value stops it
        return int(dk.with_threads(args.threads, lambda: module.run(args) or 0))
    except KeyboardInterrupt:
        print("\ninterrupted; finished work is saved where the command writes it", file=sys.stderr)
        return 130
    except PWGFError as exc:  # bad input, named by the library or the command: no traceback
        print(f"pwgf {args.command}: error: {_one_line(exc)}", file=sys.stderr)
        return 2
    except OSError as exc:  # a full disk is no bug of ours either; any other OSError may be
        if exc.errno not in (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)):
            raise
        print(f"pwgf {args.command}: error: {_one_line(exc)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
