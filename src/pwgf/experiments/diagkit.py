"""Small helpers shared by ``pwgf diagnose``, ``toy``, ``polynomial`` and ``bench``: the list of
estimators to run, an f wrapper that counts evaluations, a progress line on stderr, timing, and
writers for CSV / JSON / plots."""

from __future__ import annotations

import csv
import json
import math
import os
import statistics
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

import pwgf


# -- which estimators ------------------------------------------------------------------------------
def estimator_names(family: str | None = None, only: Iterable[str] | None = None) -> list[str]:
    """Every registered estimator (but ``exact``) that supports ``family``, in registry order;
    ``only`` (names or aliases) restricts the list."""
    wanted = None
    if only:
        from pwgf.registry import resolve

        wanted = {resolve(n) for n in only}
    out = []
    for info in pwgf.list_estimators():
        if info.name == "exact" or (family is not None and family not in info.families):
            continue
        if wanted is not None and info.name not in wanted:
            continue
        out.append(info.name)
    return out


def split_names(text: str | None) -> list[str] | None:
    return [s.strip() for s in text.split(",") if s.strip()] if text else None


def samples_for(est: pwgf.Estimator, k: int) -> int:
    """``k`` raised to the estimator's least number of samples (2 for leave-one-out forms)."""
    return max(int(k), int(getattr(est, "min_samples", 1)))


def clear_tuning(est: pwgf.Estimator) -> None:
    """Drop a learnable estimator's pending variance loss (surrogates made only to measure)."""
    clear = getattr(est, "clear_variance_loss", None)
    if clear is not None:
        clear()


def has_lazy_parameters(module: torch.nn.Module) -> bool:
    return any(
        isinstance(p, torch.nn.parameter.UninitializedParameter) for p in module.parameters()
    )


# -- counting evaluations of f -------------------------------------------------------------------
class CountingCost:
    """Wraps f; counts calls and evaluated points (rows of the leading sample dimension)."""

    def __init__(self, f: Callable[[Tensor], Tensor]) -> None:
        self.f = f
        self.calls = 0
        self.rows = 0

    def __call__(self, z: Tensor) -> Tensor:
        self.calls += 1
        self.rows += int(z.shape[0])
        return self.f(z)

    def reset(self) -> None:
        self.calls = 0
        self.rows = 0


# -- timing ----------------------------------------------------------------------------------------
def synchronize(device: torch.device | str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def time_calls(
    fn: Callable[[], object],
    warmup: int,
    repeats: int,
    device: torch.device | str = "cpu",
    max_seconds: float = math.inf,
) -> tuple[float, list[float]]:
    """Median wall time of ``fn()`` over ``repeats`` calls after ``warmup``; stops early (with
    at least one timed call) once ``max_seconds`` have been spent."""
    start = time.perf_counter()
    for _ in range(warmup):
        fn()
    times: list[float] = []
    for _ in range(repeats):
        synchronize(device)
        t0 = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - t0)
        if time.perf_counter() - start > max_seconds:
            break
    return statistics.median(times), times


# -- progress --------------------------------------------------------------------------------------
class Progress:
    """One status line on stderr: rewritten in place on a terminal, every ~10% otherwise."""

    def __init__(self, label: str, total: int, quiet: bool = False) -> None:
        self.label = label
        self.total = max(int(total), 1)
        self.quiet = quiet
        self.tty = sys.stderr.isatty()
        self.start = time.perf_counter()
        self.last_decile = -1
        self.last_time = 0.0

    def update(self, done: int, note: str = "") -> None:
        if self.quiet:
            return
        now = time.perf_counter()
        decile = int(10 * done / self.total)
        if self.tty:
            if now - self.last_time < 0.2 and done < self.total:
                return
        elif decile == self.last_decile and done < self.total:
            return
        self.last_decile, self.last_time = decile, now
        elapsed = now - self.start
        eta = elapsed / max(done, 1) * (self.total - done)
        line = (
            f"[{self.label}] {done}/{self.total} {elapsed:6.1f}s elapsed, ~{eta:5.1f}s left"
            f"{'  ' + note if note else ''}"
        )
        if self.tty:
            print("\r" + line[:150].ljust(150), end="", file=sys.stderr, flush=True)
        else:
            print(line, file=sys.stderr, flush=True)

    def done(self) -> None:
        if not self.quiet and self.tty:
            print(file=sys.stderr, flush=True)


# -- output ----------------------------------------------------------------------------------------
def machine() -> dict[str, Any]:
    import platform

    return {
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpu": platform.processor() or platform.machine(),
        "python": platform.python_version(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


def write_json(path: Path, obj: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=1, default=_jsonable))


def _jsonable(x: Any) -> Any:
    if isinstance(x, Tensor):
        return x.tolist()
    if isinstance(x, Path):
        return str(x)
    raise TypeError(f"not JSON serialisable: {type(x).__name__}")


def write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    keys: list[str] = []
    for r in rows:
        keys += [k for k in r if k not in keys]
    with path.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=keys)
        w.writeheader()
        for r in rows:
            w.writerow({k: _csv_value(r.get(k)) for k in keys})


def _csv_value(v: Any) -> Any:
    if isinstance(v, float):
        return f"{v:.6g}"
    if isinstance(v, list | tuple):
        return " ".join(f"{x:.6g}" if isinstance(x, float) else str(x) for x in v)
    return "" if v is None else v


def pyplot(quiet: bool = False):
    """matplotlib.pyplot with the Agg backend, or None (with a message unless ``quiet``) if not
    installed: plots are optional, the numbers are written either way."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        if not quiet:
            print(
                "matplotlib is not installed: no plots (pip install 'pwgf[plots]')",
                file=sys.stderr,
            )
        return None
    return plt


def save_figure(fig: Any, path: Path, dpi: int) -> None:
    """Write ``fig`` to ``path`` through a temporary file, so an interrupted run never leaves a
    half-written PNG where a finished one was, and close it."""
    import matplotlib.pyplot as plt

    tmp = path.with_name(path.name + ".tmp.png")
    fig.savefig(tmp, dpi=dpi)
    plt.close(fig)
    os.replace(tmp, path)


def colours(names: list[str]) -> dict[str, Any]:
    """A fixed colour per estimator name (stable across the plots of one run)."""
    import matplotlib

    cmap = matplotlib.colormaps["tab20"]
    order = list(range(0, 20, 2)) + list(range(1, 20, 2))  # the ten dark colours first
    return {n: cmap(order[i % 20]) for i, n in enumerate(names)}


def fmt(x: float | None, spec: str = ".3g", width: int = 9) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-".rjust(width)
    return format(x, spec).rjust(width)


def with_threads(threads: int | None, fn: Callable[[], int]) -> int:
    """``fn()`` with torch's intra-op threads set to ``threads`` (unchanged for None or 0), and
    restored afterwards: tiny tensors run faster on one thread, above all on a busy machine."""
    old = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        return fn()
    finally:
        torch.set_num_threads(old)


def add_common_arguments(parser: Any, out_help: str, threads: bool = True) -> None:
    """The options every diagnostic command shares: estimators, seed, threads, output."""
    parser.add_argument("--estimators", default=None, help="comma-separated names (all)")
    parser.add_argument("--seed", type=int, default=0)
    if threads:
        parser.add_argument("--threads", type=int, default=1, help="torch threads (1)")
    parser.add_argument("--out", type=Path, default=None, help=out_help)
    parser.add_argument("--no-plots", action="store_true")
    parser.add_argument("--quiet", action="store_true", help="no progress on stderr")
