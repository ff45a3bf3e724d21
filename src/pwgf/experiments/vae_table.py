"""``pwgf vae-table``: the Bernoulli-VAE grid, estimators x architectures, at one stated budget.

``--benchmark table2`` (default): the paper's Table 2 (appendix E), statically binarised MNIST,
architectures linear / two-layer / nonlinear, ARM's settings (see ``pwgf.experiments.vae``),
printed beside the paper's numbers. ``--benchmark disarm``: DisARM's set (Dong et al. 2020),
dynamically binarised MNIST and Fashion-MNIST, linear and nonlinear (LeakyReLU 0.3), prior logits
learnable, with the importance-weighted bound at each evaluation. No published numbers are kept
for it here: the comparison is between estimators, side by side, at the same budget.

Every estimator runs for the same number of steps (``--steps``; ``--full`` gives ARM's budget,
1200 epochs of 1000 steps). The grid (data sets x architectures x estimators x ``--seeds``) runs
through ``pwgf.experiments.sweep``: each cell is one ``pwgf vae`` run (in-process) in
``DIR/<cell name>/``; a finished cell is kept, an interrupted one resumes from its checkpoint, so
rerunning the command continues the grid; ``--jobs N`` runs N cells at once in worker processes,
``--executor ray`` runs every cell as a Ray task. Tables show mean ± standard error over seeds;
``DIR/<benchmark>.csv`` / ``.json`` keep the per-seed values. ``--measure N`` only times N
training steps per cell (synthetic data, no evaluation) and prints steps/s and what the grid
would cost.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import io
import json
import math
import sys
from pathlib import Path
from typing import Any

import torch

import pwgf
from pwgf.registry import parse_spec, resolve, split_specs

from . import diagkit as dk
from . import sweep
from .sweep import Cell, CellResult

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
    parser.add_argument(
        "--data-dir", type=Path, default=None, help="folder with the data sets (as for pwgf vae)"
    )
    parser.add_argument("--out", type=Path, default=Path("runs/vae-table"))
    parser.add_argument("--device", default="cpu")
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
    sweep.add_sweep_arguments(parser)


def _split(text: str | None, default: tuple[str, ...]) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()] if text else list(default)


def registered(spec: str) -> str | None:
    """The canonical spec if its estimator is registered and supports Bernoulli, else None.

    A spec is a name, optionally with options: ``NAME:key=value:key=value`` (values as for
    ``pwgf vae --estimator-option``), e.g. ``pwgf:bandwidth=std`` or ``pwgf:step=0.5``; the
    library's spelling ``pwgf:step=0.5,bandwidth=2`` is read too.
    """
    name, options = parse_spec(spec)
    try:
        canon = resolve(name)
    except pwgf.UnknownEstimatorError:
        return None
    if canon not in pwgf.estimators_for("bernoulli"):
        return None
    return ":".join([canon, *(f"{k}={v}" for k, v in options.items())])


def base_name(spec: str) -> str:
    return parse_spec(spec)[0]


def cell_argv(args: argparse.Namespace, dataset: str, arch: str, est: str, seed: int) -> list[str]:
    """The ``pwgf vae`` arguments that define the run (where it runs: ``train_cell``)."""
    bench = BENCHMARKS[args.benchmark]
    argv = [
        "--dataset",
        dataset,
        "--arch",
        arch,
        "--estimator",
        base_name(est),
        *[a for k, v in parse_spec(est)[1].items() for a in ("--estimator-option", f"{k}={v}")],
        "--preset",
        bench["preset"],
        "--steps",
        str(args.steps),
        "--eval-every",
        str(args.eval_every),
        "--seed",
        str(seed),
        *bench["vae_args"],
    ]
    if args.full:
        argv += ["--final-iw-samples", "1000"]
    return argv + list(args.vae_arg)


def make_cells(args: argparse.Namespace, triples: list[tuple[str, str, str]]) -> list[Cell]:
    cells = [
        Cell(
            {"dataset": ds, "arch": arch, "estimator": est, "seed": seed},
            {
                "argv": cell_argv(args, ds, arch, est, seed),
                "_data_dir": None if args.data_dir is None else str(args.data_dir),
                "_device": args.device,
            },
        )
        for ds, arch, est in triples
        for seed in args.seeds
    ]
    # longest first, so that parallel cells end together
    return sorted(cells, key=lambda c: -_expected_cost(c.key["arch"], c.key["estimator"]))


#: what a cell reports from the run's results.json
METRICS = (
    "test_neg_elbo",
    "valid_neg_elbo",
    "best_step",
    "steps_done",
    "final_test_neg_elbo",
    "train_steps_per_second",
    "train_seconds",
    "eval_seconds",
)


def train_cell(config: dict[str, Any], out_dir: Path) -> dict[str, Any]:
    """The sweep's cell function: one ``pwgf vae`` run, in this process, in ``out_dir`` (which
    it resumes from). Its messages go to ``out_dir/log.txt``."""
    from . import vae

    argv = [*config["argv"], "--out", str(out_dir), "--quiet"]
    if config.get("_data_dir"):
        argv += ["--data-dir", config["_data_dir"]]
    argv += ["--device", config.get("_device") or "cpu"]
    parser = argparse.ArgumentParser(prog="pwgf vae", exit_on_error=False)
    vae.add_arguments(parser)
    log = io.StringIO()
    try:
        with contextlib.redirect_stderr(log):
            try:
                args = parser.parse_args(argv)
            except (argparse.ArgumentError, SystemExit) as e:
                raise RuntimeError(f"pwgf vae rejected {' '.join(argv)}: {e}") from None
            rc = int(vae.run(args) or 0)
    finally:
        with open(Path(out_dir) / "log.txt", "a") as fh:
            fh.write(log.getvalue())
    lines = [ln for ln in log.getvalue().splitlines() if ln.strip()]
    if rc != 0:
        raise RuntimeError(f"pwgf vae exit code {rc}: {lines[-1] if lines else ''}")
    res = json.loads((Path(out_dir) / "results.json").read_text())
    if not res.get("finished"):
        raise RuntimeError(f"pwgf vae stopped at step {res.get('steps_done')}")
    metrics = {k: res.get(k) for k in METRICS}
    metrics.update({k: v for k, v in res.items() if k.startswith(("test_iw", "best_test_iw"))})
    metrics["batch_size"] = res["config"]["batch_size"]
    return metrics


# rough relative cost of a step (from `pwgf vae-table --measure`), to start the slow cells first
_ARCH_COST = {"linear": 1.0, "nonlinear": 1.5, "two-layer": 2.5}
_EST_COST = {"rebar": 4.0, "relax": 4.0, "muprop": 4.0, "pwgf": 1.5}


def _expected_cost(arch: str, est: str) -> float:
    return _ARCH_COST.get(arch, 1.0) * _EST_COST.get(base_name(est), 1.2)


def _fmt(v: float | None, digits: int = 1) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


def _cell_text(row: dict[str, Any] | None, n_seeds: int, digits: int = 2) -> str:
    if row is None:
        return "-"
    txt = sweep.format_mean_se(row, digits, n=False)
    if row["n"] and row["n"] != n_seeds:
        txt += f" [n={row['n']}]"
    return txt


def ranking(rows: list[dict[str, Any]]) -> str:
    """Estimators from best (lowest) to worst: ``a < b`` when the gap is over twice its standard
    error, ``a ≈ b`` otherwise."""
    done = sorted((r for r in rows if r["mean"] is not None), key=lambda r: r["mean"])
    parts: list[str] = []
    for i, r in enumerate(done):
        if i:
            p = done[i - 1]
            gap_se = math.hypot(p["se"] or 0.0, r["se"] or 0.0)
            sep = " < " if gap_se and r["mean"] - p["mean"] > 2 * gap_se else " ≈ "
            parts.append(sep)
        parts.append(f"{r['estimator']} {sweep.format_mean_se(r, 2, n=False)}")
    return "".join(parts) or "-"


def paper_ranking(arch: str, ests: list[str]) -> str:
    ref = [(e, PAPER_TABLE2.get(arch, {}).get(e)) for e in ests]
    ref = sorted(((e, v) for e, v in ref if v is not None), key=lambda t: t[1])
    return " < ".join(f"{e} {v:.1f}" for e, v in ref) or "-"


def render(
    args: argparse.Namespace,
    triples: list[tuple[str, str, str]],
    results: list[CellResult],
    skipped: dict[str, str],
) -> tuple[str, dict[str, Any]]:
    """The markdown table(s) and the same numbers as JSON (with the per-seed values)."""
    datasets = list(dict.fromkeys(t[0] for t in triples))
    archs = list(dict.fromkeys(t[1] for t in triples))
    ests = list(dict.fromkeys(t[2] for t in triples))
    by = ("dataset", "arch", "estimator")
    order = {t: i for i, t in enumerate(triples)}  # the table's order, not the run's
    results = sorted(
        results, key=lambda r: (order.get(tuple(r.cell.key[b] for b in by), 0), r.cell.key["seed"])
    )
    rows = sweep.aggregate(results, "test_neg_elbo", by)
    index = {tuple(r[b] for b in by): r for r in rows}
    iw_name = next(
        (k for r in results for k in r.metrics if k.startswith("test_iw")), None
    )  # e.g. test_iw100 (DisARM's bound)
    iw = (
        {tuple(r[b] for b in by): r for r in sweep.aggregate(results, iw_name, by)}
        if iw_name
        else {}
    )
    speed = {
        tuple(r[b] for b in by): r for r in sweep.aggregate(results, "train_steps_per_second", by)
    }
    batch = next((r.metrics.get("batch_size") for r in results if r.status == "done"), 50)
    paper = args.benchmark == "table2"
    n_seeds = len(args.seeds)
    iw_limit = _last_option(BENCHMARKS[args.benchmark]["vae_args"] + args.vae_arg, "--iw-limit")
    lines: list[str] = []
    for ds in datasets:
        budget = (
            f"{args.steps} steps of batch {batch} per cell ({args.steps * batch / 50000:g} epochs "
            f"of 50000 images), seeds {_seeds_text(args.seeds)}, same budget for every estimator"
        )
        if paper:
            lines.append(
                f"Table 2 (test negative ELBO, nats, lower is better; {ds}): mean ± standard "
                f"error over {n_seeds} seed(s), at the best validation point within {budget}. In "
                f"parentheses: the paper ({PAPER_SOURCE}), one run at ARM's budget of 1200 epochs."
            )
        else:
            lines.append(
                f"DisARM benchmark, {ds} (dynamic binarisation): test negative ELBO at the best "
                f"validation point, mean ± s.e. over {n_seeds} seed(s) [in brackets: the "
                f"{iw_name or 'importance-weighted'} bound there, on the first "
                f"{iw_limit} test images]; "
                f"{budget}."
            )
        lines.append("")
        lines.append("| architecture | " + " | ".join(ests) + " |")
        lines.append("|---|" + "---|" * len(ests))
        for arch in archs:
            row = [arch]
            for est in ests:
                txt = _cell_text(index.get((ds, arch, est)), n_seeds)
                if (ds, arch, est) in iw and iw[(ds, arch, est)]["mean"] is not None:
                    txt += f" [{sweep.format_mean_se(iw[(ds, arch, est)], 2, n=False)}]"
                if paper:
                    ref = PAPER_TABLE2.get(arch, {}).get(est, "absent")  # plain names only
                    if ref != "absent":
                        txt += f" ({'n/a' if ref is None else _fmt(ref)})"
                row.append(txt)
            lines.append("| " + " | ".join(row) + " |")
        lines.append("")
        lines.append(
            f"Ranking ({ds}; '<': gap over 2 standard errors, '≈': within)"
            + (", and the paper's:" if paper else ":")
        )
        lines.append("")
        for arch in archs:
            ours = [index[k] for k in ((ds, arch, e) for e in ests) if k in index]
            lines.append(f"- {arch}: {ranking(ours)}")
            if paper:
                lines.append(f"  - paper: {paper_ranking(arch, ests)}")
        lines.append("")
        lines.append(f"Training steps per second ({ds}; mean over seeds, one cell per process):")
        lines.append("")
        lines.append("| architecture | " + " | ".join(ests) + " |")
        lines.append("|---|" + "---|" * len(ests))
        for arch in archs:
            cells = [speed.get((ds, arch, e)) for e in ests]
            lines.append(
                "| " + arch + " | " + " | ".join(_fmt(c and c["mean"], 0) for c in cells) + " |"
            )
        lines.append("")
    failed = [r for r in results if r.status == "failed"]
    missing = len(triples) * n_seeds - len(results)
    if missing:
        lines.append(f"- : {missing} cell(s) not run yet (rerun the command to continue).")
    if skipped:
        lines.append("Estimators not run: " + "; ".join(f"{k} ({v})" for k, v in skipped.items()))
    lines += [f"failed: {r.cell.label()}: {r.error}" for r in failed]
    for r in rows:
        r["paper"] = PAPER_TABLE2.get(r["arch"], {}).get(r["estimator"]) if paper else None
    report: dict[str, Any] = {
        "benchmark": args.benchmark,
        "steps_per_cell": args.steps,
        "batch_size": batch,
        "epochs_per_cell": args.steps * batch / 50000,
        "seeds": args.seeds,
        "metric": "test_neg_elbo",
        "rows": rows,
        "iw_metric": iw_name,
        "iw_rows": list(iw.values()),
        "train_steps_per_second": list(speed.values()),
        "failed": [{"key": r.cell.key, "error": r.error} for r in failed],
        "paper_source": PAPER_SOURCE if paper else None,
        "skipped": skipped,
    }
    return "\n".join(lines), report


def _last_option(argv: list[str], name: str) -> str | None:
    """The value of the last ``name`` in ``argv`` (``--x 3`` or ``--x=3``), as argparse sees it."""
    value = None
    for i, a in enumerate(argv):
        if a == name and i + 1 < len(argv):
            value = argv[i + 1]
        elif a.startswith(name + "="):
            value = a.split("=", 1)[1]
    return value


def _seeds_text(seeds: list[int]) -> str:
    if seeds == list(range(len(seeds))):
        return f"0-{len(seeds) - 1}" if len(seeds) > 1 else "0"
    return ",".join(map(str, seeds))


def measure(args: argparse.Namespace, cells: list[tuple[str, str, str]], steps: int) -> int:
    from .vae import measure_speed

    if args.device != "cpu":
        print("--measure times the CPU step only; ignoring --device", file=sys.stderr)
    jobs = args.jobs
    threads = max(1, int(args.cpus_per_cell))  # as each cell of the grid would run
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
    seconds = len(args.seeds) * sum(steps / table[c[1]][c[2]] for c in cells)
    print(
        f"\nGrid of {len(cells)} cells x {len(args.seeds)} seed(s) at {steps} steps each: "
        f"about {seconds / 3600:.2f} h of "
        f"training on one process; about {seconds / 3600 / jobs:.2f} h with --jobs {jobs} if "
        "the cores are free (evaluation adds ~0.5 s per 1000 steps per cell)."
    )
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "speed.json").write_text(
        json.dumps(
            {
                "threads": threads,
                "timed_steps": args.measure,
                "steps_per_s": table,
                "core_hours": seconds * threads / 3600,
            },
            indent=1,
        )
    )
    return 0


def run(args: argparse.Namespace) -> int:
    bench = BENCHMARKS[args.benchmark]
    if args.full and args.steps is not None:
        raise dk.UsageError("--full and --steps exclude each other")
    for name in ("steps", "eval_every"):
        v = getattr(args, name)
        if v is not None and v < 1:
            raise dk.UsageError(f"--{name.replace('_', '-')} must be >= 1, got {v}")
    if args.measure < 0:
        raise dk.UsageError(f"--measure must be >= 0, got {args.measure}")
    opts = sweep.sweep_options(args)
    args.steps = FULL_STEPS if args.full else (args.steps or DEFAULT_STEPS)
    skipped: dict[str, str] = {}
    ests: list[str] = []
    for name in split_specs(args.estimators) if args.estimators else bench["estimators"]:
        canon = registered(name)
        if canon is None:
            skipped[name] = "not registered for Bernoulli"
        elif canon not in ests:
            ests.append(canon)
    triples = [
        (ds, arch, est)
        for ds in _split(args.datasets, bench["datasets"])
        for arch in _split(args.archs, bench["archs"])
        for est in ests
    ]
    if not triples:
        raise dk.UsageError("no cells: no registered estimator, architecture or data set given")
    if args.measure:
        return measure(args, triples, args.steps)
    cells = make_cells(args, triples)
    if args.report_only:
        results = sweep.read_results(cells, args.out)
    else:
        print(
            f"pwgf vae-table: {len(cells)} cells ({len(triples)} x {len(args.seeds)} seeds), "
            f"{args.steps} steps each, executor {args.executor} -> {args.out}",
            file=sys.stderr,
        )
        results = sweep.run_grid(cells, f"{__name__}:train_cell", args.out, **opts)
    text, report = render(args, triples, results, skipped)
    print(text)
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / args.benchmark
    stem.with_suffix(".md").write_text(text + "\n")
    (args.out / f"{args.benchmark}_report.json").write_text(json.dumps(report, indent=1))
    sweep.write_rows(report["rows"], stem)
    order = {t: i for i, t in enumerate(triples)}  # panels in the table's order
    in_order = sorted(
        cells, key=lambda c: order[(c.key["dataset"], c.key["arch"], c.key["estimator"])]
    )
    if plot_curves(args.out, in_order, args.out / f"{args.benchmark}_curves.png"):
        print(f"wrote {args.out / (args.benchmark + '_curves.png')}", file=sys.stderr)
    return 1 if any(r.status == "failed" for r in results) else 0


def plot_curves(out: Path, cells: list[Cell], path: Path) -> bool:
    """Validation negative ELBO against the step, one panel per (dataset, architecture), one line
    per estimator (mean over seeds, ±1 s.e. band), from the cells' history.csv; False without
    matplotlib or data."""
    plt = dk.pyplot(quiet=True)
    if plt is None:
        return False
    curves: dict[tuple[str, str], dict[str, list[tuple[list[int], list[float]]]]] = {}
    for c in cells:
        hist = out / c.name / "history.csv"
        if not (out / c.name / sweep.RESULT).exists() or not hist.exists():
            continue
        with open(hist) as fh:
            rows = [r for r in csv.DictReader(fh) if r.get("valid_neg_elbo")]
        rows = [r for r in rows if int(r["step"]) > 0]  # step 0 dwarfs the rest
        if rows:
            k = c.key
            curves.setdefault((k["dataset"], k["arch"]), {}).setdefault(k["estimator"], []).append(
                ([int(r["step"]) for r in rows], [float(r["valid_neg_elbo"]) for r in rows])
            )
    if not curves:
        return False
    panels = list(curves)
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.6), squeeze=False)
    for ax, key in zip(axes[0], panels, strict=True):
        for est, runs in curves[key].items():
            sweep.band(ax, runs, est)
        ax.set_title(f"{key[0]} {key[1]}", fontsize=10)
        ax.set_xlabel("training step")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("validation negative ELBO (nats)")
    axes[0][-1].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return True
