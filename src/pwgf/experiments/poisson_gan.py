"""``pwgf poisson-gan``: the paper's Poisson parameter estimation by a GAN (§3.1, Table 1, Fig. 3).

Data ``x ~ Poisson(5)``; generator ``z ~ Poisson(λ)`` with ``λ = exp(φ)`` (φ, the log-rate, is the
learnable parameter, so λ > 0 always); discriminator ``D`` a small MLP on the standardised input
(or, with ``--discriminator oracle``, the Bayes-optimal ``D*`` for the current λ, which isolates
the estimator from the GAN dynamics). D maximises ``log D(x) + log(1 - D(z))``; the generator
minimises ``f(z) = -log D(z)`` (non-saturating form) through the estimator under test,
``pwgf.get_estimator(name, **opts).surrogate(f, Poisson(λ), n_samples=K)``.

Every seed of one estimator is trained at once: λ has shape ``(seeds,)``, the discriminators are
batched weights (one MLP per seed, applied with einsum), and the cost returns one value per seed,
so each seed's generator and discriminator only ever see their own samples. Adam is elementwise,
so one optimiser over the batched tensors is the same as one optimiser per seed. The only Python
loop is over steps.

Runs go through ``pwgf.experiments.sweep``: one cell per estimator (and per combination of
``--vary OPTION=V1,V2`` values, for a grid of settings), the seeds of a cell batched as above;
``--executor ray`` runs the cells as Ray tasks, ``--jobs N`` N at once locally.

Outputs under ``--out DIR``: ``results.json`` (settings, per estimator the final λ, the mean and
std of λ over the last stretch of each run, wall times, the paper's Table 1; with ``--vary``, one
entry per setting under ``grid``), ``results.csv`` (one row per setting, estimator and seed),
``curves.csv`` (λ per recorded step and seed) and ``poisson_gan_curves.png`` (Figure 3; one PNG
per setting with ``--vary``). Each cell is checkpointed in ``DIR/<cell>/checkpoint.pt``: when it
finishes, every ``--checkpoint-every`` seconds while it runs, and on Ctrl-C (with the optimiser
and random-number state, so a resumed run continues where it stopped and gives the same
numbers). A finished cell is never recomputed; a checkpoint made with other settings is refused.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import os
import signal
import sys
import threading
import time
import zlib
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.distributions import Poisson

import pwgf
from pwgf.registry import format_spec, parse_spec, resolve, split_specs

from . import diagkit as dk
from . import sweep

#: Table 1 of Cheng, Liu, Li, Shen, Henao & Carin, "Straight-Through Estimator as Projected
#: Wasserstein Gradient Flow", arXiv 1910.02176 (2019), §3.1: mean and std of the inferred λ
#: after training (data rate 5). Keys are this library's estimator names.
PAPER_TABLE1: dict[str, tuple[float, float]] = {
    "pwgf": (5.0076, 0.013),
    "st": (5.1049, 0.161),
    "muprop": (5.0196, 0.159),
    "reinforce": (4.9452, 0.173),
}
PAPER_SOURCE = "Cheng et al. 2019, arXiv 1910.02176, §3.1 Table 1"

DATA_RATE = 5.0
#: the estimators the command runs by default, those of them that are registered for Poisson
DEFAULT_ESTIMATORS = ("pwgf", "st", "muprop", "reinforce", "reinforce-loo", "mvd")


def default_estimators() -> list[str]:
    available = set(pwgf.estimators_for("poisson")) - {"exact"}
    return [name for name in DEFAULT_ESTIMATORS if name in available]


def _bandwidth(text: str) -> float | str:
    try:
        return float(text)
    except ValueError:
        return text


def _step(text: str) -> float | None:
    return None if text.lower() in ("none", "0", "inf") else float(text)


#: ``"10"`` -> seeds 0..9; ``"3,5,8"`` -> those; ``"10-19"`` -> 10..19 (distinct, >= 0)
parse_seeds = sweep.parse_seeds


def add_arguments(parser: argparse.ArgumentParser) -> None:
    d = default_estimators()
    parser.add_argument(
        "--estimators",
        default=",".join(d),
        help=f"comma-separated estimator names ({','.join(d)})",
    )
    parser.add_argument("--steps", type=int, default=3000, help="generator steps (3000)")
    parser.add_argument(
        "--batch", type=int, default=128, help="samples K per step, both players (128)"
    )
    parser.add_argument(
        "--lr-g", type=float, default=0.005, help="learning rate of the log-rate φ (0.005)"
    )
    parser.add_argument("--lr-d", type=float, default=0.005, help="Adam learning rate of D (0.005)")
    parser.add_argument(
        "--beta1", type=float, default=0.5, help="Adam β1, both players (0.5, as in DCGAN)"
    )
    parser.add_argument(
        "--opt-g",
        choices=("adam", "sgd"),
        default="adam",
        help="generator optimiser (adam); sgd makes the estimator's scale and variance matter",
    )
    parser.add_argument("--d-steps", type=int, default=1, help="D updates per generator step (1)")
    parser.add_argument("--init-rate", type=float, default=2.0, help="initial λ (2.0)")
    parser.add_argument(
        "--discriminator",
        choices=("mlp", "oracle"),
        default="mlp",
        help="'mlp': trained (default); 'oracle': the optimal D* for the current λ",
    )
    parser.add_argument("--hidden", type=int, default=16, help="D's hidden width (16)")
    parser.add_argument("--layers", type=int, default=2, help="D's hidden layers (2)")
    parser.add_argument(
        "--tail-frac",
        type=float,
        default=0.2,
        help="last fraction of steps over which the oscillation (std of λ) is taken (0.2)",
    )
    parser.add_argument(
        "--bandwidth",
        type=_bandwidth,
        default=None,
        help="pwgf: h, a float or 'std*c' (the library's default, std*2)",
    )
    parser.add_argument(
        "--normalization", choices=("projection", "raw"), default="projection", help="pwgf"
    )
    parser.add_argument(
        "--step", type=_step, default=None, help="pwgf: ε, a float, or 'none' for ε -> 0 (none)"
    )
    parser.add_argument(
        "--min-bandwidth",
        type=float,
        default=None,
        help="pwgf: floor of a 'std*c' bandwidth (the library's default, 1.0)",
    )
    parser.add_argument("--out", type=Path, default=Path("runs/poisson-gan"), help="output DIR")
    parser.add_argument(
        "--resume",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="reuse checkpoints in DIR (default); --no-resume or --fresh recomputes everything",
    )
    parser.add_argument("--fresh", dest="resume", action="store_false", help="= --no-resume")
    parser.add_argument(
        "--checkpoint-every",
        type=float,
        default=60.0,
        help="seconds between checkpoints of a running estimator (60)",
    )
    parser.add_argument(
        "--record-every", type=int, default=0, help="steps between rows of curves.csv (auto)"
    )
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    parser.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    dk.add_thread_arguments(parser)
    parser.add_argument("--seed", type=int, default=0, help="base of the training noise (0)")
    parser.add_argument("--no-plot", action="store_true", help="skip the PNG")
    parser.add_argument(
        "--stop-after",
        type=int,
        default=None,
        metavar="N",
        help="stop each cell after N more steps, its checkpoint saved (a rerun resumes it)",
    )
    parser.add_argument(
        "--vary",
        action="append",
        default=[],
        metavar="OPTION=V1,V2",
        help="run a grid: every combination of these values of the named options (repeatable; "
        f"options: {', '.join('--' + o.replace('_', '-') for o in VARIABLE)}), one table each",
    )
    # one cell of the sweep per estimator and setting; the seeds of a cell train batched
    sweep.add_sweep_arguments(parser, default_seeds="10")


# -- the discriminators ---------------------------------------------------------------------------
class BatchedMLP:
    """One MLP per seed, as batched weights: input ``(..., S)`` -> logits ``(..., S)``.

    Architecture: ``u = (x - m) / s`` with m, s the mean and std of the data (Poisson(5): 5 and
    √5), then ``layers`` hidden layers of ``hidden`` LeakyReLU(0.2) units, then a linear logit.
    Seed ``i``'s initial weights come from ``torch.Generator().manual_seed(i)``, so every
    estimator starts from the same discriminators. (The optimal logit between two Poisson laws
    is linear in x, so any such MLP can represent it.)
    """

    def __init__(
        self, seeds: list[int], hidden: int, layers: int, dtype: torch.dtype, device: str
    ) -> None:
        self.center, self.scale = DATA_RATE, math.sqrt(DATA_RATE)
        shapes = [(1, hidden)] + [(hidden, hidden)] * (layers - 1) + [(hidden, 1)]
        per_seed = []
        for s in seeds:  # initialisation only; training has no loop over seeds
            g = torch.Generator().manual_seed(int(s))
            ws = []
            for fan_in, fan_out in shapes:  # nn.Linear's default initialisation
                bound = 1 / math.sqrt(fan_in)
                ws.append((torch.rand(fan_in, fan_out, generator=g) * 2 - 1) * bound)
                ws.append((torch.rand(fan_out, generator=g) * 2 - 1) * bound)
            per_seed.append(ws)
        self.params = [
            torch.stack([ws[i] for ws in per_seed]).to(device=device, dtype=dtype).requires_grad_()
            for i in range(len(per_seed[0]))
        ]

    def __call__(self, x: Tensor) -> Tensor:
        h = ((x - self.center) / self.scale).unsqueeze(-1)  # (..., S, 1)
        n = len(self.params) // 2
        for i in range(n):
            w, b = self.params[2 * i], self.params[2 * i + 1]  # (S, in, out), (S, out)
            h = torch.einsum("...si,sio->...so", h, w) + b
            if i < n - 1:
                h = F.leaky_relu(h, 0.2)
        return h.squeeze(-1)

    def state(self) -> list[Tensor]:
        return [p.detach().clone() for p in self.params]

    def load(self, state: list[Tensor]) -> None:
        with torch.no_grad():
            for p, v in zip(self.params, state, strict=True):
                p.copy_(v)


class OracleD:
    """The optimal discriminator for the current λ: logit D*(x) = log p_5(x) - log p_λ(x)
    = x log(5/λ) + λ - 5 (λ held fixed, so the generator's gradient is only the estimator's)."""

    def __init__(self) -> None:
        self.params: list[Tensor] = []
        self.rate: Tensor | None = None

    def __call__(self, x: Tensor) -> Tensor:
        lam = self.rate
        return x * torch.log(DATA_RATE / lam) + lam - DATA_RATE

    def state(self) -> list[Tensor]:
        return []

    def load(self, state: list[Tensor]) -> None:
        pass


# -- one estimator, all seeds at once -------------------------------------------------------------
def canonical_spec(spec: str) -> str:
    """``spec`` (a name or ``name:key=value,...``) with the registry's name for the estimator."""
    name, options = parse_spec(spec)
    return format_spec(resolve(name), options)


def base_name(spec: str) -> str:
    return resolve(parse_spec(spec)[0])


def estimator_options(spec: str, args: argparse.Namespace) -> dict:
    """The estimator's options: pWGF's come from the command's flags (or the library's defaults),
    and options written in the spec (``pwgf:bandwidth=2``) override them."""
    name, written = parse_spec(spec)
    name = resolve(name)
    return {**_flag_options(name, args), **written}


def _flag_options(name: str, args: argparse.Namespace) -> dict:
    if name == "pwgf":
        opts = {
            "bandwidth": args.bandwidth,
            "normalization": args.normalization,
            "step": args.step,
            "min_bandwidth": args.min_bandwidth,
        }
        # options left unset take the library's defaults (recorded as such), so the run
        # reports what users get
        default = pwgf.get_estimator("pwgf")
        opts["bandwidth"] = default.bandwidth if args.bandwidth is None else args.bandwidth
        if args.min_bandwidth is None:
            opts["min_bandwidth"] = default.min_bandwidth
        return opts
    return {}


def settings_of(args: argparse.Namespace) -> dict:
    return {
        "data_rate": DATA_RATE,
        "seeds": list(args.seeds),
        "steps": args.steps,
        "batch": args.batch,
        "lr_g": args.lr_g,
        "lr_d": args.lr_d,
        "beta1": args.beta1,
        "opt_g": args.opt_g,
        "d_steps": args.d_steps,
        "init_rate": args.init_rate,
        "discriminator": args.discriminator,
        "hidden": args.hidden,
        "layers": args.layers,
        "tail_frac": args.tail_frac,
        "device": args.device,
        "dtype": args.dtype,
        "seed": args.seed,
        "parameterisation": "λ = exp(φ), φ learnt",
        "optimiser": f"generator {args.opt_g}, discriminator adam",
        "discriminator_arch": (
            f"MLP 1-{'-'.join([str(args.hidden)] * args.layers)}-1, LeakyReLU(0.2), "
            "input (x - 5)/√5"
            if args.discriminator == "mlp"
            else "oracle: logit = x log(5/λ) + λ - 5"
        ),
    }


def _rng_state(device: torch.device) -> dict:
    state = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: dict, device: torch.device) -> None:
    torch.set_rng_state(state["cpu"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def _save(obj: dict, path: Path) -> None:
    """Write ``obj`` to ``path`` through a temporary file: a reader never sees half a
    checkpoint, and a failed write (a full disk) leaves neither a broken file nor the .tmp."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _write(path: Path, text: str) -> None:
    """``path.write_text(text)`` through a temporary file, which a failure removes."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


class Stopped(RuntimeError):
    """A cell stopped by ``--stop-after`` (its checkpoint saved; the next run resumes it)."""


class _StopOnSigint:
    """The first Ctrl-C only sets a flag, which the training loop checks between steps, so the
    checkpoint it then saves is of a whole step; a second Ctrl-C interrupts at once. Only in the
    main thread (signal handlers cannot be set elsewhere, e.g. in a Ray worker's thread)."""

    def __init__(self) -> None:
        self.hit = False
        self.old: Any = None

    def __enter__(self) -> _StopOnSigint:
        if threading.current_thread() is threading.main_thread():
            self.old = signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.hit:
            raise KeyboardInterrupt
        self.hit = True

    def __exit__(self, *exc: object) -> None:
        if self.old is not None:
            signal.signal(signal.SIGINT, self.old)


def train(name: str, args: argparse.Namespace, settings: dict, ckpt_path: Path) -> dict:
    """Train every seed of estimator ``name``; returns the finished checkpoint dict."""
    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype)
    seeds = settings["seeds"]
    n_seeds, steps, k = len(seeds), args.steps, args.batch
    est = pwgf.get_estimator(base_name(name), **estimator_options(name, args))
    k = max(k, est.min_samples)

    phi = torch.full((n_seeds,), math.log(args.init_rate), dtype=dtype, device=device)
    phi.requires_grad_(True)
    disc = (
        BatchedMLP(seeds, args.hidden, args.layers, dtype, args.device)
        if args.discriminator == "mlp"
        else OracleD()
    )
    betas = (args.beta1, 0.999)
    opt_g = (
        torch.optim.Adam([phi], lr=args.lr_g, betas=betas)
        if args.opt_g == "adam"
        else torch.optim.SGD([phi], lr=args.lr_g)
    )
    opt_d = torch.optim.Adam(disc.params, lr=args.lr_d, betas=betas) if disc.params else None
    history = torch.empty(steps, n_seeds, dtype=torch.float64)
    data = Poisson(torch.full((n_seeds,), DATA_RATE, dtype=dtype, device=device))

    start, wall_before = 0, 0.0
    old = torch.load(ckpt_path, weights_only=False) if ckpt_path.exists() else None
    if old is not None and old["status"] == "partial":
        start, wall_before = old["step"], old["wall_s"]
        with torch.no_grad():
            phi.copy_(old["phi"])
        disc.load(old["disc"])
        opt_g.load_state_dict(old["opt_g"])
        if opt_d is not None:
            opt_d.load_state_dict(old["opt_d"])
        history[:start] = old["history"][:start]
        _set_rng_state(old["rng"], device)
        print(f"[poisson-gan] {name}: resuming at step {start}/{steps}", file=sys.stderr)
    else:
        torch.manual_seed(args.seed * 1_000_003 + zlib.crc32(name.encode()))

    def cost(z: Tensor) -> Tensor:  # -log D(z), one value per seed: (K, S) -> (K, S)
        return F.softplus(-disc(z))

    def snapshot(status: str, step: int, wall: float) -> dict:
        return {
            "status": status,
            "estimator": name,
            "settings": settings,
            "options": estimator_options(name, args),
            "step": step,
            "phi": phi.detach().cpu(),
            "disc": [t.cpu() for t in disc.state()],
            "opt_g": opt_g.state_dict(),
            "opt_d": None if opt_d is None else opt_d.state_dict(),
            "history": history[:step].clone(),
            "rng": _rng_state(device),
            "wall_s": wall,
        }

    def _one_step(step: int) -> None:
        rate = phi.detach().exp()
        gen = Poisson(rate)
        if opt_d is not None:
            for _ in range(args.d_steps):
                x = data.sample((k,))
                z = gen.sample((k,))
                # mean over samples, sum over seeds: each seed's weights get their own gradient
                loss_d = (F.softplus(-disc(x)) + F.softplus(disc(z))).mean(0).sum()
                opt_d.zero_grad(set_to_none=True)
                loss_d.backward()
                opt_d.step()
        else:
            disc.rate = rate
        surrogate = est.surrogate(cost, Poisson(phi.exp()), n_samples=k)  # (S,)
        (grad,) = torch.autograd.grad(surrogate.sum(), phi)
        phi.grad = grad
        opt_g.step()
        history[step] = phi.detach().exp().to(torch.float64).cpu()

    stop_after = getattr(args, "stop_after", None)
    t0 = last_ckpt = time.perf_counter()
    with _StopOnSigint() as sigint:
        for step in range(start, steps):
            _one_step(step)
            if sigint.hit or (stop_after and step + 1 - start >= stop_after and step + 1 < steps):
                _save(
                    snapshot("partial", step + 1, wall_before + time.perf_counter() - t0), ckpt_path
                )
                if sigint.hit:
                    raise KeyboardInterrupt
                raise Stopped(f"{name}: stopped after step {step + 1} of {steps} (--stop-after)")
            now = time.perf_counter()
            if now - last_ckpt > args.checkpoint_every and step + 1 < steps:
                _save(snapshot("partial", step + 1, wall_before + now - t0), ckpt_path)
                last_ckpt = now
    done = snapshot("done", steps, wall_before + time.perf_counter() - t0)
    _save(done, ckpt_path)
    return done


def summarise(ckpt: dict, tail_frac: float) -> dict:
    hist = ckpt["history"]  # (steps, S)
    n_tail = max(2, round(tail_frac * hist.shape[0]))
    tail = hist[-n_tail:]
    final = hist[-1]
    n = final.numel()
    return {
        "seeds": ckpt["settings"]["seeds"],
        "final_rate": final.tolist(),
        "tail_mean": tail.mean(0).tolist(),
        "oscillation": tail.std(0).tolist(),
        "final_mean": final.mean().item(),
        "final_std": final.std().item() if n > 1 else 0.0,
        "oscillation_mean": tail.std(0).mean().item(),
        "tail_mean_mean": tail.mean(0).mean().item(),
        "tail_mean_se": (tail.mean(0).std() / math.sqrt(n)).item() if n > 1 else 0.0,
        "tail_steps": n_tail,
        "wall_s": ckpt["wall_s"],
    }


def _differences(a: dict, b: dict) -> list[str]:
    """Settings that differ (those that change the numbers; --out, --threads etc. are not kept)."""
    return [k for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]


# -- output ---------------------------------------------------------------------------------------
def format_table(results: dict, settings: dict) -> str:
    n, steps = len(settings["seeds"]), settings["steps"]
    lines = [
        f"Table 1 (reproduced): λ after {steps} steps over {n} seeds, data rate {DATA_RATE:g}.",
        "  final: λ at the last step, mean and std over seeds (the paper's columns);",
        f"  tail: λ averaged over the last {settings['tail_frac']:.0%} of steps, mean over seeds "
        "± its standard error; oscill.: std of λ over that stretch, mean over seeds",
        f"{'':<14}{'--- this run ' + '-' * 56:<69}| --- paper ---",
        f"{'estimator':<14}{'final mean':>10} {'std':>7} {'|mean-5|':>8} "
        f"{'tail mean ± s.e.':>18} {'oscill.':>8} {'wall s':>7}   | {'mean':>7} {'std':>6}",
    ]
    for name, r in results.items():
        paper = PAPER_TABLE1.get(name)
        ptxt = f"{paper[0]:>7.4f} {paper[1]:>6.3f}" if paper else f"{'-':>7} {'-':>6}"
        tail = f"{r['tail_mean_mean']:.4f} ± {r['tail_mean_se']:.4f}"
        lines.append(
            f"{name:<14}{r['final_mean']:>10.4f} {r['final_std']:>7.4f} "
            f"{abs(r['final_mean'] - DATA_RATE):>8.4f} {tail:>18} {r['oscillation_mean']:>8.4f} "
            f"{r['wall_s']:>7.1f}   | {ptxt}"
        )
    lines.append(f"paper: {PAPER_SOURCE}")
    return "\n".join(lines)


def write_csvs(out: Path, groups: list[dict[str, Any]], record_every: int) -> None:
    """``results.csv`` (one row per setting, estimator and seed) and ``curves.csv`` (λ per
    recorded step), with a column per ``--vary`` option."""
    extra = list(dict.fromkeys(k for g in groups for k in g["setting"]))
    res = io.StringIO()
    w = csv.writer(res, lineterminator="\n")
    w.writerow([*extra, "estimator", "seed", "final_rate", "tail_mean", "oscillation"])
    for g in groups:
        pre = [g["setting"].get(k, "") for k in extra]
        for name, r in g["estimators"].items():
            for i, s in enumerate(r["seeds"]):
                w.writerow(
                    [
                        *pre,
                        name,
                        s,
                        f"{r['final_rate'][i]:.6f}",
                        f"{r['tail_mean'][i]:.6f}",
                        f"{r['oscillation'][i]:.6f}",
                    ]
                )
    _write(out / "results.csv", res.getvalue())
    cur = io.StringIO()
    w = csv.writer(cur, lineterminator="\n")
    w.writerow([*extra, "estimator", "step", "seed", "rate"])
    for g in groups:
        pre = [g["setting"].get(k, "") for k in extra]
        for name, ck in g["ckpts"].items():
            hist = ck["history"]
            every = record_every or max(1, hist.shape[0] // 500)
            for t in [*range(every - 1, hist.shape[0] - 1, every), hist.shape[0] - 1]:
                for i, s in enumerate(ck["settings"]["seeds"]):
                    w.writerow([*pre, name, t + 1, s, f"{hist[t, i].item():.5f}"])
    _write(out / "curves.csv", cur.getvalue())


def save_png(fig: object, path: Path, dpi: int = 80) -> None:
    """Save a matplotlib figure as a small PNG: 256-colour palette when Pillow is there."""
    fig.savefig(path, dpi=dpi)
    try:
        from PIL import Image

        with Image.open(path) as im:
            small = im.convert("RGB").quantize(colors=256)
        small.save(path, optimize=True)
    except Exception:  # keep the full-colour file
        pass


def plot_curves(path: Path, ckpts: dict, settings: dict) -> bool:
    plt = dk.pyplot()
    if plt is None:
        return False
    names = list(ckpts)
    cols = min(3, len(names))
    rows = math.ceil(len(names) / cols)
    fig = plt.figure(figsize=(4.2 * cols, 2.6 * (rows + 1.2)))
    grid = fig.add_gridspec(rows + 1, cols, height_ratios=[1.2] + [1] * rows)
    top = fig.add_subplot(grid[0, :])
    zoom = 0.5  # the panels show DATA_RATE ± zoom
    first = None
    for i, name in enumerate(names):
        full = ckpts[name]["history"].numpy()
        every = max(1, full.shape[0] // 600)  # at most ~600 points a line
        idx = [*range(0, full.shape[0] - 1, every), full.shape[0] - 1]
        hist = full[idx]
        steps = [i + 1 for i in idx]
        mean, std = hist.mean(1), hist.std(1)
        top.fill_between(steps, mean - std, mean + std, alpha=0.2, color=f"C{i}", lw=0)
        top.plot(steps, mean, color=f"C{i}", lw=1.2, label=name)
        ax = fig.add_subplot(grid[1 + i // cols, i % cols], sharex=top, sharey=first)
        first = first or ax
        ax.plot(steps, hist, color="0.7", lw=0.3)
        ax.fill_between(steps, mean - std, mean + std, alpha=0.35, color=f"C{i}", lw=0)
        ax.plot(steps, mean, color=f"C{i}", lw=1.0)
        ax.axhline(DATA_RATE, color="k", ls="--", lw=0.8)
        ax.set_ylim(DATA_RATE - zoom, DATA_RATE + zoom)
        ax.set_title(f"{name} (zoom; seeds in grey)", fontsize=9)
        if i % cols == 0:
            ax.set_ylabel("λ")
        if i // cols == rows - 1 or i + cols >= len(names):
            ax.set_xlabel("generator step")
    top.axhline(DATA_RATE, color="k", ls="--", lw=0.8)
    top.set_ylabel("λ")
    top.legend(fontsize=7, ncol=min(len(names), 6), loc="lower right")
    top.set_title(
        f"Poisson GAN (Fig. 3): λ per step, mean ± std over {len(settings['seeds'])} seeds; "
        f"data rate {DATA_RATE:g}",
        fontsize=10,
    )
    fig.tight_layout()
    save_png(fig, path)
    plt.close(fig)
    return True


#: options ``--vary`` can sweep (those that change the numbers)
VARIABLE = (
    "bandwidth",
    "normalization",
    "step",
    "min_bandwidth",
    "discriminator",
    "opt_g",
    "lr_g",
    "lr_d",
    "beta1",
    "d_steps",
    "init_rate",
    "hidden",
    "layers",
    "batch",
)
_PWGF_ONLY = ("bandwidth", "normalization", "step", "min_bandwidth")
#: what a cell needs of the command line to train (its config)
_TRAIN_ARGS = (*VARIABLE, "steps", "device", "dtype", "seed", "seeds", "tail_frac")


def validate(args: argparse.Namespace) -> None:
    """Reject options that cannot give a meaningful run, with one message naming the option."""
    bad = dk.UsageError
    if args.steps < 2:
        raise bad(f"--steps must be >= 2, got {args.steps}")
    if args.batch < 1:
        raise bad(f"--batch must be >= 1, got {args.batch}")
    if not (math.isfinite(args.init_rate) and args.init_rate > 0):
        raise bad(f"--init-rate must be a finite rate > 0 (λ = exp(φ)), got {args.init_rate}")
    for opt in ("hidden", "layers", "d_steps"):
        if getattr(args, opt) < 1:
            raise bad(f"--{opt.replace('_', '-')} must be >= 1, got {getattr(args, opt)}")
    if not (math.isfinite(args.tail_frac) and 0 < args.tail_frac <= 1):
        raise bad(f"--tail-frac must be in (0, 1], got {args.tail_frac}")
    if args.record_every < 0:
        raise bad(f"--record-every must be >= 0 (0: about 500 rows a run), got {args.record_every}")
    for opt in ("lr_g", "lr_d"):
        v = getattr(args, opt)
        if not (math.isfinite(v) and v > 0):
            raise bad(f"--{opt.replace('_', '-')} must be a finite number > 0, got {v}")
    if not (math.isfinite(args.beta1) and 0 <= args.beta1 < 1):
        raise bad(f"--beta1 must be in [0, 1), got {args.beta1}")
    if not (math.isfinite(args.checkpoint_every) and args.checkpoint_every >= 0):
        raise bad(f"--checkpoint-every must be a finite number >= 0, got {args.checkpoint_every}")
    if args.min_bandwidth is not None and not (
        math.isfinite(args.min_bandwidth) and args.min_bandwidth > 0
    ):
        raise bad(f"--min-bandwidth must be a finite number > 0, got {args.min_bandwidth}")
    if isinstance(args.bandwidth, float) and not (
        math.isfinite(args.bandwidth) and args.bandwidth > 0
    ):
        raise bad(f"--bandwidth must be > 0 or a rule such as 'std*2', got {args.bandwidth}")
    if args.step is not None and not (math.isfinite(args.step) and args.step > 0):
        raise bad(f"--step must be a finite number > 0 or 'none', got {args.step}")
    if args.stop_after is not None and args.stop_after < 1:
        raise bad(f"--stop-after must be >= 1, got {args.stop_after}")


def settings_grid(args: argparse.Namespace) -> list[tuple[dict[str, str], argparse.Namespace]]:
    """Every combination of the ``--vary`` values: (the varied options as typed, the args)."""
    axes: list[tuple[str, list[str]]] = []
    for item in args.vary:
        opt, sep, values = item.partition("=")
        dest = opt.strip().lstrip("-").replace("-", "_")
        vals = [v.strip() for v in values.split(",") if v.strip()]
        if not sep or dest not in VARIABLE:
            raise dk.UsageError(
                f"--vary {item!r}: expected OPTION=V1,V2 with OPTION one of "
                + ", ".join(o.replace("_", "-") for o in VARIABLE)
            )
        if not vals or len(set(vals)) != len(vals):
            raise dk.UsageError(f"--vary {item!r}: give distinct values, comma-separated")
        if dest in (a for a, _ in axes):
            raise dk.UsageError(f"--vary: {opt} is given twice")
        axes.append((dest, vals))
    parser = argparse.ArgumentParser(prog="pwgf poisson-gan --vary", exit_on_error=False)
    add_arguments(parser)
    combos: list[dict[str, str]] = [{}]
    for dest, vals in axes:
        combos = [{**c, dest: v} for c in combos for v in vals]
    grid = []
    for combo in combos:
        argv = [a for d, v in combo.items() for a in (f"--{d.replace('_', '-')}", v)]
        ns = argparse.Namespace(**vars(args))
        try:
            ns = parser.parse_args(argv, namespace=ns)
        except argparse.ArgumentError as e:
            raise dk.UsageError(f"--vary: {e}") from None
        validate(ns)
        grid.append((combo, ns))
    return grid


def make_cells(args: argparse.Namespace, names: list[str]) -> list[sweep.Cell]:
    cells = []
    for combo, ns in settings_grid(args):
        for name in names:
            is_pwgf = base_name(name) == "pwgf"
            cells.append(
                sweep.Cell(
                    {"estimator": name, **combo},
                    {
                        "estimator": name,
                        "args": {
                            k: getattr(ns, k) if is_pwgf or k not in _PWGF_ONLY else None
                            for k in _TRAIN_ARGS
                        },
                        "settings": settings_of(ns),
                        "options": estimator_options(name, ns),
                        "_checkpoint_every": ns.checkpoint_every,
                        "_stop_after": ns.stop_after,
                    },
                )
            )
    return cells


def train_cell(config: dict[str, Any], out_dir: Path) -> dict[str, Any]:
    """The sweep's cell function: every seed of one estimator in one setting, checkpointed in
    ``out_dir/checkpoint.pt`` (reused when finished, resumed when partial)."""
    name = config["estimator"]
    ns = argparse.Namespace(
        **config["args"],
        checkpoint_every=config.get("_checkpoint_every", 60.0),
        stop_after=config.get("_stop_after"),
    )
    path = Path(out_dir) / "checkpoint.pt"
    old = torch.load(path, weights_only=False) if path.exists() else None
    if old is not None and old["status"] == "done":
        ck = old
    else:
        device = torch.device(ns.device)
        cuda = [device.index or 0] if device.type == "cuda" else []
        with torch.random.fork_rng(devices=cuda):
            ck = train(name, ns, config["settings"], path)
    return summarise(ck, ns.tail_frac)


def _check_checkpoint(cell: sweep.Cell, out: Path) -> None:
    """A checkpoint made with other settings is refused, not mixed in or silently replaced."""
    path = out / cell.name / "checkpoint.pt"
    if not path.exists():
        return
    try:
        old = torch.load(path, weights_only=False)
    except Exception as e:
        raise dk.UsageError(
            f"{path} is unreadable ({type(e).__name__}: {e}); delete it, or --fresh"
        ) from None
    diff = _differences(old["settings"], cell.config["settings"])
    if old.get("options") != cell.config["options"]:
        diff.append(f"{cell.config['estimator']} options {old.get('options')}")
    if diff:
        raise dk.UsageError(
            f"{path} was made with other settings ({', '.join(diff)}); use --fresh to "
            "recompute, or another --out"
        )


def run(args: argparse.Namespace) -> int:
    validate(args)
    names = [canonical_spec(n) for n in split_specs(args.estimators)]
    if not names:
        raise dk.UsageError("--estimators: no estimator given")
    for name in names:  # fail early, before any training
        est = pwgf.get_estimator(base_name(name), **estimator_options(name, args))
        est.family(Poisson(torch.ones(1)))
    cells = make_cells(args, names)
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    for c in cells:
        if not args.resume:
            for f in ("checkpoint.pt", sweep.RESULT):
                (out / c.name / f).unlink(missing_ok=True)
        _check_checkpoint(c, out)
    opts = sweep.sweep_options(args)
    t_start = time.perf_counter()
    res = sweep.run_grid(cells, f"{__name__}:train_cell", out, **opts)
    wall = time.perf_counter() - t_start
    by_cell = {r.cell.name: r for r in res}

    groups: list[dict[str, Any]] = []
    for combo, ns in settings_grid(args):
        g = {"setting": combo, "settings": settings_of(ns), "estimators": {}, "ckpts": {}}
        g["reused"], g["failed"] = [], {}
        for name in names:
            cell = next(c for c in cells if c.key == {"estimator": name, **combo})
            r = by_cell.get(cell.name)
            if r is None or r.status != "done":
                g["failed"][name] = r.error if r is not None else "not run"
                continue
            g["estimators"][name] = r.metrics
            g["ckpts"][name] = torch.load(out / cell.name / "checkpoint.pt", weights_only=False)
            if r.cached:
                g["reused"].append(name)
        groups.append(g)

    tables = []
    for i, g in enumerate(groups):
        head = ", ".join(f"--{k.replace('_', '-')} {v}" for k, v in g["setting"].items())
        table = (f"[{head}]\n" if head else "") + format_table(g["estimators"], g["settings"])
        if g["failed"]:
            table += "\n" + "\n".join(f"failed: {n}: {e}" for n, e in g["failed"].items())
        tables.append(table)
        g["png"] = "poisson_gan_curves.png" if len(groups) == 1 else f"poisson_gan_curves_{i}.png"
    text = "\n\n".join(tables)
    print(text)
    try:
        write_csvs(out, groups, args.record_every)
        plotted = False
        if not args.no_plot:
            for g in groups:
                if g["ckpts"]:
                    plotted = plot_curves(out / g["png"], g["ckpts"], g["settings"]) or plotted
        report = _report(args, groups, names, wall, text, plotted)
        _write(out / "results.json", json.dumps(report, indent=1))
    except OSError as e:
        raise pwgf.PWGFError(f"cannot write the results under {out}: {e}") from None
    reused = sorted({n for g in groups for n in g["reused"]})
    print(
        f"\nwall time {wall:.1f}s (training {report['wall_s_training']:.1f}s over "
        f"{len(cells)} cells; reused: {', '.join(reused) or 'none'}); wrote "
        f"{out / 'results.json'}, results.csv, curves.csv" + (", PNG" if plotted else "")
    )
    return 1 if any(g["failed"] for g in groups) else 0


def _report(
    args: argparse.Namespace,
    groups: list[dict[str, Any]],
    names: list[str],
    wall: float,
    text: str,
    plotted: bool,
) -> dict[str, Any]:
    def part(g: dict[str, Any]) -> dict[str, Any]:
        return {
            "settings": g["settings"],
            "estimators": g["estimators"],
            "failed": g["failed"],
            "reused_from_checkpoint": g["reused"],
        }

    report: dict[str, Any] = {"command": "poisson-gan"}
    if len(groups) == 1:
        report.update(part(groups[0]))
    else:
        report["grid"] = [{"setting": g["setting"], **part(g)} for g in groups]
        report["settings"] = groups[0]["settings"]
    report.update(
        {
            "estimator_options": {n: estimator_options(n, args) for n in names},
            "paper_table1": {
                "source": PAPER_SOURCE,
                "values": {k: {"mean": m, "std": s} for k, (m, s) in PAPER_TABLE1.items()},
            },
            "wall_s_this_invocation": wall,
            "wall_s_training": sum(r["wall_s"] for g in groups for r in g["estimators"].values()),
            "torch_threads": torch.get_num_threads(),
            "table": text,
            "files": {
                "csv": "results.csv",
                "curves": "curves.csv",
                "png": [g["png"] for g in groups] if plotted else None,
            },
        }
    )
    if len(groups) == 1:
        report["reused_from_checkpoint"] = groups[0]["reused"]
        report["files"]["png"] = groups[0]["png"] if plotted else None
    return report
