"""``pwgf poisson-vae``: the Poisson VAE benchmark (P-VAE; Vafaii, Galor & Yates, NeurIPS 2024,
arXiv 2405.14473), MNIST, 512 Poisson latents, linear decoder, with exact gradients.

The model is ``pwgf.experiments.poisson_vae_model``: a linear (or conv) encoder, ``x̂ = Φz``,
loss ``SSE(x, Φz) + β KL(Pois(λ) ‖ Pois(e^r))``. With a linear decoder ``E‖x - Φz‖²`` is closed
form, so ``exact`` (the P-VAE's "exact" method) trains on the exact expected loss and every other
estimator can be compared against the exact gradient at the same parameters and batch.

Estimators are given as specs, ``name[:key=value[:key=value...]]`` (values parsed as JSON), or by
one of the names of ``PRESETS`` (``eat-sigmoid``, ``eat-cubic``, ``eat-hard``). An estimator
with a ``temperature`` option that the spec does not fix follows the P-VAE's schedule (linear
from ``--temp-start`` to ``--temp-stop`` over the first half of training).

Full budget (``--full``), the P-VAE's MNIST settings as the issue lists them and as checked
against the P-VAE code (``vae/config_vae.py``, ``base/config_base.py``; see
docs/benchmarks/poisson-vae.md for where they differ): pixels in [0, 1], 60000 train / 10000
test, batch 100, Adamax lr 2e-3 β (.9, .999), weight decay 3e-4, gradient-norm clip 1000, 400
epochs, KL weight linear from 1e-4 to β = 1 over the first half, temperature 1 → 0.05 over the
first half, prior log-rates U(-6, -4). The default budget is the same with ``DEFAULT_STEPS``
steps per run (a fraction of an epoch: the schedules are compressed to it), two seeds.

Every run is a cell of ``pwgf.experiments.sweep`` (``train_cell``), checkpointed in
``DIR/cells/<cell>/`` (model, optimiser, data order, random state, history) at each evaluation
and every ``--checkpoint-every`` seconds; a rerun with the same ``DIR`` resumes. Writes
``DIR/results.json`` (per estimator: the final test negative ELBO of each seed, mean ± s.e., the
settings), ``results.csv``, ``seeds.csv``, ``learning_curves.png``, and, from the first seed's
``exact`` run (the exact-gradient trajectory), ``quality.csv`` / ``quality.png``: the gradient
quality of every ``--quality-estimators`` at several points of training (see
``measure_quality``).
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

import pwgf
from pwgf import registry

from . import diagkit as dk
from . import sweep
from .data import DataError, load_idx_images
from .poisson_vae_model import ENCODERS, PoissonVAE, exact_grad_u, hessian_vector_product

DEFAULT_STEPS = 300
DEFAULT_ESTIMATORS = (
    "exact,st,pwgf,eat-sigmoid,eat-cubic,eat-hard,gumbel-softmax,reinforce-loo,muprop"
)
DEFAULT_QUALITY = (
    "exact,st,pwgf,pwgf:bandwidth=1,eat-sigmoid,eat-cubic,eat-hard,gumbel-softmax,"
    "reinforce-loo,muprop,mvd"
)
#: short names for the P-VAE's relaxations (the library's ``eat`` with an indicator)
PRESETS: dict[str, tuple[str, dict[str, Any]]] = {
    "eat-sigmoid": ("eat", {"indicator": "sigmoid"}),
    "eat-cubic": ("eat", {"indicator": "cubic"}),
    "eat-hard": ("eat", {"indicator": "sigmoid", "hard": True}),
}
#: Table 4 of the P-VAE, MNIST, negative ELBO (mean ± s.e.), from the P-VAE's results notebook.
#: Its "st" row is the hard-forward EAT (our ``eat-hard``), not the library's ``st``.
PAPER = {
    "linear": {"exact": (41.5, 0.1), "eat-sigmoid": (41.7, 0.2), "eat-hard": (44.8, 0.1)},
    "conv": {"exact": (39.7, 0.2), "eat-sigmoid": (40.1, 0.2), "eat-hard": (44.2, 0.1)},
}
PAPER_SOURCE = "P-VAE (Vafaii et al. 2024), Table 4, MNIST, from its results notebook"
CELL_FN = "pwgf.experiments.poisson_vae:train_cell"
TRAIN_FILE, TEST_FILE = "train-images-idx3-ubyte", "t10k-images-idx3-ubyte"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("model and data")
    g.add_argument("--data-dir", type=Path, default=None, help="folder with MNIST's IDX files")
    g.add_argument(
        "--no-verify", action="store_true", help="skip the checksums (format still checked)"
    )
    g.add_argument("--encoder", choices=ENCODERS, default="linear", help="(linear)")
    g.add_argument("--latents", type=dk.positive_int, default=512, help="(512)")
    g.add_argument("--train-size", type=dk.positive_int, default=None, help="first N (all)")
    g.add_argument("--test-size", type=dk.positive_int, default=None, help="first N (all)")
    g = parser.add_argument_group("training")
    g.add_argument(
        "--estimators",
        default=DEFAULT_ESTIMATORS,
        help=f"comma-separated specs name[:key=value...] or presets ({DEFAULT_ESTIMATORS})",
    )
    g.add_argument("--samples", type=dk.positive_int, default=None, help="K (estimator's least)")
    g.add_argument("--steps", type=dk.positive_int, default=None, help=f"({DEFAULT_STEPS})")
    g.add_argument(
        "--full",
        action="store_true",
        help="the P-VAE's budget: 400 epochs (with --seeds 3 for its three seeds)",
    )
    g.add_argument("--epochs", type=dk.positive_float, default=None, help="instead of --steps")
    g.add_argument("--batch-size", type=dk.positive_int, default=100)
    g.add_argument("--lr", type=dk.positive_float, default=2e-3, help="Adamax (2e-3)")
    g.add_argument("--weight-decay", type=dk.nonnegative_float, default=3e-4)
    g.add_argument("--grad-clip", type=dk.positive_float, default=1000.0)
    g.add_argument("--beta", type=dk.positive_float, default=1.0, help="final KL weight (1)")
    g.add_argument("--beta-start", type=dk.positive_float, default=1e-4)
    g.add_argument("--temp-start", type=dk.positive_float, default=1.0)
    g.add_argument("--temp-stop", type=dk.positive_float, default=0.05)
    g.add_argument(
        "--anneal-portion", type=dk.nonnegative_float, default=0.5, help="of training (0.5)"
    )
    g = parser.add_argument_group("evaluation and output")
    g.add_argument("--eval-every", type=dk.positive_int, default=None, help="steps (steps/10)")
    g.add_argument(
        "--quality-estimators", default=DEFAULT_QUALITY, help="'' for none (%(default)s)"
    )
    g.add_argument(
        "--quality-points", type=dk.positive_int, default=3, help="points of training (3)"
    )
    g.add_argument("--quality-batch", type=dk.positive_int, default=20, help="images (20)")
    g.add_argument("--quality-draws", type=dk.positive_int, default=16, help="estimates (16)")
    g.add_argument("--out", type=Path, default=Path("runs/poisson-vae"), help="output folder")
    g.add_argument("--checkpoint-every", type=dk.positive_float, default=60.0, help="s (60)")
    g.add_argument(
        "--stop-after",
        type=dk.positive_int,
        default=None,
        help="stop each run after N steps of this invocation (saved; a rerun resumes)",
    )
    g.add_argument("--no-plots", action="store_true", help="write no PNG plots")
    g.add_argument("--quiet", action="store_true", help="no progress on stderr")
    dk.add_device_arguments(g)
    dk.add_thread_arguments(g)
    sweep.add_sweep_arguments(parser, default_seeds="2")


# -- estimator specs -------------------------------------------------------------------------------
def parse_spec(spec: str) -> tuple[str, dict[str, Any]]:
    """``name[:key=value...]`` or a preset → (registry name, options); ``exact`` → ("exact", {})."""
    name, options = registry.parse_spec(spec)
    if name in PRESETS:
        name, options = PRESETS[name][0], PRESETS[name][1] | options
    if name == "exact":
        if options:
            raise dk.UsageError("the exact estimator (closed form) takes no options")
        return "exact", {}
    est = pwgf.get_estimator(name, **options)  # validates the name and the options
    if "poisson" not in est.families:
        raise pwgf.UnsupportedFamilyError(
            f"estimator '{est.name}' does not support Poisson latents; estimators that do: "
            f"{', '.join(pwgf.estimators_for('poisson'))}"
        )
    return est.name, options


def make_estimator(name: str, options: dict[str, Any], temperature: float) -> Any:
    """The estimator for one step (None: exact), the scheduled temperature filled in."""
    if name == "exact":
        return None
    if _takes_temperature(name) and "temperature" not in options:
        options = options | {"temperature": temperature}
    return pwgf.get_estimator(name, **options)


@functools.cache
def _takes_temperature(name: str) -> bool:
    # looked up once per name, not on every training step
    return "temperature" in pwgf.get_estimator(name).option_docs


def min_samples(name: str) -> int:
    return 1 if name == "exact" else int(pwgf.get_estimator(name).min_samples)


def schedule(step: int, total: int, start: float, stop: float, portion: float) -> float:
    """Linear from ``start`` to ``stop`` over the first ``portion`` of ``total`` steps."""
    span = portion * total
    frac = 1.0 if span <= 0 else min(step / span, 1.0)
    return start + (stop - start) * frac


# -- data ------------------------------------------------------------------------------------------
def load_mnist(data_dir: str | None, verify: bool = True) -> tuple[Tensor, Tensor, dict[str, str]]:
    """MNIST's 60000 training and 10000 test images as uint8 ``(N, 784)``, through
    ``pwgf.experiments.data`` (checksums verified unless ``verify`` is False)."""
    return load_idx_images("mnist", data_dir, None, verify)


# -- one run (a sweep cell) ------------------------------------------------------------------------
class StoppedEarly(pwgf.PWGFError):
    """A run stopped by ``--stop-after``: its checkpoint is saved and a rerun resumes it."""


def _state(tr: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in tr.items() if k not in ("model", "opt", "train", "test", "gen")} | {
        "model": tr["model"].state_dict(),
        "opt": tr["opt"].state_dict(),
        "gen": tr["gen"].get_state(),
        "rng": torch.get_rng_state(),
    }


def train_cell(config: dict[str, Any], out_dir: Path) -> dict[str, Any]:
    """Train one P-VAE for ``config['steps']`` steps through ``config['estimator']``; resumable
    from ``out_dir/checkpoint.pt``. Returns the final test negative ELBO and the run's record."""
    cfg = config
    out_dir = Path(out_dir)
    device = dk.resolve_device(cfg["device"])
    dtype = dk.resolve_dtype(cfg["dtype"])
    train_u8, test_u8, files = load_mnist(cfg["data_dir"], cfg["verify"])
    train = (train_u8[: cfg["train_size"]].to(device, dtype)) / 255.0
    test = (test_u8[: cfg["test_size"]].to(device, dtype)) / 255.0
    if len(train) < cfg["batch_size"]:
        raise dk.UsageError(f"--batch-size {cfg['batch_size']} exceeds the {len(train)} images")
    name, options = cfg["estimator_name"], cfg["estimator_options"]
    torch.manual_seed(cfg["seed"])
    model = PoissonVAE(cfg["latents"], train.shape[1], cfg["encoder"], dtype=dtype).to(device)
    opt = torch.optim.Adamax(
        model.parameters(), lr=cfg["lr"], betas=(0.9, 0.999), weight_decay=cfg["weight_decay"]
    )
    gen = torch.Generator(device=device).manual_seed(cfg["seed"] + 1)
    tr: dict[str, Any] = {
        "model": model,
        "opt": opt,
        "gen": gen,
        "step": 0,
        "perm": torch.randperm(len(train), generator=gen, device=device),
        "pos": 0,
        "history": [],
        "quality": [],
        "train_seconds": 0.0,
        "loss_sum": 0.0,
        "loss_count": 0,
    }
    ckpt = out_dir / "checkpoint.pt"
    identity = {k: v for k, v in cfg.items() if not k.startswith("_")}
    if ckpt.exists():
        st = dk.load_checkpoint(ckpt, ("config", "model", "opt", "step"), map_location=device)
        if st["config"] != identity:
            raise dk.UsageError(f"{ckpt} holds a different run; use another --out")
        model.load_state_dict(st["model"])
        opt.load_state_dict(st["opt"])
        gen.set_state(st["gen"])
        torch.set_rng_state(st["rng"])
        for k in ("step", "pos", "history", "quality", "train_seconds", "loss_sum", "loss_count"):
            tr[k] = st[k]
        tr["perm"] = st["perm"].to(device)

    def save() -> None:
        dk.atomic_save(_state(tr) | {"config": identity}, ckpt)

    total, b = cfg["steps"], cfg["batch_size"]
    q_steps = set(cfg["quality_steps"])
    xq = train[: cfg["quality_batch"]] if q_steps else None

    def evaluate() -> None:
        step = tr["step"]
        r = model.evaluate(test)
        tr["history"].append(
            {
                "step": step,
                "epoch": round(step * b / len(train), 3),
                "train_loss": tr["loss_sum"] / tr["loss_count"] if tr["loss_count"] else None,
                "test_neg_elbo": r["neg_elbo"],
                "test_sse": r["sse"],
                "test_kl": r["kl"],
                "beta": _beta(cfg, step),
                "temperature": _temp(cfg, step),
                "mean_rate": r["mean_rate"],
                "train_seconds": round(tr["train_seconds"], 3),
            }
        )
        tr["loss_sum"], tr["loss_count"] = 0.0, 0
        if step in q_steps and cfg["quality_estimators"]:
            with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
                torch.manual_seed(4242 + step)
                rows = measure_quality(
                    model, xq, cfg["quality_estimators"], cfg["quality_draws"], _temp(cfg, step)
                )
            tr["quality"] += [{"step": step, **row} for row in rows]
        dk.atomic_write_text(out_dir / "history.json", json.dumps(tr["history"], indent=1))

    if not tr["history"]:
        evaluate()
        save()
    stop_after = cfg.get("_stop_after")
    done_here = 0
    last_save = time.perf_counter()
    k = cfg["samples"]
    while tr["step"] < total:
        t0 = time.perf_counter()
        if tr["pos"] + b > len(train):
            tr["perm"] = torch.randperm(len(train), generator=gen, device=device)
            tr["pos"] = 0
        x = train[tr["perm"][tr["pos"] : tr["pos"] + b]]
        est = make_estimator(name, options, _temp(cfg, tr["step"]))
        loss = model.loss(x, est, k, _beta(cfg, tr["step"])).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg["grad_clip"])
        opt.step()
        lv = float(loss.detach())
        if not math.isfinite(lv):
            raise FloatingPointError(f"{name}: training loss not finite at step {tr['step']}")
        # the whole step's state changes together, so a checkpoint never holds half a step
        tr["pos"] += b
        tr["step"] += 1
        tr["loss_sum"] += lv
        tr["loss_count"] += 1
        tr["train_seconds"] += time.perf_counter() - t0
        done_here += 1
        if tr["step"] % cfg["eval_every"] == 0 or tr["step"] == total or tr["step"] in q_steps:
            evaluate()
            save()
            last_save = time.perf_counter()
        elif time.perf_counter() - last_save > cfg.get("_checkpoint_every", 60.0):
            save()
            last_save = time.perf_counter()
        if stop_after is not None and done_here >= stop_after and tr["step"] < total:
            save()
            raise StoppedEarly(f"stopped after {done_here} steps (--stop-after); rerun to resume")
    last = tr["history"][-1]
    return {
        "test_neg_elbo": last["test_neg_elbo"],
        "test_sse": last["test_sse"],
        "test_kl": last["test_kl"],
        "steps": tr["step"],
        "epochs": last["epoch"],
        "train_seconds": tr["train_seconds"],
        "seconds_per_step": tr["train_seconds"] / max(tr["step"], 1),
        "history": tr["history"],
        "quality": tr["quality"],
        "data_files": files,
    }


def _beta(cfg: dict[str, Any], step: int) -> float:
    return schedule(step, cfg["steps"], cfg["beta_start"], cfg["beta"], cfg["anneal_portion"])


def _temp(cfg: dict[str, Any], step: int) -> float:
    return schedule(step, cfg["steps"], cfg["temp_start"], cfg["temp_stop"], cfg["anneal_portion"])


# -- gradient quality ------------------------------------------------------------------------------
def measure_quality(
    model: PoissonVAE,
    x: Tensor,
    specs: list[list[Any]],
    draws: int,
    temperature: float,
    beta: float = 1.0,
) -> list[dict[str, Any]]:
    """Gradient quality in log-rates ``u`` at the model's parameters and batch ``x``, against the
    exact gradient ``g*`` of Σ_b (E[SSE_b] + β KL_b) (closed form, ``exact_grad_u``).

    For each spec, ``draws`` independent estimates ĝ_r (one sample each, K = the estimator's
    least) of the same gradient: ``rel_bias = ‖ḡ - g*‖ / ‖g*‖`` (with its Monte Carlo noise floor
    ``sqrt(tr Σ / R) / ‖g*‖``); the Hitchhiker's ``bias_energy = βᵀHβ / g*ᵀHg*`` (β = ḡ - g*,
    debiased by subtracting ``tr(HΣ)/R``, the part of βᵀHβ that is Monte Carlo noise) and
    ``noise_energy = tr(HΣ) / g*ᵀHg*`` with H the exact Hessian of the expected loss in ``u``
    (Hessian-vector products, ``hessian_vector_product``; H can be indefinite, so an energy
    can be negative); ``cosine``: mean cosine of ĝ_r with g*; ``cost``: seconds per estimate
    (surrogate and backward) relative to the exact gradient's by autograd on the same batch."""
    u0 = model.log_rate(x).detach()
    g_star = exact_grad_u(model, x, u0, beta)
    denom = float((g_star * hessian_vector_product(model, x, u0, g_star, beta)).sum())
    g_norm = float(g_star.norm())

    def one(est: Any, k: int) -> Tensor:
        u = u0.clone().requires_grad_(True)
        loss = model.recon(x, u, est, k).sum() + beta * model.kl(u).sum()
        (g,) = torch.autograd.grad(loss, u)
        return g

    def timed(est: Any, k: int, reps: int = 3) -> float:
        one(est, k)
        best = float("inf")
        for _ in range(reps):
            t0 = time.perf_counter()
            one(est, k)
            best = min(best, time.perf_counter() - t0)
        return best

    t_exact = timed(None, 1)
    rows = []
    for label, name, options in specs:
        est = make_estimator(name, options, temperature)
        k = min_samples(name)
        try:
            seconds = timed(est, k, reps=1 if name == "mvd" else 3)
            g = torch.stack([one(est, k) for _ in range(draws)])
        except Exception as exc:  # one estimator's failure must not lose the others
            rows.append({"estimator": label, "error": f"{type(exc).__name__}: {exc}"})
            continue
        mean = g.mean(0)
        c = g - mean
        tr_sigma = float((c**2).sum()) / max(draws - 1, 1)
        tr_h_sigma = float((c * hessian_vector_product(model, x, u0, c, beta)).sum())
        tr_h_sigma /= max(draws - 1, 1)
        bias = mean - g_star
        b_h_b = float((bias * hessian_vector_product(model, x, u0, bias, beta)).sum())
        flat = g.reshape(draws, -1)
        cos = flat @ g_star.reshape(-1) / (flat.norm(dim=1) * g_norm).clamp(min=1e-30)
        rows.append(
            {
                "estimator": label,
                "temperature": temperature,
                "samples": k,
                "draws": draws,
                "grad_norm": g_norm,
                "rel_bias": float(bias.norm()) / g_norm,
                "rel_bias_noise": math.sqrt(tr_sigma / draws) / g_norm,
                "bias_energy": (b_h_b - tr_h_sigma / draws) / denom,
                "bias_energy_noise": tr_h_sigma / draws / denom,
                "noise_energy": tr_h_sigma / denom,
                "rel_var": tr_sigma / g_norm**2,
                "cosine": float(cos.mean()),
                "cost": seconds / t_exact,
            }
        )
    return rows


# -- the command -----------------------------------------------------------------------------------
def _specs(text: str) -> list[list[Any]]:
    out, seen = [], set()
    for spec in registry.split_specs(text):
        name, options = parse_spec(spec)
        if spec in seen:
            raise dk.UsageError(f"estimator {spec!r} is listed twice")
        seen.add(spec)
        out.append([spec, name, options])
    return out


def resolve(args: argparse.Namespace) -> tuple[list[sweep.Cell], dict[str, Any]]:
    """The grid's cells and the settings shared by all of them."""
    specs = _specs(args.estimators)
    if not specs:
        raise dk.UsageError("--estimators is empty")
    quality = _specs(args.quality_estimators) if args.quality_estimators else []
    dk.resolve_device(args.device)
    dk.resolve_dtype(args.dtype)
    if args.samples is not None and args.samples < 1:
        raise dk.UsageError("--samples must be >= 1")
    train_size = args.train_size or 60000
    if args.epochs is not None or args.full:
        epochs = args.epochs if args.epochs is not None else 400.0
        steps = max(1, round(epochs * min(train_size, 60000) / args.batch_size))
        if args.steps is not None:
            raise dk.UsageError("give --steps or --epochs/--full, not both")
    else:
        steps = args.steps or DEFAULT_STEPS
    eval_every = args.eval_every or max(1, steps // 10)
    points = args.quality_points
    q_steps = sorted({round(i * steps / max(points - 1, 1)) for i in range(points)})
    shared = {
        "data_dir": None if args.data_dir is None else str(args.data_dir),
        "verify": not args.no_verify,
        "encoder": args.encoder,
        "latents": args.latents,
        "train_size": args.train_size,
        "test_size": args.test_size,
        "steps": steps,
        "batch_size": args.batch_size,
        "lr": args.lr,
        "weight_decay": args.weight_decay,
        "grad_clip": args.grad_clip,
        "beta": args.beta,
        "beta_start": args.beta_start,
        "temp_start": args.temp_start,
        "temp_stop": args.temp_stop,
        "anneal_portion": args.anneal_portion,
        "eval_every": eval_every,
        "quality_batch": args.quality_batch,
        "quality_draws": args.quality_draws,
        "device": args.device,
        "dtype": args.dtype,
    }
    if args.quality_draws < 2:
        raise dk.UsageError("--quality-draws must be >= 2")
    cells = []
    for label, name, options in specs:
        k = max(args.samples or 1, min_samples(name))
        for i, seed in enumerate(args.seeds):
            measure = name == "exact" and i == 0 and bool(quality)
            cfg = shared | {
                "estimator": label,
                "estimator_name": name,
                "estimator_options": options,
                "samples": k,
                "seed": seed,
                # only the measuring run carries the quality settings, so that changing them
                # leaves the other runs (and their checkpoints) the same runs
                "quality_estimators": quality if measure else [],
                "quality_steps": q_steps if measure else [],
                "quality_batch": args.quality_batch if measure else None,
                "quality_draws": args.quality_draws if measure else None,
                "_stop_after": args.stop_after,
                "_checkpoint_every": args.checkpoint_every,
            }
            key = {"estimator": label, "encoder": args.encoder, "seed": seed}
            cells.append(sweep.Cell(key, cfg))
    return cells, shared


def run(args: argparse.Namespace) -> int:
    try:
        cells, shared = resolve(args)
        load_mnist(
            shared["data_dir"], shared["verify"]
        )  # a missing file is reported before anything runs
    except DataError as e:
        print(f"pwgf poisson-vae: {e}", file=sys.stderr)
        return 2
    opts = sweep.sweep_options(args)
    if args.threads:
        opts["cpus_per_cell"] = float(args.threads)
    out: Path = args.out
    if not args.quiet:
        print(
            f"pwgf poisson-vae: {len(cells)} runs ({len({c.key['estimator'] for c in cells})} "
            f"estimators x {len(args.seeds)} seeds), {args.encoder} encoder, "
            f"{shared['steps']} steps of batch {shared['batch_size']} -> {out}",
            file=sys.stderr,
        )
    results = sweep.run_grid(cells, CELL_FN, out / "cells", quiet=args.quiet, **opts)
    report = write_report(results, cells, shared, out, args)
    print(report)
    stopped = [r for r in results if r.status == "failed" and "StoppedEarly" in (r.error or "")]
    failed = [r for r in results if r.status == "failed" and r not in stopped]
    for r in failed:
        print(f"FAILED {r.cell.label()}: {r.error}", file=sys.stderr)
    if stopped:
        print(f"{len(stopped)} runs stopped by --stop-after; rerun to resume", file=sys.stderr)
    return 1 if failed else 0


def write_report(
    results: list[sweep.CellResult],
    cells: list[sweep.Cell],
    shared: dict[str, Any],
    out: Path,
    args: argparse.Namespace,
) -> str:
    """results.json / .csv, seeds.csv, quality.csv, the plots; returns the printed table."""
    rows = sweep.aggregate(results, "test_neg_elbo", ("estimator",))
    done = [r for r in results if r.status == "done"]
    sec = {}
    for r in done:
        sec.setdefault(r.cell.key["estimator"], []).append(r.metrics["seconds_per_step"])
    t_exact = np.mean(sec["exact"]) if "exact" in sec else None
    paper = PAPER[args.encoder]
    per_est: dict[str, Any] = {}
    for row in rows:
        label = row["estimator"]
        cfg = next(c.config for c in cells if c.key["estimator"] == label)
        s = float(np.mean(sec[label])) if label in sec else None
        per_est[label] = {
            "test_neg_elbo": row["values"],
            "seeds": row["seeds"],
            "mean": row["mean"],
            "se": row["se"],
            "n": row["n"],
            "failed": row["failed"],
            "seconds_per_step": s,
            "cost_vs_exact": s / t_exact if s is not None and t_exact else None,
            "paper": paper.get(label),
            "settings": {
                "estimator": cfg["estimator_name"],
                "options": cfg["estimator_options"],
                "samples": cfg["samples"],
            },
        }
    quality = [q for r in done if r.metrics.get("quality") for q in r.metrics["quality"]]
    lines = [
        f"Test negative ELBO (nats, exact, β = 1), MNIST, {args.encoder} encoder, "
        f"{shared['steps']} steps of batch {shared['batch_size']}; mean ± s.e. over seeds",
        f"  {'estimator':<22}{'this run':>22}{'s/step':>9}{'x exact':>9}   paper",
    ]
    for label, e in per_est.items():
        p = e["paper"]
        cell = sweep.format_mean_se(next(r for r in rows if r["estimator"] == label), 2)
        lines.append(
            f"  {label:<22}{cell:>22}"
            f"{dk.fmt(e['seconds_per_step'], '.3f')}{dk.fmt(e['cost_vs_exact'], '.2f')}"
            f"   {'' if p is None else f'{p[0]} ± {p[1]}'}"
        )
    lines.append(f"  paper: {PAPER_SOURCE} (its 'st' row is the hard-forward EAT: eat-hard)")
    if quality:
        lines.append("")
        lines.append(
            "Gradient quality in log-rates at the exact run's parameters (first seed), "
            f"{shared['quality_batch']} images, {shared['quality_draws']} estimates each"
        )
        lines.append(
            f"  {'step':>5} {'estimator':<22}{'tau':>6}{'rel.bias':>10}{'±noise':>8}"
            f"{'BiasE':>10}{'NoiseE':>10}{'cos':>7}{'cost':>8}"
        )
        for q in quality:
            if q.get("error"):
                lines.append(f"  {q['step']:>5} {q['estimator']:<22} ERROR {q['error']}")
                continue
            lines.append(
                f"  {q['step']:>5} {q['estimator']:<22}{q['temperature']:>6.2f}"
                f"{q['rel_bias']:>10.3f}{q['rel_bias_noise']:>8.3f}"
                f"{dk.fmt(q['bias_energy'], '.3g', 10)}{dk.fmt(q['noise_energy'], '.3g', 10)}"
                f"{q['cosine']:>7.3f}{q['cost']:>8.1f}"
            )
    table = "\n".join(lines)
    out.mkdir(parents=True, exist_ok=True)
    dk.write_json(
        out / "results.json",
        {
            "command": "poisson-vae",
            "settings": shared | {"seeds": list(args.seeds), "full": bool(args.full)},
            "estimators": per_est,
            "paper": {"source": PAPER_SOURCE, "rows": paper},
            "quality": quality,
            "machine": dk.machine(),
            "notes": "test_neg_elbo: exact mean negative ELBO per test image (nats) at the end "
            "of training; cost_vs_exact: seconds per training step relative to exact",
        },
    )
    flat = [
        {k: (v if not isinstance(v, dict) else json.dumps(v)) for k, v in e.items()}
        | {"estimator": n}
        for n, e in per_est.items()
    ]
    dk.write_csv(out / "results.csv", flat)
    dk.write_csv(
        out / "seeds.csv",
        [
            {"estimator": r.cell.key["estimator"], "seed": r.cell.key["seed"], "status": r.status}
            | {k: v for k, v in r.metrics.items() if not isinstance(v, list | dict)}
            for r in results
        ],
    )
    if quality:
        dk.write_csv(out / "quality.csv", quality)
    dk.atomic_write_text(out / "table.txt", table + "\n")
    if not args.no_plots:
        plot(done, quality, out, args.encoder)
    return table


def plot(done: list[sweep.CellResult], quality: list[dict], out: Path, encoder: str) -> None:
    plt = dk.pyplot(quiet=True)
    if plt is None:
        return
    names = list(dict.fromkeys(r.cell.key["estimator"] for r in done))
    col = dk.colours(names)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for n in names:
        curves = [
            (
                [h["step"] for h in r.metrics["history"]],
                [h["test_neg_elbo"] for h in r.metrics["history"]],
            )
            for r in done
            if r.cell.key["estimator"] == n
        ]
        sweep.band(ax, curves, n, color=col[n])
    vals = [h["test_neg_elbo"] for r in done for h in r.metrics["history"][1:]]
    if vals:
        lo, hi = min(vals), float(np.percentile(vals, 90))
        ax.set_ylim(lo - 0.05 * (hi - lo + 1), hi + 0.1 * (hi - lo + 1))
    ax.set_xlabel("training step")
    ax.set_ylabel("test negative ELBO (nats)")
    ax.set_title(f"P-VAE, MNIST, {encoder} encoder (mean ± s.e. over seeds)", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    dk.save_figure(fig, out / "learning_curves.png", dpi=110)
    ok = [q for q in quality if not q.get("error")]
    if not ok:
        return
    qn = list(dict.fromkeys(q["estimator"] for q in ok))
    qc = dk.colours(qn)
    metrics = [
        ("rel_bias", "relative bias"),
        ("noise_energy", "NoiseEnergy tr(HΣ)/g*ᵀHg*"),
        ("cosine", "cosine with exact"),
        ("cost", "cost per estimate ÷ exact"),
    ]
    fig, axes = plt.subplots(1, 4, figsize=(17, 4.2))
    for ax, (key, title) in zip(axes, metrics, strict=True):
        for n in qn:
            pts = [(q["step"], q[key]) for q in ok if q["estimator"] == n]
            ax.plot(*zip(*pts, strict=True), marker="o", color=qc[n], label=n)
        if key in ("rel_bias", "cost", "noise_energy"):
            ax.set_yscale("symlog", linthresh=1e-3)
        ax.set_xlabel("training step (exact-gradient run)")
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    dk.save_figure(fig, out / "quality.png", dpi=90)
