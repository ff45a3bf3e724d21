"""``pwgf toy``: the one-Bernoulli toy of REBAR, RELAX and ARM (BENCHMARKS.md §3).

Maximise ``E[(z - t)²]`` over the logit φ of one Bernoulli z, for t ∈ {0.49, 0.499, 0.501, 0.51};
φ starts at 0 and takes plain gradient steps of size 1 (``φ ← φ + ĝ``) for 3000 iterations. The
true gradient is ``(1 - 2t) σ(φ)(1 - σ(φ))``: tiny, so an estimator's noise (or bias) decides
whether σ(φ) goes to 1 (the optimum for t < 0.5) or 0 (for t > 0.5).

The four targets (and ``--seeds`` independent runs) are one batch of independent Bernoullis
``(seeds, 4)``, f returning a cost per entry ``(K, seeds, 4)``: every estimator credits each output
to its own logit, so the runs do not interact. Every ``--var-every`` iterations the variance of one
estimate (K samples) at the current φ is measured from ``--var-draws`` independent estimates
(batched the same way). Learnable estimators (REBAR, RELAX) are tuned as in their papers, on
``est.variance_loss()`` with Adam at ``--estimator-lr``; their parameters are shared by the
batch (one estimator, tuned on the variance summed over the runs). Writes ``toy.json``,
``toy_sigma.png`` and ``toy_variance.png`` to ``--out``.
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.distributions import Bernoulli

import pwgf

from . import diagkit as dk

TARGETS = (0.49, 0.499, 0.501, 0.51)
FULL = {"iterations": 3000}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--iterations", type=dk.positive_int, default=3000, help="gradient steps")
    parser.add_argument("--full", action="store_true", help="the papers' settings (3000 steps)")
    parser.add_argument("--lr", type=dk.positive_float, default=1.0, help="step size")
    parser.add_argument("--samples", type=dk.positive_int, default=1, help="samples K per step")
    parser.add_argument(
        "--seeds", type=dk.positive_int, default=1, help="independent runs, batched"
    )
    parser.add_argument(
        "--var-every", type=dk.positive_int, default=30, help="variance every N steps"
    )
    parser.add_argument(
        "--var-draws", type=dk.positive_int, default=500, help="estimates per variance (>= 2)"
    )
    parser.add_argument(
        "--estimator-lr", type=dk.positive_float, default=1e-3, help="Adam, learnable estimators"
    )
    dk.add_common_arguments(parser, "write toy.json and plots to DIR")


def cost(t: Tensor):
    """f(z) = -(z - t)² per entry: minimising it maximises E[(z - t)²]."""
    return lambda z: -((z - t) ** 2)


def true_gradient(phi: Tensor, t: Tensor) -> Tensor:
    """∇_φ E[(z - t)²] = (1 - 2t) σ(φ)(1 - σ(φ))."""
    s = torch.sigmoid(phi)
    return (1 - 2 * t) * s * (1 - s)


def estimate_variance(est: pwgf.Estimator, phi: Tensor, t: Tensor, k: int, draws: int) -> Tensor:
    """Variance of one estimate at ``phi`` (per entry), from ``draws`` batched estimates."""
    was_training = est.training
    est.eval()  # no tuning while measuring
    leaf = phi.detach().unsqueeze(0).expand(draws, *phi.shape).clone().requires_grad_(True)
    loss = est.surrogate(cost(t), Bernoulli(logits=leaf), n_samples=k)
    (g,) = torch.autograd.grad(loss.sum(), leaf)
    est.train(was_training)
    return g.var(0)


def run_estimator(name: str, args: argparse.Namespace, t: Tensor, quiet: bool) -> dict[str, Any]:
    est = pwgf.get_estimator(name)
    k = dk.samples_for(est, args.samples)
    f = cost(t)
    phi = torch.zeros(args.seeds, len(t), dtype=torch.float64)
    opt = None
    if est.learnable:
        est.train()
        if dk.has_lazy_parameters(est):  # materialise RELAX's network before the optimiser
            est.surrogate(f, Bernoulli(logits=phi.clone().requires_grad_(True)), k).sum()
        dk.clear_tuning(est)
        opt = torch.optim.Adam(est.parameters(), lr=args.estimator_lr)
    sigma = [torch.sigmoid(phi)]
    var_iters, variances = [], []
    skipped = 0
    progress = dk.Progress(f"toy {name}", args.iterations, quiet)
    t0 = time.perf_counter()
    for it in range(args.iterations):
        if it % args.var_every == 0:
            var_iters.append(it)
            variances.append(estimate_variance(est, phi, t, k, args.var_draws))
        leaf = phi.clone().requires_grad_(True)
        loss = est.surrogate(f, Bernoulli(logits=leaf), n_samples=k).sum()
        (g,) = torch.autograd.grad(loss, leaf)
        if opt is not None:
            opt.zero_grad()
            est.variance_loss().backward()
            if all(q.grad is None or bool(torch.isfinite(q.grad).all()) for q in est.parameters()):
                opt.step()
            else:  # one non-finite tuning gradient would poison the estimator for good
                skipped += 1
        phi = phi - args.lr * g  # descent on -E[(z - t)²]
        sigma.append(torch.sigmoid(phi))
        progress.update(it + 1)
    var_iters.append(args.iterations)
    variances.append(estimate_variance(est, phi, t, k, args.var_draws))
    progress.done()
    sig = torch.stack(sigma)  # (T + 1, seeds, 4)
    var = torch.stack(variances)  # (n, seeds, 4)
    extra = {}
    if est.learnable:
        extra["estimator_state"] = {
            n: p.detach().reshape(-1)[:4].tolist() for n, p in est.named_parameters()
        }
    return {
        "estimator": name,
        "samples": k,
        "sigma": sig[:: max(1, args.iterations // 300)].tolist(),
        "sigma_every": max(1, args.iterations // 300),
        "final_sigma": sig[-1].tolist(),
        "variance_iterations": var_iters,
        "variance": var.tolist(),
        "log10_mean_variance": [  # None: the variance is exactly zero
            x if math.isfinite(x) else None for x in torch.log10(var.mean((0, 1))).tolist()
        ],
        "wall_seconds": time.perf_counter() - t0,
        "skipped_tuning_steps": skipped + getattr(est, "skipped_tuning_steps", 0),
        **extra,
    }


def plot(results: list[dict[str, Any]], t: list[float], out: Path) -> list[Path]:
    plt = dk.pyplot()
    if plt is None:
        return []
    col = dk.colours([r["estimator"] for r in results])
    written = []
    for kind in ("sigma", "variance"):
        fig, axes = plt.subplots(1, len(t), figsize=(4 * len(t), 3.6), sharey=kind == "sigma")
        for r in results:
            if kind == "sigma":
                y = torch.tensor(r["sigma"]).mean(1)  # mean over seeds, (n, 4)
                x = [i * r["sigma_every"] for i in range(y.shape[0])]
            else:  # zero variance (a saturated logit) is left out of the log plot
                y = torch.tensor(r["variance"]).mean(1)
                y = torch.where(y > 0, y, torch.full_like(y, float("nan")))
                x = r["variance_iterations"]
            for j, ax in enumerate(axes):
                ax.plot(
                    x, y[:, j].tolist(), color=col[r["estimator"]], label=r["estimator"], lw=1.2
                )
        for j, ax in enumerate(axes):
            ax.set_title(f"t = {t[j]:g}", fontsize=10)
            ax.set_xlabel("iteration")
            ax.grid(alpha=0.3)
            if kind == "variance":
                ax.set_yscale("log")
        axes[0].set_ylabel("σ(φ)" if kind == "sigma" else "variance of the gradient estimate")
        axes[-1].legend(fontsize=7, loc="center left", bbox_to_anchor=(1.02, 0.5))
        fig.tight_layout()
        path = out / f"toy_{kind}.png"
        fig.savefig(path, dpi=80)
        plt.close(fig)
        written.append(path)
    return written


def run(args: argparse.Namespace) -> int:
    if args.full:
        for key, value in FULL.items():
            setattr(args, key, value)
    return dk.with_threads(args.threads, lambda: _run(args))


def _run(args: argparse.Namespace) -> int:
    if args.var_draws < 2:
        raise dk.UsageError(f"--var-draws must be >= 2 (a variance), got {args.var_draws}")
    t = torch.tensor(TARGETS, dtype=torch.float64)
    names = dk.estimator_names("bernoulli", dk.split_names(args.estimators))
    print(
        f"pwgf toy: maximise E[(z - t)²], t = {', '.join(f'{x:g}' for x in TARGETS)}; logit 0, "
        f"plain gradient steps of {args.lr:g}, {args.iterations} iterations"
        f"{' (full setting)' if args.iterations >= FULL['iterations'] else ''}, K = "
        f"{args.samples} (2 where needed), {args.seeds} run(s) per estimator; variance of one "
        f"estimate every {args.var_every} steps from {args.var_draws} draws; learnable "
        f"estimators tuned by Adam {args.estimator_lr:g}. torch {torch.__version__}, "
        f"{torch.get_num_threads()} thread(s)."
    )
    t_start = time.perf_counter()
    results = []
    for i, name in enumerate(names):
        torch.manual_seed(args.seed + 1000 * i)
        try:
            results.append(run_estimator(name, args, t, args.quiet))
        except Exception as exc:
            results.append({"estimator": name, "error": f"{type(exc).__name__}: {exc}"})
    wall = time.perf_counter() - t_start
    print("\nfinal σ(φ) (mean over runs; → 1 is right for t < 0.5, → 0 for t > 0.5) and log10")
    print("of the variance of one estimate, averaged over the run (lgV):")
    head = "".join(f"{f'σ t={x:g}':>11}" for x in TARGETS)
    head += "".join(f"{f'lgV t={x:g}':>12}" for x in TARGETS)
    print(f"  {'estimator':<15}{'K':>2}{head}{'s':>6}")
    for r in results:
        if r.get("error"):
            print(f"  {r['estimator']:<15} ERROR: {r['error']}")
            continue
        fs = torch.tensor(r["final_sigma"]).mean(0).tolist()
        lv = r["log10_mean_variance"]
        print(
            f"  {r['estimator']:<15}{r['samples']:>2}"
            + "".join(f"{x:>11.3f}" for x in fs)
            + "".join(f"{x:>12.2f}" if x is not None else f"{'(zero)':>12}" for x in lv)
            + f"{r['wall_seconds']:>6.1f}"
        )
    g0 = true_gradient(torch.zeros(4, dtype=torch.float64), t)
    print(
        "true gradient at φ = 0: "
        + ", ".join(f"{x:+.4g}" for x in g0.tolist())
        + f" (log10 |∇|² = {', '.join(f'{math.log10(x**2):.1f}' for x in g0.tolist())});"
        + f" {wall:.0f} s in all"
    )
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        settings = {k: v for k, v in vars(args).items() if not k.startswith("_")}
        settings["out"] = str(args.out)
        dk.write_json(
            args.out / "toy.json",
            {
                "settings": settings,
                "targets": list(TARGETS),
                "machine": dk.machine(),
                "wall_seconds": wall,
                "results": results,
            },
        )
        ok = [r for r in results if not r.get("error")]
        written = [] if args.no_plots or not ok else plot(ok, list(TARGETS), args.out)
        print(f"wrote {args.out / 'toy.json'}" + "".join(f", {p.name}" for p in written))
    return 0
