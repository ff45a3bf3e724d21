"""``pwgf diagnose``: gradient quality and cost of every estimator, where the answer is known.

For each registered estimator (``pwgf.list_estimators()``, all but ``exact``) and each problem of
a family it supports (small problems whose exact gradient is a sum over the support):

* **bias**: ``|E ĝ - ∇| / |∇|``, from the estimator's exact mean where it is a sum over the
  support (``estimator.per_sample``: ``pwgf.estimator_moments``), and from the Monte Carlo mean of
  ``--draws`` independent estimates (whose noise floor ``sqrt(tr Var / R) / |∇|`` is printed too);
* **variance**: the trace of the covariance of one estimate (K samples), measured, and exact
  where ``estimator_moments`` applies; ``rel.var`` is it divided by ``|∇|²``;
* **agreement**: z-scores of the measured mean against the exact mean (per_sample estimators) or
  against the exact gradient (unbiased estimators), the largest over coordinates, and of the
  measured variance trace against the exact one (its standard error from the spread of
  ``|ĝ - mean|²``); ``ok`` when every z is within 5;
* **cosine**: the mean cosine similarity of one estimate with the exact gradient;
* **cost**: evaluations of f per estimate (points evaluated, counted by wrapping f; a
  forward-mode product counts as one evaluation) and wall time per estimate (surrogate and
  backward, one estimate at a time, median of ``--time-reps``).

Estimates are drawn in blocks of ``--block`` independent copies of the problem (a batch dimension:
f returns one cost per copy, and the estimators credit each output to its own copy), so that
thousands of draws take seconds; ``--loop`` draws them one at a time instead. Estimators whose
least number of samples is 2 (leave-one-out forms) run with K = 2, the others with ``--samples``.
Learnable estimators (REBAR, RELAX) are measured at their initial parameters, in eval mode (no
tuning). Writes ``diagnose.csv``, ``diagnose.json`` and PNG plots to ``--out``.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.distributions import Bernoulli, Independent, Poisson

import pwgf

from . import diagkit as dk
from .problems import Problem, bernoulli_nonlinear, categorical_nonlinear, poisson_linear_gaussian

DEFAULT_RATES = (0.5, 2.0, 5.0, 20.0, 50.0)
N_SE = 5.0
BIAS_FLOOR = 1e-4  # the bias plots' left edge: exact zeros are drawn there


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--draws", type=int, default=4000, help="independent estimates (4000)")
    parser.add_argument("--samples", type=int, default=1, help="samples K per estimate (1)")
    parser.add_argument("--block", type=int, default=500, help="estimates drawn per batch (500)")
    parser.add_argument("--loop", action="store_true", help="draw estimates one at a time")
    parser.add_argument("--time-reps", type=int, default=20, help="timed single estimates (20)")
    parser.add_argument(
        "--rates",
        type=float,
        nargs="+",
        default=list(DEFAULT_RATES),
        help="Poisson rates, one problem each (0.5 2 5 20 50)",
    )
    parser.add_argument("--dim", type=int, default=10, help="Bernoulli problem's dimension (10)")
    parser.add_argument(
        "--problems",
        default=None,
        help="comma-separated problem kinds to run: bernoulli,categorical,poisson,pvae,toy (all)",
    )
    dk.add_common_arguments(parser, "write CSV, JSON, PNG to DIR")


# -- problems --------------------------------------------------------------------------------------
def poisson_sqrt(rate: float, dtype: torch.dtype = torch.float64) -> Problem:
    """One Poisson(λ), ``f(z) = sqrt(1 + z)``: concave, so ST (which differentiates where a unit
    step is taken) is biased, most at small λ."""
    lam = torch.tensor([float(rate)], dtype=dtype)
    return Problem(
        f"poisson-sqrt-{rate:g}",
        "poisson",
        lam,
        lambda p: Independent(Poisson(p), 1),
        lambda z: torch.sqrt(1 + z).sum(-1),
        f"Poisson(λ={rate:g}), f(z) = sqrt(1 + z)",
    )


def toy(target: float = 0.49, dtype: torch.dtype = torch.float64) -> Problem:
    """The toy of ARM/REBAR/RELAX at its starting point: one Bernoulli, logit 0, f = (z - t)²;
    exact gradient ``(1 - 2t) σ(φ)(1 - σ(φ)) = (1 - 2t)/4``."""
    logit = torch.zeros(1, dtype=dtype)
    return Problem(
        f"toy-{target:g}",
        "bernoulli",
        logit,
        lambda p: Independent(Bernoulli(logits=p), 1),
        lambda z: ((z - target) ** 2).sum(-1),
        f"one Bernoulli(logit 0), f(z) = (z - {target:g})²",
    )


def build_problems(kinds: list[str] | None, rates: list[float], dim: int) -> list[Problem]:
    kinds = kinds or ["bernoulli", "categorical", "poisson", "pvae", "toy"]
    out: list[Problem] = []
    for kind in kinds:
        if kind == "bernoulli":
            out.append(bernoulli_nonlinear(d=dim))
        elif kind == "categorical":
            out.append(categorical_nonlinear(n=3, c=4))
        elif kind == "poisson":
            out += [poisson_sqrt(r) for r in rates]
        elif kind == "pvae":
            out.append(poisson_linear_gaussian())
        elif kind == "toy":
            out.append(toy(0.49))
        else:
            raise SystemExit(f"pwgf diagnose: unknown problem kind {kind!r}")
    return out


# -- drawing estimates -----------------------------------------------------------------------------
def _leaf(prob: Problem, copies: int | None) -> Tensor:
    p = prob.param.detach()
    if copies is not None:
        p = p.unsqueeze(0).expand(copies, *p.shape)
    return p.clone().requires_grad_(True)


def _grad(loss: Tensor, leaf: Tensor) -> Tensor:
    (g,) = torch.autograd.grad(loss.sum(), leaf, allow_unused=True)
    return torch.zeros_like(leaf) if g is None else g


def draw_estimates(
    est: pwgf.Estimator, prob: Problem, draws: int, k: int, block: int, loop: bool
) -> Tensor:
    """``draws`` independent gradient estimates for ``prob.param``, shape ``(draws, *param)``.

    Batched: a block of b copies of the problem, ``f`` giving one cost per copy ``(K, b)``;
    every estimator credits output s to copy s (see ``pwgf.estimators.base``), so row s of the
    gradient is an estimate that saw only copy s's samples."""
    out = []
    if loop:
        for _ in range(draws):
            leaf = _leaf(prob, None)
            out.append(_grad(est.surrogate(prob.f, prob.make(leaf), n_samples=k), leaf))
        return torch.stack(out)
    done = 0
    while done < draws:
        b = min(block, draws - done)
        leaf = _leaf(prob, b)
        loss = est.surrogate(prob.f, prob.make(leaf), n_samples=k)
        if tuple(loss.shape) != (b,):
            raise RuntimeError(
                f"batched draws need one cost per copy, shape ({b},); got {tuple(loss.shape)} "
                "(use --loop)"
            )
        out.append(_grad(loss, leaf))
        done += b
    return torch.cat(out)


def time_estimates(
    est: pwgf.Estimator, prob: Problem, k: int, reps: int
) -> tuple[float, float, float]:
    """(median seconds, evaluations of f, calls of f) per single estimate (surrogate+backward)."""
    counter = dk.CountingCost(prob.f)

    def one() -> None:
        leaf = _leaf(prob, None)
        _grad(est.surrogate(counter, prob.make(leaf), n_samples=k), leaf)

    one()
    one()
    counter.reset()
    reps = max(reps, 1)
    seconds, times = dk.time_calls(one, 0, reps)
    n = len(times)
    return seconds, counter.rows / n, counter.calls / n


# -- statistics ------------------------------------------------------------------------------------
@dataclass
class Measured:
    mean: Tensor
    se: Tensor
    var: Tensor  # per coordinate
    var_trace: float
    var_trace_se: float
    cosine: float
    cosine_se: float


def measure(g: Tensor, exact: Tensor) -> Measured:
    r = g.shape[0]
    flat = g.reshape(r, -1)
    mean = flat.mean(0)
    var = flat.var(0)
    centred = flat - mean
    dev2 = (centred**2).sum(-1) * r / (r - 1)
    # s.e. of the trace: the spread of |ĝ - mean|², plus 2‖Σ‖²_F / (R(R-1)), the term that the
    # spread misses when |ĝ - mean|² is nearly constant (a symmetric two-point estimate)
    cov = centred.T @ centred / (r - 1)
    extra = 2 * float((cov**2).sum()) / (r * (r - 1))
    e = exact.reshape(-1)
    norms = flat.norm(dim=-1) * e.norm()
    cos = torch.where(norms > 0, flat @ e / norms.clamp(min=1e-300), torch.zeros_like(norms))
    return Measured(
        mean=mean,
        se=(var / r).sqrt(),
        var=var,
        var_trace=float(dev2.mean()),
        var_trace_se=math.sqrt(float(dev2.var()) / r + extra),
        cosine=float(cos.mean()),
        cosine_se=float(cos.std() / math.sqrt(r)),
    )


def z_mean(m: Measured, target: Tensor) -> float:
    """Largest |measured - target| / s.e. over coordinates (s.e. floored at 1e-9 of the scale)."""
    t = target.reshape(-1)
    floor = 1e-9 * (1 + float(t.abs().max()))
    return float(((m.mean - t).abs() / m.se.clamp(min=floor)).max())


def z_var(m: Measured, exact_trace: float) -> float:
    floor = 1e-9 * (1 + abs(exact_trace))
    return (m.var_trace - exact_trace) / max(m.var_trace_se, floor)


def energies(
    prob: Problem, exact: Tensor, exact_mean: Tensor | None, g: Tensor, m: Measured
) -> dict[str, Any]:
    """The Hitchhiker's (Ibrahim et al. 2026) BiasEnergy ``βᵀHβ / g*ᵀHg*`` and NoiseEnergy
    ``tr(HΣ) / g*ᵀHg*``, H the exact Hessian of E f in the parameter (``prob.hvp``), β the bias
    of the mean (exact where the estimator's exact mean is known; else the Monte Carlo mean,
    less its noise ``tr(HΣ)/R``), Σ the covariance of one estimate, from the draws."""
    r = g.shape[0]

    def hv(v: Tensor) -> Tensor:
        return prob.hvp(v.reshape(-1, *prob.param.shape)).reshape(v.shape[0], -1)  # type: ignore[misc]

    e = exact.reshape(1, -1)
    denom = float((e * hv(e)).sum())
    c = g.reshape(r, -1) - m.mean
    tr_h_sigma = float((c * hv(c)).sum()) / (r - 1)
    mean = m.mean if exact_mean is None else exact_mean.reshape(-1)
    bias = (mean - e[0]).reshape(1, -1)
    b_h_b = float((bias * hv(bias)).sum())
    if exact_mean is None:
        b_h_b -= tr_h_sigma / r
    return {
        "bias_energy": b_h_b / denom,
        "bias_energy_from": "Monte Carlo mean" if exact_mean is None else "exact mean",
        "noise_energy": tr_h_sigma / denom,
    }


# -- one estimator on one problem ------------------------------------------------------------------
def diagnose_one(
    name: str, prob: Problem, exact: Tensor, args: argparse.Namespace
) -> dict[str, Any]:
    est = pwgf.get_estimator(name)
    info = {e.name: e for e in pwgf.list_estimators()}[name]
    k = dk.samples_for(est, args.samples)
    notes = []
    if est.learnable:
        est.eval()  # measured at the initial parameters: no tuning
        notes.append("learnable: at initial parameters, not tuned")
    row: dict[str, Any] = {
        "problem": prob.name,
        "family": prob.family,
        "estimator": name,
        "biased": bool(info.biased),
        "per_sample": bool(est.per_sample),
        "learnable": bool(est.learnable),
        "samples": k,
        "draws": args.draws,
        "grad_norm": float(exact.norm()),
    }
    t0 = time.perf_counter()
    seconds, evals, calls = time_estimates(est, prob, k, args.time_reps)
    row.update(seconds_per_estimate=seconds, f_evals_per_estimate=evals, f_calls_per_estimate=calls)
    g = draw_estimates(est, prob, args.draws, k, args.block, args.loop)
    dk.clear_tuning(est)
    m = measure(g, exact)
    norm = float(exact.norm())
    row.update(
        mc_mean=m.mean.tolist(),
        mc_stderr=m.se.tolist(),
        mc_var_trace=m.var_trace,
        mc_var_trace_se=m.var_trace_se,
        rel_var=m.var_trace / norm**2,
        cosine=m.cosine,
        cosine_se=m.cosine_se,
        mc_rel_bias=float((m.mean - exact.reshape(-1)).norm()) / norm,
        mc_bias_noise=math.sqrt(m.var_trace / args.draws) / norm,
        exact_gradient=exact.reshape(-1).tolist(),
    )
    exact_mean = exact_var = None
    if est.per_sample:
        try:
            exact_mean, exact_var = pwgf.estimator_moments(est, prob.f, prob.dist(), n_samples=k)
        except pwgf.PWGFError as exc:
            notes.append(f"no exact moments: {exc}")
    row["exact_mean"] = None if exact_mean is None else exact_mean.reshape(-1).tolist()
    row["exact_var_trace"] = None if exact_var is None else float(exact_var.sum())
    row["exact_rel_bias"] = (
        None if exact_mean is None else float((exact_mean - exact).norm()) / norm
    )
    zs = []
    if exact_mean is not None:
        row["z_mean"] = z_mean(m, exact_mean)
        row["z_mean_target"] = "exact mean of the estimator"
        row["z_var"] = z_var(m, row["exact_var_trace"])
        zs += [row["z_mean"], row["z_var"]]
        if not info.biased and row["exact_rel_bias"] > 1e-6:
            notes.append(
                f"UNBIASED ESTIMATOR WITH EXACT BIAS {row['exact_rel_bias']:.3g}: its exact mean "
                "differs from the exact gradient"
            )
    elif not info.biased:
        row["z_mean"] = z_mean(m, exact)
        row["z_mean_target"] = "exact gradient"
        row["z_var"] = None
        zs.append(row["z_mean"])
    else:
        row["z_mean"] = row["z_var"] = None
        row["z_mean_target"] = None
    if prob.hvp is not None:
        row.update(energies(prob, exact, exact_mean, g, m))
    row["check"] = "-" if not zs else ("ok" if all(abs(z) <= N_SE for z in zs) else "FAIL")
    row["notes"] = "; ".join(notes)
    row["wall_seconds"] = time.perf_counter() - t0
    return row


# -- printing and plotting -------------------------------------------------------------------------
HEADER = (
    f"  {'estimator':<15}{'K':>2}{'f/est':>7}{'ms/est':>8}{'bias':>9}{'(exact)':>9}{'±noise':>8}"
    f"{'var.tr':>10}{'(exact)':>10}{'rel.var':>9}{'cos':>7}{'z(mean)':>8}{'z(var)':>7}  check"
)


def format_row(r: dict[str, Any]) -> str:
    if r.get("error"):
        return f"  {r['estimator']:<15} ERROR: {r['error']}"
    zv = r.get("z_var")
    return (
        f"  {r['estimator']:<15}{r['samples']:>2}{r['f_evals_per_estimate']:>7.3g}"
        f"{1e3 * r['seconds_per_estimate']:>8.2f}{dk.fmt(r['mc_rel_bias'], '.3f')}"
        f"{dk.fmt(r['exact_rel_bias'], '.3f')}{dk.fmt(r['mc_bias_noise'], '.3f', 8)}"
        f"{dk.fmt(r['mc_var_trace'], '.3g', 10)}{dk.fmt(r['exact_var_trace'], '.3g', 10)}"
        f"{dk.fmt(r['rel_var'], '.3g')}{r['cosine']:>7.3f}{dk.fmt(r['z_mean'], '.2f', 8)}"
        f"{dk.fmt(zv, '+.2f', 7)}  {r['check']}{'  ' + r['notes'] if r['notes'] else ''}"
    )


LEGEND = """\
Columns: K samples per estimate; f/est evaluations of f per estimate (points, counted by a
wrapper; a forward-mode JVP counts as one); ms/est wall time of one estimate (surrogate +
backward, median); bias = |mean - ∇|/|∇| from the Monte Carlo mean, (exact) from the
estimator's exact mean by enumeration, ±noise = sqrt(tr Var/R)/|∇| (the MC bias's noise floor);
var.tr trace of the covariance of one estimate, measured and (exact); rel.var = var.tr/|∇|²;
cos mean cosine similarity of one estimate with ∇; z(mean) largest |MC mean - exact mean|/s.e.
over coordinates (exact gradient for unbiased estimators without exact moments); z(var)
(measured - exact variance trace)/s.e.; check 'ok' when every |z| <= 5."""


def plot(rows: list[dict[str, Any]], problems: list[Problem], out: Path) -> list[Path]:
    plt = dk.pyplot()
    if plt is None:
        return []
    ok = [r for r in rows if not r.get("error")]
    names = list(dict.fromkeys(r["estimator"] for r in ok))
    col = dk.colours(names)
    written = []
    # one-rate Poisson problems go in the per-rate plot; the others in the per-problem panels
    by_rate = {p.name for p in problems if p.family == "poisson" and p.param.numel() == 1}
    fixed = [p for p in problems if p.name not in by_rate]
    if fixed:
        metrics = [
            ("bias", "relative bias (hatched: MC ± noise)", True),
            ("rel_var", "relative variance tr Var/|∇|²", True),
            ("cosine", "mean cosine with ∇", False),
            ("seconds_per_estimate", "ms per estimate", True),
        ]
        fig, axes = plt.subplots(
            len(fixed), 4, figsize=(16, 0.32 * len(names) * len(fixed) + 1.5), squeeze=False
        )
        for i, prob in enumerate(fixed):
            sub = [r for r in ok if r["problem"] == prob.name]
            labels = [r["estimator"] + f" (K={r['samples']})" for r in sub]
            y = range(len(sub))
            for j, (key, title, log) in enumerate(metrics):
                ax = axes[i][j]
                if key == "bias":
                    # solid: exact (enumeration); hatched: Monte Carlo, with its noise floor
                    exact_known = [r["exact_rel_bias"] is not None for r in sub]
                    vals = [
                        r["exact_rel_bias"] if known else r["mc_rel_bias"]
                        for r, known in zip(sub, exact_known, strict=True)
                    ]
                    vals = [max(v, BIAS_FLOOR) for v in vals]
                    for yi, (r, v, known) in enumerate(zip(sub, vals, exact_known, strict=True)):
                        ax.barh(
                            yi,
                            v,
                            color=col[r["estimator"]],
                            hatch=None if known else "///",
                            alpha=1.0 if known else 0.45,
                        )
                        if not known:
                            ax.errorbar(
                                v, yi, xerr=[[0], [r["mc_bias_noise"]]], fmt="none", ecolor="k"
                            )
                    ax.set_xlim(left=BIAS_FLOOR)
                elif key == "seconds_per_estimate":
                    ax.barh(
                        y, [1e3 * r[key] for r in sub], color=[col[r["estimator"]] for r in sub]
                    )
                else:
                    ax.barh(y, [r[key] for r in sub], color=[col[r["estimator"]] for r in sub])
                if log:
                    ax.set_xscale("log")
                ax.set_yticks(list(y), labels if j == 0 else [""] * len(sub), fontsize=8)
                ax.invert_yaxis()
                ax.set_title(f"{prob.name}: {title}" if j == 0 else title, fontsize=9)
                ax.grid(axis="x", alpha=0.3)
        fig.tight_layout()
        path = out / "diagnose_quality.png"
        fig.savefig(path, dpi=80)
        plt.close(fig)
        written.append(path)
    pois = [r for r in ok if r["problem"] in by_rate]
    if pois:
        fig, axes = plt.subplots(1, 3, figsize=(14, 4))
        rate = {p.name: float(p.param.reshape(-1)[0]) for p in problems if p.name in by_rate}
        for name in dict.fromkeys(r["estimator"] for r in pois):
            sub = sorted(
                (r for r in pois if r["estimator"] == name), key=lambda r: rate[r["problem"]]
            )
            x = [rate[r["problem"]] for r in sub]
            bias = [
                r["exact_rel_bias"] if r["exact_rel_bias"] is not None else r["mc_rel_bias"]
                for r in sub
            ]
            kw = {"color": col[name], "marker": "o", "label": name}
            axes[0].plot(x, [max(b, BIAS_FLOOR) for b in bias], **kw)
            axes[1].plot(x, [math.sqrt(r["rel_var"]) for r in sub], **kw)
            axes[2].plot(x, [1e3 * r["seconds_per_estimate"] for r in sub], **kw)
        for ax, title in zip(
            axes,
            ["relative bias |E ĝ - ∇|/|∇|", "relative std sqrt(tr Var)/|∇|", "ms per estimate"],
            strict=True,
        ):
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.set_xlabel("Poisson rate λ  (f(z) = sqrt(1 + z))")
            ax.set_title(title, fontsize=10)
            ax.grid(alpha=0.3)
        axes[0].set_ylim(bottom=BIAS_FLOOR / 2)
        axes[0].set_title("relative bias (exact where known; 1e-4 = zero)", fontsize=10)
        axes[0].legend(fontsize=8)
        fig.tight_layout()
        path = out / "diagnose_poisson.png"
        fig.savefig(path, dpi=80)
        plt.close(fig)
        written.append(path)
    return written


# -- the command -----------------------------------------------------------------------------------
def run(args: argparse.Namespace) -> int:
    return dk.with_threads(args.threads, lambda: _run(args))


def _run(args: argparse.Namespace) -> int:
    torch.manual_seed(args.seed)
    problems = build_problems(dk.split_names(args.problems), args.rates, args.dim)
    only = dk.split_names(args.estimators)
    jobs = [(p, n) for p in problems for n in dk.estimator_names(p.family, only)]
    print(
        f"pwgf diagnose: {len(jobs)} (estimator, problem) pairs, {args.draws} draws each, "
        f"K = {args.samples} (2 for estimators that need 2); torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, float64, CPU"
    )
    print(LEGEND)
    progress = dk.Progress("diagnose", len(jobs), args.quiet)
    rows: list[dict[str, Any]] = []
    exacts: dict[str, Tensor] = {}
    t_start = time.perf_counter()
    for i, (prob, name) in enumerate(jobs):
        if prob.name not in exacts:
            exacts[prob.name] = pwgf.exact_gradient(prob.f, prob.dist())
        torch.manual_seed(args.seed + 1000 * i)
        try:
            row = diagnose_one(name, prob, exacts[prob.name], args)
        except Exception as exc:  # one broken estimator must not stop the report
            row = {
                "problem": prob.name,
                "family": prob.family,
                "estimator": name,
                "error": f"{type(exc).__name__}: {exc}",
            }
        rows.append(row)
        progress.update(i + 1, f"{prob.name} {name}")
    progress.done()
    for prob in problems:
        sub = [r for r in rows if r["problem"] == prob.name]
        if not sub:
            continue
        e = exacts[prob.name]
        print(f"\n== {prob.name}: {prob.description}; |∇| = {float(e.norm()):.4g}")
        print(HEADER)
        for r in sub:
            print(format_row(r))
        if prob.hvp is not None:
            print(
                "  energies (H: exact Hessian of E f): BiasEnergy βᵀHβ/g*ᵀHg*, "
                "NoiseEnergy tr(HΣ)/g*ᵀHg*"
            )
            for r in sub:
                if not r.get("error"):
                    print(
                        f"  {r['estimator']:<15}{r['bias_energy']:>12.4g}{r['noise_energy']:>12.4g}"
                        f"  ({r['bias_energy_from']})"
                    )
    failed = [r for r in rows if r.get("check") == "FAIL" or r.get("error")]
    flagged = [r for r in rows if "UNBIASED ESTIMATOR WITH EXACT BIAS" in (r.get("notes") or "")]
    wall = time.perf_counter() - t_start
    print(
        f"\n{len(rows)} pairs in {wall:.0f} s; agreement failures (|z| > {N_SE:g}) or errors: "
        + (", ".join(f"{r['estimator']}@{r['problem']}" for r in failed) or "none")
    )
    if flagged:
        print(
            "unbiased estimators whose exact mean is not the exact gradient: "
            + ", ".join(f"{r['estimator']}@{r['problem']}" for r in flagged)
        )
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        dk.write_csv(args.out / "diagnose.csv", rows)
        dk.write_json(
            args.out / "diagnose.json",
            {
                "settings": {
                    k: (str(v) if isinstance(v, Path) else v)
                    for k, v in vars(args).items()
                    if not k.startswith("_")
                },
                "machine": dk.machine(),
                "wall_seconds": wall,
                "problems": {
                    p.name: {
                        "family": p.family,
                        "description": p.description,
                        "exact_gradient": exacts[p.name].reshape(-1).tolist(),
                    }
                    for p in problems
                    if p.name in exacts
                },
                "rows": rows,
            },
        )
        written = [] if args.no_plots else plot(rows, problems, args.out)
        print(
            f"wrote {args.out / 'diagnose.csv'}, diagnose.json"
            + "".join(f", {p.name}" for p in written),
            file=sys.stdout,
        )
    return 0
