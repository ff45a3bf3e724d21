"""``pwgf polynomial``: ReinMax's polynomial programming benchmark (BENCHMARKS.md §3).

Minimise ``E[(1/D) Σ_d |z_d - 0.45|^p]`` over D = 128 binary variables, for p ∈ {1.5, 2, 3}:
64 samples a step, Adam at 1e-3, parameters starting U(-0.01, 0.01), 8000 steps, 10 seeds
(Liu et al. 2023). The optimum puts every z_d at 0, where the loss is 0.45^p.

Parameterisation (``--param``):

* ``softmax`` (default), the authors' (microsoft/ReinMax ``poly/poly_programming.py``): two
  logits θ_d = (a_d, b_d) per variable, z_d the first coordinate of a one-hot sample of
  ``softmax(θ_d)``, so ``P(z_d = 1) = σ(a_d - b_d)``. Estimators that support the categorical
  family see ``OneHotCategorical(logits=θ)``; the Bernoulli-only ones see
  ``Bernoulli(logits=a - b)``, the same distribution of the same parameters. Either way Adam
  updates a and b separately, and since ∂/∂a = -∂/∂b the logit a - b moves up to twice as far a
  step as with one logit.
* ``logit``: one Bernoulli logit per variable (``Bernoulli(logits=ℓ)``).

The seeds are a batch dimension: the parameters are ``(seeds, D[, 2])``, f returns one cost per
seed ``(K, seeds)`` and every estimator credits each seed's output to that seed's parameters, so
the runs are independent (Adam is per element). Two figures per run, mean ± std over the seeds:

* the exact expected loss at the final parameters, ``(1/D) Σ_d [q_d 0.55^p + (1 - q_d) 0.45^p]``
  with ``q_d = P(z_d = 1)``;
* the authors' figure: their script prints the mean sampled training loss of its last epoch (200
  steps of 64 samples) and ``poly/reinmax.sh`` averages it over 10 seeds. Here it is the mean of
  the exact expected loss over the last 200 steps (at the parameters each step's samples are
  drawn from), which is the expectation of the authors' figure; their Monte Carlo noise on it is
  about 4e-5 (1.6e6 Bernoulli draws a variable-epoch).

Learnable estimators are tuned on ``est.variance_loss()`` with Adam at ``--estimator-lr`` (their
parameters shared by the seeds). The default is a reduced budget (``--steps 1000``) and skips a
run predicted, from the CPU time of its first steps (so that other load on the machine does not
change which runs are skipped), to take more than ``--max-run-seconds`` (60); ``--full``
gives the paper's 8000 steps and 10 seeds and runs everything (no time cap). With ``--out``
every finished run is saved in ``DIR/runs/`` and reused by a later call with the same settings,
so an interrupted call loses only the run in progress. Writes ``polynomial.json`` and
``polynomial.png`` to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.distributions import Bernoulli, Independent, OneHotCategorical

import pwgf

from . import diagkit as dk

FULL = {"steps": 8000, "seeds": 10}
DEFAULT_CAP = 60.0
PROBE_STEPS = 5
TARGET = 0.45
AUTHORS_EPOCH = 200  # poly_programming.py: --train-step-per-epoch 200, --epochs 40
PARAMS = ("softmax", "logit")

# The authors' script run with their settings: (source, {estimator: {p: value}}).
REFERENCE = (
    "microsoft/ReinMax poly/poly_programming.py run by poly/reinmax.sh (two logits, softmax; "
    "mean over 10 seeds of the last epoch's training loss), output as reported in pwgf issue 10",
    {"reinmax": {1.5: 0.3053, 2.0: 0.2038, 3.0: 0.0916}},
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--steps", type=int, default=1000, help="Adam steps (1000; paper 8000)")
    parser.add_argument(
        "--full", action="store_true", help="paper settings: 8000 steps, 10 seeds, no time cap"
    )
    parser.add_argument("--seeds", type=int, default=10, help="independent runs, batched (10)")
    parser.add_argument("--powers", type=float, nargs="+", default=[1.5, 2.0, 3.0])
    parser.add_argument("--dim", type=int, default=128, help="binary variables (128)")
    parser.add_argument("--samples", type=int, default=64, help="samples a step (64)")
    parser.add_argument("--lr", type=float, default=1e-3, help="Adam (1e-3)")
    parser.add_argument(
        "--param",
        choices=PARAMS,
        default="softmax",
        help="softmax: two logits per variable, the authors' form (default); logit: one "
        "Bernoulli logit",
    )
    parser.add_argument(
        "--estimator-lr", type=float, default=1e-3, help="Adam, learnable estimators (1e-3)"
    )
    parser.add_argument(
        "--max-run-seconds",
        type=float,
        default=None,
        help=f"skip an (estimator, p) run predicted (from the CPU time of its first steps) to "
        f"take longer "
        f"({DEFAULT_CAP:g}; no cap with --full)",
    )
    parser.add_argument("--record-every", type=int, default=50, help="loss curve every N (50)")
    dk.add_common_arguments(parser, "write JSON and plot to DIR; finished runs are reused")


def cost(p: float, one_hot: bool):
    if one_hot:  # the authors' z_d is the first coordinate of the one-hot sample
        return lambda z: (z[..., 0] - TARGET).abs().pow(p).mean(-1)
    return lambda z: (z - TARGET).abs().pow(p).mean(-1)


def prob_one(theta: Tensor) -> Tensor:
    """P(z_d = 1) from the parameters: σ(ℓ) for one logit, softmax(θ)[..., 0] for two."""
    return torch.sigmoid(theta) if theta.ndim == 2 else torch.softmax(theta, -1)[..., 0]


def exact_loss(theta: Tensor, p: float) -> Tensor:
    """E[f] per seed: the mean over d of q_d |1 - 0.45|^p + (1 - q_d) 0.45^p."""
    q = prob_one(theta)
    return (q * (1 - TARGET) ** p + (1 - q) * TARGET**p).mean(-1)


def family_for(est: pwgf.Estimator, param: str) -> str:
    if param == "softmax" and "categorical" in est.families:
        return "categorical"
    return "bernoulli"


def make_dist(theta: Tensor, family: str):
    if family == "categorical":
        return Independent(OneHotCategorical(logits=theta), 1)
    logits = theta if theta.ndim == 2 else theta[..., 0] - theta[..., 1]
    return Independent(Bernoulli(logits=logits), 1)


def initial_parameters(args: argparse.Namespace, seed: int) -> Tensor:
    gen = torch.Generator().manual_seed(seed)
    shape = (args.seeds, args.dim) + ((2,) if args.param == "softmax" else ())
    return ((torch.rand(shape, generator=gen) * 2 - 1) * 0.01).requires_grad_()


def run_one(name: str, p: float, args: argparse.Namespace, seed: int, cap: float) -> dict[str, Any]:
    theta = initial_parameters(args, seed)
    est = pwgf.get_estimator(name)
    family = family_for(est, args.param)
    k = dk.samples_for(est, args.samples)
    f = cost(p, family == "categorical")
    opt = torch.optim.Adam([theta], lr=args.lr)
    est_opt = None
    if est.learnable:
        est.train()
        if dk.has_lazy_parameters(est):
            est.surrogate(f, make_dist(theta, family), k).sum()
        dk.clear_tuning(est)
        est_opt = torch.optim.Adam(est.parameters(), lr=args.estimator_lr)
    curve_steps, curve = [0], [exact_loss(theta.detach(), p)]
    last_epoch = torch.zeros(args.seeds)
    epoch_start = max(1, args.steps - AUTHORS_EPOCH + 1)
    counter = dk.CountingCost(f)
    skipped_tuning = 0
    progress = dk.Progress(f"polynomial p={p:g} {name}", args.steps, args.quiet)
    t0 = time.perf_counter()
    t_probe = time.process_time()  # CPU time: the prediction should not depend on other load
    for step in range(1, args.steps + 1):
        if step >= epoch_start:  # the parameters this step's samples come from
            last_epoch += exact_loss(theta.detach(), p)
        opt.zero_grad()
        loss = est.surrogate(counter, make_dist(theta, family), n_samples=k)
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
            curve.append(exact_loss(theta.detach(), p))
        if step == PROBE_STEPS + 1 and args.steps > 4 * PROBE_STEPS:
            # the first step is a warm-up; predict the run's time from the next PROBE_STEPS
            per_step = (time.process_time() - t_probe) / PROBE_STEPS
            evals = counter.rows / (PROBE_STEPS + 1)
            if per_step * args.steps > cap:
                progress.done()
                return {
                    "estimator": name,
                    "p": p,
                    "family": family,
                    "samples": k,
                    "skipped": f"predicted {per_step * args.steps:.0f} CPU s for {args.steps} "
                    f"steps ({1e3 * per_step:.0f} ms a step, {evals:.0f} evaluations of f a step, "
                    f"each on all seeds) > --max-run-seconds {cap:g}",
                }
        if step == 1:
            t_probe = time.process_time()
        progress.update(step)
    progress.done()
    final = curve[-1]
    epoch = last_epoch / (args.steps - epoch_start + 1)
    return {
        "estimator": name,
        "p": p,
        "family": family,
        "samples": k,
        "final_loss": final.tolist(),
        "final_mean": float(final.mean()),
        "final_std": float(final.std()) if final.numel() > 1 else 0.0,
        "last_epoch_loss": epoch.tolist(),
        "last_epoch_mean": float(epoch.mean()),
        "last_epoch_std": float(epoch.std()) if epoch.numel() > 1 else 0.0,
        "last_epoch_steps": args.steps - epoch_start + 1,
        "curve_steps": curve_steps,
        "curve": torch.stack(curve).tolist(),  # (n, seeds)
        "wall_seconds": time.perf_counter() - t0,
        "f_evals_per_step": counter.rows / args.steps,  # each on all seeds
        "skipped_tuning_steps": skipped_tuning + getattr(est, "skipped_tuning_steps", 0),
    }


def run_config(name: str, p: float, args: argparse.Namespace, cap: float) -> dict[str, Any]:
    """What a finished run depends on: a saved run is reused only if this matches."""
    keys = ("steps", "seeds", "dim", "samples", "lr", "param", "estimator_lr", "record_every")
    config = {key: getattr(args, key) for key in keys}
    config.update(estimator=name, p=p, seed=args.seed, torch=torch.__version__)
    config["cap"] = None if math.isinf(cap) else cap
    return config


def cached_run(
    name: str, p: float, args: argparse.Namespace, seed: int, cap: float, index: int
) -> dict[str, Any]:
    config = run_config(name, p, args, cap)
    path = None
    if args.out is not None:
        path = args.out / "runs" / f"{name}_p{p:g}_{args.param}.json"
        if path.exists():
            try:
                saved = json.loads(path.read_text())
            except (OSError, json.JSONDecodeError) as exc:
                raise dk.UsageError(
                    f"cannot read the saved run {path} ({exc}); delete it to recompute that run"
                ) from None
            if saved.get("config") == config and not saved["result"].get("skipped"):
                return saved["result"]
    torch.manual_seed(seed + index)
    try:
        result = run_one(name, p, args, seed, cap)
    except Exception as exc:
        return {"estimator": name, "p": p, "error": f"{type(exc).__name__}: {exc}"}
    if path is not None and not result.get("skipped"):
        dk.write_json(path, {"config": config, "result": result})  # atomic: whole or not at all
    return result


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
    dk.save_figure(fig, path, dpi=80)
    return [path]


def run(args: argparse.Namespace) -> int:
    if args.full:
        for key, value in FULL.items():
            setattr(args, key, value)
    return dk.with_threads(args.threads, lambda: _run(args))


def _cap(args: argparse.Namespace) -> float:
    if args.max_run_seconds is not None:
        return float(args.max_run_seconds)
    return math.inf if args.full else DEFAULT_CAP


def _table(
    names: list[str],
    results: list[dict[str, Any]],
    powers: list[float],
    key: str,
    title: str,
) -> None:
    print(f"\n{title}")
    print(
        f"  {'estimator':<15}{'K':>3}"
        + "".join(f"{f'p = {p:g}':>20}" for p in powers)
        + f"{'s':>7}"
    )
    for name in names:
        sub = {r["p"]: r for r in results if r["estimator"] == name}
        cells, k, secs = [], "", 0.0
        for p in powers:
            r = sub.get(p)
            if r is None or r.get("error"):
                cells.append(f"{'ERROR':>20}")
                continue
            k = r["samples"]
            if r.get("skipped"):
                cells.append(f"{'skipped (time cap)':>20}")
                continue
            secs += r["wall_seconds"]
            cells.append(f"{r[key + '_mean']:>11.5f} ± {r[key + '_std']:.5f}")
        print(f"  {name:<15}{k!s:>3}" + "".join(cells) + f"{secs:>7.0f}")


def _run(args: argparse.Namespace) -> int:
    names = dk.estimator_names("bernoulli", dk.split_names(args.estimators))
    cap = _cap(args)
    full = args.steps >= FULL["steps"] and args.seeds >= FULL["seeds"]
    budget = "the paper's budget" if full else "a reduced budget (--full: 8000 steps, 10 seeds)"
    form = (
        "two logits per variable through a softmax (the authors' form)"
        if args.param == "softmax"
        else "one Bernoulli logit per variable"
    )
    print(
        f"pwgf polynomial: minimise E[mean_d |z_d - 0.45|^p], D = {args.dim} binary variables, "
        f"{form}, p = {', '.join(f'{p:g}' for p in args.powers)}; {args.samples} samples a "
        f"step, Adam {args.lr:g}, parameters U(-0.01, 0.01), {args.steps} steps, {args.seeds} "
        f"seeds (batched) — {budget}; "
        + ("no time cap" if math.isinf(cap) else f"runs predicted over {cap:g} s are skipped")
        + f". float32, torch {torch.__version__}, {torch.get_num_threads()} thread(s)."
    )
    t_start = time.perf_counter()
    results = []
    for i, name in enumerate(names):
        for j, p in enumerate(args.powers):
            results.append(cached_run(name, p, args, args.seed, cap, 1000 * i + j))
    wall = time.perf_counter() - t_start
    _table(
        names,
        results,
        args.powers,
        "final",
        f"exact expected loss at the final parameters, mean ± std over {args.seeds} seeds:",
    )
    start = [0.5 * ((1 - TARGET) ** p + TARGET**p) for p in args.powers]  # q_d = 1/2
    print(f"  {'(start)':<18}" + "".join(f"{s:>11.5f}{'':9}" for s in start))
    print(f"  {'(optimum)':<18}" + "".join(f"{TARGET**p:>11.5f}{'':9}" for p in args.powers))
    last = min(AUTHORS_EPOCH, args.steps)
    _table(
        names,
        results,
        args.powers,
        "last_epoch",
        f"the authors' figure: exact expected loss averaged over the last {last} steps, "
        f"mean ± std over {args.seeds} seeds:",
    )
    source, published = REFERENCE
    for name, values in published.items():
        if name in names:
            print(
                f"  {name + ' (ref.)':<18}"
                + "".join(
                    f"{values[p]:>11.4f}{'':9}" if p in values else f"{'-':>11}{'':9}"
                    for p in args.powers
                )
            )
    if any(name in names for name in published):
        print(f"  ref.: {source}; 8000 steps")
    for r in results:
        if r.get("family") == "bernoulli" and args.param == "softmax" and r["p"] == args.powers[0]:
            print(f"  note: {r['estimator']} has no categorical form: Bernoulli(logits = a - b)")
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
        settings["max_run_seconds"] = None if math.isinf(cap) else cap
        dk.write_json(
            args.out / "polynomial.json",
            {
                "settings": settings,
                "machine": dk.machine(),
                "wall_seconds": wall,
                "reference": {"source": source, "values": published},
                "results": results,
            },
        )
        ok = [r for r in results if not r.get("error") and not r.get("skipped")]
        written = [] if args.no_plots or not ok else plot(ok, args.powers, args.out)
        print(f"wrote {args.out / 'polynomial.json'}" + "".join(f", {p.name}" for p in written))
    return 0
