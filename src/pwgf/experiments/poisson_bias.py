"""``pwgf poisson-bias``: the exact bias of ST and pWGF on Poisson, by summing over the support.

For a few costs ``f`` and rates λ from 0.1 to 50, with every expectation an exact (truncated)
sum rather than a Monte Carlo mean:

* the exact gradient ``d/dλ E_λ[f(z)] = E[f(z + 1) - f(z)]`` (``pwgf.exact_gradient``);
* the expectation of ST, ``E[f'(z)]``, and of pWGF-MMD for a grid of bandwidths (fixed floats
  and the ``'std*c'`` rules), both normalisations and a few step sizes ε
  (``pwgf.estimator_expectation``);
* the one-sample variance of each (``pwgf.estimator_moments``), and that of the unbiased
  ``mvd`` and ``reinforce`` for reference.

The costs are defined relative to λ (their constants move with λ, and are held fixed when
differentiating), so that each keeps its character over the whole range:

* ``quad+``: ``(z - (λ + 2))²``. At λ = 5 this is ESTIMATORS.md's oracle ``(z - 7)²``: exact -3,
  ST -4. ST overshoots the exact gradient by 1 at every λ.
* ``quad-``: ``(z - (λ - 2))²``: exact +5, ST +4; ST undershoots by 1.
* ``logistic``: ``-log σ((z - λ) / √λ)``, saturating, like a GAN generator's cost.
* ``sqrt``: ``sqrt(1 + z)``, concave and increasing.

Also the per-sample weight ``w(z)`` of pWGF (its estimate when ``f'(z) = 1``; ST's is 1) at
λ = 5, which shows how the kernel projection reweights ST's per-sample gradients.

What it shows, and why: pWGF's per-sample estimate is ``w_h(z) f'(z)`` with the weight
``w_h(z) = 2 Σ_x ∂_λp(x) ∂_bκ(x, z) / G``. Poisson's Stein–Chen identity ``(z - λ) p(z) =
λ ∂_λp(z)`` and the antisymmetry of ``∂_bκ(x, z) = (x - z)/h² κ(x, z)`` give ``Cov(w_h(z), z) =
(2λ/G) Σ_{x,z} ∂_λp(x) ∂_λp(z) ∂_bκ(x, z) = 0`` exactly, so for any quadratic cost pWGF's mean
is ``c(h, λ) = E[w_h]`` times ST's: a shrinkage, not a correction of ST's curvature bias
(``exact - ST ≈ E[f'']/2``), which would need a weight tilted towards larger z.

Outputs under ``--out DIR``: ``bias.csv`` (every row), ``bias.json`` (the same, with the
settings and the summary) and ``poisson_bias.png``. Takes seconds.
"""

from __future__ import annotations

import argparse
import csv
import math
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.distributions import Poisson

import pwgf
from pwgf.truncation import poisson_grid

from . import diagkit as dk
from .poisson_gan import save_png

COSTS: dict[str, tuple[str, Callable[[float], Callable[[Tensor], Tensor]]]] = {
    "quad+": ("(z - (λ+2))²", lambda lam: lambda z: (z - (lam + 2)) ** 2),
    "quad-": ("(z - (λ-2))²", lambda lam: lambda z: (z - (lam - 2)) ** 2),
    "logistic": (
        "-log σ((z - λ)/√λ)",
        lambda lam: lambda z: F.softplus(-(z - lam) / math.sqrt(lam)),
    ),
    "sqrt": ("sqrt(1 + z)", lambda lam: lambda z: torch.sqrt(1 + z)),
}
DEFAULT_RATES = "0.1,0.5,1,2,5,10,20,50"
DEFAULT_BANDWIDTHS = "0.5,1,2,5,std*0.5,std,std*2,std*4"
DEFAULT_STEPS = "none,0.1,1"
#: the pWGF variants shown in the per-cost tables and the plot (all are in the CSV)
SHOWN = (
    ("0.5", "projection", None),
    ("1", "projection", None),
    ("2", "projection", None),
    ("std*0.5", "projection", None),
    ("std", "projection", None),
    ("std*2", "projection", None),
    ("1", "raw", None),
    ("1", "projection", 0.1),
    ("1", "projection", 1.0),
)


def _bandwidth(text: str) -> float | str:
    try:
        return float(text)
    except ValueError:
        return text


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--costs", default=",".join(COSTS), help=f"comma-separated, from {', '.join(COSTS)}"
    )
    parser.add_argument("--rates", default=DEFAULT_RATES, help="comma-separated λ values > 0")
    parser.add_argument(
        "--bandwidths", default=DEFAULT_BANDWIDTHS, help="pwgf h values: floats, 'std', 'std*c'"
    )
    parser.add_argument("--normalizations", default="projection,raw", help="pwgf normalizations")
    parser.add_argument("--steps", default=DEFAULT_STEPS, help="pwgf ε values, 'none' = ε -> 0")
    parser.add_argument(
        "--min-bandwidth",
        type=dk.positive_float,
        default=1.0,
        help="pwgf: floor of the 'std*c' rules (the estimator's default)",
    )
    parser.add_argument(
        "--no-variance", action="store_true", help="skip the one-sample variances (faster)"
    )
    parser.add_argument("--out", type=Path, default=Path("runs/poisson-bias"), help="output DIR")
    dk.add_device_arguments(parser, dtype=False)
    parser.add_argument("--no-plot", action="store_true", help="skip the PNG")


def _label(bw: str, norm: str, step: float | None) -> str:
    return f"pwgf h={bw} {norm}" + ("" if step is None else f" ε={step:g}")


def _parse_steps(text: str) -> list[float | None]:
    return [None if s.strip().lower() == "none" else _number("--steps", s) for s in text.split(",")]


def _number(flag: str, text: str) -> float:
    """A positive finite float from a comma-separated option, or a one-line error."""
    try:
        x = float(text)
    except ValueError:
        x = math.nan
    if not (math.isfinite(x) and x > 0):
        raise dk.UsageError(f"{flag}: expected positive finite numbers, got {text.strip()!r}")
    return x


def compute(args: argparse.Namespace) -> list[dict]:
    """One row per (cost, λ, estimator variant)."""
    dev = dk.resolve_device(args.device)
    costs = [c.strip() for c in args.costs.split(",") if c.strip()]
    for c in costs:
        if c not in COSTS:
            raise dk.UsageError(f"unknown cost {c!r}; choose from {', '.join(COSTS)}")
    rates = [_number("--rates", r) for r in args.rates.split(",")]
    bws = [b.strip() for b in args.bandwidths.split(",") if b.strip()]
    norms = [n.strip() for n in args.normalizations.split(",") if n.strip()]
    steps = _parse_steps(args.steps)
    variants: list[tuple[str, pwgf.Estimator, dict]] = [
        ("st", pwgf.get_estimator("st"), {"estimator": "st"})
    ]
    for bw in bws:
        for norm in norms:
            for step in steps:
                est = pwgf.get_estimator(
                    "pwgf",
                    bandwidth=_bandwidth(bw),
                    normalization=norm,
                    step=step,
                    min_bandwidth=args.min_bandwidth,
                )
                opts = {"estimator": "pwgf", "bandwidth": bw, "normalization": norm, "step": step}
                variants.append((_label(bw, norm, step), est, opts))
    reference = [("mvd", pwgf.get_estimator("mvd")), ("reinforce", pwgf.get_estimator("reinforce"))]

    rows = []
    for cost in costs:
        formula, make = COSTS[cost]
        for lam in rates:
            f = make(lam)
            dist = Poisson(torch.tensor([lam], dtype=torch.float64, device=dev))
            exact = pwgf.exact_gradient(f, dist).item()
            base = {"cost": cost, "formula": formula, "rate": lam, "exact": exact}
            st_mean = st_std = None
            for label, est, opts in variants:
                if args.no_variance:
                    mean, var = pwgf.estimator_expectation(est, f, dist).item(), float("nan")
                else:
                    m, v = pwgf.estimator_moments(est, f, dist, n_samples=1)
                    mean, var = m.item(), v.item()
                if label == "st":
                    st_mean, st_std = mean, math.sqrt(var)
                rows.append(
                    {
                        **base,
                        "variant": label,
                        **opts,
                        "mean": mean,
                        "rel_bias": (mean - exact) / abs(exact),
                        "ratio_to_st": mean / st_mean if st_mean else float("nan"),
                        "rel_std_1": math.sqrt(var) / abs(exact) if var == var else float("nan"),
                        "std_to_st": math.sqrt(var) / st_std if st_std else float("nan"),
                    }
                )
            if not args.no_variance:
                for label, est in reference:
                    m, v = pwgf.estimator_moments(est, f, dist, n_samples=1)
                    rows.append(
                        {
                            **base,
                            "variant": label,
                            "estimator": label,
                            "mean": m.item(),
                            "rel_bias": (m.item() - exact) / abs(exact),
                            "ratio_to_st": m.item() / st_mean,
                            "rel_std_1": math.sqrt(v.item()) / abs(exact),
                            "std_to_st": math.sqrt(v.item()) / st_std if st_std else float("nan"),
                        }
                    )
    return rows


def pwgf_weights(
    rate: float, bandwidths: list[str], device: str, min_bandwidth: float = 1.0
) -> dict:
    """pWGF's per-sample weight ``w(z)``: its estimate at z when ``f'(z) = 1`` (ST's is 1), for
    every z in the truncated support, and ``c = E[w(z)]`` (its mean relative to ST's for any
    quadratic cost)."""
    zs = poisson_grid(torch.tensor(float(rate), dtype=torch.float64, device=device))
    p = Poisson(torch.tensor(float(rate), dtype=torch.float64, device=device)).log_prob(zs).exp()
    out: dict = {"rate": rate, "z": zs.tolist(), "w": {}, "c": {}}
    for bw in bandwidths:
        est = pwgf.get_estimator("pwgf", bandwidth=_bandwidth(bw), min_bandwidth=min_bandwidth)
        lam = torch.full_like(zs, rate).requires_grad_(True)  # one atom per support point
        fam = pwgf.as_family(Poisson(lam))
        (w,) = torch.autograd.grad(est.attach(fam, zs.unsqueeze(0)).sum(), lam)
        out["w"][bw] = w.tolist()
        out["c"][bw] = (p * w).sum().item()
    return out


def shrinkage(rates: list[float], hs: list[float], device: str) -> dict:
    """``c(h, λ) = E[w_h(z)]``: pWGF's mean over ST's for quadratic costs, per fixed h."""
    bws = [repr(h) for h in hs]
    return {
        "h": hs,
        "c": {str(lam): list(pwgf_weights(lam, bws, device)["c"].values()) for lam in rates},
    }


# -- output ---------------------------------------------------------------------------------------
def _find(rows: list[dict], cost: str, rate: float, variant: str) -> dict | None:
    for r in rows:
        if r["cost"] == cost and r["rate"] == rate and r["variant"] == variant:
            return r
    return None


def oracle_lines(rows: list[dict]) -> list[str]:
    """ESTIMATORS.md's oracle: f = (z-7)², λ = 5."""
    out = []
    for label, want in (
        ("st", -4.0),
        (_label("0.5", "projection", None), -3.28),
        (_label("1", "projection", None), -3.90),
    ):
        r = _find(rows, "quad+", 5.0, label)
        if r is not None:
            out.append(
                f"  {label:<28} E[ĝ] = {r['mean']:+.4f}  (ESTIMATORS.md: {want:+.2f}; "
                f"exact {r['exact']:+.4f}, ESTIMATORS.md: -3)"
            )
    return out


def format_tables(rows: list[dict]) -> str:
    costs = list(dict.fromkeys(r["cost"] for r in rows))
    rates = list(dict.fromkeys(r["rate"] for r in rows))
    variants = list(dict.fromkeys(r["variant"] for r in rows))
    shown = ["st", *[_label(*v) for v in SHOWN]]
    shown = [v for v in shown if v in variants] or variants[:10]
    lines = []
    orc = oracle_lines(rows)
    if orc:
        lines += ["Oracle (ESTIMATORS.md): f = (z-7)², λ = 5 (cost quad+ at λ = 5)", *orc, ""]
    head = f"{'variant':<32}" + "".join(f"{'λ=' + format(r, 'g'):>9}" for r in rates)
    for cost in costs:
        r0 = next(r for r in rows if r["cost"] == cost)
        lines += [f"Relative bias (E[ĝ] - exact) / |exact|, cost {cost}: f = {r0['formula']}", head]
        ex = [_find(rows, cost, lam, "st") for lam in rates]
        lines.append(f"{'exact gradient':<32}" + "".join(f"{e['exact']:>9.3f}" for e in ex))
        for v in shown:
            cells = [_find(rows, cost, lam, v) for lam in rates]
            lines.append(
                f"{v:<32}" + "".join(f"{c['rel_bias']:>+9.3f}" if c else f"{'':>9}" for c in cells)
            )
        lines.append("")
    if any(math.isfinite(r.get("std_to_st", math.nan)) for r in rows):
        lines += [
            "One-sample std ÷ ST's one-sample std, median over the costs",
            head,
        ]
        for v in [*shown[1:], "mvd", "reinforce"]:
            cells = []
            for lam in rates:
                vals = sorted(
                    r["std_to_st"]
                    for r in rows
                    if r["variant"] == v and r["rate"] == lam and math.isfinite(r["std_to_st"])
                )
                cells.append(f"{vals[len(vals) // 2]:>9.2f}" if vals else f"{'':>9}")
            if any(c.strip() for c in cells):
                lines.append(f"{v:<32}" + "".join(cells))
        lines.append("")
    lines += summary_lines(rows)
    return "\n".join(lines)


def summarise(rows: list[dict]) -> list[dict]:
    """Per variant, over every (cost, λ): mean and worst |relative bias|, sign errors, the ratio
    of its mean to ST's (min and max: equal when it is ST rescaled), mean one-sample rel. std."""
    out = []
    for v in dict.fromkeys(r["variant"] for r in rows):
        rs = [r for r in rows if r["variant"] == v]
        ab = [abs(r["rel_bias"]) for r in rs]
        ratios = [r["ratio_to_st"] for r in rs if math.isfinite(r["ratio_to_st"])]
        stds = [r["rel_std_1"] for r in rs if math.isfinite(r["rel_std_1"])]
        to_st = sorted(r["std_to_st"] for r in rs if math.isfinite(r["std_to_st"]))
        out.append(
            {
                "variant": v,
                "mean_abs_rel_bias": sum(ab) / len(ab),
                "max_abs_rel_bias": max(ab),
                "sign_errors": sum(1 for r in rs if r["mean"] * r["exact"] < 0),
                "cases": len(rs),
                "ratio_to_st_min": min(ratios) if ratios else float("nan"),
                "ratio_to_st_max": max(ratios) if ratios else float("nan"),
                "mean_rel_std_1": sum(stds) / len(stds) if stds else float("nan"),
                "median_std_to_st": to_st[len(to_st) // 2] if to_st else float("nan"),
            }
        )
    return out


def _printed(variant: str) -> bool:
    """Summary rows printed: everything with ε -> 0, finite ε only at h = 1 and h = std."""
    if "ε=" not in variant:
        return True
    return variant.startswith(("pwgf h=1 projection", "pwgf h=std projection"))


def summary_lines(rows: list[dict]) -> list[str]:
    summ = summarise(rows)
    lines = [
        "Summary over all costs and rates (|rel. bias|: mean and worst; sign errors: E[ĝ] of the",
        "wrong sign; ratio to ST: min..max of E[ĝ]/E[ĝ_ST]; rel. std: one-sample std / |exact|,",
        "mean over the cases; std÷ST: one-sample std / ST's, median over the cases).",
        "Finite ε shown for h = 1 and h = std only: every row is in bias.csv.",
        f"{'variant':<34}{'mean|bias|':>10}{'worst':>9}{'sign err':>9}{'ratio to ST':>16}"
        f"{'rel. std':>10}{'std÷ST':>8}",
    ]
    for s in summ:
        if not _printed(s["variant"]):
            continue
        lines.append(
            f"{s['variant']:<34}{s['mean_abs_rel_bias']:>10.3f}{s['max_abs_rel_bias']:>9.3f}"
            f"{s['sign_errors']:>5}/{s['cases']:<3}"
            f"{s['ratio_to_st_min']:>8.3f}..{s['ratio_to_st_max']:<6.3f}{s['mean_rel_std_1']:>10.3f}"
            f"{s['median_std_to_st']:>8.2f}"
        )
    return lines


def write_csv(path: Path, rows: list[dict]) -> None:
    keys = [
        "cost", "formula", "rate", "variant", "estimator", "bandwidth", "normalization", "step",
        "exact", "mean", "rel_bias", "ratio_to_st", "rel_std_1", "std_to_st",
    ]  # fmt: skip
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=keys, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow(
                {k: ("none" if k == "step" and r.get(k) is None else r.get(k, "")) for k in keys}
            )


def plot(path: Path, rows: list[dict], weights: dict | None) -> bool:
    plt = dk.pyplot()
    if plt is None:
        return False
    costs = list(dict.fromkeys(r["cost"] for r in rows))
    bws = ("0.5", "1", "2", "std", "std*2")
    variants = ["st", *[_label(b, "projection", None) for b in bws], "mvd"]
    variants = [v for v in variants if any(r["variant"] == v for r in rows)]
    has_std = any(math.isfinite(r["rel_std_1"]) for r in rows)
    nrow = 1 + has_std + (weights is not None)
    ncol = max(len(costs), 1)
    fig, axes = plt.subplots(nrow, ncol, figsize=(3.6 * ncol, 2.9 * nrow), squeeze=False)
    for j, cost in enumerate(costs):
        formula = next(r["formula"] for r in rows if r["cost"] == cost)
        for i, v in enumerate(variants):
            rs = sorted((r for r in rows if r["cost"] == cost and r["variant"] == v),
                        key=lambda r: r["rate"])  # fmt: skip
            if not rs:
                continue
            x = [r["rate"] for r in rs]
            style = {"color": f"C{i}", "lw": 1.3, "marker": "o", "ms": 3}
            if v != "mvd":
                axes[0, j].plot(x, [r["rel_bias"] for r in rs], label=v, **style)
            if has_std:
                axes[1, j].plot(x, [r["rel_std_1"] for r in rs], label=v, **style)
        axes[0, j].axhline(0, color="k", lw=0.6)
        axes[0, j].set_title(f"{cost}: f = {formula}", fontsize=9)
        axes[0, j].set_xscale("log")
        axes[0, j].set_ylabel("relative bias of E[ĝ]")
        if has_std:
            axes[1, j].set_xscale("log")
            axes[1, j].set_yscale("log")
            axes[1, j].set_ylabel("one-sample std / |exact|")
        axes[int(has_std), j].set_xlabel("λ")
    axes[0, 0].legend(fontsize=6)
    if has_std:
        axes[1, 0].legend(fontsize=6)
    if weights is not None:
        for ax, wt in zip(axes[-1], weights["weights"], strict=False):
            lo, hi = (
                wt["rate"] - 4 * math.sqrt(wt["rate"]) - 1,
                wt["rate"] + 5 * math.sqrt(wt["rate"]),
            )
            keep = [i for i, z in enumerate(wt["z"]) if lo <= z <= hi]
            z = [wt["z"][i] for i in keep]
            ax.axhline(1, color="C0", lw=1.3, label="st (w = 1)")
            for i, (bw, w) in enumerate(wt["w"].items()):
                ax.plot(z, [w[j] for j in keep], marker="o", ms=2, color=f"C{i + 1}",
                        label=f"pwgf h={bw}")  # fmt: skip
            ax.axhline(0, color="k", lw=0.6)
            ax.set_xlabel("z")
            ax.set_ylabel("per-sample weight w(z)")
            ax.set_title(f"ĝ_pwgf = w(z) f'(z), λ = {wt['rate']:g}", fontsize=9)
            ax.legend(fontsize=6)
        used = len(weights["weights"])
        if axes.shape[1] > used:
            ax = axes[-1, used]
            sh = weights["shrinkage"]
            for i, (lam, c) in enumerate(sh["c"].items()):
                ax.plot(sh["h"], c, marker="o", ms=2, color=f"C{i}", label=f"λ = {lam}")
            ax.axhline(1, color="k", lw=0.6)
            ax.set_xscale("log")
            ax.set_xlabel("bandwidth h")
            ax.set_ylabel("c = E[w] = E[ĝ_pwgf] / E[ĝ_st]")
            ax.set_title("shrinkage (quadratic costs: exact)", fontsize=9)
            ax.legend(fontsize=6)
            used += 1
        for ax in axes[-1, used:]:
            ax.axis("off")
    fig.tight_layout()
    save_png(fig, path)
    plt.close(fig)
    return True


def run(args: argparse.Namespace) -> int:
    t0 = time.perf_counter()
    rows = compute(args)
    bws = ["0.5", "1", "2", "std*2"]
    weights = {
        "weights": [pwgf_weights(lam, bws, args.device, args.min_bandwidth) for lam in (5.0, 50.0)],
        "shrinkage": shrinkage(
            [0.1, 0.5, 5.0, 50.0], [0.2 * 1.25**i for i in range(22)], args.device
        ),
    }
    table = format_tables(rows)
    print(table)
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    write_csv(out / "bias.csv", rows)
    png = out / "poisson_bias.png"
    plotted = not args.no_plot and plot(png, rows, weights)
    wall = time.perf_counter() - t0
    report = {
        "command": "poisson-bias",
        "settings": {
            "costs": {c: COSTS[c][0] for c in dict.fromkeys(r["cost"] for r in rows)},
            "rates": args.rates,
            "bandwidths": args.bandwidths,
            "normalizations": args.normalizations,
            "steps": args.steps,
            "min_bandwidth": args.min_bandwidth,
            "variance": not args.no_variance,
        },
        "rows": rows,
        "summary": summarise(rows),
        "pwgf_weights": weights,
        "table": table,
        "wall_s": wall,
        "files": {"csv": "bias.csv", "png": png.name if plotted else None},
    }
    dk.write_json(out / "bias.json", report)
    print(
        f"\nwall time {wall:.1f}s; wrote {out / 'bias.json'}, bias.csv"
        + (f", {png.name}" if plotted else "")
    )
    return 0
