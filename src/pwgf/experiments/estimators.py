"""``pwgf estimators``: print the estimator table (markdown)."""

from __future__ import annotations

import argparse

import pwgf


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--options", action="store_true", help="also list each option")


def table(with_options: bool = False) -> str:
    rows = [
        "| name | aliases | families | f per sample | biased | pwgf.sample | learnable |",
        "|---|---|---|---|---|---|---|",
    ]
    for e in pwgf.list_estimators():
        rows.append(
            f"| `{e.name}` | {', '.join(e.aliases) or '-'} | {', '.join(e.families)} | "
            f"{e.evaluations} | {'yes' if e.biased else 'no'} | {'yes' if e.pathwise else 'no'} "
            f"| {'yes' if e.learnable else 'no'} |"
        )
    if with_options:
        rows.append("")
        for e in pwgf.list_estimators():
            for opt, doc in e.options.items():
                rows.append(f"- `{e.name}` `{opt}`: {doc}")
    return "\n".join(rows)


def run(args: argparse.Namespace) -> int:
    print(table(args.options))
    return 0
