"""``pwgf polynomial``: ReinMax's polynomial programming benchmark (BENCHMARKS.md §3).

Minimise ``E[(1/D) Σ_d |z_d - 0.45|^p]`` over the logits of D = 128 Bernoulli variables, for
p ∈ {1.5, 2, 3}: 64 samples a step, Adam at 1e-3, logits starting U(-0.01, 0.01), 8000 steps,
10 seeds (Liu et al. 2023). The optimum puts every z_d at 0, where the loss is 0.45^p.

The seeds are a batch dimension: the logits are ``(seeds, D)``, f returns one cost per seed
``(K, seeds)`` and every estimator credits each seed's output to that seed's logits, so the runs
are independent (Adam is per element). The reported loss is the exact expected loss at the
final logits, ``(1/D) Σ_d [σ_d 0.55^p + (1 - σ_d) 0.45^p]``, mean ± std over the seeds.
Learnable estimators are tuned on ``est.variance_loss()`` with Adam at ``--estimator-lr``
(their parameters shared by the seeds). The default is a shorter run (``--steps 1000``); ``--full``
gives the paper's 8000 steps. Writes ``polynomial.json`` and ``polynomial.png`` to ``--out``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.distributions import Bernoulli, Independent

import pwgf

from . import diagkit as dk

FULL = {"steps": 8000, "seeds": 10}
PROBE_STEPS = 5
TARGET = 0.45


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--steps", type=int, default=1000, help="Adam steps (1000; paper 8000)")
    parser.add_argument("--full", action="store_true", help="paper settings: 8000 steps, 10 seeds")
    parser.add_argument("--seeds", type=int, default=10, help="independent runs, batched (10)")
    parser.add_argument("--powers", type=float, nargs="+", default=[1.5, 2.0, 3.0])
    parser.add_argument("--dim", type=int, default=128, help="Bernoulli variables (128)")
    parser.add_argument("--samples", type=int, default=64, help="samples a step (64)")
    parser.add_argument("--lr", type=float, default=1e-3, help="Adam (1e-3)")
    parser.add_argument(
        "--estimator-lr", type=float, default=1e-3, help="Adam, learnable estimators (1e-3)"
    )
    parser.add_argument(
        "--max-run-seconds",
        type=float,
        default=60.0,
        help="skip an (estimator, p) run predicted (from its first steps) to take longer (60)",
    )
    parser.add_argument("--record-every", type=int, default=50, help="loss curve every N (50)")
    dk.add_common_arguments(parser, "write JSON and plot to DIR")


def cost(p: float):
    return lambda z: (z - TARGET).abs().pow(p).mean(-1)


def exact_loss(logits: Tensor, p: float) -> Tensor:
    """E[f] per seed: the mean over d of σ_d |1 - 0.45|^p + (1 - σ_d) 0.45^p."""
    s = torch.sigmoid(logits)
    return (s * (1 - TARGET) ** p + (1 - s) * TARGET**p).mean(-1)


def run_one(name: str, p: float, args: argparse.Namespace, seed: int) -> dict[str, Any]:
    gen = torch.Generator().manual_seed(seed)
    logits = ((torch.rand(args.seeds, args.dim, generator=gen) * 2 - 1) * 0.01).requires_grad_()
    est = pwgf.get_estimator(name)
    k = dk.samples_for(est, args.samples)
    f = cost(p)
    opt = torch.optim.Adam([logits], lr=args.lr)
    est_opt = None
    if est.learnable:
        est.train()
        if dk.has_lazy_parameters(est):
            est.surrogate(f, Independent(Bernoulli(logits=logits), 1), k).sum()
        dk.clear_tuning(est)
        est_opt = torch.optim.Adam(est.parameters(), lr=args.estimator_lr)
    curve_steps, curve = [0], [exact_loss(logits.detach(), p)]
    counter = dk.CountingCost(f)
    skipped_tuning = 0
    progress = dk.Progress(f"polynomial p={p:g} {name}", args.steps, args.quiet)
    t0 = t_probe = time.perf_counter()
    for step in range(1, args.steps + 1):
        opt.zero_grad()
        loss = est.surrogate(counter, Independent(Bernoulli(logits=logits), 1), n_samples=k)
        loss.sum().backward()  # seeds are independent: the sum gives each its own gradient
        opt.step()
        if est_opt is not None:
            est_opt.zero_grad()
            est.variance_loss().backward()
            if all(q.grad is None or bool(torch.isfinite(q.grad).all()) for q in est.parameters()):
                est_opt.step()
            else:  # one non-finite tuning gradient would poison the estimator for good
                skipped_tuning += 1
        if step % args.record_every == 0 or step == args.steps:
            curve_steps.append(step)
            curve.append(exact_loss(logits.detach(), p))
        if step == PROBE_STEPS + 1 and args.steps > 4 * PROBE_STEPS:
            # the first step is a warm-up; predict the run's time from the next PROBE_STEPS
            per_step = (time.perf_counter() - t_probe) / PROBE_STEPS
            evals = counter.rows / (PROBE_STEPS + 1)
            if per_step * args.steps > args.max_run_seconds:
                progress.done()
                return {
                    "estimator": name,
                    "p": p,
                    "samples": k,
                    "skipped": f"predicted {per_step * args.steps:.0f} s for {args.steps} steps "
                    f"({1e3 * per_step:.0f} ms a step, {evals:.0f} evaluations of f a step, "
                    f"each on all seeds) > --max-run-seconds {args.max_run_seconds:g}",
                }
        if step == 1:
            t_probe = time.perf_counter()
        progress.update(step)
    progress.done()
    final = curve[-1]
    return {
        "estimator": name,
        "p": p,
        "samples": k,
        "final_loss": final.tolist(),
        "final_mean": float(final.mean()),
        "final_std": float(final.std()) if final.numel() > 1 else 0.0,
        "curve_steps": curve_steps,
        "curve": torch.stack(curve).tolist(),  # (n, seeds)
        "wall_seconds": time.perf_counter() - t0,
        "f_evals_per_step": counter.rows / args.steps,  # each on all seeds
        "skipped_tuning_steps": skipped_tuning + getattr(est, "skipped_tuning_steps", 0),
    }


def plot(results: list[dict[str, Any]], powers: list[float], out: Path) -> list[Path]:
    plt = dk.pyplot()
    if plt is None:
        return []
    names = list(dict.fromkeys(r["estimator"] for r in results))
    col = dk.colours(names)
    fig, axes = plt.subplots(1, len(powers), figsize=(4.6 * len(powers), 3.8), squeeze=False)
    for ax, p in zip(axes[0], powers, strict=True):
        for r in (r for r in results if r["p"] == p):
            c = torch.tensor(r["curve"])
            m, s = c.mean(1), c.std(1) if c.shape[1] > 1 else torch.zeros(c.shape[0])
            ax.plot(r["curve_steps"], m.tolist(), color=col[r["estimator"]], label=r["estimator"])
            ax.fill_between(
                r["curve_steps"],
                (m - s).tolist(),
                (m + s).tolist(),
                color=col[r["estimator"]],
                alpha=0.15,
            )
        ax.axhline(TARGET**p, color="k", ls=":", lw=1, label="optimum 0.45^p")
        ax.set_title(f"p = {p:g}", fontsize=10)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("exact E[mean |z - 0.45|^p]")
    axes[0][-1].legend(fontsize=7, loc="center left", bbox_to_anchor=(1.02, 0.5))
    fig.tight_layout()
    path = out / "polynomial.png"
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return [path]


def run(args: argparse.Namespace) -> int:
    if args.full:
        for key, value in FULL.items():
            setattr(args, key, value)
    return dk.with_threads(args.threads, lambda: _run(args))


def _run(args: argparse.Namespace) -> int:
    names = dk.estimator_names("bernoulli", dk.split_names(args.estimators))
    full = args.steps >= FULL["steps"] and args.seeds >= FULL["seeds"]
    budget = "the paper's budget" if full else "a reduced budget (--full: 8000 steps, 10 seeds)"
    print(
        f"pwgf polynomial: minimise E[mean_d |z_d - 0.45|^p], D = {args.dim} Bernoulli, "
        f"p = {', '.join(f'{p:g}' for p in args.powers)}; {args.samples} samples a step, Adam "
        f"{args.lr:g}, logits U(-0.01, 0.01), {args.steps} steps, {args.seeds} seeds (batched)"
        f" — {budget}."
        f" float32, torch {torch.__version__}, {torch.get_num_threads()} thread(s)."
    )
    t_start = time.perf_counter()
    results = []
    for i, name in enumerate(names):
        for j, p in enumerate(args.powers):
            torch.manual_seed(args.seed + 1000 * i + j)
            try:
                results.append(run_one(name, p, args, args.seed))  # same init for all
            except Exception as exc:
                results.append({"estimator": name, "p": p, "error": f"{type(exc).__name__}: {exc}"})
    wall = time.perf_counter() - t_start
    print(f"\nexact expected loss at the final logits, mean ± std over {args.seeds} seeds:")
    print(
        f"  {'estimator':<15}{'K':>3}"
        + "".join(f"{f'p = {p:g}':>20}" for p in args.powers)
        + f"{'s':>7}"
    )
    init = torch.full((1,), 0.0)
    for name in names:
        sub = {r["p"]: r for r in results if r["estimator"] == name}
        cells, k, secs = [], "", 0.0
        for p in args.powers:
            r = sub.get(p)
            if r is None or r.get("error") or r.get("skipped"):
                cells.append(f"{'ERROR' if r is None or r.get('error') else 'skipped':>20}")
                continue
            k = r["samples"]
            secs += r["wall_seconds"]
            cells.append(f"{r['final_mean']:>11.5f} ± {r['final_std']:.5f}")
        print(f"  {name:<15}{k!s:>3}" + "".join(cells) + f"{secs:>7.0f}")
    print(
        f"  {'(start)':<18}"
        + "".join(f"{float(exact_loss(init, p)):>11.5f}{'':9}" for p in args.powers)
    )
    print(f"  {'(optimum)':<18}" + "".join(f"{TARGET**p:>11.5f}{'':9}" for p in args.powers))
    for r in results:
        if r.get("error"):
            print(f"  error: {r['estimator']} p={r['p']:g}: {r['error']}")
        if r.get("skipped"):
            print(f"  skipped: {r['estimator']} p={r['p']:g}: {r['skipped']}")
        if r.get("skipped_tuning_steps"):
            print(
                f"  note: {r['estimator']} p={r['p']:g}: {r['skipped_tuning_steps']} tuning "
                "steps skipped (non-finite gradient of the estimator's variance loss)"
            )
    print(f"{wall:.0f} s in all")
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        settings = {k: v for k, v in vars(args).items() if not k.startswith("_")}
        settings["out"] = str(args.out)
        dk.write_json(
            args.out / "polynomial.json",
            {
                "settings": settings,
                "machine": dk.machine(),
                "wall_seconds": wall,
                "results": results,
            },
        )
        ok = [r for r in results if not r.get("error") and not r.get("skipped")]
        written = [] if args.no_plots or not ok else plot(ok, args.powers, args.out)
        print(f"wrote {args.out / 'polynomial.json'}" + "".join(f", {p.name}" for p in written))
    return 0
