"""``pwgf bench``: what each estimator costs, as a ratio to a plain forward+backward of the model.

Every estimator is measured on every family it supports, at sizes users have (``--FAMILY-sizes``):

* **bernoulli** ``BxDxK``: a VAE's reconstruction term, linear decoder D -> 784 and the Bernoulli
  NLL of a fixed binary batch, latents ``Bernoulli(logits)`` from a (B, D) leaf;
* **categorical** ``BxLxCxK``: the same decoder on the L one-hot vectors of ``OneHotCategorical
  (logits)`` latents, flattened (L·C -> 784);
* **poisson** ``BxDxK@rate``: the same decoder on ``z / rate`` for ``Poisson(rate)`` latents,
  rate = ``exp(leaf)`` with the leaf at log(rate).

For each (family, size, estimator):

* **floor**: a plain forward+backward of the same f at a fresh sample of the same shape and the
  same number of samples K as the estimator uses (leave-one-out estimators take K >= 2, and so
  does their floor): ``f(z).mean(0).sum().backward()`` with z a continuous leaf. Sampling is
  included in both.
* **estimator**: ``surrogate(f, dist, K).sum().backward()``; learnable estimators (REBAR, RELAX)
  in training mode with their ``variance_loss()`` backward included, as in training.

Floor and estimator alternate, one call each per round, after one warm-up call of each; the
ratio is the median of the per-round ratios, shown with their spread (min-max). Before any
full-size call of the estimator, its time and peak memory are predicted: by an affine fit in the
batch from calls on 1/16 and 1/8 of it, or, for an estimator whose evaluations of f grow with the
latents (counted on tiny problems with a cheap f), as the floor's time and memory times that
number of evaluations. A cell predicted over ``--cell-seconds`` (its rounds together) or
``--max-memory-gb`` is reported, not attempted. Peak memory of one call is measured with the
allocator's statistics on CUDA and from torch's allocation records on CPU (the profiler with
``profile_memory``), as an increase over the level before the call; its ratio to the floor's
peak (taken as at least 1 MiB) is reported.

Targets (ratios to the floor in the same run, from the issue that asked for this bench): ST, the
Gumbel relaxations, ReinMax and REINFORCE <= 1.15x; pWGF <= 1.2x on Bernoulli and categorical and
<= 2x on Poisson; ARM/DisARM <= 2.05x (two evaluations of f); MuProp <= 2.2x; REBAR/RELAX <= 3.5x;
peak memory <= 4x the floor's for every estimator. The table marks each cell PASS or FAIL.

Peers, each in its own interpreter with its own interleaved floor (the ratios are comparable,
the absolute times are not): storchastic 0.3.7 (``--storchastic-python``, see
``pwgf.experiments.storch_compare``) on the Bernoulli sizes in ``--storchastic-sizes``, and the
mean of its gradient estimates on a small problem with an exact answer. A peer that cannot be
imported is reported as not run, with the reason and how to install it.

Results: ``--out DIR`` gets ``results.json`` (rewritten after every cell; a rerun with the same
settings resumes, keeping the cells already measured) and ``results.csv``. Budget: the default
run takes about 5 minutes on 2 CPU threads (``--rounds 5``, ``--cell-seconds 8``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.distributions import Bernoulli, Independent, OneHotCategorical, Poisson

import pwgf

from . import diagkit as dk
from . import peers, storch_compare

DEFAULT_SIZES = {
    "bernoulli": "50x200x1,1000x200x1,50x200x8,1000x200x8",
    "categorical": "10x20x10x1,10x32x512x1,10x8x4096x1",
    "poisson": "50x200x1@0.001,50x200x1@1,50x200x1@10,50x200x1@100,50x200x1@1000,50x200x1@10000",
}
STORCH_SCRIPT = Path(__file__).with_name("storch_compare.py")
STORCH_PROBLEM_DIM = 6
MEMORY_TARGET = 4.0
MEMORY_FLOOR_BYTES = 2**20

#: estimator -> target ratio to the floor, per family (None: no target stated)
TARGETS: dict[str, float | dict[str, float]] = {
    "st": 1.15,
    "gumbel-softmax": 1.15,
    "st-gumbel": 1.15,
    "reinmax": 1.15,
    "reinforce": 1.15,
    "reinforce-loo": 1.15,
    "pwgf": {"bernoulli": 1.2, "categorical": 1.2, "poisson": 2.0},
    "arm": 2.05,
    "disarm": 2.05,
    "muprop": 2.2,
    "rebar": 3.5,
    "relax": 3.5,
}


def target(name: str, family: str) -> float | None:
    t = TARGETS.get(name)
    return t.get(family) if isinstance(t, dict) else t


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--families",
        default="bernoulli,categorical,poisson",
        help="comma-separated families (all three)",
    )
    for fam, sizes in DEFAULT_SIZES.items():
        parser.add_argument(
            f"--{fam}-sizes", default=sizes, help=f"{fam} sizes ({sizes})", dest=f"{fam}_sizes"
        )
    parser.add_argument("--x-dim", type=int, default=784, help="decoder outputs (784)")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds per cell (5)")
    parser.add_argument(
        "--cell-seconds",
        type=float,
        default=8.0,
        help="cap on a cell's predicted time, all rounds (8); over it: reported, not attempted",
    )
    parser.add_argument(
        "--max-memory-gb",
        type=float,
        default=8.0,
        help="cap on one call's predicted peak memory (8); over it: reported, not attempted",
    )
    parser.add_argument("--device", default="cpu", help="cpu or cuda (cpu)")
    dk.add_thread_arguments(parser)
    parser.add_argument("--estimators", default=None, help="comma-separated names (all)")
    parser.add_argument("--no-memory", action="store_true", help="skip the memory measurement")
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
        help="Bernoulli sizes timed with storchastic (default: the first two)",
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
    parser.add_argument(
        "--pyro-python",
        default=sys.executable,
        help="interpreter with pyro-ppl installed, for TraceGraph_ELBO (default: this one)",
    )
    parser.add_argument("--no-pyro", action="store_true", help="skip the pyro comparison")
    parser.add_argument(
        "--fused",
        action="store_true",
        help="compile the general path of pwgf's Poisson sums (pwgf.fused; compiles on first use)",
    )
    parser.add_argument("--out", type=Path, default=None, help="write DIR/results.json, .csv")
    parser.add_argument("--quiet", action="store_true", help="no progress on stderr")


# -- sizes -----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Size:
    family: str
    batch: int
    latents: tuple[int, ...]  # (D,) or (L, C)
    k: int
    rate: float = 1.0

    @property
    def key(self) -> str:
        base = "x".join(map(str, (self.batch, *self.latents, self.k)))
        return f"{base}@{self.rate:g}" if self.family == "poisson" else base

    def scaled(self, batch: int) -> Size:
        return Size(self.family, batch, self.latents, self.k, self.rate)


def parse_sizes(family: str, text: str) -> list[Size]:
    want = {"bernoulli": 3, "categorical": 4, "poisson": 3}[family]
    form = {"bernoulli": "BxDxK", "categorical": "BxLxCxK", "poisson": "BxDxK@rate"}[family]
    out = []
    for part in text.split(","):
        part = part.strip().lower()
        if not part:
            continue
        head, _, rate = part.partition("@")
        try:
            nums = [int(x) for x in head.split("x")]
            r = float(rate) if rate else 1.0
            if len(nums) != want or min(nums) < 1 or (family == "poisson" and not r > 0):
                raise ValueError
            if bool(rate) != (family == "poisson"):
                raise ValueError
        except ValueError:
            raise dk.UsageError(f"{family} size {part!r} is not {form}") from None
        out.append(Size(family, nums[0], tuple(nums[1:-1]), nums[-1], r))
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
        self.scale = 1.0

    def __call__(self, z: Tensor) -> Tensor:
        flat = z.reshape(*z.shape[:2], -1)  # (K, B, D) or (K, B, L·C)
        if self.scale != 1.0:
            flat = flat * self.scale
        out = flat @ self.w + self.c
        return (F.softplus(out) - self.x * out).sum(-1)

    def zero_grad(self) -> None:
        self.w.grad = None
        self.c.grad = None


class Problem:
    """Decoder, latent leaf and distribution of one family at one size."""

    def __init__(self, size: Size, x_dim: int, device: torch.device, seed: int) -> None:
        gen = torch.Generator().manual_seed(seed)
        self.size = size
        n_in = math.prod(size.latents)
        self.dec = Decoder(size.batch, n_in, x_dim, device, gen)
        shape = (size.batch, *size.latents)
        leaf = torch.randn(shape, generator=gen) / 2
        if size.family == "poisson":
            leaf = leaf / 10 + math.log(size.rate)
            self.dec.scale = 1.0 / size.rate
        self.leaf = leaf.to(device).requires_grad_(True)

    def dist(self, leaf: Tensor | None = None):
        p = self.leaf if leaf is None else leaf
        if self.size.family == "bernoulli":
            return Independent(Bernoulli(logits=p), 1)
        if self.size.family == "categorical":
            return Independent(OneHotCategorical(logits=p), 1)
        return Independent(Poisson(p.exp()), 1)

    def floor_step(self, k: int) -> None:
        self.dec.zero_grad()
        with torch.no_grad():
            z = self.dist(self.leaf.detach()).sample((k,))
        z.requires_grad_(True)
        self.dec(z).mean(0).sum().backward()

    def estimator_step(self, est: pwgf.Estimator, k: int) -> None:
        self.dec.zero_grad()
        self.leaf.grad = None
        loss = est.surrogate(self.dec, self.dist(), n_samples=k).sum()
        if est.learnable:
            loss = loss + est.variance_loss()
        loss.backward()


# -- measuring -------------------------------------------------------------------------------------
@contextlib.contextmanager
def _native_stderr_silenced() -> Iterator[None]:
    """File descriptor 2 to /dev/null for a while: torch's profiler writes two lines there
    (natively, past sys.stderr) each time it starts and stops."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def peak_memory(fn: Callable[[], object], device: torch.device) -> int | None:
    """Peak bytes allocated by one call of ``fn`` above the level before it: CUDA allocator
    statistics, or on CPU torch's allocation records (the profiler with ``profile_memory``:
    each operator's own allocations and each free, summed in time order)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - base
    from torch.profiler import ProfilerActivity, profile

    with (
        _native_stderr_silenced(),
        profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof,
    ):
        fn()
    events = sorted(prof.events(), key=lambda e: e.time_range.start)
    level = peak = 0
    for e in events:
        level += e.self_cpu_memory_usage
        peak = max(peak, level)
    return peak


def steady_peak(fn: Callable[[], object], device: torch.device) -> int | None:
    """``peak_memory`` of a second call: the first one profiled can count, as new, buffers
    that replace ones allocated before profiling (the profiler does not see those freed)."""
    peak_memory(fn, device)
    return peak_memory(fn, device)


def _timed(fn: Callable[[], object], device: torch.device) -> float:
    dk.synchronize(device)
    t0 = time.perf_counter()
    fn()
    dk.synchronize(device)
    return time.perf_counter() - t0


def interleaved(
    floor: Callable[[], object], est: Callable[[], object], rounds: int, device: torch.device
) -> dict[str, Any]:
    """One warm-up call of each, then ``rounds`` rounds of (floor, estimator), alternating which
    goes first; the ratio is the median of the per-round ratios (``peers.interleaved``, the
    peers' own timing)."""
    res = peers.interleaved(
        est, floor, warmup=1, repeats=rounds, sync=lambda: dk.synchronize(device)
    )
    res["rounds"] = res.pop("repeats")  # every round runs: no time cap here
    return res


def fresh(name: str, device: torch.device) -> pwgf.Estimator:
    est = pwgf.get_estimator(name).to(device)
    est.train()
    return est


def _count(name: str, size: Size) -> float:
    """Points at which f is evaluated per sample, on a tiny problem of the family with a cheap f
    (a fresh estimator: RELAX's network takes the size of its first problem)."""
    est = pwgf.get_estimator(name)
    counter = dk.CountingCost(lambda z: z.reshape(*z.shape[:2], -1).sum(-1))
    prob = Problem(size, 1, torch.device("cpu"), 0)
    k = dk.samples_for(est, 1)
    est.surrogate(counter, prob.dist(), k).sum().backward()
    dk.clear_tuning(est)
    return counter.rows / k


def predicted_evaluations(name: str, size: Size) -> tuple[float, bool]:
    """(evaluations of f per step, whether they grow with the problem), extrapolated from three
    tiny problems as ``α + β·V + γ·B·V`` with V the latent values per batch entry (D, or L·C)."""
    lat = (4,) if size.family != "categorical" else (2, 2)
    wide = (8,) if size.family != "categorical" else (4, 2)
    base = _count(name, Size(size.family, 2, lat, 1, size.rate))
    more = _count(name, Size(size.family, 2, wide, 1, size.rate))
    tall = _count(name, Size(size.family, 4, lat, 1, size.rate))
    gamma = (tall - base) / 8.0
    beta = (more - base - 8.0 * gamma) / 4.0
    k = dk.samples_for(pwgf.get_estimator(name), size.k)
    if beta <= 1e-9 and gamma <= 1e-9:
        return base * k, False
    v = math.prod(size.latents)
    return (base + beta * (v - 4) + gamma * (size.batch * v - 8)) * k, True


def measure_cell(
    name: str, size: Size, args: argparse.Namespace, device: torch.device
) -> dict[str, Any]:
    """One (estimator, family, size) cell: predict from 1/8 of the batch, then measure."""
    k = dk.samples_for(pwgf.get_estimator(name), size.k)
    evals, grows = predicted_evaluations(name, size)
    out: dict[str, Any] = {"samples": k, "f_evals": evals}
    # Two small batches, 1/16 and 1/8 of the full one, and an affine fit in the batch: a part of
    # the cost (the decoder's weight gradient) does not grow with it.
    b1, b2 = max(1, size.batch // 16), max(2, size.batch // 8)
    if grows:  # each evaluation costs about a floor: predict without calling the estimator
        full = Problem(size, args.x_dim, device, args.seed)
        full.floor_step(k)
        t_floor = _timed(lambda: full.floor_step(k), device)
        m_floor = steady_peak(lambda: full.floor_step(k), device)
        per_call = t_floor * (1 + evals / k)
        out["predicted_cell_seconds"] = per_call * (args.rounds + 1)
        out["predicted_peak_gb"] = None if m_floor is None else m_floor * evals / k / 2**30
        over = (
            out["predicted_cell_seconds"] > args.cell_seconds
            or (out["predicted_peak_gb"] or 0.0) > args.max_memory_gb
        )
        if over:
            out["skipped"] = (
                f"its evaluations of f grow with the latents: ~{evals:.3g} per step here, "
                f"predicted {per_call:.3g} s per call and "
                f"{out['predicted_peak_gb'] or 0:.3g} GB (caps: --cell-seconds "
                f"{args.cell_seconds:g} for {args.rounds} rounds, --max-memory-gb "
                f"{args.max_memory_gb:g})"
            )
            return out
    meas = []
    try:
        for bb in (b1, b2):
            probe = Problem(size.scaled(bb), args.x_dim, device, args.seed)
            est = fresh(name, device)
            probe.estimator_step(est, k)  # first call: lazy parameters, caches
            mem = steady_peak(lambda probe=probe, est=est: probe.estimator_step(est, k), device)
            t_e = _timed(lambda probe=probe, est=est: probe.estimator_step(est, k), device)
            t_f = _timed(lambda probe=probe: probe.floor_step(k), device)
            meas.append((bb, t_e + t_f, mem))
    except Exception as exc:  # an estimator that fails is reported, the bench goes on
        return {**out, "error": f"{type(exc).__name__}: {exc}"}

    def extrapolate(i: int) -> float | None:
        (x1, *y1), (x2, *y2) = meas
        a, b = y1[i], y2[i]
        if a is None or b is None:
            return None
        slope = max((b - a) / (x2 - x1), 0.0)
        return max(b + slope * (size.batch - x2), a, b)

    predicted_s = extrapolate(0) * (args.rounds + 1)
    mem = extrapolate(1)
    predicted_gb = None if mem is None else mem / 2**30
    out.update({"predicted_cell_seconds": predicted_s, "predicted_peak_gb": predicted_gb})
    if predicted_gb is not None and predicted_gb > args.max_memory_gb:
        out["skipped"] = (
            f"predicted peak memory {predicted_gb:.3g} GB > --max-memory-gb {args.max_memory_gb:g}"
        )
        return out
    if predicted_s > args.cell_seconds:
        out["skipped"] = (
            f"predicted {predicted_s:.3g} s for {args.rounds} rounds > --cell-seconds "
            f"{args.cell_seconds:g}"
        )
        return out

    prob = Problem(size, args.x_dim, device, args.seed)
    est = fresh(name, device)
    try:
        out.update(
            interleaved(
                lambda: prob.floor_step(k), lambda: prob.estimator_step(est, k), args.rounds, device
            )
        )
        if not args.no_memory:
            m_floor = steady_peak(lambda: prob.floor_step(k), device)
            m_est = steady_peak(lambda: prob.estimator_step(est, k), device)
            out["floor_peak_bytes"], out["peak_bytes"] = m_floor, m_est
            if m_floor is not None and m_est is not None:
                # a floor below 1 MiB would turn a few small buffers into a large ratio
                out["memory_ratio"] = m_est / max(m_floor, MEMORY_FLOOR_BYTES)
    except Exception as exc:
        out["error"] = f"{type(exc).__name__}: {exc}"
    if est.learnable:
        out["note"] = "includes tuning: variance_loss() backward"
    return out


def verdict(name: str, family: str, r: dict[str, Any]) -> str:
    """PASS / FAIL(t, m) against the time (t) and memory (m) targets, '-' where none is stated."""
    if "ratio" not in r:
        return "-"
    t = target(name, family)
    fails = []
    if t is not None and r["ratio"] > t:
        fails.append("t")
    if r.get("memory_ratio") is not None and r["memory_ratio"] > MEMORY_TARGET:
        fails.append("m")
    if fails:
        return "FAIL(" + ",".join(fails) + ")"
    return "PASS" if t is not None else "-"


# -- storchastic -----------------------------------------------------------------------------------
def peer_sizes(args: argparse.Namespace) -> list[tuple[int, int, int]]:
    """The Bernoulli sizes ``(B, D, K)`` the peers time: ``--storchastic-sizes``, or the first
    two of ``--bernoulli-sizes``."""
    text = args.storchastic_sizes or ",".join(args.bernoulli_sizes.split(",")[:2])
    return [(s.batch, s.latents[0], s.k) for s in parse_sizes("bernoulli", text)]


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
    cells: dict[str, dict[str, Any]],
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
    sizes = peer_sizes(args)
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
            "warmup": 1,
            "repeats": args.rounds,
            "device": args.device,
            "threads": torch.get_num_threads(),
            "max_seconds": 4 * args.cell_seconds,
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
            mine = cells.get(f"bernoulli/{key(s)}/{name}", {})
            cell: dict[str, Any] = {"storch": st, "pwgf_ratio": mine.get("ratio")}
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
    print(
        "  ratio to the floor, each library in its own process against its own interleaved "
        "floor (same f and sizes):"
    )
    for r in report["rows"]:
        if r["estimator"] == "exact":
            continue
        cells = []
        for s, cell in r["timing"].items():
            st = cell["storch"]
            if "ratio" in st:
                mine = cell.get("pwgf_ratio")
                cells.append(
                    f"{s}: storchastic {st['ratio']:.2f}x"
                    + (f", pwgf {mine:.2f}x" if mine is not None else "")
                )
            else:
                cells.append(f"{s}: {st.get('error', 'n/a')[:60]}")
        print(f"  {r['estimator']:<15}" + "; ".join(cells))


# -- pyro ------------------------------------------------------------------------------------------
PYRO_SCRIPT = Path(__file__).with_name("pyro_compare.py")


def compare_pyro(
    args: argparse.Namespace, cells: dict[str, dict[str, Any]], script: Path = PYRO_SCRIPT
) -> dict[str, Any]:
    """pyro's TraceGraph_ELBO against its own floor, in ``--pyro-python``, next to pwgf's
    ``reinforce`` against pwgf's floor at the same Bernoulli sizes."""
    python = args.pyro_python
    try:
        res = subprocess.run(
            [python, str(script), "--probe"], capture_output=True, text=True, timeout=300
        )
        ok = res.returncode == 0
        why = (res.stderr.strip().splitlines() or ["(no message)"])[-1]
    except (OSError, subprocess.TimeoutExpired) as exc:
        ok, why = False, f"cannot run {python}: {type(exc).__name__}: {exc}"
    if not ok:
        return {
            "skipped": f"not run: pyro is not importable in {python} ({why}). To compare: "
            "pip install pyro-ppl into an environment (storchastic's venv has it) and pass "
            "--pyro-python ENV/bin/python",
            "python": python,
        }
    sizes = peer_sizes(args)
    cfg = {
        "sizes": [list(s) for s in sizes],
        "x_dim": args.x_dim,
        "warmup": 1,
        "repeats": args.rounds,
        "threads": torch.get_num_threads(),
    }
    with tempfile.TemporaryDirectory() as tmp:
        cfg_path, out_path = Path(tmp) / "config.json", Path(tmp) / "out.json"
        cfg_path.write_text(json.dumps(cfg))
        try:
            subprocess.run(
                [python, str(script), str(cfg_path), str(out_path)],
                capture_output=True,
                text=True,
                timeout=args.storchastic_timeout,
            )
        except subprocess.TimeoutExpired:
            pass
        raw = json.loads(out_path.read_text()) if out_path.exists() else None
    if raw is None:
        return {"skipped": "not run: the pyro subprocess wrote nothing", "python": python}
    rows = []
    for s in sizes:
        mine = cells.get(f"bernoulli/{key(s)}/reinforce", {})
        rows.append(
            {
                "size": key(s),
                "pyro": raw["timing"].get(key(s), {}),
                "pwgf_reinforce": mine.get("ratio"),
            }
        )
    return {"pyro": raw.get("pyro"), "torch": raw.get("torch"), "python": python, "rows": rows}


def print_pyro(report: dict[str, Any]) -> None:
    print("\n== pyro TraceGraph_ELBO (REINFORCE, decaying-average baseline)")
    if report.get("skipped"):
        print(f"  {report['skipped']}")
        return
    print(
        f"  pyro {report['pyro']} (torch {report['torch']}) in {report['python']}; ratio to "
        "the floor in pyro's own process, beside pwgf's reinforce against pwgf's floor:"
    )
    for r in report["rows"]:
        p = r["pyro"]
        mine = r["pwgf_reinforce"]
        if "ratio" in p:
            cell = f"pyro {p['ratio']:.2f}x [{p['ratio_min']:.2f}-{p['ratio_max']:.2f}]"
        else:
            cell = f"pyro error: {p.get('error', 'n/a')[:60]}"
        print(f"  {r['size']:<12}{cell}" + (f"; pwgf reinforce {mine:.2f}x" if mine else ""))


# -- the command -----------------------------------------------------------------------------------
def _settings(args: argparse.Namespace, sizes: dict[str, list[Size]]) -> dict[str, Any]:
    return {
        "sizes": {f: [s.key for s in ss] for f, ss in sizes.items()},
        "x_dim": args.x_dim,
        "rounds": args.rounds,
        "cell_seconds": args.cell_seconds,
        "max_memory_gb": args.max_memory_gb,
        "device": args.device,
        "threads": torch.get_num_threads(),
        "seed": args.seed,
        "dtype": "float32",
        "fused": args.fused,
    }


def _load_previous(path: Path | None, settings: dict[str, Any]) -> dict[str, Any]:
    if path is None or not (path / "results.json").exists():
        return {}
    try:
        old = json.loads((path / "results.json").read_text())
    except ValueError:
        raise dk.UsageError(
            f"{path / 'results.json'} is not valid JSON; move it away to start afresh"
        ) from None
    return old.get("cells", {}) if old.get("settings") == settings else {}


def print_table(family: str, sizes: list[Size], names: list[str], cells: dict) -> list[str]:
    notes = []
    print(f"\n== {family}: ratio to the floor (median of per-round ratios [min-max]), memory ratio")
    width = 34
    print(f"  {'estimator':<15}" + "".join(f"{s.key:>{width}}" for s in sizes) + "  target")
    floor_cells = []
    for s in sizes:
        ms = [cells[f"{family}/{s.key}/{n}"] for n in names if f"{family}/{s.key}/{n}" in cells]
        secs = [m["floor_seconds"] for m in ms if "floor_seconds" in m and m["samples"] == s.k]
        floor_cells.append(f"{1e3 * statistics.median(secs):.2f} ms" if secs else "-")
    print(f"  {'floor (K)':<15}" + "".join(f"{c:>{width}}" for c in floor_cells))
    for n in names:
        row = []
        for s in sizes:
            r = cells.get(f"{family}/{s.key}/{n}")
            if r is None:
                row.append("-")
            elif "ratio" in r:
                mem = f" m{r['memory_ratio']:.2g}" if r.get("memory_ratio") is not None else ""
                row.append(
                    f"{r['ratio']:.3g} [{r['ratio_min']:.3g}-{r['ratio_max']:.3g}]{mem} "
                    f"{verdict(n, family, r)}"
                )
            elif "skipped" in r:
                row.append("not attempted")
                notes.append(f"{n} on {family} {s.key}: {r['skipped']}")
            else:
                row.append("error")
                notes.append(f"{n} on {family} {s.key}: {r.get('error')}")
        t = target(n, family)
        print(f"  {n:<15}" + "".join(f"{c:>{width}}" for c in row) + f"  {'-' if t is None else t}")
    return notes


def run(args: argparse.Namespace) -> int:
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise dk.UsageError("--device cuda but CUDA is not available")
    if args.rounds < 1 or args.x_dim < 1:
        raise dk.UsageError("--rounds and --x-dim must be at least 1")
    if not (args.cell_seconds > 0 and args.max_memory_gb > 0):
        raise dk.UsageError("--cell-seconds and --max-memory-gb must be positive")
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.fused:
        pwgf.fused.set_fused(True)
    torch.manual_seed(args.seed)
    families = [f for f in dk.split_names(args.families) or [] if f]
    for f in families:
        if f not in DEFAULT_SIZES:
            raise dk.UsageError(f"unknown family {f!r}; one of {list(DEFAULT_SIZES)}")
    sizes = {f: parse_sizes(f, getattr(args, f"{f}_sizes")) for f in families}
    only = dk.split_names(args.estimators)
    names = {f: [n for n in dk.estimator_names(f, only) if n != "exact"] for f in families}
    settings = _settings(args, sizes)
    cells: dict[str, dict[str, Any]] = _load_previous(args.out, settings)
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(
        f"pwgf bench: each estimator's forward+backward against a plain forward+backward of the "
        f"same model (floor: same shape and K), interleaved, {args.rounds} rounds after one "
        f"warm-up; device {device} ({where}), torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, float32"
        f"{', fused kernels' if args.fused else ''}. Caps: {args.cell_seconds:g} s a cell, "
        f"{args.max_memory_gb:g} GB a call (predicted from 1/8 of the batch)."
    )
    todo = [(f, s, n) for f in families for s in sizes[f] for n in names[f]]
    progress = dk.Progress("bench", len(todo), args.quiet)
    t0 = time.perf_counter()
    report: dict[str, Any] = {
        "machine": {**dk.machine(), "device": str(device), "device_name": where},
        "settings": settings,
        "targets": {n: TARGETS.get(n) for f in families for n in names[f]},
        "memory_target": MEMORY_TARGET,
        "cells": cells,
    }
    for i, (f, s, n) in enumerate(todo):
        cell = f"{f}/{s.key}/{n}"
        if cell not in cells:
            cells[cell] = {"family": f, "size": s.key, "estimator": n}
            cells[cell].update(measure_cell(n, s, args, device))
            cells[cell]["verdict"] = verdict(n, f, cells[cell])
            if args.out is not None:
                dk.write_json(args.out / "results.json", report)
        progress.update(i + 1, cell)
    progress.done()
    wall = time.perf_counter() - t0
    notes = []
    for f in families:
        notes += print_table(f, sizes[f], names[f], cells)
    for note in notes:
        print(f"  note: {note}")
    fails = sorted(c for c, r in cells.items() if str(r.get("verdict", "")).startswith("FAIL"))
    measured = sum("ratio" in r for r in cells.values())
    print(
        f"\n  {len(fails)} of {measured} measured cells miss a target (FAIL(t): time, FAIL(m): "
        f"memory); m: peak memory / floor's, target <= {MEMORY_TARGET:g}. {wall:.0f} s."
    )
    report["wall_seconds"] = wall
    if not args.no_storchastic:
        report["storchastic"] = compare_storchastic(args, names.get("bernoulli", []), cells)
        print_storch(report["storchastic"])
    if not args.no_pyro:
        report["pyro"] = compare_pyro(args, cells)
        print_pyro(report["pyro"])
    if args.out is not None:
        dk.write_json(args.out / "results.json", report)
        dk.write_csv(args.out / "results.csv", list(cells.values()))
        print(f"wrote {args.out / 'results.json'} and results.csv")
    return 0
