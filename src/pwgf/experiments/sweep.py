"""The sweep layer: a grid of resumable training runs, one executor, one progress display.

A benchmark command builds a list of ``Cell`` (``key``: what identifies the cell, e.g.
``{"estimator": "st", "arch": "linear", "seed": 0}``; ``config``: everything the run needs) and
hands it to ``run_grid`` with the name of a cell function ``"package.module:function"``,
``fn(config: dict, out_dir: Path) -> dict`` (JSON-able metrics). The function checkpoints into
``out_dir`` and resumes from it when called again; the layer does the rest:

- each cell runs in ``out/<cell.name>/`` and its outcome is written to ``result.json`` there;
- a cell whose ``result.json`` says done, with the same config, is never recomputed (config
  keys starting with ``_`` are where-to-run details, such as a data folder or a device, and do
  not count);
- an exception in one cell is recorded (status ``"failed"``, the message; the traceback in
  ``error.txt``) and the other cells go on; failed cells run again on the next call;
- executors: ``"local"`` (in this process, or ``jobs`` worker processes) and ``"ray"``: each cell
  a Ray task declaring ``num_cpus``/``num_gpus`` (fractional allowed, so small models can share a
  GPU), retried by Ray when its worker dies (``max_retries``), and then resuming from its
  checkpoint. On a cluster ``out`` must be on a file system every node sees;
- one progress bar for the whole grid (tqdm if importable, else plain lines): cells done,
  running, failed, and the ETA;
- two sweeps writing to the same ``out`` at once are refused (a lock file).

Each cell runs with ``max(1, int(cpus_per_cell))`` torch threads under every executor, so the
same grid gives the same numbers whichever executor runs it.

``aggregate`` turns the results into rows of mean, standard error over seeds, n and the
per-seed values; ``format_mean_se``, ``write_rows`` and ``band`` print, save and plot
them.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import hashlib
import importlib
import json
import math
import os
import re
import sys
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pwgf

from . import diagkit as dk

EXECUTORS = ("local", "ray")
RESULT = "result.json"
_SAFE = re.compile(r"[^A-Za-z0-9._-]+")
_MAX_NAME = 120


class SweepError(pwgf.PWGFError):
    """A grid that cannot run as asked (bad cell, bad function name, busy output folder...)."""


@dataclass(frozen=True)
class Cell:
    """One run of a grid: ``key`` identifies it (JSON-able scalars), ``config`` is what it needs."""

    key: dict[str, Any]
    config: dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        """A file-system-safe folder name, ``field-value_field-value``, unique per key: a short
        hash of the key is appended when characters had to be replaced or the name shortened."""
        raw = "_".join(f"{k}-{v}" for k, v in self.key.items())
        safe = _SAFE.sub("~", raw).strip(".") or "cell"
        if safe != raw or len(safe) > _MAX_NAME:
            digest = hashlib.sha1(_canonical(self.key).encode()).hexdigest()[:8]
            safe = f"{safe[:_MAX_NAME]}~{digest}"
        return safe

    def label(self) -> str:
        return "/".join(str(v) for v in self.key.values())


@dataclass
class CellResult:
    """The outcome of one cell; ``cached``: read from a previous call, not recomputed."""

    cell: Cell
    status: str  # "done" | "failed"
    metrics: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    wall_s: float = 0.0
    cached: bool = False

    def to_json(self) -> dict[str, Any]:
        return {
            "key": self.cell.key,
            "config": self.cell.config,
            "status": self.status,
            "metrics": self.metrics,
            "error": self.error,
            "wall_s": self.wall_s,
        }


def _canonical(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, allow_nan=True)


def _identity(config: Any) -> str:
    """What makes two configs the same run: every key but those starting with ``_``."""
    if isinstance(config, dict):
        config = {k: v for k, v in config.items() if not str(k).startswith("_")}
    return _canonical(config)


def _check_cells(cells: Sequence[Cell]) -> None:
    seen: dict[str, Cell] = {}
    for c in cells:
        if not isinstance(c, Cell):
            raise SweepError(f"run_grid takes Cell objects, got {type(c).__name__}")
        for what, obj in (("key", c.key), ("config", c.config)):
            try:
                json.dumps(obj, allow_nan=True)
            except (TypeError, ValueError) as e:
                raise SweepError(f"cell {c.key!r}: its {what} is not JSON-able ({e})") from None
        if c.name in seen:
            raise SweepError(f"two cells share the name {c.name!r}: {seen[c.name].key} and {c.key}")
        seen[c.name] = c


def resolve_fn(fn: str) -> Callable[[dict[str, Any], Path], dict[str, Any]]:
    """Import ``"package.module:function"``."""
    mod_name, sep, attr = fn.partition(":")
    if not sep or not mod_name or not attr:
        raise SweepError(f"cell function {fn!r}: expected 'package.module:function'")
    try:
        obj = getattr(importlib.import_module(mod_name), attr)
    except (ImportError, AttributeError) as e:
        raise SweepError(f"cell function {fn!r} cannot be imported: {e}") from None
    if not callable(obj):
        raise SweepError(f"cell function {fn!r} is not callable")
    return obj


def read_result(cell: Cell, out: Path) -> CellResult | None:
    """The recorded outcome of ``cell`` under ``out``, or None (none, unreadable, other config)."""
    try:
        data = json.loads((Path(out) / cell.name / RESULT).read_text())
    except (OSError, json.JSONDecodeError):
        return None
    if not isinstance(data, dict) or _identity(data.get("config")) != _identity(cell.config):
        return None
    if data.get("status") not in ("done", "failed"):
        return None
    return CellResult(
        cell,
        data["status"],
        data.get("metrics") or {},
        data.get("error"),
        float(data.get("wall_s") or 0.0),
        cached=True,
    )


def read_results(cells: Sequence[Cell], out: Path) -> list[CellResult]:
    """The recorded outcomes of those cells that have one (for a report without running)."""
    return [r for r in (read_result(c, out) for c in cells) if r is not None]


def _write_json(path: Path, obj: Any) -> None:
    dk.atomic_write_text(path, json.dumps(obj, indent=1, allow_nan=True))


@contextlib.contextmanager
def _threads(n: int) -> Iterator[None]:
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def execute_cell(fn: str, key: dict[str, Any], config: dict[str, Any], out_dir: str, threads: int):
    """Run one cell where it is called (this process, a worker process or a Ray task) and return
    its outcome as a JSON-able dict; an exception (SystemExit too: a cell must not end the grid)
    becomes ``status: failed``. KeyboardInterrupt propagates (the cell function has saved its
    checkpoint)."""
    d = Path(out_dir)
    d.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    try:
        with _threads(threads):
            metrics = resolve_fn(fn)(dict(config), d)
        if not isinstance(metrics, dict):
            raise SweepError(f"{fn} returned {type(metrics).__name__}, expected a dict of metrics")
        json.dumps(metrics, allow_nan=True)
        status, error = "done", None
        (d / "error.txt").unlink(missing_ok=True)
    except (Exception, SystemExit) as e:
        metrics, status = {}, "failed"
        error = f"{type(e).__name__}: {e}".strip()
        with contextlib.suppress(OSError):
            (d / "error.txt").write_text(traceback.format_exc())
    return {
        "key": key,
        "config": config,
        "status": status,
        "metrics": metrics,
        "error": error,
        "wall_s": time.perf_counter() - t0,
    }


# -- progress ------------------------------------------------------------------------------------
class _Progress:
    """One bar for the grid: done / running / failed and tqdm's ETA; plain lines without tqdm."""

    def __init__(self, total: int, cached: int, quiet: bool) -> None:
        self.total, self.quiet = total, quiet
        self.done, self.failed, self.running = cached, 0, 0
        self.bar = None
        self.t0 = time.perf_counter()
        self.new = 0
        if quiet:
            return
        try:
            from tqdm.auto import tqdm
        except ImportError:
            print(f"sweep: {total} cells, {cached} already done; running the rest", file=sys.stderr)
            return
        self.bar = tqdm(
            total=total, initial=cached, desc="cells", unit="cell", file=sys.stderr, smoothing=0
        )
        self._post()

    def _post(self, refresh: bool = True) -> None:
        if self.bar is not None:
            self.bar.set_postfix(
                done=self.done, running=self.running, failed=self.failed, refresh=refresh
            )

    def set_running(self, n: int) -> None:
        if n != self.running:
            self.running = n
            self._post()

    def finish_cell(self, r: CellResult) -> None:
        self.new += 1
        if r.status == "done":
            self.done += 1
        else:
            self.failed += 1
        if self.quiet:
            return
        if self.bar is not None:
            if r.status == "failed":
                self.bar.write(f"sweep: {r.cell.label()} failed: {r.error}", file=sys.stderr)
            self._post(refresh=False)
            self.bar.update(1)
            return
        n = self.done + self.failed
        left = self.total - n
        elapsed = time.perf_counter() - self.t0
        eta = f", ETA {elapsed / self.new * left:.0f} s" if left else ""
        state = "done" if r.status == "done" else f"FAILED ({r.error})"
        print(
            f"sweep [{n}/{self.total}] {r.cell.label()}: {state} in {r.wall_s:.0f} s "
            f"(done {self.done}, running {self.running}, failed {self.failed}{eta})",
            file=sys.stderr,
        )

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


# -- executors -----------------------------------------------------------------------------------
def _as_result(cell: Cell, data: dict[str, Any]) -> CellResult:
    return CellResult(
        cell, data["status"], data.get("metrics") or {}, data.get("error"), data["wall_s"]
    )


def _run_local(
    todo: list[Cell],
    fn: str,
    out: Path,
    threads: int,
    jobs: int,
    max_retries: int,
    record: Callable,
    progress: _Progress,
) -> None:
    if jobs <= 1:
        for c in todo:
            progress.set_running(1)
            record(c, execute_cell(fn, c.key, c.config, str(out / c.name), threads))
        progress.set_running(0)
        return
    import multiprocessing
    from multiprocessing.connection import wait

    # spawn, not fork: a forked copy of a process with torch's thread pools can deadlock. One
    # process per cell, so that a dying process names its cell and an interrupted one takes no
    # further work.
    ctx = multiprocessing.get_context("spawn")
    attempts = dict.fromkeys((c.name for c in todo), 0)
    queue = list(todo)
    running: dict[Any, tuple[Any, Cell]] = {}  # connection -> (process, cell)
    interrupted = False
    try:
        while queue or running:
            while queue and len(running) < jobs and not interrupted:
                c = queue.pop(0)
                recv, send = ctx.Pipe(duplex=False)
                proc = ctx.Process(
                    target=_process_main,
                    args=(send, fn, c.key, c.config, str(out / c.name), threads),
                    daemon=True,
                )
                proc.start()
                send.close()
                running[recv] = (proc, c)
            progress.set_running(len(running))
            for conn in wait(list(running), timeout=5.0):
                proc, c = running.pop(conn)
                try:
                    data = conn.recv()
                except EOFError:
                    data = "died"
                conn.close()
                proc.join()
                if data is None:  # the cell was interrupted (Ctrl-C reached it): stop the grid
                    interrupted = True
                elif data == "died":
                    # killed, out of memory...: retried, resuming from its checkpoint
                    attempts[c.name] += 1
                    if attempts[c.name] > max_retries:
                        what = f"worker process died (exit code {proc.exitcode})"
                        record(c, _died(c, what, max_retries))
                    else:
                        queue.insert(0, c)
                else:
                    record(c, data)
        if interrupted:
            raise KeyboardInterrupt
    except BaseException:
        _stop_processes([p for p, _ in running.values()])
        raise
    progress.set_running(0)


def _process_main(conn: Any, fn: str, key: dict, config: dict, out_dir: str, threads: int) -> None:
    """A local worker process: one cell; sends its outcome, or None when interrupted. It leaves
    the terminal's process group, so that Ctrl-C reaches only the parent, which then passes on
    exactly one SIGINT (a second one would stop the cell before it saves)."""
    if hasattr(os, "setpgrp"):
        os.setpgrp()
    try:
        data = execute_cell(fn, key, config, out_dir, threads)
    except KeyboardInterrupt:
        data = None
    conn.send(data)
    conn.close()


def _stop_processes(procs: list[Any], patience: float = 120.0) -> None:
    """Stop running cells as Ctrl-C would: one SIGINT each (the cell function saves its
    checkpoint); those still running after ``patience`` seconds are terminated."""
    import signal

    for p in procs:
        if p.is_alive():
            with contextlib.suppress(OSError):
                os.kill(p.pid, signal.SIGINT)
    deadline = time.monotonic() + patience
    for p in procs:
        p.join(max(0.0, deadline - time.monotonic()))
        if p.is_alive():
            p.terminate()
            p.join(5.0)


def _died(c: Cell, what: str, retries: int) -> dict[str, Any]:
    return {"status": "failed", "error": f"{what} ({retries} retries)", "wall_s": 0.0}


def _run_ray(
    todo: list[Cell],
    fn: str,
    out: Path,
    threads: int,
    cpus: float,
    gpus: float,
    address: str | None,
    max_retries: int,
    record: Callable,
    progress: _Progress,
) -> None:
    try:
        import ray
    except ImportError:
        raise SweepError(
            "--executor ray needs Ray: pip install 'pwgf[ray]' (or 'ray[default]')"
        ) from None
    if not ray.is_initialized():
        if address is not None:
            ray.init(address=address, log_to_driver=False)
        else:
            ray.init(include_dashboard=False, log_to_driver=False)
    elif address is not None:
        print("sweep: Ray is already initialised here; ignoring --ray-address", file=sys.stderr)
    # max_retries: Ray reruns the task when its worker or node dies; the cell function then
    # resumes from its checkpoint. Exceptions in the cell are caught inside the task instead.
    task = ray.remote(execute_cell).options(
        num_cpus=cpus, num_gpus=gpus, max_retries=max_retries, retry_exceptions=False
    )
    refs = {task.remote(fn, c.key, c.config, str(out.resolve() / c.name), threads): c for c in todo}
    res = ray.cluster_resources()
    slots = [res.get("CPU", 1.0) / cpus if cpus > 0 else math.inf]
    if gpus > 0:
        slots.append(res.get("GPU", 0.0) / gpus)
    width = max(1, int(min(slots))) if math.isfinite(min(slots)) else len(refs)
    try:
        while refs:
            # an estimate: Ray does not say which queued tasks have started
            progress.set_running(min(width, len(refs)))
            ready, _ = ray.wait(list(refs), num_returns=1, timeout=5.0)
            for ref in ready:
                c = refs.pop(ref)
                try:
                    data = ray.get(ref)
                except Exception as e:  # retries exhausted, or the task could not be scheduled
                    data = {
                        "status": "failed",
                        "error": f"Ray task failed: {type(e).__name__}: {str(e)[:300]}",
                        "wall_s": 0.0,
                    }
                record(c, data)
    except KeyboardInterrupt:
        for ref in refs:
            with contextlib.suppress(Exception):
                ray.cancel(ref)
        raise
    progress.set_running(0)


@contextlib.contextmanager
def _lock(out: Path) -> Iterator[None]:
    """Refuse a second sweep on the same folder; the lock goes with the process (flock)."""
    try:
        import fcntl
    except ImportError:  # not POSIX: no lock
        yield
        return
    fh = open(out / ".sweep.lock", "a+")  # held for the whole grid
    try:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise SweepError(
                f"{out} is in use by another sweep (lock {out / '.sweep.lock'}); wait for it or "
                "use another --out"
            ) from None
        yield
    finally:
        fh.close()


def run_grid(
    cells: list[Cell],
    fn: str,
    out: Path,
    *,
    executor: str = "local",
    ray_address: str | None = None,
    cpus_per_cell: float = 1.0,
    gpus_per_cell: float = 0.0,
    quiet: bool = False,
    jobs: int = 1,
    max_retries: int = 3,
) -> list[CellResult]:
    """Run every cell not already done (see the module docstring); results in ``cells`` order.

    ``jobs`` (local executor only): cells run at once, each in its own worker process.
    ``max_retries`` (Ray only): reruns of a cell whose worker dies.
    """
    if executor not in EXECUTORS:
        raise SweepError(f"unknown executor {executor!r}; choose from {', '.join(EXECUTORS)}")
    if not (cpus_per_cell >= 0 and math.isfinite(cpus_per_cell)):
        raise SweepError(f"cpus_per_cell must be a finite number >= 0, got {cpus_per_cell}")
    if not (gpus_per_cell >= 0 and math.isfinite(gpus_per_cell)):
        raise SweepError(f"gpus_per_cell must be a finite number >= 0, got {gpus_per_cell}")
    if cpus_per_cell == 0 and gpus_per_cell == 0:
        raise SweepError("a cell must ask for some CPU or GPU (cpus_per_cell = gpus_per_cell = 0)")
    if jobs < 1:
        raise SweepError(f"jobs must be >= 1, got {jobs}")
    _check_cells(cells)
    resolve_fn(fn)  # fail on a typo before anything runs
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    threads = max(1, int(cpus_per_cell))
    results: dict[str, CellResult] = {}
    todo: list[Cell] = []
    for c in cells:
        r = read_result(c, out)
        if r is not None and r.status == "done":
            results[c.name] = r
        else:
            todo.append(c)
    with _lock(out):
        progress = _Progress(len(cells), len(results), quiet)

        def record(c: Cell, data: dict[str, Any]) -> None:
            r = _as_result(c, data)
            (out / c.name).mkdir(parents=True, exist_ok=True)
            _write_json(out / c.name / RESULT, r.to_json())
            results[c.name] = r
            progress.finish_cell(r)

        try:
            if todo and executor == "local":
                _run_local(todo, fn, out, threads, jobs, max_retries, record, progress)
            elif todo:
                _run_ray(
                    todo,
                    fn,
                    out,
                    threads,
                    cpus_per_cell,
                    gpus_per_cell,
                    ray_address,
                    max_retries,
                    record,
                    progress,
                )
        finally:
            progress.close()
    return [results[c.name] for c in cells if c.name in results]


# -- aggregation ---------------------------------------------------------------------------------
def aggregate(results: Sequence[CellResult], metric: str, by: tuple[str, ...]) -> list[dict]:
    """Group the done cells by the key fields ``by`` (first-seen order). Each row: the ``by``
    fields, ``n``, ``mean``, ``se`` (sample standard deviation / sqrt(n); None for n < 2),
    ``values`` (per cell, in order), ``seeds`` (the cells' ``seed`` key, when present) and
    ``failed`` (cells of the group that failed). Cells without the metric are left out of n."""
    groups: dict[tuple, dict[str, Any]] = {}
    for r in results:
        g = tuple(r.cell.key.get(b) for b in by)
        row = groups.setdefault(g, {**dict(zip(by, g, strict=True)), "_v": [], "_s": [], "f": 0})
        if r.status != "done":
            row["f"] += 1
            continue
        v = r.metrics.get(metric)
        if v is None:
            continue
        row["_v"].append(float(v))
        row["_s"].append(r.cell.key.get("seed"))
    rows = []
    for row in groups.values():
        vals, seeds, failed = row.pop("_v"), row.pop("_s"), row.pop("f")
        n = len(vals)
        mean = math.fsum(vals) / n if n else None
        se = None
        if n >= 2:
            var = math.fsum((v - mean) ** 2 for v in vals) / (n - 1)
            se = math.sqrt(var / n)
        row.update(n=n, mean=mean, se=se, values=vals, seeds=seeds, failed=failed)
        rows.append(row)
    return rows


def format_mean_se(row: dict[str, Any], digits: int = 1, n: bool = True) -> str:
    """``mean ± se (n)``; ``-`` without values; ``failed`` when every cell failed."""
    if not row or row.get("mean") is None:
        return "failed" if row and row.get("failed") else "-"
    txt = f"{row['mean']:.{digits}f}"
    if row.get("se") is not None:
        txt += f" ± {row['se']:.{digits}f}"
    if n:
        txt += f" (n={row['n']})"
    if row.get("failed"):
        txt += f" [{row['failed']} failed]"
    return txt


def write_rows(rows: Sequence[dict[str, Any]], stem: Path) -> tuple[Path, Path]:
    """``stem.csv`` (one line per row; per-seed values ``;``-separated) and ``stem.json``."""
    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    js = stem.with_suffix(".json")
    _write_json(js, list(rows))
    cols: list[str] = list(dict.fromkeys(k for r in rows for k in r))
    path = stem.with_suffix(".csv")

    def write(tmp: Path) -> None:
        with open(tmp, "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(cols)
            for r in rows:
                w.writerow(
                    [
                        ";".join(map(str, r.get(k))) if isinstance(r.get(k), list) else r.get(k)
                        for k in cols
                    ]
                )

    dk.atomic_write(path, write)
    return path, js


def band(
    ax: Any, curves: Sequence[tuple[Sequence[float], Sequence[float]]], label: str, **kw: Any
) -> None:
    """Plot the mean over seeds of several ``(xs, ys)`` curves and a ±1 s.e. band, on the x
    values all of them share."""
    if not curves:
        return
    common = set(curves[0][0])
    for xs, _ in curves[1:]:
        common &= set(xs)
    xs = sorted(common)
    if not xs:
        return
    table = [dict(zip(cx, cy, strict=True)) for cx, cy in curves]
    means, ses = [], []
    for x in xs:
        vals = [t[x] for t in table]
        m = math.fsum(vals) / len(vals)
        s = (
            math.sqrt(math.fsum((v - m) ** 2 for v in vals) / (len(vals) - 1) / len(vals))
            if len(vals) > 1
            else 0.0
        )
        means.append(m)
        ses.append(s)
    (line,) = ax.plot(xs, means, label=f"{label} (n={len(curves)})", **kw)
    ax.fill_between(
        xs,
        [m - s for m, s in zip(means, ses, strict=True)],
        [m + s for m, s in zip(means, ses, strict=True)],
        color=line.get_color(),
        alpha=0.25,
        linewidth=0,
    )


# -- command line --------------------------------------------------------------------------------
def _positive_float(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not (math.isfinite(v) and v >= 0):
        raise argparse.ArgumentTypeError(f"expected a finite number >= 0, got {text!r}")
    return v


def _positive_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}")
    return v


def parse_seeds(text: str) -> list[int]:
    """``N`` (seeds 0..N-1), ``a,b,c`` or ``a-b`` (inclusive); distinct, non-negative."""
    t = text.strip()
    try:
        if re.fullmatch(r"\d+", t):
            n = int(t)
            if n < 1:
                raise argparse.ArgumentTypeError("--seeds N needs N >= 1")
            return list(range(n))
        if m := re.fullmatch(r"(\d+)-(\d+)", t):
            a, b = int(m[1]), int(m[2])
            if b < a:
                raise argparse.ArgumentTypeError(f"--seeds {t}: empty range")
            return list(range(a, b + 1))
        seeds = [int(s) for s in t.split(",") if s.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--seeds {text!r}: expected N, a list like 0,1,2, or a range like 0-4"
        ) from None
    if not seeds or any(s < 0 for s in seeds):
        raise argparse.ArgumentTypeError(f"--seeds {text!r}: seeds must be integers >= 0")
    if len(set(seeds)) != len(seeds):
        raise argparse.ArgumentTypeError(f"--seeds {text!r}: a seed is repeated")
    return seeds


def add_sweep_arguments(parser: argparse.ArgumentParser, default_seeds: str = "1") -> None:
    """``--seeds``, ``--executor``, ``--ray-address``, ``--cpus-per-cell``, ``--gpus-per-cell``,
    ``--jobs``; ``args.seeds`` is a list of ints."""
    g = parser.add_argument_group("sweep (the grid of runs)")
    g.add_argument(
        "--seeds",
        type=parse_seeds,
        default=parse_seeds(default_seeds),
        metavar="SEEDS",
        help="N (seeds 0..N-1), a list 0,3,7 or a range 0-4",
    )
    g.add_argument("--executor", choices=EXECUTORS, default="local", help="where cells run")
    g.add_argument(
        "--ray-address",
        default=None,
        help="Ray cluster to join (e.g. auto, or ray://host:10001); default: a local Ray instance",
    )
    g.add_argument(
        "--cpus-per-cell",
        type=_positive_float,
        default=1.0,
        help="CPUs each cell asks for (Ray: num_cpus; also the cell's torch threads)",
    )
    g.add_argument(
        "--gpus-per-cell",
        type=_positive_float,
        default=0.0,
        help="GPUs each cell asks for under Ray, fractional to share one",
    )
    g.add_argument(
        "--jobs",
        type=_positive_int,
        default=1,
        help="local executor: cells run at once, each in a worker process (1: in this process)",
    )


def sweep_options(args: argparse.Namespace) -> dict[str, Any]:
    """The keyword arguments of ``run_grid`` from parsed ``add_sweep_arguments``."""
    if args.jobs < 1:
        raise SweepError(f"--jobs must be >= 1, got {args.jobs}")
    if args.executor == "local" and args.gpus_per_cell:
        print("sweep: --gpus-per-cell only applies to --executor ray", file=sys.stderr)
    if args.executor == "ray" and args.jobs != 1:
        print("sweep: --jobs only applies to --executor local", file=sys.stderr)
    return {
        "executor": args.executor,
        "ray_address": args.ray_address,
        "cpus_per_cell": args.cpus_per_cell,
        "gpus_per_cell": args.gpus_per_cell,
        "jobs": args.jobs,
    }


# -- a reference cell function -------------------------------------------------------------------
def toy_cell(config: dict[str, Any], out_dir: Path) -> dict[str, Any]:
    """A tiny resumable training run, the pattern a cell function follows (and what the tests
    run): noisy gradient descent on ``|θ - 1|²`` for ``config["steps"]`` steps from
    ``config["seed"]``, checkpointed (parameters, step and RNG state) after every step so that a
    resumed run gives the same numbers as an uninterrupted one.

    Test hooks: ``fail: true`` raises; ``crash_at: k`` kills the process at step k once (the
    marker ``crashed`` in ``out_dir`` remembers it), as a dying worker would.
    """
    import torch

    if config.get("fail"):
        raise RuntimeError(f"toy cell asked to fail (seed {config.get('seed')})")
    ckpt = Path(out_dir) / "checkpoint.pt"
    gen = torch.Generator().manual_seed(int(config.get("seed", 0)))
    theta = torch.zeros(int(config.get("dim", 3)), dtype=torch.float64)
    step, resumed = 0, False
    if ckpt.exists():
        saved = torch.load(ckpt, weights_only=False)
        theta, step, resumed = saved["theta"], saved["step"], True
        gen.set_state(saved["rng"])
    lr = float(config.get("lr", 0.1))
    while step < int(config["steps"]):
        noise = torch.randn(theta.shape, generator=gen, dtype=theta.dtype)
        theta = theta - lr * (2 * (theta - 1.0) + config.get("noise", 1.0) * noise)
        step += 1
        dk.atomic_save({"theta": theta, "step": step, "rng": gen.get_state()}, ckpt)
        marker = Path(out_dir) / "crashed"
        if step == config.get("crash_at") and not marker.exists():
            marker.touch()
            os._exit(3)
    return {"loss": float(((theta - 1.0) ** 2).sum()), "steps": step, "resumed": resumed}
