"""``pwgf bench``: the cost of each estimator's forward and backward, against plain autograd.

The cost f is a VAE's reconstruction term: a linear decoder from D Bernoulli latents to 784
pixels and the Bernoulli negative log-likelihood of a fixed binary batch x,

    f(z) = Σ_pixels softplus(z W + c) - x ⊙ (z W + c),      z: (K, B, D) -> (K, B),

and the latents' distribution is ``Bernoulli(logits)`` with a (B, D) logits leaf. For each size
``B x D x K`` (batch x latent dimensions x samples; B·D·K latent values a step):

* **plain**: one forward and backward of the same f at a sample treated as a continuous input
  (gradients for W, c and z: what autograd does for a reparameterised latent);
* **estimator**: ``est.surrogate(f, dist, K).mean().backward()`` (gradients for W, c and the
  logits); learnable estimators (REBAR, RELAX) in training mode with their ``variance_loss()``
  backward included, as in training.

Warm-up calls, then ``--repeats`` timed calls, median; the ratio is estimator / plain. An
estimator whose evaluations of f grow with the number of latents (``mvd``: 1 + B·D per sample,
each on the whole batch) is skipped where its predicted time per step exceeds ``--max-seconds``,
with the prediction printed; the evaluations are counted on a tiny problem first, with a cheap f.

With ``--storchastic-python PYTHON`` (an interpreter where storchastic 0.3.7 is installed, e.g.
a virtualenv with ``pip install 'pwgf[compare]'``) the estimators both libraries have are run by
storchastic too, in a subprocess (:mod:`pwgf.experiments.storch_compare`): time per forward and
backward at the sizes in ``--storchastic-sizes``, and, on a small problem with an exact answer,
the mean of its gradient estimates against ``pwgf.exact_gradient`` (and against pwgf's own mean,
for the biased Gumbel-softmax forms). Without storchastic there the comparison is skipped, with
the reason printed.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.distributions import Bernoulli, Independent

import pwgf

from . import diagkit as dk
from . import storch_compare

DEFAULT_SIZES = "10x20x1,50x200x1,100x200x10,500x200x10"
STORCH_SCRIPT = Path(__file__).with_name("storch_compare.py")
STORCH_PROBLEM_DIM = 6


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--sizes",
        default=DEFAULT_SIZES,
        help=f"comma-separated BxDxK: batch x latents x samples ({DEFAULT_SIZES})",
    )
    parser.add_argument("--x-dim", type=int, default=784, help="decoder outputs (784)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed calls first (2)")
    parser.add_argument("--repeats", type=int, default=5, help="timed calls, median (5)")
    parser.add_argument(
        "--max-seconds",
        type=float,
        default=10.0,
        help="skip an estimator predicted to take longer per forward+backward (10)",
    )
    parser.add_argument("--device", default="cpu", help="cpu or cuda (cpu)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch default)")
    parser.add_argument("--estimators", default=None, help="comma-separated names (all)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--storchastic-python",
        default=sys.executable,
        help="interpreter with storchastic installed (default: this one)",
    )
    parser.add_argument("--no-storchastic", action="store_true", help="skip the comparison")
    parser.add_argument(
        "--storchastic-sizes",
        default=None,
        help="sizes timed with storchastic (default: the first two of --sizes)",
    )
    parser.add_argument(
        "--storchastic-draws",
        type=int,
        nargs=2,
        default=[40, 50],
        metavar=("CALLS", "N"),
        help="gradient mean from CALLS estimates of N samples each (40 50)",
    )
    parser.add_argument(
        "--storchastic-timeout", type=float, default=900.0, help="seconds for the subprocess"
    )
    parser.add_argument("--out", type=Path, default=None, help="write DIR/results.json")
    parser.add_argument("--quiet", action="store_true", help="no progress on stderr")


def parse_sizes(text: str) -> list[tuple[int, int, int]]:
    out = []
    for part in text.split(","):
        part = part.strip().lower()
        if not part:
            continue
        try:
            b, d, k = (int(x) for x in part.split("x"))
        except ValueError:
            raise SystemExit(f"pwgf bench: size {part!r} is not BxDxK (e.g. 50x200x1)") from None
        out.append((b, d, k))
    return out


def key(size: tuple[int, int, int]) -> str:
    return "x".join(map(str, size))


# -- the model -------------------------------------------------------------------------------------
class Decoder:
    """Linear decoder + Bernoulli likelihood on a fixed binary batch; parameters W, c."""

    def __init__(self, b: int, d: int, x_dim: int, device: torch.device, gen: torch.Generator):
        self.x = (torch.rand(b, x_dim, generator=gen) < 0.3).float().to(device)
        self.w = (torch.randn(d, x_dim, generator=gen) / math.sqrt(d)).to(device)
        self.w.requires_grad_(True)
        self.c = torch.zeros(x_dim, device=device, requires_grad=True)

    def __call__(self, z: Tensor) -> Tensor:
        out = z @ self.w + self.c
        return (F.softplus(out) - self.x * out).sum(-1)

    def zero_grad(self) -> None:
        self.w.grad = None
        self.c.grad = None


def cheap(z: Tensor) -> Tensor:
    return z.reshape(z.shape[0], z.shape[1], -1).sum(-1)


def evaluations(name: str, b: int, d: int) -> float:
    """Points at which f is evaluated for one sample, on a (b, d) problem with a cheap f (a fresh
    estimator: RELAX's network takes the size of its first problem)."""
    est = pwgf.get_estimator(name)
    counter = dk.CountingCost(cheap)
    logits = torch.randn(b, d).requires_grad_(True)
    k = dk.samples_for(est, 1)
    est.surrogate(counter, Independent(Bernoulli(logits=logits), 1), k).mean().backward()
    dk.clear_tuning(est)
    return counter.rows / k


def predicted_evaluations(name: str, b: int, d: int, k: int) -> tuple[float, bool]:
    """(evaluations of f per step, whether they grow with the size of the problem),
    extrapolated from three tiny problems as ``α + β·D + γ·B·D`` (mvd grows with D alone when f
    returns one cost per batch entry, an estimator that perturbs every latent with B·D)."""
    base, wide, tall = evaluations(name, 2, 4), evaluations(name, 2, 8), evaluations(name, 4, 4)
    gamma = (tall - base) / 8.0
    beta = (wide - base - 8.0 * gamma) / 4.0
    if beta <= 0 and gamma <= 0:
        return base * k, False
    return (base + beta * (d - 4) + gamma * (b * d - 8)) * k, True


def time_size(
    names: list[str], size: tuple[int, int, int], args: argparse.Namespace, device: torch.device
) -> tuple[float, dict[str, dict[str, Any]]]:
    b, d, k = size
    gen = torch.Generator().manual_seed(args.seed)
    dec = Decoder(b, d, args.x_dim, device, gen)
    enc = torch.randn(b, d, generator=gen).to(device).requires_grad_(True)

    def plain() -> None:
        dec.zero_grad()
        with torch.no_grad():
            z = torch.bernoulli(torch.sigmoid(enc).expand(k, b, d))
        z.requires_grad_(True)
        dec(z).mean(0).sum().backward()

    plain_s, _ = dk.time_calls(plain, args.warmup, args.repeats, device)
    out: dict[str, dict[str, Any]] = {}
    for name in names:
        est = pwgf.get_estimator(name).to(device)
        est.train()
        kk = dk.samples_for(est, k)
        evals, grows = predicted_evaluations(name, b, d, kk)
        predicted = plain_s * evals / k
        if grows and predicted > args.max_seconds:
            out[name] = {
                "skipped": f"its evaluations of f grow with the number of latents: ~{evals:.3g} "
                f"per step here (each on the whole batch), predicted {predicted:.3g} s per "
                f"forward+backward > --max-seconds {args.max_seconds:g}",
                "f_evals": evals,
            }
            continue

        def step(est=est, kk=kk) -> None:
            dec.zero_grad()
            enc.grad = None
            dist = Independent(Bernoulli(logits=enc), 1)
            loss = est.surrogate(dec, dist, n_samples=kk).mean()
            if est.learnable:
                loss = loss + est.variance_loss()
            loss.backward()

        try:
            seconds, times = dk.time_calls(step, args.warmup, args.repeats, device)
        except Exception as exc:
            out[name] = {"error": f"{type(exc).__name__}: {exc}"}
            continue
        out[name] = {
            "seconds": seconds,
            "ratio": seconds / plain_s,
            "repeats": len(times),
            "samples": kk,
            "f_evals": evals,
        }
        if est.learnable:
            out[name]["note"] = "includes tuning: variance_loss() backward"
    return plain_s, out


# -- storchastic -----------------------------------------------------------------------------------
def storch_problem(seed: int) -> dict[str, list[float]]:
    g = torch.Generator().manual_seed(seed + 1)
    d = STORCH_PROBLEM_DIM
    return {
        "logits": torch.randn(d, generator=g).tolist(),
        "t": torch.rand(d, generator=g).tolist(),
        "a": (torch.randn(d, generator=g) / 2).tolist(),
    }


def storch_cost(problem: dict[str, list[float]], dtype: torch.dtype = torch.float64):
    t = torch.tensor(problem["t"], dtype=dtype)
    a = torch.tensor(problem["a"], dtype=dtype)
    return lambda x: ((x - t) ** 2).sum(-1) + ((x * a).sum(-1)) ** 2


def probe_storchastic(python: str, script: Path = STORCH_SCRIPT) -> tuple[dict | None, str]:
    """(versions, "") when storchastic imports in ``python``, else (None, reason)."""
    try:
        res = subprocess.run(
            [python, str(script), "--probe"], capture_output=True, text=True, timeout=300
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return None, f"cannot run {python}: {type(exc).__name__}: {exc}"
    if res.returncode != 0:
        last = (res.stderr.strip().splitlines() or ["(no message)"])[-1]
        return None, f"storchastic is not importable in {python} ({last})"
    try:
        return json.loads(res.stdout.strip().splitlines()[-1]), ""
    except (ValueError, IndexError):
        return None, f"unexpected answer from {python} --probe: {res.stdout[-200:]!r}"


def pwgf_draws(name: str, problem: dict[str, list[float]], draws: int) -> Tensor:
    """``draws`` one-sample (two for leave-one-out) pwgf estimates, batched, in float64."""
    est = pwgf.get_estimator(name)
    if est.learnable:
        est.eval()
    k = dk.samples_for(est, 1)
    f = storch_cost(problem)
    logits = torch.tensor(problem["logits"], dtype=torch.float64)
    leaf = logits.expand(draws, -1).clone().requires_grad_(True)
    loss = est.surrogate(f, Independent(Bernoulli(logits=leaf), 1), n_samples=k)
    (g,) = torch.autograd.grad(loss.sum(), leaf)
    return g


def compare_storchastic(
    args: argparse.Namespace,
    names: list[str],
    pwgf_times: dict[str, dict[str, dict[str, Any]]],
    script: Path = STORCH_SCRIPT,
) -> dict[str, Any]:
    python = args.storchastic_python
    versions, reason = probe_storchastic(python, script)
    if versions is None:
        return {
            "skipped": f"{reason}. To compare, install it into a separate environment "
            "(it patches torch when imported): python -m venv --system-site-packages ENV && "
            "ENV/bin/pip install 'storchastic==0.3.7' (or 'pwgf[compare]'), then pass "
            "--storchastic-python ENV/bin/python",
            "python": python,
        }
    methods = list(storch_compare.METHODS)  # the script's table; it imports no torch here
    common = [m for m in methods if m == "exact" or m in names]
    sizes = parse_sizes(args.storchastic_sizes) if args.storchastic_sizes else args._sizes[:2]
    problem = storch_problem(args.seed)
    calls, n = args.storchastic_draws
    cfg = {
        "methods": common,
        "problem": problem,
        "calls": calls,
        "n": n,
        "seed": args.seed,
        "timing": {
            "sizes": [list(s) for s in sizes],
            "x_dim": args.x_dim,
            "warmup": min(args.warmup, 1),
            "repeats": args.repeats,
            "device": args.device,
            "threads": torch.get_num_threads(),
            "max_seconds": 4 * args.max_seconds,
        },
    }
    with tempfile.TemporaryDirectory() as tmp:
        cfg_path, out_path = Path(tmp) / "config.json", Path(tmp) / "out.json"
        cfg_path.write_text(json.dumps(cfg))
        print(
            f"[bench] storchastic {versions.get('storchastic')} in {python}: {', '.join(common)}",
            file=sys.stderr,
            flush=True,
        )
        t0 = time.perf_counter()
        try:
            res = subprocess.run(
                [python, str(script), str(cfg_path), str(out_path)],
                stdout=subprocess.PIPE,
                stderr=None if not args.quiet else subprocess.DEVNULL,
                text=True,
                timeout=args.storchastic_timeout,
            )
            rc = res.returncode
        except subprocess.TimeoutExpired:
            rc = "timeout"
        wall = time.perf_counter() - t0
        raw = json.loads(out_path.read_text()) if out_path.exists() else None
    if raw is None:
        return {
            "skipped": f"the storchastic subprocess returned {rc} and wrote nothing",
            "python": python,
        }
    exact = pwgf.exact_gradient(
        storch_cost(problem),
        Independent(Bernoulli(logits=torch.tensor(problem["logits"], dtype=torch.float64)), 1),
    )
    rows = []
    for name in common:
        entry = raw["methods"].get(name, {"error": "missing from the subprocess's answer"})
        row: dict[str, Any] = {
            "estimator": name,
            "storch_method": entry.get("storch_method"),
            "error": entry.get("error"),
        }
        if not entry.get("error"):
            mean = torch.tensor(entry["mean"], dtype=torch.float64)
            se = torch.tensor(entry["se"], dtype=torch.float64)
            floor = 1e-6 * (1 + float(exact.abs().max()))  # storchastic runs in float32
            row["storch_mean"] = mean.tolist()
            row["storch_rel_error"] = float((mean - exact).norm() / exact.norm())
            row["storch_z_vs_exact"] = float(((mean - exact).abs() / se.clamp(min=floor)).max())
            row["storch_var_single"] = float(sum(entry.get("var_single", [0.0])))
            if name != "exact":
                g = pwgf_draws(name, problem, calls * n)
                pm, pse = g.mean(0), g.std(0) / math.sqrt(g.shape[0])
                row["pwgf_mean"] = pm.tolist()
                row["pwgf_rel_error"] = float((pm - exact).norm() / exact.norm())
                row["pwgf_z_vs_exact"] = float(((pm - exact).abs() / pse.clamp(min=1e-12)).max())
                row["pwgf_var_single"] = float(g.var(0).sum())
                both = (se**2 + pse**2).sqrt().clamp(min=floor)
                row["z_storch_vs_pwgf"] = float(((mean - pm).abs() / both).max())
        timing = {}
        for s in sizes:
            st = entry.get("timing", {}).get(key(s), {})
            mine = pwgf_times.get(name, {}).get(key(s), {})
            cell: dict[str, Any] = {"storch": st}
            if "seconds" in st and "seconds" in mine:
                cell["storch_over_pwgf"] = st["seconds"] / mine["seconds"]
            timing[key(s)] = cell
        row["timing"] = timing
        rows.append(row)
    return {
        "storchastic": raw.get("storchastic"),
        "torch_in_subprocess": raw.get("torch"),
        "threads": raw.get("threads"),
        "python": python,
        "problem": problem,
        "exact_gradient": exact.tolist(),
        "draws": calls * n,
        "calls": calls,
        "samples_per_call": n,
        "sizes": [key(s) for s in sizes],
        "wall_seconds": wall,
        "rows": rows,
    }


def print_storch(report: dict[str, Any]) -> None:
    print("\n== storchastic comparison")
    if report.get("skipped"):
        print(f"  skipped: {report['skipped']}")
        return
    print(
        f"  storchastic {report['storchastic']} (torch {report['torch_in_subprocess']}, "
        f"{report['threads']} threads) in {report['python']}; {report['wall_seconds']:.0f} s"
    )
    print(
        f"  gradient mean on a {STORCH_PROBLEM_DIM}-Bernoulli problem, f(x) = Σ(x - t)² + (a·x)², "
        f"from {report['draws']} samples ({report['calls']} storchastic calls of "
        f"{report['samples_per_call']}), against the exact gradient (pwgf.exact_gradient):"
    )
    print(
        f"  {'estimator':<15}{'storch err':>11}{'z':>8}{'pwgf err':>10}{'z':>8}"
        f"{'z(s-p)':>8}  storchastic method / verdict"
    )
    for r in report["rows"]:
        if r.get("error"):
            print(f"  {r['estimator']:<15}  ERROR in storchastic: {r['error']}")
            continue
        biased = r["estimator"] in ("gumbel-softmax", "st-gumbel")
        zs = r["storch_z_vs_exact"]
        zsp = r.get("z_storch_vs_pwgf")
        if r["estimator"] == "exact":
            verdict = "agrees" if r["storch_rel_error"] < 1e-5 else "DIFFERS"
        elif biased:
            verdict = "biased by design: compare with pwgf's mean, " + (
                "agrees" if zsp is not None and zsp <= 5 else "DIFFERS from pwgf's"
            )
        else:
            verdict = "agrees with the exact gradient" if zs <= 5 else "WRONG: mean != exact"
        print(
            f"  {r['estimator']:<15}{r['storch_rel_error']:>11.3f}{zs:>8.1f}"
            f"{dk.fmt(r.get('pwgf_rel_error'), '.3f', 10)}"
            f"{dk.fmt(r.get('pwgf_z_vs_exact'), '.1f', 8)}"
            f"{dk.fmt(zsp, '.1f', 8)}  {r['storch_method']}: {verdict}"
        )
    print(
        "  (err: |mean - ∇|/|∇|; z: largest |mean - ∇|/s.e. over coordinates; z(s-p): "
        "storchastic's mean against pwgf's)"
    )
    print("  time per forward+backward, storchastic vs pwgf (same f and sizes):")
    for r in report["rows"]:
        if r["estimator"] == "exact":
            continue
        cells = []
        for s, cell in r["timing"].items():
            st = cell["storch"]
            if "seconds" in st:
                ratio = cell.get("storch_over_pwgf")
                cells.append(
                    f"{s}: {1e3 * st['seconds']:.1f} ms"
                    + (f" ({ratio:.1f}x pwgf)" if ratio is not None else "")
                )
            else:
                cells.append(f"{s}: {st.get('error', 'n/a')[:60]}")
        print(f"  {r['estimator']:<15}" + "; ".join(cells))


# -- the command -----------------------------------------------------------------------------------
def run(args: argparse.Namespace) -> int:
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("pwgf bench: --device cuda but CUDA is not available")
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    sizes = parse_sizes(args.sizes)
    args._sizes = sizes
    names = dk.estimator_names("bernoulli", dk.split_names(args.estimators))
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(
        f"pwgf bench: forward+backward of each estimator vs a plain forward+backward of the same "
        f"f (linear decoder {args.x_dim} outputs + Bernoulli NLL), Bernoulli(logits) latents; "
        f"{args.warmup} warm-up + {args.repeats} timed calls, median. device {device} ({where}), "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, float32."
    )
    results: dict[str, dict[str, Any]] = {n: {} for n in names}
    plain: dict[str, float] = {}
    progress = dk.Progress("bench", len(sizes), args.quiet)
    t0 = time.perf_counter()
    for i, size in enumerate(sizes):
        plain_s, out = time_size(names, size, args, device)
        plain[key(size)] = plain_s
        for n, r in out.items():
            results[n][key(size)] = r
        progress.update(i + 1, key(size))
    progress.done()
    wall = time.perf_counter() - t0
    cols = [key(s) for s in sizes]
    print("\nms per forward+backward (ratio to plain); size = batch x latents x samples")
    print(f"  {'':<15}" + "".join(f"{c:>22}" for c in cols))
    print(f"  {'plain autograd':<15}" + "".join(f"{1e3 * plain[c]:>13.2f} ms (1.0)" for c in cols))
    skipped = []
    for n in names:
        cells = []
        for c in cols:
            r = results[n][c]
            if "seconds" in r:
                cells.append(f"{1e3 * r['seconds']:>10.2f} ms ({r['ratio']:>5.1f})")
            elif "skipped" in r:
                cells.append(f"{'skipped':>22}")
                skipped.append(f"{n} at {c}: {r['skipped']}")
            else:
                cells.append(f"{'error':>22}")
                skipped.append(f"{n} at {c}: {r['error']}")
        print(f"  {n:<15}" + "".join(cells))
    for s in skipped:
        print(f"  note: {s}")
    print(f"  ({wall:.0f} s; learnable estimators include their tuning backward)")
    report: dict[str, Any] = {
        "machine": {**dk.machine(), "device": str(device), "device_name": where},
        "settings": {
            "sizes": cols,
            "x_dim": args.x_dim,
            "warmup": args.warmup,
            "repeats": args.repeats,
            "max_seconds": args.max_seconds,
            "dtype": "float32",
        },
        "plain": {c: {"seconds": plain[c]} for c in cols},
        "results": results,
        "wall_seconds": wall,
    }
    if not args.no_storchastic:
        report["storchastic"] = compare_storchastic(args, names, results)
        print_storch(report["storchastic"])
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        dk.write_json(args.out / "results.json", report)
        print(f"wrote {args.out / 'results.json'}")
    return 0
