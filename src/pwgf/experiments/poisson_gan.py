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

Outputs under ``--out DIR``: ``results.json`` (settings, per estimator the final λ, the mean and
std of λ over the last stretch of each run, wall times, the paper's Table 1), ``results.csv``
(one row per estimator and seed), ``curves.csv`` (λ per recorded step and seed) and
``poisson_gan_curves.png`` (Figure 3). Each estimator's run is checkpointed into
``DIR/checkpoints/``: when it finishes, and every ``--checkpoint-every`` seconds while it runs
(with the optimiser and random-number state, so a resumed run continues where it stopped and
gives the same numbers), so an interrupted run resumes without redoing finished work.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import sys
import time
import zlib
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.distributions import Poisson

import pwgf
from pwgf.registry import resolve

from . import diagkit as dk

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


def parse_seeds(text: str) -> list[int]:
    """``"10"`` -> seeds 0..9; ``"3,5,8"`` -> those; ``"10-19"`` -> 10..19."""
    text = str(text).strip()
    if "," in text:
        return [int(s) for s in text.split(",") if s.strip()]
    if "-" in text[1:]:
        lo, hi = text.split("-", 1)
        return list(range(int(lo), int(hi) + 1))
    return list(range(int(text)))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    d = default_estimators()
    parser.add_argument(
        "--estimators",
        default=",".join(d),
        help=f"comma-separated estimator names ({','.join(d)})",
    )
    parser.add_argument(
        "--seeds", default="10", help="number of seeds, or a list '0,3,7', or a range '10-19' (10)"
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
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch CPU threads (1: fastest for these small tensors; 0 leaves torch's default)",
    )
    parser.add_argument("--seed", type=int, default=0, help="base of the training noise (0)")
    parser.add_argument("--no-plot", action="store_true", help="skip the PNG")


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
def estimator_options(name: str, args: argparse.Namespace) -> dict:
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
        "seeds": parse_seeds(args.seeds),
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


class Progress:
    """One line on stderr, rewritten in place on a terminal, every ~10% otherwise."""

    def __init__(self, label: str, total: int, start: int = 0) -> None:
        self.label, self.total, self.start = label, total, start
        self.tty = sys.stderr.isatty()
        self.t0 = self.last = time.perf_counter()
        self.next_pct = 10

    def update(self, step: int, lam: Tensor) -> None:
        now = time.perf_counter()
        pct = 100 * step / max(self.total, 1)
        last = step >= self.total
        if not last and (now - self.last < 0.5 if self.tty else pct < self.next_pct):
            return
        self.last = now
        while pct >= self.next_pct:
            self.next_pct += 10
        rate = ((step - self.start) / (now - self.t0)) if now > self.t0 else 0.0
        eta = (self.total - step) / rate if rate > 0 else float("nan")
        msg = (
            f"[poisson-gan] {self.label}: step {step}/{self.total}  λ mean {lam.mean():.3f} "
            f"(min {lam.min():.3f}, max {lam.max():.3f})  {now - self.t0:.0f}s, eta {eta:.0f}s"
        )
        print(
            ("\r" + msg + "   ") if self.tty else msg,
            end="" if self.tty else "\n",
            file=sys.stderr,
            flush=True,
        )

    def done(self) -> None:
        if self.tty:
            print(file=sys.stderr, flush=True)


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
    tmp = path.with_suffix(".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def train(name: str, args: argparse.Namespace, settings: dict, ckpt_path: Path) -> dict:
    """Train every seed of estimator ``name``; returns the finished checkpoint dict."""
    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype)
    seeds = settings["seeds"]
    n_seeds, steps, k = len(seeds), args.steps, args.batch
    est = pwgf.get_estimator(name, **estimator_options(name, args))
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

    progress = Progress(name, steps, start)
    t0 = last_ckpt = time.perf_counter()
    for step in range(start, steps):
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
        progress.update(step + 1, history[step])
        now = time.perf_counter()
        if now - last_ckpt > args.checkpoint_every and step + 1 < steps:
            _save(snapshot("partial", step + 1, wall_before + now - t0), ckpt_path)
            last_ckpt = now
    progress.done()
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


def write_csvs(out: Path, results: dict, ckpts: dict, record_every: int) -> None:
    with open(out / "results.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["estimator", "seed", "final_rate", "tail_mean", "oscillation"])
        for name, r in results.items():
            for i, s in enumerate(r["seeds"]):
                w.writerow(
                    [
                        name,
                        s,
                        f"{r['final_rate'][i]:.6f}",
                        f"{r['tail_mean'][i]:.6f}",
                        f"{r['oscillation'][i]:.6f}",
                    ]
                )
    with open(out / "curves.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["estimator", "step", "seed", "rate"])
        for name, ck in ckpts.items():
            hist = ck["history"]
            every = record_every or max(1, hist.shape[0] // 500)
            for t in [*range(every - 1, hist.shape[0] - 1, every), hist.shape[0] - 1]:
                for i, s in enumerate(ck["settings"]["seeds"]):
                    w.writerow([name, t + 1, s, f"{hist[t, i].item():.5f}"])


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


def run(args: argparse.Namespace) -> int:
    return dk.with_threads(max(args.threads, 0), lambda: _run(args))


def _run(args: argparse.Namespace) -> int:
    names = [resolve(n.strip()) for n in args.estimators.split(",") if n.strip()]
    for name in names:  # fail early, before any training
        est = pwgf.get_estimator(name, **estimator_options(name, args))
        est.family(Poisson(torch.ones(1)))
    settings = settings_of(args)
    if len(settings["seeds"]) < 1 or args.steps < 2 or args.batch < 1:
        raise SystemExit("poisson-gan: need at least one seed, two steps and one sample")
    out = args.out
    ck_dir = out / "checkpoints"
    ck_dir.mkdir(parents=True, exist_ok=True)
    device = torch.device(args.device)

    t_start = time.perf_counter()
    ckpts, results, reused = {}, {}, []
    for name in names:
        path = ck_dir / f"{name}.pt"
        if path.exists() and not args.resume:
            path.unlink()
        if path.exists():
            old = torch.load(path, weights_only=False)
            diff = _differences(old["settings"], settings)
            if old.get("options") != estimator_options(name, args):
                diff.append(f"{name} options {old.get('options')}")
            if diff:
                raise SystemExit(
                    f"poisson-gan: {path} was made with other settings ({', '.join(diff)}); "
                    "use --fresh to recompute, or another --out"
                )
            if old["status"] == "done":
                print(f"[poisson-gan] {name}: reusing finished run in {path}", file=sys.stderr)
                ckpts[name] = old
                reused.append(name)
        if name not in ckpts:
            cuda = [device.index or 0] if device.type == "cuda" else []
            with torch.random.fork_rng(devices=cuda):
                ckpts[name] = train(name, args, settings, path)
        results[name] = summarise(ckpts[name], args.tail_frac)
    wall = time.perf_counter() - t_start

    table = format_table(results, settings)
    print(table)
    write_csvs(out, results, ckpts, args.record_every)
    png = out / "poisson_gan_curves.png"
    plotted = not args.no_plot and plot_curves(png, ckpts, settings)
    report = {
        "command": "poisson-gan",
        "settings": settings,
        "estimators": results,
        "estimator_options": {n: estimator_options(n, args) for n in names},
        "paper_table1": {
            "source": PAPER_SOURCE,
            "values": {k: {"mean": m, "std": s} for k, (m, s) in PAPER_TABLE1.items()},
        },
        "reused_from_checkpoint": reused,
        "wall_s_this_invocation": wall,
        "wall_s_training": sum(r["wall_s"] for r in results.values()),
        "torch_threads": torch.get_num_threads(),
        "table": table,
        "files": {
            "csv": "results.csv",
            "curves": "curves.csv",
            "png": png.name if plotted else None,
        },
    }
    (out / "results.json").write_text(json.dumps(report, indent=1))
    print(
        f"\nwall time {wall:.1f}s (training {report['wall_s_training']:.1f}s over "
        f"{len(names)} estimators; reused: {', '.join(reused) or 'none'}); wrote "
        f"{out / 'results.json'}, results.csv, curves.csv" + (f", {png.name}" if plotted else "")
    )
    return 0
