"""``pwgf cat-vae``: ReinMax's categorical VAE on MNIST, estimators x latent shapes x seeds.

Source of the benchmark: Liu, Dong, Liu, Yu & Gao, "Bridging Discrete and Backpropagation:
Straight-Through and Beyond" (NeurIPS 2023, arXiv 2304.08612), MNIST-VAE; settings as in the
authors' code (github.com/LiyuanLucasLiu/ReinMax, ``mnist_vae/``, linked from microsoft/ReinMax):

* data: MNIST, all 60000 training images, grey levels in [0, 1] used directly as Bernoulli
  targets (torchvision ``ToTensor``, no binarisation); the 10000 test images for evaluation;
* model: encoder 784-512-256-(L·C), ReLU, L categoricals of C classes from the logits; decoder
  (L·C)-256-512-784, ReLU, sigmoid; loss = BCE summed over pixels + KL(q ‖ uniform) in closed
  form, averaged over the batch of 100; one sample per image;
* optimiser Adam or RAdam, learning rate and temperature per method and shape from the authors'
  search (their scripts for ReinMax; the paper's hyperparameter table for the baselines, as
  transcribed in github.com/danielwang0452/ReinMax_ASC ``hyperparameters.py``, whose ReinMax rows
  agree with the authors' scripts), searched over τ in {0.1, 0.3, 0.5, 0.7, 1.0, 1.1, ..., 1.5}
  and lr in {3e-4, 5e-4, 7e-4, 1e-3};
* 160 epochs (96000 updates), 10 seeds; reported: the training -ELBO averaged over the last
  epoch, and the test -ELBO after it (one sample per image).

Shapes are written ``CxL`` (C categories, L latent variables), as in the authors' script names
(``reinmax_${C}_${L}.sh``): 8x4, 4x24, 8x16, 16x12, 64x8, 10x30.

The default run is a stated CPU budget (see ``DEFAULT_BUDGET``); ``--full`` is the paper's. Each
cell (shape, estimator, seed) is one resumable training run through ``pwgf.experiments.sweep``
in ``DIR/<cell>/``; rerunning the command continues an interrupted grid.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

import pwgf

from . import data as mnist_data
from . import diagkit as dk
from .sweep import Cell, add_sweep_arguments, aggregate, format_mean_se, run_grid, sweep_options
from .sweep import write_rows as write_table_rows

ALL_SHAPES = ("8x4", "4x24", "8x16", "16x12", "64x8", "10x30")
ALL_ESTIMATORS = (
    "st",
    "pwgf",
    "st-gumbel",
    "gumbel-rao",
    "gapped-st",
    "reinmax",
    "reinforce-loo",
    "rebar",
    "relax",
    "indecater",
)
#: The default CPU budget: every estimator on the 8x4 shape, 2 seeds, 1000 updates (1.7 epochs)
#: each; sized for about 20 minutes of two CPU cores (``--jobs 2``); IndeCateR is 40 % of it.
DEFAULT_BUDGET = {"shapes": ("8x4",), "seeds": 2, "steps": 1000, "eval_every": 250}
FULL_BUDGET = {"shapes": ALL_SHAPES, "seeds": 10, "epochs": 160, "eval_every": 6000}
BATCH = 100
GR_SAMPLES = 100  # the authors' rao_gumbel default (repeats=100)
DEFAULT_LR, DEFAULT_OPTIM = 5e-4, "adam"

# ReinMax's method names -> ours; (lr, temperature, optimiser) per shape.
REINMAX_NAMES = {
    "st": "st",
    "st-gumbel": "gumbel",
    "gumbel-rao": "rao_gumbel",
    "gapped-st": "gst-1.0",
    "reinmax": "reinmax",
}
PUBLISHED_SETTINGS: dict[str, dict[str, tuple[float, float, str]]] = {
    "8x4": {
        "gumbel": (3e-4, 0.5, "adam"),
        "rao_gumbel": (5e-4, 0.5, "adam"),
        "gst-1.0": (5e-4, 1.0, "adam"),
        "st": (1e-3, 1.3, "adam"),
        "reinmax": (5e-4, 1.3, "adam"),
    },
    "4x24": {
        "gumbel": (5e-4, 0.3, "radam"),
        "rao_gumbel": (5e-4, 0.3, "radam"),
        "gst-1.0": (5e-4, 0.5, "radam"),
        "st": (1e-3, 1.5, "radam"),
        "reinmax": (5e-4, 1.5, "radam"),
    },
    "8x16": {
        "gumbel": (5e-4, 0.5, "radam"),
        "rao_gumbel": (7e-4, 0.7, "radam"),
        "gst-1.0": (7e-4, 0.5, "radam"),
        "st": (1e-3, 1.5, "radam"),
        "reinmax": (7e-4, 1.5, "radam"),
    },
    "16x12": {
        "gumbel": (7e-4, 0.7, "radam"),
        "rao_gumbel": (5e-4, 1.0, "adam"),
        "gst-1.0": (7e-4, 0.5, "radam"),
        "st": (5e-4, 1.5, "adam"),
        "reinmax": (7e-4, 1.5, "radam"),
    },
    "64x8": {
        "gumbel": (7e-4, 0.7, "radam"),
        "rao_gumbel": (7e-4, 2.0, "adam"),
        "gst-1.0": (7e-4, 0.7, "radam"),
        "st": (5e-4, 1.5, "adam"),
        "reinmax": (5e-4, 1.5, "radam"),
    },
    "10x30": {
        "gumbel": (5e-4, 0.5, "radam"),
        "rao_gumbel": (5e-4, 1.0, "radam"),
        "gst-1.0": (5e-4, 0.5, "radam"),
        "st": (7e-3, 1.4, "radam"),  # as transcribed (7e-3, not in the searched grid)
        "reinmax": (5e-4, 1.3, "radam"),
    },
}
SETTINGS_SOURCE = (
    "ReinMax (Liu et al., NeurIPS 2023) MNIST-VAE settings: authors' scripts "
    "(LiyuanLucasLiu/ReinMax mnist_vae/reinmax_C_L.sh) and the baselines' table as transcribed "
    "in danielwang0452/ReinMax_ASC hyperparameters.py"
)


def parse_shape(text: str) -> tuple[int, int]:
    """``"8x4"`` -> (categories 8, latent variables 4)."""
    parts = text.lower().replace("×", "x").split("x")
    try:
        c, n = (int(p) for p in parts)
    except ValueError:
        raise pwgf.PWGFError(
            f"--shapes: {text!r} is not CxL (categories x latent variables), e.g. 8x4"
        ) from None
    if c < 2 or n < 1:
        raise pwgf.PWGFError(f"--shapes: {text!r} needs at least 2 categories and 1 latent")
    return c, n


# -- the model -----------------------------------------------------------------------------------
class CategoricalVAE(nn.Module):
    """ReinMax's MNIST-VAE: encoder 784-512-256-(L·C), decoder (L·C)-256-512-784, ReLU."""

    def __init__(self, categories: int, latents: int) -> None:
        super().__init__()
        self.c, self.n = categories, latents
        d = categories * latents
        self.encoder = nn.Sequential(
            nn.Linear(784, 512), nn.ReLU(), nn.Linear(512, 256), nn.ReLU(), nn.Linear(256, d)
        )
        self.decoder = nn.Sequential(
            nn.Linear(d, 256), nn.ReLU(), nn.Linear(256, 512), nn.ReLU(), nn.Linear(512, 784)
        )

    def posterior(self, x: Tensor) -> torch.distributions.Distribution:
        logits = self.encoder(x).reshape(-1, self.n, self.c)
        return torch.distributions.Independent(
            torch.distributions.OneHotCategorical(logits=logits), 1
        )

    def reconstruction(self, z: Tensor, x: Tensor) -> Tensor:
        """BCE summed over pixels, ``z`` (K, B, L, C) -> (K, B)."""
        logits = self.decoder(z.reshape(*z.shape[:-2], -1))
        bce = nn.functional.binary_cross_entropy_with_logits(
            logits, x.expand_as(logits), reduction="none"
        )
        return bce.sum(-1)

    def kl(self, dist: torch.distributions.Distribution) -> Tensor:
        """KL(q ‖ uniform) per image, in closed form."""
        logq = dist.base_dist.logits.log_softmax(-1)
        return (logq.exp() * logq).sum((-1, -2)) + self.n * math.log(self.c)

    def loss(self, x: Tensor, est: pwgf.Estimator, k: int) -> Tensor:
        """-ELBO averaged over the batch; its gradient is the estimator's."""
        dist = self.posterior(x)
        rec = est.surrogate(lambda z: self.reconstruction(z, x), dist, n_samples=k)
        return (rec + self.kl(dist)).mean()

    @torch.no_grad()
    def test_elbo(self, x: Tensor, gen: torch.Generator, chunk: int = 1000) -> float:
        """-ELBO with one exact sample z ~ q per image, averaged over ``x``."""
        total = 0.0
        for i in range(0, len(x), chunk):
            xb = x[i : i + chunk]
            dist = self.posterior(xb)
            probs = dist.base_dist.probs
            idx = torch.multinomial(probs.reshape(-1, self.c), 1, generator=gen)
            z = torch.zeros_like(probs.reshape(-1, self.c)).scatter_(1, idx, 1.0)
            rec = self.reconstruction(z.reshape(1, *probs.shape), xb)[0]
            total += float((rec + self.kl(dist)).sum())
        return total / len(x)


# -- data ----------------------------------------------------------------------------------------
def load_mnist(data_dir: str | None, verify: bool, download: bool) -> tuple[Tensor, Tensor]:
    """All 60000 training and 10000 test images, uint8 (N, 784), read through
    ``pwgf.experiments.data`` (checksums checked unless ``verify`` is False)."""
    train, test, _ = mnist_data.load_idx_images("mnist", data_dir, download, verify)
    return train, test


# -- one cell ------------------------------------------------------------------------------------
def _optimizer(name: str, params: list[nn.Parameter], lr: float) -> torch.optim.Optimizer:
    return (torch.optim.RAdam if name == "radam" else torch.optim.Adam)(params, lr=lr)


def train_cell(config: dict[str, Any], out_dir: Path) -> dict[str, Any]:
    """One training run (sweep cell function); checkpoints into ``out_dir`` and resumes."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    ckpt = out_dir / "checkpoint.pt"
    device = dk.resolve_device(config["device"])
    dtype = dk.resolve_dtype(config["dtype"])
    c, n = parse_shape(config["shape"])
    train_u8, test_u8 = load_mnist(config["data_dir"], config["verify"], config["download"])
    if config.get("train_size"):
        train_u8 = train_u8[: config["train_size"]]
    x_train = (train_u8.to(device=device, dtype=dtype) / 255.0).contiguous()
    x_test = test_u8[: config.get("test_size") or None].to(device=device, dtype=dtype) / 255.0

    torch.manual_seed(config["seed"])
    model = CategoricalVAE(c, n).to(device=device, dtype=dtype)
    est = pwgf.get_estimator(config["estimator"], **config["options"]).to(device)
    est.train()
    k = config["samples"]
    if any(isinstance(p, nn.parameter.UninitializedParameter) for p in est.parameters()):
        model.loss(x_train[:BATCH], est, k)  # lazy estimator parameters (RELAX) take shape
        getattr(est, "clear_variance_loss", lambda: None)()
    est.to(dtype=dtype)
    opt = _optimizer(config["optimizer"], list(model.parameters()), config["lr"])
    est_params = [p for p in est.parameters() if p.requires_grad]
    est_opt = torch.optim.Adam(est_params, lr=config["estimator_lr"]) if est_params else None
    gen = torch.Generator().manual_seed(config["seed"] + 1)
    spe = len(x_train) // BATCH
    state: dict[str, Any] = {"step": 0, "losses": [], "history": [], "wall": 0.0}
    perm = torch.randperm(len(x_train), generator=gen)
    if ckpt.exists():
        st = dk.load_checkpoint(
            ckpt, ("model", "opt", "est", "est_opt", "gen", "rng", "perm", "state"), device
        )
        model.load_state_dict(st["model"])
        opt.load_state_dict(st["opt"])
        est.load_state_dict(st["est"])
        if est_opt is not None:
            est_opt.load_state_dict(st["est_opt"])
        gen.set_state(st["gen"])
        torch.set_rng_state(st["rng"])
        if device.type == "cuda":
            torch.cuda.set_rng_state(st["cuda_rng"], device)
        perm, state = st["perm"], st["state"]

    def save() -> None:
        dk.atomic_save(
            {
                "model": model.state_dict(),
                "opt": opt.state_dict(),
                "est": est.state_dict(),
                "est_opt": est_opt.state_dict() if est_opt is not None else None,
                "gen": gen.get_state(),
                "rng": torch.get_rng_state(),
                "cuda_rng": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
                "perm": perm,
                "state": state,
            },
            ckpt,
        )

    def evaluate() -> None:
        eval_gen = torch.Generator(device=device).manual_seed(12345)
        model.eval()
        row = {"step": state["step"], "test_elbo": model.test_elbo(x_test, eval_gen)}
        model.train()
        window = state["losses"][-spe:]
        row["train_elbo"] = math.fsum(window) / len(window) if window else None
        state["history"].append(row)

    steps = config["steps"]
    last_save = time.perf_counter()
    try:
        if not state["history"]:
            evaluate()
        while state["step"] < steps:
            t0 = time.perf_counter()
            pos = (state["step"] % spe) * BATCH
            if pos == 0 and state["step"] > 0:
                perm = torch.randperm(len(x_train), generator=gen)
            x = x_train[perm[pos : pos + BATCH].to(device)]
            loss = model.loss(x, est, k)
            total = loss
            if est_opt is not None and getattr(est, "tune", True):
                total = loss + est.variance_loss()
            opt.zero_grad(set_to_none=True)
            if est_opt is not None:
                est_opt.zero_grad(set_to_none=True)
            total.backward()
            opt.step()
            if est_opt is not None:
                est_opt.step()
            state["losses"].append(float(loss.detach()))
            state["step"] += 1
            state["wall"] += time.perf_counter() - t0
            if not math.isfinite(state["losses"][-1]):
                raise pwgf.PWGFError(f"training diverged at step {state['step']} (loss not finite)")
            if state["step"] % config["eval_every"] == 0 or state["step"] == steps:
                evaluate()
                save()
                last_save = time.perf_counter()
            elif time.perf_counter() - last_save > 30:
                save()
                last_save = time.perf_counter()
    except KeyboardInterrupt:
        save()
        raise
    save()
    final = state["history"][-1]
    return {
        "train_elbo": final["train_elbo"],
        "test_elbo": final["test_elbo"],
        "steps": state["step"],
        "epochs": state["step"] / spe,
        "train_seconds": state["wall"],
        "ms_per_step": 1000 * state["wall"] / max(1, state["step"]),
        "history": state["history"],
    }


# -- the grid ------------------------------------------------------------------------------------
def cell_config(args: argparse.Namespace, shape: str, name: str, seed: int) -> dict[str, Any]:
    spec_name, options = pwgf.registry.parse_spec(name)
    canonical = pwgf.registry.resolve(spec_name)
    lr, optim, tau = DEFAULT_LR, DEFAULT_OPTIM, None
    theirs = REINMAX_NAMES.get(canonical)
    if theirs is not None and shape in PUBLISHED_SETTINGS:
        lr, tau, optim = PUBLISHED_SETTINGS[shape][theirs]
    defaults: dict[str, Any] = {}
    if tau is not None and canonical != "st":  # our st (pWGF-ST) has no temperature
        defaults["temperature"] = tau
    if canonical == "gumbel-rao":
        defaults["m"] = GR_SAMPLES
    if canonical == "gapped-st":
        defaults["gap"] = 1.0
    if args.temperature is not None and "temperature" in pwgf.get_estimator(canonical).option_docs:
        defaults["temperature"] = args.temperature
    options = {**defaults, **options}
    pwgf.get_estimator(canonical, **options)  # a bad option fails before anything runs
    return {
        "shape": shape,
        "estimator": canonical,
        "options": options,
        "samples": 2 if canonical == "reinforce-loo" else 1,
        "lr": args.lr if args.lr is not None else lr,
        "optimizer": optim,
        "estimator_lr": 1e-3,
        "seed": seed,
        "steps": args.steps,
        "eval_every": min(args.eval_every, args.steps),
        "train_size": args.train_size,
        "test_size": args.test_size,
        "data_dir": None if args.data_dir is None else str(args.data_dir),
        "verify": not args.no_verify,
        "download": not args.no_download,
        "device": args.device,
        "dtype": args.dtype,
    }


def add_arguments(parser: argparse.ArgumentParser) -> None:
    b = DEFAULT_BUDGET
    parser.add_argument("--data-dir", type=Path, default=None, help="folder holding MNIST (IDX)")
    parser.add_argument(
        "--estimators",
        default=",".join(ALL_ESTIMATORS),
        help="comma-separated estimator specs (default: all ten of the benchmark)",
    )
    parser.add_argument(
        "--shapes",
        default=None,
        help=f"CxL shapes (categories x latents); default {','.join(b['shapes'])}, "
        f"--full: {','.join(ALL_SHAPES)}",
    )
    parser.add_argument("--steps", type=int, default=None, help=f"updates per run ({b['steps']})")
    parser.add_argument("--epochs", type=float, default=None, help="epochs per run (--full: 160)")
    parser.add_argument("--eval-every", type=int, default=None, help="updates between evaluations")
    parser.add_argument("--full", action="store_true", help="the paper's budget (see module doc)")
    parser.add_argument("--lr", type=float, default=None, help="override every learning rate")
    parser.add_argument(
        "--temperature", type=float, default=None, help="override every estimator's temperature"
    )
    parser.add_argument("--train-size", type=int, default=None, help="first N training images")
    parser.add_argument("--test-size", type=int, default=None, help="first N test images")
    parser.add_argument("--out", type=Path, default=Path("runs/cat-vae"), help="output folder")
    parser.add_argument("--threads", type=int, default=None, help="torch threads per cell")
    dk.add_device_arguments(parser)
    parser.add_argument("--no-verify", action="store_true", help="skip the MNIST checksums")
    parser.add_argument("--no-download", action="store_true", help="never download MNIST")
    parser.add_argument("--quiet", action="store_true", help="no progress on stderr")
    add_sweep_arguments(parser, default_seeds=str(b["seeds"]))
    parser.set_defaults(seeds=None)


def _resolve(args: argparse.Namespace) -> tuple[list[str], list[str], list[int]]:
    budget = FULL_BUDGET if args.full else DEFAULT_BUDGET
    shapes = (
        [s.strip() for s in args.shapes.split(",") if s.strip()]
        if args.shapes
        else list(budget["shapes"])
    )
    for s in shapes:
        parse_shape(s)
    names = pwgf.registry.split_specs(args.estimators)
    if not names:
        raise pwgf.PWGFError("--estimators: no estimator given")
    for name in names:
        canonical = pwgf.registry.resolve(pwgf.registry.parse_spec(name)[0])
        if "categorical" not in pwgf.get_estimator(canonical).families:
            raise pwgf.UnsupportedFamilyError(f"--estimators: {canonical} has no categorical form")
    seeds = args.seeds if args.seeds is not None else list(range(budget["seeds"]))
    spe = (args.train_size or 60000) // BATCH
    if args.steps is None:
        epochs = args.epochs if args.epochs is not None else budget.get("epochs")
        args.steps = round(epochs * spe) if epochs is not None else budget["steps"]
    elif args.epochs is not None:
        raise pwgf.PWGFError("give --steps or --epochs, not both")
    if args.steps < 1:
        raise pwgf.PWGFError(f"--steps must be >= 1, got {args.steps}")
    if args.train_size is not None and not BATCH <= args.train_size <= 60000:
        raise pwgf.PWGFError(f"--train-size must be in [{BATCH}, 60000], got {args.train_size}")
    if args.eval_every is None:
        args.eval_every = budget["eval_every"]
    if args.eval_every < 1:
        raise pwgf.PWGFError(f"--eval-every must be >= 1, got {args.eval_every}")
    if args.threads:  # the sweep gives each cell max(1, cpus_per_cell) torch threads
        args.cpus_per_cell = float(args.threads)
    return shapes, names, seeds


def _table(rows: list[dict], shapes: list[str], names: list[str], title: str) -> str:
    by = {(r["shape"], r["estimator"]): r for r in rows}
    width = max(12, *(len(n) for n in names))
    lines = [title, f"{'':<{width}}" + "".join(f"{s:>22}" for s in shapes)]
    for name in names:
        cells = "".join(f"{format_mean_se(by.get((s, name), {}), 2, n=False):>22}" for s in shapes)
        lines.append(f"{name:<{width}}{cells}")
    return "\n".join(lines)


def _settings_table(shapes: list[str]) -> str:
    lines = [f"Published settings (lr, τ, optimiser) — {SETTINGS_SOURCE}"]
    for ours, theirs in REINMAX_NAMES.items():
        vals = [PUBLISHED_SETTINGS.get(s, {}).get(theirs) for s in shapes]
        txt = "".join(f"{f'{v[0]:g}, {v[1]:g}, {v[2]}' if v else '-':>22}" for v in vals)
        lines.append(f"{ours + ' (' + theirs + ')':<24}{txt}")
    return "\n".join(lines)


def _plot(results: list, shapes: list[str], names: list[str], path: Path, quiet: bool) -> None:
    plt = dk.pyplot(quiet)
    if plt is None:
        return
    first_seed = min((r.cell.key["seed"] for r in results), default=None)
    fig, axes = plt.subplots(1, len(shapes), figsize=(5 * len(shapes), 4), squeeze=False)
    for ax, shape in zip(axes[0], shapes, strict=True):
        for name in names:
            for r in results:
                if r.cell.key["shape"] != shape or r.cell.key["estimator"] != name:
                    continue
                hist = [h for h in r.metrics.get("history", []) if h["train_elbo"] is not None]
                if hist:
                    ax.plot(
                        [h["step"] for h in hist],
                        [h["test_elbo"] for h in hist],
                        color=f"C{names.index(name) % 10}",
                        label=name if r.cell.key["seed"] == first_seed else None,
                        alpha=0.8,
                    )
        ax.set_title(f"{shape} (categories x latents)")
        ax.set_xlabel("update")
        ax.set_ylabel("test -ELBO")
        ax.legend(fontsize=7)
    fig.tight_layout()
    dk.save_figure(fig, path, 110)


def run(args: argparse.Namespace) -> int:
    try:
        shapes, names, seeds = _resolve(args)
        canon = [pwgf.registry.resolve(pwgf.registry.parse_spec(n)[0]) for n in names]
        cells = [
            Cell(
                {"shape": s, "estimator": name, "seed": seed},
                cell_config(args, s, spec, seed),
            )
            for s in shapes
            for spec, name in zip(names, canon, strict=True)
            for seed in seeds
        ]
        dk.resolve_device(args.device)
        load_mnist(cells[0].config["data_dir"], not args.no_verify, not args.no_download)
    except pwgf.PWGFError as e:
        print(f"pwgf cat-vae: {e}", file=sys.stderr)
        return 2
    out = Path(args.out)
    budget = "full (paper)" if args.full else "default CPU budget"
    if not args.quiet:
        print(
            f"cat-vae: {len(shapes)} shapes x {len(canon)} estimators x {len(seeds)} seeds, "
            f"{args.steps} updates of batch {BATCH} each ({budget}); output in {out}",
            file=sys.stderr,
        )
    try:
        results = run_grid(
            cells,
            "pwgf.experiments.cat_vae:train_cell",
            out,
            quiet=args.quiet,
            **sweep_options(args),
        )
    except pwgf.PWGFError as e:
        print(f"pwgf cat-vae: {e}", file=sys.stderr)
        return 2
    failed = [r for r in results if r.status != "done"]
    for r in failed:
        print(f"cell {r.cell.label()} failed: {r.error}", file=sys.stderr)
    tables = {}
    for metric in ("train_elbo", "test_elbo", "ms_per_step"):
        tables[metric] = aggregate(results, metric, ("shape", "estimator"))
        write_table_rows(tables[metric], out / f"cat-vae-{metric}")
    summary = {
        "budget": budget,
        "steps": args.steps,
        "shapes": shapes,
        "estimators": canon,
        "seeds": seeds,
        "settings_source": SETTINGS_SOURCE,
        "published_settings": {s: PUBLISHED_SETTINGS.get(s) for s in shapes},
        "tables": tables,
    }
    dk.write_json(out / "results.json", summary)
    print(
        _table(
            tables["train_elbo"],
            shapes,
            canon,
            "Training -ELBO (last epoch's average, mean ± s.e. over seeds; lower is better)",
        )
    )
    print()
    print(_table(tables["test_elbo"], shapes, canon, "Test -ELBO (one sample per image)"))
    print()
    print(_table(tables["ms_per_step"], shapes, canon, "Milliseconds per update"))
    print()
    print(_settings_table(shapes))
    print(
        "Published -ELBO values: see the paper's MNIST-VAE table (arXiv 2304.08612); this "
        "command does not reproduce them from memory."
    )
    _plot(results, shapes, canon, out / "cat-vae.png", args.quiet)
    return 1 if failed else 0
