"""``pwgf vae``: train a Bernoulli VAE through any registered estimator (paper appendix E).

Settings follow ARM's MNIST-static scripts (Yin & Zhou 2019; the paper's Table 2 follows them):
200 Bernoulli latents per stochastic layer, batch 50, Adam at 1e-4 for the networks, prior logits
learnable and trained by SGD at 1e-2 in the linear and two-layer models, fixed at 0 in the
nonlinear one (LeakyReLU slope 0.1). ``--preset disarm`` (the default for ``mnist`` and
``fashion-mnist``) switches to DisARM's settings (Dong et al. 2020): slope 0.3 and learnable prior
logits in every model. The model and the objective are described in
``pwgf.experiments.vae_model``; the data in ``pwgf.experiments.data``.

The estimator is taken by name from the registry (``pwgf estimators`` lists them; any that
supports the Bernoulli family works), one instance per stochastic layer. Estimators with
learnable parameters (``learnable=True``: REBAR, RELAX) are tuned with their own optimiser on
``est.variance_loss()`` (see ``learnable_hook``).

Writes, in ``--out DIR``: ``config.json``, ``checkpoint.pt`` (model, optimisers, estimators,
step, data order, random state, history: a rerun with the same DIR resumes from it),
``best.pt`` (the model at the best validation point), ``history.csv``, ``learning_curves.png``
and ``results.json`` (validation and test negative ELBO at the best validation point and at the
end, steps done, training steps per second).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import platform
import signal
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

import pwgf

from ..registry import format_spec, merge_options, parse_spec
from . import diagkit as dk
from . import vae_variance
from .data import BINARIZATIONS, DATASETS, DataError, Dataset, load_dataset
from .vae_model import ARCHS, BernoulliVAE

PRESETS = ("auto", "arm", "disarm")

# fields of the run that a resumed run must share with the checkpoint
IDENTITY = (
    "dataset",
    "binarization",
    "arch",
    "estimator",
    "estimator_options",
    "samples",
    "batch_size",
    "lr",
    "prior",
    "prior_lr",
    "slope",
    "estimator_lr",
    "seed",
    "dtype",
)
#: what a checkpoint saved before a field existed stands for
IDENTITY_DEFAULTS = {"dtype": "float32"}
#: keys a checkpoint must hold to be resumed from
CHECKPOINT_KEYS = ("config", "step", "model", "opt", "history", "best", "perm", "gen", "rng")
#: a validation -ELBO above this many times the untrained model's (step 0) is divergence: the
#: learning rate is too large (no run that learns ever gets there)
DIVERGED_FACTOR = 10.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("model and data")
    g.add_argument("--dataset", choices=DATASETS, default="binarized-mnist", help="data set")
    g.add_argument(
        "--binarization",
        choices=BINARIZATIONS,
        default="dynamic",
        help="for mnist / fashion-mnist: fresh Bernoulli(pixel/255) draws every pass (dynamic) "
        "or pixel > 127 (threshold)",
    )
    g.add_argument("--arch", choices=ARCHS, default="linear", help="model (see pwgf.vae_model)")
    g.add_argument(
        "--preset",
        choices=PRESETS,
        default="auto",
        help="defaults for --slope and --prior: arm (slope 0.1; prior learnable in linear and "
        "two-layer, fixed at 0 in nonlinear) or disarm (slope 0.3, prior learnable); auto: arm "
        "for binarized-mnist, disarm otherwise",
    )
    g.add_argument(
        "--slope", type=dk.positive_float, default=None, help="LeakyReLU slope (nonlinear)"
    )
    g.add_argument(
        "--prior", choices=("auto", "learnable", "fixed"), default="auto", help="prior logits"
    )
    g.add_argument("--data-dir", type=Path, default=None, help="folder with the data files")
    g.add_argument("--cache-dir", type=Path, default=None, help="download cache")
    g.add_argument("--no-download", action="store_true", help="never try to download")
    g.add_argument(
        "--no-verify",
        action="store_true",
        help="skip the checksums (format, header and sizes are still checked)",
    )

    g = parser.add_argument_group("estimator and optimisation")
    g.add_argument(
        "--estimator",
        default="st",
        help="registered estimator name or spec with options, e.g. pwgf:step=0.5,bandwidth=2",
    )
    g.add_argument(
        "--estimator-option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="estimator keyword option (VALUE parsed as JSON, else a string); repeatable; "
        "the same as options in the --estimator spec",
    )
    g.add_argument(
        "--samples",
        type=dk.positive_int,
        default=None,
        help="samples per layer and step (default: the estimator's least, 1 or 2)",
    )
    g.add_argument("--steps", type=dk.positive_int, default=10000, help="training steps in all")
    g.add_argument(
        "--batch-size", type=dk.positive_int, default=50, help="images per training step"
    )
    g.add_argument("--lr", type=dk.positive_float, default=1e-4, help="Adam, encoder and decoder")
    g.add_argument("--prior-lr", type=dk.positive_float, default=1e-2, help="SGD, prior logits")
    g.add_argument(
        "--estimator-lr",
        type=dk.positive_float,
        default=None,
        help="Adam, a learnable estimator's own parameters (default: --lr)",
    )
    g.add_argument("--seed", type=int, default=0, help="random seed of the run")

    g = parser.add_argument_group("evaluation and output")
    g.add_argument(
        "--eval-every", type=dk.positive_int, default=1000, help="steps between evaluations"
    )
    g.add_argument(
        "--iw-samples",
        type=dk.nonnegative_int,
        default=0,
        help="also the S-sample importance-weighted bound at each evaluation (0: off)",
    )
    g.add_argument(
        "--iw-limit",
        type=dk.positive_int,
        default=None,
        help="evaluate the bound on the first N validation and test images only "
        "(default: all of them)",
    )
    g.add_argument(
        "--final-iw-samples",
        type=dk.nonnegative_int,
        default=0,
        help="at the end, the S-sample bound of the best-validation model on the test set (0: off)",
    )
    g.add_argument(
        "--variance-every",
        type=dk.nonnegative_int,
        default=0,
        help="every N steps (a multiple of --eval-every), measure the variance of the encoder "
        "gradient of each --variance-estimators on the same parameters and batch (0: off)",
    )
    g.add_argument(
        "--variance-estimators",
        default="st,pwgf,reinforce-loo,arm,disarm,rebar,relax",
        help="comma-separated estimators measured by --variance-every",
    )
    g.add_argument(
        "--variance-draws", type=dk.positive_int, default=20, help="estimates per measurement"
    )
    g.add_argument(
        "--out", type=Path, default=None, help="output folder (default: runs/vae/<run name>)"
    )
    g.add_argument("--restart", action="store_true", help="discard a checkpoint in --out")
    dk.add_device_arguments(g)
    dk.add_thread_arguments(g)
    g.add_argument(
        "--checkpoint-every",
        type=dk.positive_float,
        default=60.0,
        help="seconds between checkpoints (besides one at every evaluation)",
    )
    g.add_argument(
        "--stop-after",
        type=dk.positive_int,
        default=None,
        help="stop after N steps of this invocation, saving everything (a rerun resumes; "
        "default: run to --steps)",
    )
    g.add_argument("--quiet", action="store_true", help="no progress line")


# -- configuration ---------------------------------------------------------------------------------
def _parse_options(items: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise pwgf.PWGFError(f"--estimator-option takes KEY=VALUE, got {item!r}")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def _canonical(spec: str) -> str:
    name, options = parse_spec(spec)
    est = pwgf.get_estimator(name, **options)
    return format_spec(est.name, options)


#: option -> (least value, what None or 0 means); checked here as well as by argparse, since
#: ``vae-table`` and tests build the namespace themselves
_LIMITS: dict[str, tuple[float, str | None]] = {
    "steps": (1, None),
    "batch_size": (1, None),
    "eval_every": (1, None),
    "samples": (1, "the estimator's least"),
    "iw_samples": (0, None),
    "iw_limit": (1, "all images"),
    "final_iw_samples": (0, None),
    "variance_every": (0, None),
    "variance_draws": (1, None),
    "stop_after": (1, "run to --steps"),
}


def _check_numbers(args: argparse.Namespace) -> None:
    """Every numeric option in its range, with one clear message (argparse checks them too)."""
    for name, (least, none_means) in _LIMITS.items():
        value = getattr(args, name, None)
        flag = "--" + name.replace("_", "-")
        if value is None and none_means is not None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < least:
            extra = f" (leave it out for {none_means})" if none_means else ""
            raise dk.UsageError(f"{flag} must be an integer >= {int(least)}, got {value!r}{extra}")
    for name in ("lr", "prior_lr", "estimator_lr", "checkpoint_every", "slope"):
        value = getattr(args, name, None)
        if value is None and name in ("estimator_lr", "slope"):
            continue
        if not isinstance(value, int | float) or not (math.isfinite(value) and value > 0):
            flag = "--" + name.replace("_", "-")
            raise dk.UsageError(f"{flag} must be a positive finite number, got {value!r}")


def resolve_config(args: argparse.Namespace) -> dict[str, Any]:
    """The run's settings with every 'auto' resolved."""
    preset = args.preset
    if preset == "auto":
        preset = "arm" if args.dataset == "binarized-mnist" else "disarm"
    slope = args.slope if args.slope is not None else (0.1 if preset == "arm" else 0.3)
    prior = args.prior
    if prior == "auto":
        prior = "fixed" if (preset == "arm" and args.arch == "nonlinear") else "learnable"
    _check_numbers(args)
    name, options = merge_options(args.estimator, _parse_options(args.estimator_option))
    est = pwgf.get_estimator(name, **options)  # validates name and options
    if "bernoulli" not in est.families:
        raise pwgf.UnsupportedFamilyError(
            f"estimator '{est.name}' does not support Bernoulli latents; estimators that do: "
            f"{', '.join(pwgf.estimators_for('bernoulli'))}"
        )
    samples = args.samples if args.samples is not None else max(1, est.min_samples)
    if samples < est.min_samples:
        raise dk.UsageError(
            f"--samples {samples}: estimator '{est.name}' needs at least {est.min_samples}"
        )
    variance_names = [_canonical(n) for n in (dk.split_names(args.variance_estimators) or []) if n]
    if args.variance_every:
        if args.variance_every % args.eval_every:
            raise dk.UsageError("--variance-every must be a multiple of --eval-every")
        if args.variance_draws < 2:
            raise dk.UsageError("--variance-draws must be >= 2")
    device = dk.resolve_device(str(args.device))
    dk.resolve_dtype(getattr(args, "dtype", "float32"))
    return {
        "dataset": args.dataset,
        "binarization": "static" if args.dataset == "binarized-mnist" else args.binarization,
        "arch": args.arch,
        "preset": preset,
        "slope": slope if args.arch == "nonlinear" else None,
        "prior": prior,
        "estimator": est.name,
        "estimator_options": options,
        "learnable_estimator": bool(est.learnable),
        "samples": samples,
        "batch_size": args.batch_size,
        "lr": args.lr,
        "prior_lr": args.prior_lr if prior == "learnable" else None,
        "estimator_lr": (args.estimator_lr or args.lr) if est.learnable else None,
        "seed": args.seed,
        "steps": args.steps,
        "eval_every": args.eval_every,
        "iw_samples": args.iw_samples,
        "iw_limit": args.iw_limit,
        "final_iw_samples": args.final_iw_samples,
        "device": str(device),
        "dtype": getattr(args, "dtype", "float32"),
        "variance_every": args.variance_every,
        "variance_estimators": variance_names if args.variance_every else [],
        "variance_draws": args.variance_draws if args.variance_every else None,
    }


def default_out(cfg: dict[str, Any]) -> Path:
    est = cfg["estimator"] + "".join(f"_{k}={v}" for k, v in cfg["estimator_options"].items())
    return Path("runs/vae") / f"{cfg['dataset']}-{cfg['arch']}-{est}-s{cfg['seed']}"


# -- the learnable-estimator hook ----------------------------------------------------------------
def learnable_hook(estimators: list[nn.Module]) -> torch.Tensor | None:
    """HOOK for estimators with ``learnable=True`` (REBAR, RELAX): the loss whose gradient tunes
    their own parameters, to be added to the model's loss before ``backward()``.

    The API is ``pwgf.estimators.rebar.Rebar.variance_loss``: each surrogate computed in
    training mode prepares ``V = mean_k ‖ĝ_k‖²`` and ``∇_φ V``; ``variance_loss()`` returns them
    as a scalar whose gradient reaches only the estimator's parameters (the model's gradient is
    unchanged). Their parameters are stepped by a separate Adam (``--estimator-lr``).
    """
    losses = [
        e.variance_loss()
        for e in estimators
        if getattr(e, "learnable", False) and getattr(e, "tune", True)
    ]
    return sum(losses[1:], losses[0]) if losses else None


def _materialise(model: BernoulliVAE, estimators: list[nn.Module], x: torch.Tensor, k: int) -> None:
    """One throw-away surrogate so that lazy estimator parameters (RELAX) take their shapes."""
    lazy = any(
        isinstance(p, nn.parameter.UninitializedParameter)
        for e in estimators
        for p in e.parameters()
    )
    if not lazy:
        return
    model.surrogate(x, estimators, k).sum()
    for e in estimators:
        clear = getattr(e, "clear_variance_loss", None)
        if clear is not None:
            clear()


# -- progress --------------------------------------------------------------------------------------
class Progress:
    """A one-line progress report on stderr (rewritten in place on a terminal, else a line every
    ``every`` seconds)."""

    def __init__(self, label: str, total: int, quiet: bool = False) -> None:
        self.label, self.total, self.quiet = label, total, quiet
        self.tty = sys.stderr.isatty()
        self.every = 0.5 if self.tty else 30.0
        self.last = 0.0

    def update(self, step: int, rate: float, note: Any, force: bool = False) -> None:
        """``note``: a string, or a callable giving one (only called when a line is written)."""
        now = time.perf_counter()
        if self.quiet or (not force and now - self.last < self.every):
            return
        self.last = now
        note = note() if callable(note) else note
        frac = step / max(self.total, 1)
        width = 20
        bar = "#" * int(frac * width) + "-" * (width - int(frac * width))
        eta = (self.total - step) / rate if rate > 0 else float("nan")
        eta_s = f"{eta / 60:.1f}m" if math.isfinite(eta) else "?"
        line = f"{self.label} [{bar}] {step}/{self.total} {rate:.0f} steps/s eta {eta_s} {note}"
        if self.tty:
            sys.stderr.write("\r" + line[:160].ljust(160))
        else:
            sys.stderr.write(line + "\n")
        sys.stderr.flush()

    def close(self) -> None:
        if self.tty and not self.quiet and self.last:
            sys.stderr.write("\n")
            sys.stderr.flush()


# -- outputs ---------------------------------------------------------------------------------------
def write_history_csv(history: list[dict[str, Any]], path: Path) -> None:
    keys: list[str] = []
    for row in history:
        keys.extend(k for k in row if k not in keys)

    def write(tmp: Path) -> None:
        with open(tmp, "w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=keys)
            w.writeheader()
            w.writerows(history)

    dk.atomic_write(path, write)


def plot_curves(history: list[dict[str, Any]], cfg: dict[str, Any], path: Path) -> bool:
    """Learning curves; False if matplotlib is missing."""
    plt = dk.pyplot(quiet=True)
    if plt is None:
        return False
    steps = [h["step"] for h in history]
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    series = [("train_loss", "train (surrogate, running mean)"), ("valid_neg_elbo", "validation")]
    series.append(("test_neg_elbo", "test"))
    for key in [k for k in history[-1] if k.startswith(("valid_iw", "test_iw"))]:
        series.append((key, key.replace("_", " ")))
    values: list[float] = []
    for key, label in series:
        pts = [(s, h[key]) for s, h in zip(steps, history, strict=True) if h.get(key) is not None]
        if pts:
            ax.plot(*zip(*pts, strict=True), label=label, marker="." if len(pts) < 30 else None)
            values.extend(v for _, v in pts)
    if values:
        lo = min(values)
        keys = dict(series)
        later = [
            v
            for h in history[len(history) // 5 :]
            for k, v in h.items()
            if k in keys and v is not None
        ]
        hi = max(later) if later else max(values)
        ax.set_ylim(lo - 0.05 * (hi - lo + 1), hi + 0.1 * (hi - lo + 1))
    ax.set_xlabel("training step")
    ax.set_ylabel("negative ELBO (nats)")
    ax.set_title(
        f"{cfg['dataset']} {cfg['arch']}, {cfg['estimator']} (batch {cfg['batch_size']})",
        fontsize=10,
    )
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    dk.save_figure(fig, path, dpi=110)
    return True


# -- training --------------------------------------------------------------------------------------
class _Stop:
    """Turns SIGINT into a flag checked between steps, so the state saved is consistent."""

    def __init__(self) -> None:
        self.requested = False
        self._old: Any = None

    def __enter__(self) -> _Stop:
        try:
            self._old = signal.signal(signal.SIGINT, self._handler)
        except ValueError:  # not the main thread
            self._old = None
        return self

    def _handler(self, signum: int, frame: Any) -> None:
        if self.requested:  # a second Ctrl-C stops at once
            raise KeyboardInterrupt
        self.requested = True

    def __exit__(self, *exc: object) -> None:
        if self._old is not None:
            signal.signal(signal.SIGINT, self._old)


def _adam(params: list[nn.Parameter], lr: float) -> torch.optim.Optimizer:
    try:  # the fused kernel is several times cheaper per step on small models
        return torch.optim.Adam(params, lr=lr, fused=True)
    except (RuntimeError, TypeError, ValueError):
        return torch.optim.Adam(params, lr=lr)


class TrainingDivergedError(pwgf.PWGFError):
    """The loss or the parameters went non-finite, or the loss far above the untrained model's."""


class Trainer:
    def __init__(self, cfg: dict[str, Any], ds: Dataset, out: Path, args: argparse.Namespace):
        self.cfg, self.out, self.args = cfg, out, args
        self.device = torch.device(cfg["device"])
        self.dtype = dk.resolve_dtype(cfg.get("dtype", "float32"))
        self.ds = ds.to(self.device)
        torch.manual_seed(cfg["seed"])
        self.model = BernoulliVAE(
            cfg["arch"],
            slope=cfg["slope"] if cfg["slope"] is not None else 0.1,
            learn_prior=cfg["prior"] == "learnable",
            dtype=self.dtype,
        ).to(self.device)
        self.estimators = [
            pwgf.get_estimator(cfg["estimator"], **cfg["estimator_options"]).to(self.device)
            for _ in range(self.model.n_stochastic)
        ]
        for e in self.estimators:
            e.train()
        self.gen = torch.Generator(device=self.device).manual_seed(cfg["seed"] + 1)
        _materialise(self.model, self.estimators, self._batch_at(0), cfg["samples"])
        self.opt = _adam(self.model.network_parameters(), cfg["lr"])
        prior = self.model.prior_parameters()
        self.prior_opt = torch.optim.SGD(prior, lr=cfg["prior_lr"]) if prior else None
        est_params = [p for e in self.estimators for p in e.parameters() if p.requires_grad]
        self.est_opt = (
            torch.optim.Adam(est_params, lr=cfg["estimator_lr"])
            if est_params and cfg["learnable_estimator"]
            else None
        )
        # state
        self.step = 0
        self.epoch = 0
        self.perm = torch.randperm(len(self.ds.train), generator=self.gen, device=self.device)
        self.pos = 0
        self.history: list[dict[str, Any]] = []
        self.best: dict[str, Any] | None = None
        self.train_seconds = 0.0
        self.eval_seconds = 0.0
        self.loss_sum = torch.zeros((), device=self.device, dtype=self.dtype)
        self.loss_count = 0

    def _batch_at(self, i: int) -> torch.Tensor:
        x = self.ds.train[i : i + self.cfg["batch_size"]]
        return self.ds.binarize_train(x, None).to(self.dtype)

    # -- checkpoints ----------------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        return {
            "format": 1,
            "config": self.cfg,
            "step": self.step,
            "epoch": self.epoch,
            "pos": self.pos,
            "perm": self.perm.cpu(),
            "gen": self.gen.get_state(),
            "rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if self.device.type == "cuda" else None,
            "model": self.model.state_dict(),
            "opt": self.opt.state_dict(),
            "prior_opt": self.prior_opt.state_dict() if self.prior_opt else None,
            "est_opt": self.est_opt.state_dict() if self.est_opt else None,
            "estimators": [e.state_dict() for e in self.estimators],
            "history": self.history,
            "best": self.best,
            "train_seconds": self.train_seconds,
            "eval_seconds": self.eval_seconds,
            "loss_sum": float(self.loss_sum),
            "loss_count": self.loss_count,
        }

    def load(self, st: dict[str, Any]) -> None:
        self.step, self.epoch, self.pos = st["step"], st["epoch"], st["pos"]
        self.perm = st["perm"].to(self.device)
        self.gen.set_state(st["gen"])
        torch.set_rng_state(st["rng"])
        if st.get("cuda_rng") is not None and self.device.type == "cuda":
            torch.cuda.set_rng_state_all(st["cuda_rng"])
        self.model.load_state_dict(st["model"])
        self.opt.load_state_dict(st["opt"])
        if self.prior_opt is not None and st["prior_opt"] is not None:
            self.prior_opt.load_state_dict(st["prior_opt"])
        if self.est_opt is not None and st["est_opt"] is not None:
            self.est_opt.load_state_dict(st["est_opt"])
        for e, s in zip(self.estimators, st["estimators"], strict=True):
            e.load_state_dict(s)
        self.history, self.best = st["history"], st["best"]
        self.train_seconds, self.eval_seconds = st["train_seconds"], st["eval_seconds"]
        self.loss_sum = torch.tensor(st["loss_sum"], device=self.device, dtype=self.dtype)
        self.loss_count = st["loss_count"]

    def check_finite(self, valid_neg_elbo: float | None = None) -> None:
        """Raise ``TrainingDivergedError`` if the model has diverged: non-finite parameters
        or training loss, or a loss above ``DIVERGED_FACTOR`` times the untrained model's
        validation -ELBO. Called before every save, so a diverged state never replaces the
        last good checkpoint (one host sync per save or evaluation, none per step)."""
        bad = [n for n, q in self.model.named_parameters() if not bool(torch.isfinite(q).all())]
        loss = float(self.loss_sum) / self.loss_count if self.loss_count else None
        why = None
        if bad:
            why = f"parameters {', '.join(bad[:3])} are not finite"
        elif loss is not None and not math.isfinite(loss):
            why = "the training loss is not finite"
        else:
            start = self.history[0]["valid_neg_elbo"] if self.history else None
            for label, value in (("training loss", loss), ("validation -ELBO", valid_neg_elbo)):
                if start is not None and value is not None and value > DIVERGED_FACTOR * start:
                    why = (
                        f"the {label} {value:.4g} is over {DIVERGED_FACTOR:g} times the "
                        f"untrained model's {start:.4g}"
                    )
                    break
        if why is not None:
            raise TrainingDivergedError(
                f"training diverged by step {self.step}: {why}. The learning rate is too large "
                f"(--lr {self.cfg['lr']:g}; ARM's setting is 1e-4); the last good checkpoint in "
                f"{self.out} is kept (use --restart with a smaller --lr)"
            )

    def save(self) -> None:
        self.check_finite()
        dk.atomic_save(self.state(), self.out / "checkpoint.pt")

    # -- evaluation -----------------------------------------------------------------------------
    def evaluate(self) -> dict[str, Any]:
        t0 = time.perf_counter()
        cfg = self.cfg
        row: dict[str, Any] = {
            "step": self.step,
            "epoch": round(self.step / self.steps_per_epoch, 3),
        }
        row["train_loss"] = float(self.loss_sum) / self.loss_count if self.loss_count else None
        self.loss_sum.zero_()
        self.loss_count = 0
        devices = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):  # evaluation noise apart from training's
            torch.manual_seed(12345 + self.step)
            for split, data in (("valid", self.ds.valid), ("test", self.ds.test)):
                r = self.model.evaluate(data)
                row[f"{split}_neg_elbo"] = r["neg_elbo"]
                if cfg["iw_samples"] > 0:
                    lim = data[: cfg["iw_limit"]] if cfg["iw_limit"] else data
                    r = self.model.evaluate(lim, iw_samples=cfg["iw_samples"])
                    row[f"{split}_iw{cfg['iw_samples']}"] = r[f"iw{cfg['iw_samples']}"]
            every = cfg.get("variance_every")
            if every and self.step % every == 0:
                x = self._batch_at(0)  # the same batch at every measurement
                row.update(
                    vae_variance.measure(
                        self.model,
                        x,
                        cfg["variance_estimators"],
                        cfg["variance_draws"],
                        cfg["samples"],
                        {cfg["estimator"]: self.estimators},
                        seed=777,
                    )
                )
        row["prior_mean"] = float(torch.sigmoid(self.model.prior_logits.detach()).mean())
        row["train_seconds"] = round(self.train_seconds, 3)
        self.eval_seconds += time.perf_counter() - t0
        row["eval_seconds"] = round(self.eval_seconds, 3)
        return row

    @property
    def steps_per_epoch(self) -> int:
        return len(self.ds.train) // self.cfg["batch_size"]

    def record(self, row: dict[str, Any]) -> None:
        self.history.append(row)
        if self.best is None or row["valid_neg_elbo"] < self.best["valid_neg_elbo"]:
            self.best = dict(row)
            dk.atomic_save(
                {"config": self.cfg, "step": self.step, "model": self.model.state_dict()},
                self.out / "best.pt",
            )
        write_history_csv(self.history, self.out / "history.csv")

    # -- the loop -------------------------------------------------------------------------------
    def next_batch(self) -> torch.Tensor:
        b = self.cfg["batch_size"]
        if self.pos + b > len(self.perm):
            self.perm = torch.randperm(len(self.ds.train), generator=self.gen, device=self.device)
            self.pos = 0
            self.epoch += 1
        idx = self.perm[self.pos : self.pos + b]
        self.pos += b
        return self.ds.binarize_train(self.ds.train[idx], self.gen).to(self.dtype)

    def train_step(self) -> None:
        x = self.next_batch()
        loss = self.model.surrogate(x, self.estimators, self.cfg["samples"]).mean()
        total = loss
        if self.est_opt is not None:
            tune = learnable_hook(self.estimators)  # HOOK: REBAR / RELAX tuning
            if tune is not None:
                total = loss + tune
        self.opt.zero_grad(set_to_none=True)
        if self.prior_opt is not None:
            self.prior_opt.zero_grad(set_to_none=True)
        if self.est_opt is not None:
            self.est_opt.zero_grad(set_to_none=True)
        total.backward()
        self.opt.step()
        if self.prior_opt is not None:
            self.prior_opt.step()
        if self.est_opt is not None:
            self.est_opt.step()
        self.loss_sum += loss.detach()
        self.loss_count += 1

    def run(self, stop_after: int | None, quiet: bool) -> bool:
        """Train up to ``cfg['steps']``; True when finished, False when stopped early."""
        cfg = self.cfg
        if not self.history:  # the starting point of the curves
            self.record(self.evaluate())
            self.save()
        label = f"vae {cfg['arch']} {cfg['estimator']}"
        progress = Progress(label, cfg["steps"], quiet)
        last_ckpt = time.perf_counter()
        done_here = 0
        rate = 0.0
        with _Stop() as stop:
            while self.step < cfg["steps"]:
                t0 = time.perf_counter()
                self.train_step()
                dt = time.perf_counter() - t0
                self.train_seconds += dt
                self.step += 1
                done_here += 1
                rate = 0.98 * rate + 0.02 / max(dt, 1e-9) if rate else 1 / max(dt, 1e-9)
                if self.step % cfg["eval_every"] == 0 or self.step == cfg["steps"]:
                    self.check_finite()
                    row = self.evaluate()
                    self.check_finite(row["valid_neg_elbo"])
                    self.record(row)
                    self.save()
                    last_ckpt = time.perf_counter()
                    progress.update(
                        self.step,
                        rate,
                        f"valid {row['valid_neg_elbo']:.2f} best {self.best['valid_neg_elbo']:.2f}",  # type: ignore[index]
                        force=True,
                    )
                elif time.perf_counter() - last_ckpt > self.args.checkpoint_every:
                    self.save()
                    last_ckpt = time.perf_counter()
                else:
                    progress.update(self.step, rate, lambda: f"loss {loss_estimate(self):.2f}")
                if stop.requested or (stop_after is not None and done_here >= stop_after):
                    self.save()
                    progress.close()
                    if stop.requested:
                        raise KeyboardInterrupt
                    return False
        progress.close()
        return True


def loss_estimate(tr: Trainer) -> float:
    return float(tr.loss_sum) / tr.loss_count if tr.loss_count else float("nan")


def results(tr: Trainer, finished: bool, extra: dict[str, Any]) -> dict[str, Any]:
    best = tr.best or {}
    last = tr.history[-1] if tr.history else {}
    steps_done = tr.step
    return {
        "command": "vae",
        "finished": finished,
        "dataset": tr.cfg["dataset"],
        "arch": tr.cfg["arch"],
        "estimator": tr.cfg["estimator"],
        "steps_done": steps_done,
        "steps_target": tr.cfg["steps"],
        "epochs_done": round(steps_done / tr.steps_per_epoch, 3),
        "best_step": best.get("step"),
        "valid_neg_elbo": best.get("valid_neg_elbo"),
        "test_neg_elbo": best.get("test_neg_elbo"),
        "final_valid_neg_elbo": last.get("valid_neg_elbo"),
        "final_test_neg_elbo": last.get("test_neg_elbo"),
        "train_steps_per_second": steps_done / tr.train_seconds if tr.train_seconds else None,
        "train_seconds": round(tr.train_seconds, 3),
        "eval_seconds": round(tr.eval_seconds, 3),
        **{k: v for k, v in best.items() if "_iw" in k},
        **extra,
        "config": tr.cfg,
        "data_files": tr.ds.files,
        "environment": {
            "torch": torch.__version__,
            "pwgf": pwgf.__version__,
            "python": platform.python_version(),
            "threads": torch.get_num_threads(),
            "device": str(tr.device),
            "cpu_count": os.cpu_count(),
        },
        "notes": (
            "valid/test_neg_elbo: mean single-sample negative ELBO (nats) at the best validation "
            "point; final_*: at the last evaluation"
        ),
    }


def run(args: argparse.Namespace) -> int:
    return dk.with_threads(getattr(args, "threads", None), lambda: _run(args))


def _run(args: argparse.Namespace) -> int:
    cfg = resolve_config(args)
    out = args.out if args.out is not None else default_out(cfg)
    out.mkdir(parents=True, exist_ok=True)
    with dk.OutputLock(out, quiet=args.quiet):  # one run at a time writes to ``out``
        return _run_locked(args, cfg, out)


OUTPUTS = ("checkpoint.pt", "best.pt", "history.csv", "results.json")


def _saved_run(args: argparse.Namespace, cfg: dict[str, Any], out: Path) -> dict[str, Any] | None:
    """The checkpoint to resume from, checked against this run's settings; None to start."""
    ckpt_path = out / "checkpoint.pt"
    if args.restart:
        for name in OUTPUTS:
            (out / name).unlink(missing_ok=True)
        return None
    if not ckpt_path.exists():
        left = [n for n in OUTPUTS[1:] if (out / n).exists()]
        if left:  # finished work without its checkpoint: never start over on top of it
            raise dk.UsageError(
                f"{out} holds {', '.join(left)} of an earlier run but no checkpoint.pt to resume "
                "from; move them away, use another --out, or --restart to discard them"
            )
        return None
    saved = dk.load_checkpoint(ckpt_path, CHECKPOINT_KEYS, restart_flag="--restart")
    before = {**IDENTITY_DEFAULTS, **saved["config"]}
    diff = {k: (before.get(k), cfg.get(k)) for k in IDENTITY if before.get(k) != cfg.get(k)}
    if diff:
        lines = ", ".join(f"{k}: saved {a!r} vs now {b!r}" for k, (a, b) in diff.items())
        raise dk.UsageError(
            f"{ckpt_path} holds a different run ({lines}); use another --out, or --restart "
            "to discard it"
        )
    if saved["step"] > cfg["steps"]:
        raise dk.UsageError(
            f"{out} holds a run already trained to step {saved['step']}; --steps {cfg['steps']} "
            f"contradicts it: pass --steps {saved['step']} to keep it (or more to train on), "
            "or --restart to discard it"
        )
    return saved


def _run_locked(args: argparse.Namespace, cfg: dict[str, Any], out: Path) -> int:
    saved = _saved_run(args, cfg, out)
    try:
        ds = load_dataset(
            cfg["dataset"],
            args.data_dir,
            cfg["binarization"],
            cache_dir=args.cache_dir,
            download=False if args.no_download else None,
            checksums={} if args.no_verify else None,
        )
    except DataError as e:
        print(f"pwgf vae: error: {e}", file=sys.stderr)
        return 2
    if cfg["batch_size"] > len(ds.train):
        raise dk.UsageError(
            f"--batch-size {cfg['batch_size']} is larger than the training set "
            f"({len(ds.train)} images)"
        )
    tr = Trainer(cfg, ds, out, args)
    if saved is not None:
        tr.load(saved)
        if not args.quiet:
            print(f"resuming {out} at step {tr.step} of {cfg['steps']}", file=sys.stderr)
    dk.atomic_write_text(out / "config.json", json.dumps(cfg, indent=1))
    if not args.quiet:
        print(
            f"pwgf vae: {ds.describe()}; {cfg['arch']} ({cfg['prior']} prior), estimator "
            f"{format_spec(cfg['estimator'], cfg['estimator_options'])} x{cfg['samples']}, "
            f"batch {cfg['batch_size']}, Adam {cfg['lr']}, {cfg['steps']} steps, "
            f"{cfg['device']} {cfg['dtype']} -> {out}",
            file=sys.stderr,
        )
    try:
        finished = tr.run(args.stop_after, args.quiet)
    except KeyboardInterrupt:
        _finish(tr, False, {}, out)
        raise
    extra: dict[str, Any] = {}
    if finished and cfg["final_iw_samples"] > 0:
        extra = _final_bound(tr, out)
    res = _finish(tr, finished, extra, out)
    if not args.quiet:
        print(
            f"step {res['steps_done']}: best validation -ELBO {res['valid_neg_elbo']:.2f} "
            f"(step {res['best_step']}), test -ELBO there {res['test_neg_elbo']:.2f}; "
            f"{res['train_steps_per_second'] or 0:.0f} training steps/s; wrote {out}"
        )
    return 0


def _final_bound(tr: Trainer, out: Path) -> dict[str, Any]:
    """The S-sample bound of the best-validation model on the test set; reused from
    results.json when already computed for the same best step."""
    cfg = tr.cfg
    s = cfg["final_iw_samples"]
    key = f"best_test_iw{s}"
    best = dk.load_checkpoint(out / "best.pt", ("model", "step"), map_location=tr.device)
    prev = _read_results(out)
    if prev.get(key) is not None and prev.get(f"{key}_step") == best["step"]:
        return {key: prev[key], f"{key}_step": best["step"]}
    model = BernoulliVAE(
        cfg["arch"],
        slope=cfg["slope"] or 0.1,
        learn_prior=cfg["prior"] == "learnable",
        dtype=tr.dtype,
    ).to(tr.device)
    model.load_state_dict(best["model"])
    torch.manual_seed(cfg["seed"] + 7)
    return {key: model.evaluate(tr.ds.test, iw_samples=s)[f"iw{s}"], f"{key}_step": best["step"]}


def _read_results(out: Path) -> dict[str, Any]:
    try:
        prev = json.loads((out / "results.json").read_text())
    except (OSError, ValueError):
        return {}
    return prev if isinstance(prev, dict) else {}


def _finish(tr: Trainer, finished: bool, extra: dict[str, Any], out: Path) -> dict[str, Any]:
    res = results(tr, finished, extra)
    # a rerun may add to the results of the run in ``out``, never remove them (a bound computed
    # by an earlier invocation's --final-iw-samples stays, with the step it was computed at)
    kept = {k: v for k, v in _read_results(out).items() if k not in res}
    res = {**res, **kept}
    dk.atomic_write_text(out / "results.json", json.dumps(res, indent=1))
    if tr.history:
        plot_curves(tr.history, tr.cfg, out / "learning_curves.png")
        cfg = tr.cfg
        title = f"{cfg['dataset']} {cfg['arch']}, trained with {cfg['estimator']}"
        vae_variance.plot(tr.history, title, out / "gradient_variance.png")
    return res


# -- speed -----------------------------------------------------------------------------------------
class PlainRelaxation(nn.Module):
    """Not an estimator: f at the probabilities σ(ℓ), differentiated through them (a
    deterministic autoencoder with the same networks). The reference cost of one forward and
    backward pass, against which an estimator's step is measured."""

    learnable = False
    min_samples = 1

    def surrogate(self, f: Any, dist: Any, n_samples: int = 1) -> torch.Tensor:
        p = dist.probs
        return f(p.expand(n_samples, *p.shape)).mean(0)


def measure_speed(
    arch: str,
    estimator: str,
    steps: int = 200,
    batch_size: int = 50,
    samples: int | None = None,
    warmup: int = 10,
    seed: int = 0,
    repeats: int = 5,
) -> float:
    """Training steps per second of ``estimator`` (or ``"plain"``, see ``PlainRelaxation``)
    on ``arch``, with synthetic binary images of MNIST's density (13 % ones): the step the
    training loop makes (sampling, surrogate, backward, Adam, SGD on the prior), no evaluation.
    The steps are timed in ``repeats`` chunks and the fastest chunk's rate is returned."""
    torch.manual_seed(seed)
    model = BernoulliVAE(arch, dtype=torch.float32)
    if estimator == "plain":
        ests: list[nn.Module] = [PlainRelaxation() for _ in range(model.n_stochastic)]
    else:
        ests = [pwgf.get_estimator(estimator) for _ in range(model.n_stochastic)]
    k = samples if samples is not None else max(1, ests[0].min_samples)
    opt = _adam(model.network_parameters(), 1e-4)
    prior_opt = torch.optim.SGD(model.prior_parameters(), lr=1e-2)
    x = (torch.rand(batch_size, 784) < 0.13).float()
    _materialise(model, ests, x, k)
    est_params = [p for e in ests for p in e.parameters() if p.requires_grad]
    est_opt = torch.optim.Adam(est_params, lr=1e-4) if est_params else None

    def step() -> None:
        loss = model.surrogate(x, ests, k).mean()
        tune = learnable_hook(ests) if est_opt is not None else None
        total = loss + tune if tune is not None else loss
        for o in (opt, prior_opt, est_opt):
            if o is not None:
                o.zero_grad(set_to_none=True)
        total.backward()
        for o in (opt, prior_opt, est_opt):
            if o is not None:
                o.step()

    for _ in range(warmup):
        step()
    # best of several chunks: other load on the machine only ever slows a chunk down
    chunks = max(1, min(repeats, steps))
    best = float("inf")
    for c in range(chunks):
        n = steps // chunks + (1 if c < steps % chunks else 0)
        t0 = time.perf_counter()
        for _ in range(n):
            step()
        best = min(best, (time.perf_counter() - t0) / n)
    return 1.0 / best
