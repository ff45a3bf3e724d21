"""``pwgf vae-table``: the Bernoulli-VAE grid, estimators x architectures, at one stated budget.

``--benchmark table2`` (default): the paper's Table 2 (appendix E), statically binarised MNIST,
architectures linear / two-layer / nonlinear, ARM's settings (see :mod:`pwgf.experiments.vae`),
printed beside the paper's numbers. ``--benchmark disarm``: DisARM's set (Dong et al. 2020),
dynamically binarised MNIST and Fashion-MNIST, linear and nonlinear (LeakyReLU 0.3), prior logits
learnable, with the importance-weighted bound at each evaluation. No published numbers are kept
for it here: the comparison is between estimators, side by side, at the same budget.

Every estimator runs for the same number of steps (``--steps``; ``--full`` gives ARM's budget,
1200 epochs of 1000 steps). Each cell is one ``pwgf vae`` run in ``DIR/<dataset>/<arch>/<est>/``:
a finished cell is kept, an interrupted one resumes from its checkpoint, so rerunning the command
continues the grid. ``--jobs`` cells run at once, in separate processes, each on
``cpu_count // jobs`` threads. ``--measure N`` only times N training steps per cell (synthetic
data, no evaluation) and prints steps/s and what the grid would cost.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch

import pwgf
from pwgf.registry import resolve

from . import diagkit as dk

#: Table 2 of Cheng, Liu, Li, Shen, Henao & Carin, "Straight-Through Estimator as Projected
#: Wasserstein Gradient Flow", arXiv 1910.02176 (2019), appendix E: test negative ELBO (nats) of a
#: Bernoulli VAE on statically binarised MNIST, ARM's settings (1200 epochs, batch 50). The
#: column order (pWGF, ST, ARM, RELAX, REBAR, ST Gumbel-Softmax) is inferred from the text. Keys
#: are this library's estimator names; None: "NA" in the paper.
PAPER_TABLE2: dict[str, dict[str, float | None]] = {
    "linear": {
        "pwgf": 119.8,
        "st": 119.1,
        "arm": 110.3,
        "relax": 122.1,
        "rebar": 123.2,
        "st-gumbel": 129.2,
    },
    "two-layer": {
        "pwgf": 108.3,
        "st": 107.6,
        "arm": 98.2,
        "relax": 114.0,
        "rebar": 113.7,
        "st-gumbel": None,
    },
    "nonlinear": {
        "pwgf": 104.6,
        "st": 104.2,
        "arm": 101.3,
        "relax": 110.9,
        "rebar": 111.6,
        "st-gumbel": 112.5,
    },
}
PAPER_SOURCE = "Cheng et al. 2019, arXiv 1910.02176, appendix E, Table 2 (test negative ELBO)"

BENCHMARKS: dict[str, dict[str, Any]] = {
    "table2": {
        "datasets": ("binarized-mnist",),
        "archs": ("linear", "two-layer", "nonlinear"),
        "estimators": ("pwgf", "st", "arm", "relax", "rebar", "st-gumbel"),
        "preset": "arm",
        "vae_args": [],
    },
    "disarm": {
        "datasets": ("mnist", "fashion-mnist"),
        "archs": ("linear", "nonlinear"),
        "estimators": ("st", "pwgf", "arm", "disarm", "reinforce-loo", "relax"),
        "preset": "disarm",
        # DisARM: the 100-sample bound every 1000 steps; on a CPU on 1000 images only
        "vae_args": ["--iw-samples", "100", "--iw-limit", "1000"],
    },
}
FULL_STEPS = 1_200_000  # ARM: 1200 epochs x 1000 steps (50000 images, batch 50)
#: sized with `pwgf vae-table --measure 200` on a 2-core CPU shared with other jobs: the table2
#: grid (18 cells) at these speeds takes ~0.13 s per step of all cells with --jobs 2, so 25000
#: steps is ~55 min plus ~2 min of evaluation (about half that on free cores); docs/readme-vae.md
DEFAULT_STEPS = 25000


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--benchmark", choices=tuple(BENCHMARKS), default="table2")
    parser.add_argument(
        "--estimators",
        default=None,
        help="comma-separated (benchmark's set); NAME:key=value passes estimator options, "
        "e.g. pwgf:step=0.5",
    )
    parser.add_argument("--archs", default=None, help="comma-separated (benchmark's set)")
    parser.add_argument("--datasets", default=None, help="comma-separated (benchmark's set)")
    parser.add_argument("--steps", type=int, default=None, help=f"steps per cell ({DEFAULT_STEPS})")
    parser.add_argument(
        "--full", action="store_true", help=f"ARM's budget: {FULL_STEPS} steps per cell"
    )
    parser.add_argument("--eval-every", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data-dir", type=Path, default=None)
    parser.add_argument("--out", type=Path, default=Path("runs/vae-table"))
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--jobs",
        type=int,
        default=None,
        help="cells run at once, each in its own process (default: min(cores, cells))",
    )
    parser.add_argument(
        "--measure",
        type=int,
        default=0,
        metavar="N",
        help="only time N steps per cell (synthetic data) and print steps/s",
    )
    parser.add_argument(
        "--vae-arg",
        action="append",
        default=[],
        help="extra argument passed to every `pwgf vae` run (repeatable, e.g. --vae-arg=--lr=5e-4)",
    )
    parser.add_argument(
        "--report-only", action="store_true", help="print the table from finished cells only"
    )


def _split(text: str | None, default: tuple[str, ...]) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()] if text else list(default)


def registered(spec: str) -> str | None:
    """The canonical spec if its estimator is registered and supports Bernoulli, else None.

    A spec is a name, optionally with options: ``NAME:key=value:key=value`` (values as for
    ``pwgf vae --estimator-option``), e.g. ``pwgf:bandwidth=std`` or ``pwgf:step=0.5``.
    """
    name, *opts = spec.split(":")
    try:
        canon = resolve(name)
    except pwgf.UnknownEstimatorError:
        return None
    if canon not in pwgf.estimators_for("bernoulli"):
        return None
    return ":".join([canon, *opts])


def base_name(spec: str) -> str:
    return spec.split(":")[0]


def cell_dir(out: Path, dataset: str, arch: str, est: str) -> Path:
    return out / dataset / arch / est


def cell_argv(args: argparse.Namespace, dataset: str, arch: str, est: str, steps: int) -> list[str]:
    bench = BENCHMARKS[args.benchmark]
    argv = [
        "--dataset",
        dataset,
        "--arch",
        arch,
        "--estimator",
        base_name(est),
        *[a for opt in est.split(":")[1:] for a in ("--estimator-option", opt)],
        "--preset",
        bench["preset"],
        "--steps",
        str(steps),
        "--eval-every",
        str(args.eval_every),
        "--seed",
        str(args.seed),
        "--out",
        str(cell_dir(args.out, dataset, arch, est)),
        "--device",
        args.device,
        "--quiet",
        *bench["vae_args"],
    ]
    if args.full:
        argv += ["--final-iw-samples", "1000"]
    if args.data_dir is not None:
        argv += ["--data-dir", str(args.data_dir)]
    return argv + list(args.vae_arg)


def read_result(d: Path) -> dict[str, Any] | None:
    try:
        return json.loads((d / "results.json").read_text())
    except (OSError, json.JSONDecodeError):
        return None


def run_cell(argv: list[str], d: Path, threads: int, in_process: bool) -> tuple[int, str]:
    """Run one ``pwgf vae``; returns (exit code, last lines of its log)."""
    d.mkdir(parents=True, exist_ok=True)
    argv = [*argv, "--threads", str(threads)]
    if in_process:
        from . import vae

        parser = argparse.ArgumentParser(prog="pwgf vae")
        vae.add_arguments(parser)
        try:
            return int(vae.run(parser.parse_args(argv)) or 0), ""
        except (pwgf.PWGFError, FloatingPointError, RuntimeError) as e:
            return 1, f"{type(e).__name__}: {e}"
    cmd = [sys.executable, "-m", "pwgf.cli", "vae", *argv]
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    with open(d / "log.txt", "a") as log:
        log.write(f"$ {' '.join(cmd)}\n")
        log.flush()
        rc = subprocess.call(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
    tail = (d / "log.txt").read_text().strip().splitlines()[-3:]
    return rc, "\n".join(tail)


# rough relative cost of a step (from `pwgf vae-table --measure`), to start the slow cells first
_ARCH_COST = {"linear": 1.0, "nonlinear": 1.5, "two-layer": 2.5}
_EST_COST = {"rebar": 4.0, "relax": 4.0, "muprop": 4.0, "pwgf": 1.5}


def _expected_cost(c: tuple[str, str, str]) -> float:
    return _ARCH_COST.get(c[1], 1.0) * _EST_COST.get(c[2], 1.2)


def _fmt(v: float | None, digits: int = 1) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


def render(
    args: argparse.Namespace,
    cells: list[tuple[str, str, str]],
    steps: int,
    skipped: dict[str, str],
    failures: dict[tuple[str, str, str], str],
) -> tuple[str, dict[str, Any]]:
    """The markdown table(s) and the same numbers as JSON."""
    datasets = list(dict.fromkeys(c[0] for c in cells))
    archs = list(dict.fromkeys(c[1] for c in cells))
    ests = list(dict.fromkeys(c[2] for c in cells))
    lines: list[str] = []
    report: dict[str, Any] = {
        "benchmark": args.benchmark,
        "steps_per_cell": steps,
        "epochs_per_cell": None,
        "seed": args.seed,
        "cells": [],
        "paper": PAPER_TABLE2 if args.benchmark == "table2" else None,
        "paper_source": PAPER_SOURCE if args.benchmark == "table2" else None,
        "skipped": skipped,
    }
    paper = args.benchmark == "table2"
    results = {c: read_result(cell_dir(args.out, *c)) for c in cells}
    batch = next((r["config"]["batch_size"] for r in results.values() if r), 50)
    unfinished = False
    for ds in datasets:
        budget = (
            f"{steps} steps of batch {batch} per cell ({steps * batch / 50000:g} epochs of 50000 "
            f"images), seed {args.seed}, same budget for every estimator"
        )
        if paper:
            lines.append(
                f"Table 2 (test negative ELBO, nats, lower is better; {ds}). Ours: at the best "
                f"validation point within {budget}. In parentheses: the paper ({PAPER_SOURCE}), "
                "ARM's budget of 1200 epochs."
            )
        else:
            lines.append(
                f"DisARM benchmark, {ds} (dynamic binarisation): test negative ELBO at the best "
                f"validation point, and the 100-sample bound there [in brackets, on the first "
                f"1000 test images]; {budget}. No published numbers are kept for comparison."
            )
        lines.append("")
        lines.append("| architecture | " + " | ".join(ests) + " |")
        lines.append("|---|" + "---|" * len(ests))
        for arch in archs:
            row = [arch]
            for est in ests:
                res = results.get((ds, arch, est))
                if (ds, arch, est) in failures:
                    txt = "failed"
                elif res is None:
                    txt = "-"
                else:
                    txt = _fmt(res.get("test_neg_elbo"))
                    if not res.get("finished") or res.get("steps_done") != steps:
                        txt += f"* ({res.get('steps_done')} steps)"
                        unfinished = True
                    iw = next((v for k, v in res.items() if k.startswith("test_iw")), None)
                    if iw is not None:
                        txt += f" [{_fmt(iw)}]"
                if paper:
                    ref = PAPER_TABLE2.get(arch, {}).get(est, "absent")  # plain names only
                    if ref != "absent":
                        txt += f" ({'n/a' if ref is None else _fmt(ref)})"
                row.append(txt)
                report["cells"].append(
                    {
                        "dataset": ds,
                        "arch": arch,
                        "estimator": est,
                        "test_neg_elbo": None if res is None else res.get("test_neg_elbo"),
                        "valid_neg_elbo": None if res is None else res.get("valid_neg_elbo"),
                        "steps_done": None if res is None else res.get("steps_done"),
                        "train_steps_per_second": None
                        if res is None
                        else res.get("train_steps_per_second"),
                        "paper": PAPER_TABLE2.get(arch, {}).get(est) if paper else None,
                        "failure": failures.get((ds, arch, est)),
                    }
                )
            lines.append("| " + " | ".join(row) + " |")
        lines.append("")
        lines.append(f"Training steps per second ({ds}; one process per cell):")
        lines.append("")
        lines.append("| architecture | " + " | ".join(ests) + " |")
        lines.append("|---|" + "---|" * len(ests))
        for arch in archs:
            row = [arch]
            for est in ests:
                res = results.get((ds, arch, est))
                row.append(_fmt(res.get("train_steps_per_second") if res else None, 0))
            lines.append("| " + " | ".join(row) + " |")
        lines.append("")
    notes = [
        "* unfinished cell (interrupted, or still running): the value so far."
        if unfinished
        else "",
        "Estimators not run: " + "; ".join(f"{k} ({v})" for k, v in skipped.items())
        if skipped
        else "",
    ]
    notes += [f"failed: {'/'.join(c)}: {msg}" for c, msg in failures.items()]
    lines += [n for n in notes if n]
    report["batch_size"] = batch
    report["epochs_per_cell"] = steps * batch / 50000
    return "\n".join(lines), report


def measure(args: argparse.Namespace, cells: list[tuple[str, str, str]], steps: int) -> int:
    from .vae import measure_speed

    if args.device != "cpu":
        print("--measure times the CPU step only; ignoring --device", file=sys.stderr)
    jobs = args.jobs or min(os.cpu_count() or 1, len(cells))
    threads = max(1, (os.cpu_count() or 1) // jobs)  # as each cell of the grid would run
    torch.set_num_threads(threads)
    archs = list(dict.fromkeys(c[1] for c in cells))
    ests = ["plain", *dict.fromkeys(c[2] for c in cells)]
    table: dict[str, dict[str, float]] = {}
    for arch in archs:
        for est in ests:
            table.setdefault(arch, {})[est] = measure_speed(arch, est, steps=args.measure)
            print(f"{arch:10s} {est:14s} {table[arch][est]:7.1f} steps/s", file=sys.stderr)
    print(
        f"\nTraining steps per second ({args.measure} timed steps per cell, batch 50, "
        f"{threads} torch thread(s); 'plain' = the same networks on σ(logits), no sampling):\n"
    )
    print("| architecture | " + " | ".join(ests) + " |")
    print("|---|" + "---|" * len(ests))
    for arch in archs:
        print("| " + arch + " | " + " | ".join(f"{table[arch][e]:.0f}" for e in ests) + " |")
    seconds = sum(steps / table[c[1]][c[2]] for c in cells)
    print(
        f"\nGrid of {len(cells)} cells at {steps} steps each: about {seconds / 3600:.2f} h of "
        f"training on one process; about {seconds / 3600 / jobs:.2f} h with --jobs {jobs} if "
        "the cores are free (evaluation adds ~0.5 s per 1000 steps per cell)."
    )
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "speed.json").write_text(
        json.dumps(
            {"threads": threads, "timed_steps": args.measure, "steps_per_s": table}, indent=1
        )
    )
    return 0


def run(args: argparse.Namespace) -> int:
    bench = BENCHMARKS[args.benchmark]
    if args.full and args.steps is not None:
        print("pwgf vae-table: --full and --steps exclude each other", file=sys.stderr)
        return 2
    steps = FULL_STEPS if args.full else (args.steps or DEFAULT_STEPS)
    skipped: dict[str, str] = {}
    ests: list[str] = []
    for name in _split(args.estimators, bench["estimators"]):
        canon = registered(name)
        if canon is None:
            skipped[name] = "not registered for Bernoulli"
        elif canon not in ests:
            ests.append(canon)
    cells = [
        (ds, arch, est)
        for ds in _split(args.datasets, bench["datasets"])
        for arch in _split(args.archs, bench["archs"])
        for est in ests
    ]
    if args.measure:
        return measure(args, cells, steps)
    failures: dict[tuple[str, str, str], str] = {}
    if not args.report_only:
        todo = []
        for c in cells:
            res = read_result(cell_dir(args.out, *c))
            if res and res.get("finished") and res.get("steps_target") == steps:
                continue
            todo.append(c)
        todo.sort(key=_expected_cost, reverse=True)  # longest first: the jobs end together
        jobs = max(1, args.jobs or min(os.cpu_count() or 1, max(len(todo), 1)))
        threads = max(1, (os.cpu_count() or 1) // jobs)
        print(
            f"pwgf vae-table: {len(cells)} cells ({len(cells) - len(todo)} already done), "
            f"{steps} steps each, {jobs} at a time x {threads} thread(s) -> {args.out}",
            file=sys.stderr,
        )
        t_start = time.perf_counter()

        def work(c: tuple[str, str, str]) -> None:
            t0 = time.perf_counter()
            rc, tail = run_cell(
                cell_argv(args, *c, steps), cell_dir(args.out, *c), threads, jobs == 1
            )
            res = read_result(cell_dir(args.out, *c))
            if rc != 0 or res is None:
                failures[c] = tail.replace("\n", " | ")[-300:] or f"exit code {rc}"
                state = f"FAILED ({failures[c]})"
            else:
                state = f"test -ELBO {_fmt(res.get('test_neg_elbo'), 2)}"
            print(
                f"  {'/'.join(c)}: {state} in {time.perf_counter() - t0:.0f} s "
                f"(grid {time.perf_counter() - t_start:.0f} s)",
                file=sys.stderr,
            )

        if jobs == 1:
            for c in todo:
                work(c)
        else:
            with ThreadPoolExecutor(jobs) as pool:
                list(pool.map(work, todo))
    text, report = render(args, cells, steps, skipped, failures)
    print(text)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{args.benchmark}.md").write_text(text + "\n")
    (args.out / f"{args.benchmark}.json").write_text(json.dumps(report, indent=1))
    if plot_curves(args.out, cells, args.out / f"{args.benchmark}_curves.png"):
        print(f"wrote {args.out / (args.benchmark + '_curves.png')}", file=sys.stderr)
    return 1 if failures else 0


def plot_curves(out: Path, cells: list[tuple[str, str, str]], path: Path) -> bool:
    """Validation negative ELBO against the step, one panel per (dataset, architecture), one
    line per estimator, from the cells' history.csv; False without matplotlib or data."""
    plt = dk.pyplot(quiet=True)
    if plt is None:
        return False
    panels = list(dict.fromkeys((ds, arch) for ds, arch, _ in cells))
    curves: dict[tuple[str, str], list[tuple[str, list[float], list[float]]]] = {}
    for ds, arch, est in cells:
        hist = cell_dir(out, ds, arch, est) / "history.csv"
        if not hist.exists():
            continue
        with open(hist) as fh:
            rows = [r for r in csv.DictReader(fh) if r.get("valid_neg_elbo")]
        rows = [r for r in rows if int(r["step"]) > 0]  # step 0 dwarfs the rest
        if rows:
            xs = [int(r["step"]) for r in rows]
            ys = [float(r["valid_neg_elbo"]) for r in rows]
            curves.setdefault((ds, arch), []).append((est, xs, ys))
    if not curves:
        return False
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.6), squeeze=False)
    for ax, key in zip(axes[0], panels, strict=True):
        for est, xs, ys in curves.get(key, []):
            ax.plot(xs, ys, label=est)
        ax.set_title(f"{key[0]} {key[1]}", fontsize=10)
        ax.set_xlabel("training step")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("validation negative ELBO (nats)")
    axes[0][-1].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return True
