"""Small helpers shared by the commands: the list of estimators to run, an f wrapper that
counts evaluations, a progress line on stderr, timing, writers for CSV / JSON / plots, and the
pieces that keep a command's input and output safe:

* ``UsageError`` (bad command-line input: ``pwgf`` prints it on one line, exit code 2) and
  argparse types that check a value up front (``positive_int``, ``nonnegative_int``,
  ``positive_float``, ...);
* ``add_thread_arguments`` (one ``--threads`` policy for every command) and
  ``add_device_arguments`` / ``resolve_device`` / ``resolve_dtype``;
* ``OutputLock`` (one run at a time per output folder; a stale lock of a dead process is
  taken over), ``atomic_write_text`` / ``atomic_save`` (write through a temporary file
  that is removed if the write fails, e.g. on a full disk) and ``load_checkpoint`` (a
  truncated or garbage checkpoint is a clear error, never silently replaced).
"""

from __future__ import annotations

import argparse
import csv
import errno
import json
import math
import os
import socket
import statistics
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

import pwgf


class UsageError(pwgf.PWGFError):
    """Bad command-line input; ``pwgf`` prints ``pwgf <command>: error: ...`` and exits 2."""


# -- which estimators ------------------------------------------------------------------------------
def estimator_names(family: str | None = None, only: Iterable[str] | None = None) -> list[str]:
    """Every registered estimator (but ``exact``) that supports ``family``, in registry order;
    ``only`` (names, aliases or specs with options, ``"pwgf:step=0.5,bandwidth=2"``) restricts
    the list. An item with options comes back as its canonical spec (``"pwgf:step=0.5"``), which
    ``pwgf.get_estimator`` accepts; its options are checked here, so a typo fails up front."""
    from pwgf.registry import format_spec, parse_spec, resolve

    infos = [i for i in pwgf.list_estimators() if i.name != "exact"]
    if family is not None:
        infos = [i for i in infos if family in i.families]
    if not only:
        return [i.name for i in infos]
    items = list(only)
    joined = split_names(",".join(items)) or []  # "pwgf:a=1", "b=2" -> "pwgf:a=1,b=2"
    wanted: dict[str, list[str]] = {}
    for item in joined:
        name, options = parse_spec(item)
        canonical = resolve(name)
        pwgf.get_estimator(canonical, **options)  # checks the options
        specs = wanted.setdefault(canonical, [])
        spec = format_spec(canonical, options)
        if spec not in specs:
            specs.append(spec)
    return [spec for i in infos for spec in wanted.get(i.name, [])]


def split_names(text: str | None) -> list[str] | None:
    """A comma-separated list; estimator specs keep their options together (``"st,pwgf:step=0.5,
    bandwidth=2"`` -> ``["st", "pwgf:step=0.5,bandwidth=2"]``)."""
    if not text:
        return None
    from pwgf.registry import split_specs

    return split_specs(text)


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
    atomic_write_text(path, json.dumps(obj, indent=1, default=_jsonable))


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
    try:
        fig.savefig(tmp, dpi=dpi)
        os.replace(tmp, path)
    finally:
        plt.close(fig)
        tmp.unlink(missing_ok=True)


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


# -- command-line options --------------------------------------------------------------------------
#: every command's ``--threads`` default: one torch thread (0: torch's own default, all cores)
DEFAULT_THREADS = 1
THREADS_HELP = (
    "torch CPU threads; 0: torch's default (one per core). One thread is the fastest for the "
    "small tensors of most commands, and keeps runs side by side from competing"
)


def _typed(convert: Callable[[str], Any], test: Callable[[Any], bool], what: str):
    def parse(text: str) -> Any:
        try:
            value = convert(text)
        except (TypeError, ValueError):
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if not test(value):
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
        return value

    parse.__name__ = what  # argparse names the type in some messages
    return parse


positive_int = _typed(int, lambda v: v >= 1, "an integer >= 1")
nonnegative_int = _typed(int, lambda v: v >= 0, "an integer >= 0")
positive_float = _typed(float, lambda v: math.isfinite(v) and v > 0, "a positive finite number")
nonnegative_float = _typed(float, lambda v: math.isfinite(v) and v >= 0, "a finite number >= 0")
finite_float = _typed(float, math.isfinite, "a finite number")


def add_thread_arguments(parser: Any) -> None:
    """``--threads`` with the one default of every command (``DEFAULT_THREADS``)."""
    parser.add_argument(
        "--threads", type=nonnegative_int, default=DEFAULT_THREADS, help=THREADS_HELP
    )


DTYPES = {"float32": torch.float32, "float64": torch.float64}


def add_device_arguments(parser: Any, dtype: bool = True) -> None:
    """``--device`` (and ``--dtype``) for a command that trains or evaluates a model."""
    parser.add_argument(
        "--device", default="cpu", help="torch device: cpu, cuda, cuda:1, mps (checked up front)"
    )
    if dtype:
        parser.add_argument(
            "--dtype", choices=tuple(DTYPES), default="float32", help="floating-point type"
        )


def resolve_device(name: str) -> torch.device:
    """``torch.device(name)``, checked to exist on this machine (``UsageError`` if not)."""
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError, ValueError):
        raise UsageError(
            f"--device: not a torch device: {name!r} (cpu, cuda, cuda:1, ...)"
        ) from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UsageError(f"--device {name}: CUDA is not available on this machine")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise UsageError(
                f"--device {name}: this machine has {torch.cuda.device_count()} CUDA device(s)"
            )
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise UsageError(f"--device {name}: MPS is not available on this machine")
    elif device.type not in ("cpu", "cuda", "mps"):
        raise UsageError(f"--device {name}: only cpu, cuda and mps are supported")
    return device


def resolve_dtype(name: str) -> torch.dtype:
    if name not in DTYPES:
        raise UsageError(f"--dtype must be one of {', '.join(DTYPES)}, got {name!r}")
    return DTYPES[name]


def add_common_arguments(parser: Any, out_help: str, threads: bool = True) -> None:
    """The options every diagnostic command shares: estimators, seed, threads, output."""
    parser.add_argument(
        "--estimators",
        default=None,
        help="comma-separated names or specs with options, e.g. st,pwgf:step=0.5,bandwidth=2 "
        "(default: all that apply)",
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed")
    if threads:
        add_thread_arguments(parser)
    parser.add_argument("--out", type=Path, default=None, help=out_help)
    parser.add_argument("--no-plots", action="store_true", help="write no PNG plots")
    parser.add_argument("--quiet", action="store_true", help="no progress on stderr")


# -- safe output -----------------------------------------------------------------------------------
def _tmp_path(path: Path) -> Path:
    return path.with_name(f"{path.name}.{os.getpid()}.tmp")


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """``write(tmp)`` then rename ``tmp`` over ``path``: readers see the old file or the new
    one, never half of one. If the write fails (a full disk, an interrupt) the temporary file is
    removed and ``path`` is left as it was; the error propagates."""
    path = Path(path)
    tmp = _tmp_path(path)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException as exc:
        tmp.unlink(missing_ok=True)
        if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
            raise OSError(
                exc.errno, f"no space left on the device writing {path} (left as it was)"
            ) from exc
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(text))


def atomic_save(obj: Any, path: Path) -> None:
    """``torch.save(obj, path)`` through ``atomic_write``."""
    atomic_write(path, lambda tmp: torch.save(obj, tmp))


class CorruptCheckpointError(pwgf.PWGFError):
    """A checkpoint file that cannot be read back: truncated, garbage, or of another kind."""


def load_checkpoint(
    path: Path,
    required: Iterable[str] = (),
    map_location: Any = "cpu",
    restart_flag: str | None = None,
) -> dict[str, Any]:
    """The dict saved at ``path`` by ``atomic_save``, with the ``required`` keys.

    Raises ``CorruptCheckpointError`` (naming the file and what is wrong) if it cannot be
    read: a run must never start over silently on top of the finished work it stands for.
    ``restart_flag``: the command's option that discards a checkpoint, named in the message."""
    path = Path(path)
    how = f"pass {restart_flag} to discard it" if restart_flag else "delete it"
    hint = f"it is left untouched: move it away to keep it, or {how} and start over"
    try:
        obj = torch.load(path, map_location=map_location, weights_only=False)
    except Exception as exc:
        raise CorruptCheckpointError(
            f"checkpoint {path} cannot be read (truncated or not a checkpoint: "
            f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}); {hint}"
        ) from exc
    if not isinstance(obj, dict):
        raise CorruptCheckpointError(
            f"checkpoint {path} holds a {type(obj).__name__}, not a checkpoint; {hint}"
        )
    missing = [k for k in required if k not in obj]
    if missing:
        raise CorruptCheckpointError(
            f"checkpoint {path} lacks {', '.join(missing)} (from another program or version?); "
            f"{hint}"
        )
    return obj


class OutputLock:
    """One run at a time writes to an output folder: ``with OutputLock(out): ...``.

    Creates ``out/.lock`` (exclusively) holding the process id and host. A second run finds it
    and raises ``UsageError``, naming the holder. A lock left by a process that no longer
    runs (killed, machine rebooted) on this host is stale: it is taken over, with a note on
    stderr. On another host the holder cannot be checked, so the lock is respected."""

    NAME = ".lock"

    def __init__(self, out: Path, quiet: bool = False) -> None:
        self.path = Path(out) / self.NAME
        self.quiet = quiet
        self.held = False

    def _holder(self) -> tuple[int | None, str | None]:
        try:
            info = json.loads(self.path.read_text())
            return int(info["pid"]), str(info["host"])
        except (OSError, ValueError, KeyError, TypeError):
            return None, None

    def _create(self) -> int | None:
        try:
            return os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return None

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        me = json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "time": time.time()})
        for _ in range(3):
            fd = self._create()
            if fd is not None:
                with os.fdopen(fd, "w") as fh:
                    fh.write(me)
                self.held = True
                return
            pid, host = self._holder()
            if pid is None:
                # being written this instant, or garbage: look again before taking it over
                time.sleep(0.2)
                pid, host = self._holder()
            if pid is not None and (host != socket.gethostname() or _alive(pid)):
                if pid == os.getpid() and host == socket.gethostname():
                    raise UsageError(f"{self.path.parent} is already locked by this process")
                raise UsageError(
                    f"another pwgf run (pid {pid} on {host}) is writing to "
                    f"{self.path.parent}; wait for it to finish or use another --out "
                    f"(if no such run exists, delete {self.path})"
                )
            if not self.quiet:
                print(
                    f"taking over the stale lock {self.path} (pid {pid} is not running)",
                    file=sys.stderr,
                )
            self.path.unlink(missing_ok=True)
        raise UsageError(f"could not lock {self.path.parent}: another run keeps taking it")

    def release(self) -> None:
        if self.held:
            pid, _ = self._holder()
            if pid == os.getpid():
                self.path.unlink(missing_ok=True)
            self.held = False

    def __enter__(self) -> OutputLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, owned by someone else
        return True
    return True
