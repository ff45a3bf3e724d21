"""The sweep layer: finished cells kept, failures isolated, resume, aggregation, executors agree."""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pwgf.experiments import sweep
from pwgf.experiments.sweep import Cell, aggregate, run_grid

TOY = "pwgf.experiments.sweep:toy_cell"


def grid(steps: int = 5, seeds=(0, 1, 2), fail: tuple = ()) -> list[Cell]:
    return [
        Cell(
            {"lr": lr, "seed": s},
            {"lr": lr, "seed": s, "steps": steps, "fail": (lr, s) in fail},
        )
        for lr in (0.1, 0.2)
        for s in seeds
    ]


def test_cell_name_is_safe_and_unique():
    a = Cell({"estimator": "pwgf:step=0.5", "seed": 0})
    b = Cell({"estimator": "pwgf:step=0/5", "seed": 0})
    assert "/" not in a.name and ":" not in a.name and a.name != b.name
    assert Cell({"arch": "linear", "seed": 1}).name == "arch-linear_seed-1"
    assert len(Cell({"x": "y" * 500}).name) < 140


def test_run_aggregate_and_skip_finished(tmp_path):
    cells = grid()
    res = run_grid(cells, TOY, tmp_path, quiet=True)
    assert [r.cell for r in res] == cells
    assert all(r.status == "done" and not r.cached for r in res)
    for c in cells:
        saved = json.loads((tmp_path / c.name / "result.json").read_text())
        assert saved["status"] == "done" and saved["config"] == c.config
    rows = aggregate(res, "loss", by=("lr",))
    assert [r["lr"] for r in rows] == [0.1, 0.2]
    for row in rows:
        vals = [r.metrics["loss"] for r in res if r.cell.key["lr"] == row["lr"]]
        m = sum(vals) / 3
        se = math.sqrt(sum((v - m) ** 2 for v in vals) / 2 / 3)
        assert row["n"] == 3 and row["values"] == vals and row["seeds"] == [0, 1, 2]
        assert row["mean"] == pytest.approx(m) and row["se"] == pytest.approx(se)
    # second call: nothing recomputed (the checkpoints are gone, so a rerun would differ)
    for c in cells:
        (tmp_path / c.name / "checkpoint.pt").unlink()
    again = run_grid(cells, TOY, tmp_path, quiet=True)
    assert all(r.cached for r in again)
    assert [r.metrics for r in again] == [r.metrics for r in res]
    # a changed config is a different run: recomputed
    changed = [Cell(c.key, {**c.config, "steps": 6}) for c in cells[:1]]
    (r,) = run_grid(changed, TOY, tmp_path, quiet=True)
    assert not r.cached and r.metrics["steps"] == 6


def test_failure_is_isolated_and_retried(tmp_path):
    cells = grid(fail={(0.2, 1)})
    res = run_grid(cells, TOY, tmp_path, quiet=True)
    failed = [r for r in res if r.status == "failed"]
    assert len(failed) == 1 and failed[0].cell.key == {"lr": 0.2, "seed": 1}
    assert "RuntimeError: toy cell asked to fail" in failed[0].error
    assert "Traceback" in (tmp_path / failed[0].cell.name / "error.txt").read_text()
    assert sum(r.status == "done" for r in res) == 5
    rows = aggregate(res, "loss", by=("lr",))
    assert rows[1]["n"] == 2 and rows[1]["failed"] == 1
    assert "[1 failed]" in sweep.format_mean_se(rows[1])
    fixed = grid()
    again = run_grid(fixed, TOY, tmp_path, quiet=True)
    assert all(r.status == "done" for r in again)
    assert sum(not r.cached for r in again) == 1


def test_resume_matches_uninterrupted(tmp_path):
    whole = sweep.toy_cell({"seed": 4, "steps": 8}, _mk(tmp_path / "a"))
    half = sweep.toy_cell({"seed": 4, "steps": 3}, _mk(tmp_path / "b"))
    rest = sweep.toy_cell({"seed": 4, "steps": 8}, tmp_path / "b")
    assert not half["resumed"] and rest["resumed"] and rest["loss"] == whole["loss"]


def _mk(p: Path) -> Path:
    p.mkdir(parents=True)
    return p


def test_bad_input(tmp_path):
    with pytest.raises(sweep.SweepError, match="cannot be imported"):
        run_grid(grid(), "pwgf.experiments.sweep:nope", tmp_path, quiet=True)
    with pytest.raises(sweep.SweepError, match=r"package\.module:function"):
        run_grid(grid(), "toy_cell", tmp_path, quiet=True)
    with pytest.raises(sweep.SweepError, match="share the name"):
        run_grid([Cell({"a": 1}), Cell({"a": 1})], TOY, tmp_path, quiet=True)
    with pytest.raises(sweep.SweepError, match="JSON"):
        run_grid([Cell({"a": 1}, {"x": object()})], TOY, tmp_path, quiet=True)
    with pytest.raises(sweep.SweepError, match="executor"):
        run_grid(grid(), TOY, tmp_path, executor="slurm", quiet=True)
    with pytest.raises(sweep.SweepError, match="cpus_per_cell"):
        run_grid(grid(), TOY, tmp_path, cpus_per_cell=-1, quiet=True)


@pytest.mark.parametrize(
    ("text", "seeds"), [("3", [0, 1, 2]), ("0,4,2", [0, 4, 2]), ("2-4", [2, 3, 4])]
)
def test_parse_seeds(text, seeds):
    assert sweep.parse_seeds(text) == seeds


@pytest.mark.parametrize("text", ["abc", "0", "1,1", "-1", "4-2", ""])
def test_parse_seeds_rejects(text):
    p = argparse.ArgumentParser()
    sweep.add_sweep_arguments(p)
    with pytest.raises(SystemExit) as e:
        p.parse_args(["--seeds", text])
    assert e.value.code == 2


def test_second_sweep_on_same_folder_is_refused(tmp_path):
    code = (
        "import sys,time; from pathlib import Path; from pwgf.experiments import sweep\n"
        "with sweep._lock(Path(sys.argv[1])):\n    print('locked', flush=True); time.sleep(30)\n"
    )
    p = subprocess.Popen(
        [sys.executable, "-c", code, str(tmp_path)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert p.stdout.readline().strip() == "locked"
        with pytest.raises(sweep.SweepError, match="in use by another sweep"):
            run_grid(grid(), TOY, tmp_path, quiet=True)
    finally:
        p.kill()
        p.wait()


def test_progress_without_tqdm(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "tqdm.auto", None)
    run_grid(grid(seeds=(0,), fail={(0.2, 0)}), TOY, tmp_path)
    err = capsys.readouterr().err
    assert "[2/2]" in err and "failed 1" in err and "FAILED" in err


def test_write_rows(tmp_path):
    rows = aggregate(run_grid(grid(), TOY, tmp_path / "g", quiet=True), "loss", by=("lr",))
    csv_path, js = sweep.write_rows(rows, tmp_path / "table")
    assert json.loads(js.read_text()) == rows
    lines = csv_path.read_text().splitlines()
    assert lines[0].startswith("lr,n,mean,se,values") and len(lines) == 3
    assert [float(v) for v in lines[1].split(",")[4].split(";")] == rows[0]["values"]


def test_local_worker_death_is_retried(tmp_path):
    cells = [Cell({"seed": 0}, {"seed": 0, "steps": 6, "crash_at": 3})]
    (r,) = run_grid(cells, TOY, tmp_path, jobs=2, quiet=True)
    assert r.status == "done" and r.metrics["resumed"]
    assert (tmp_path / cells[0].name / "crashed").exists()
    ref = sweep.toy_cell({"seed": 0, "steps": 6}, _mk(tmp_path / "ref"))
    assert r.metrics["loss"] == ref["loss"]


@pytest.fixture(scope="module")
def ray_local():
    ray = pytest.importorskip("ray", reason="Ray not installed (pip install 'pwgf[ray]')")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


def test_ray_matches_local_and_survives_worker_death(tmp_path, ray_local):
    cells = grid(fail={(0.1, 2)})
    local = run_grid(cells, TOY, tmp_path / "local", quiet=True)
    remote = run_grid(cells, TOY, tmp_path / "ray", executor="ray", quiet=True)
    assert [(r.status, r.metrics) for r in remote] == [(r.status, r.metrics) for r in local]
    # a worker killed mid-cell: Ray retries the task, which resumes from the checkpoint
    crash = [Cell({"seed": 9}, {"seed": 9, "steps": 6, "crash_at": 2})]
    (r,) = run_grid(crash, TOY, tmp_path / "crash", executor="ray", quiet=True)
    ref = sweep.toy_cell({"seed": 9, "steps": 6}, _mk(tmp_path / "ref"))
    assert r.status == "done" and r.metrics["resumed"] and r.metrics["loss"] == ref["loss"]
    # fractional resources are accepted
    (r,) = run_grid(
        [Cell({"seed": 5}, {"seed": 5, "steps": 2})],
        TOY,
        tmp_path / "frac",
        executor="ray",
        cpus_per_cell=0.5,
        quiet=True,
    )
    assert r.status == "done"


def test_ctrl_c_stops_local_workers_and_keeps_finished_cells(tmp_path):
    code = (
        "import sys; from pathlib import Path; from pwgf.experiments.sweep import Cell, run_grid\n"
        "cells = [Cell({'seed': 0}, {'seed': 0, 'steps': 3})]\n"
        "cells += [Cell({'seed': s}, {'seed': s, 'steps': 10**8}) for s in (1, 2, 3)]\n"
        "run_grid(cells, 'pwgf.experiments.sweep:toy_cell', Path(sys.argv[1]), jobs=2)\n"
    )
    p = subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        started = [tmp_path / f"seed-{s}" / "checkpoint.pt" for s in (1, 2)]
        while not all(f.exists() for f in started):
            assert time.monotonic() < deadline and p.poll() is None
            time.sleep(0.2)
        p.send_signal(signal.SIGINT)
        rc = p.wait(timeout=60)
    finally:
        p.kill()
    assert rc != 0
    assert json.loads((tmp_path / "seed-0" / "result.json").read_text())["status"] == "done"
    for s in (1, 2, 3):  # interrupted or never started: no result, so a rerun does them
        assert not (tmp_path / f"seed-{s}" / "result.json").exists()
    assert not (tmp_path / "seed-3").exists()
    # the workers went with it (they left the terminal's process group, so they are stopped
    # by the parent); their checkpoints stay
    out = subprocess.run(["pgrep", "-f", str(tmp_path)], capture_output=True, text=True)
    assert out.stdout.strip() == ""


@pytest.mark.skipif(
    not os.environ.get("PWGF_SLOW_TESTS"),
    reason="slow (Ray workers import torch and the VAE stack): set PWGF_SLOW_TESTS=1",
)
def test_vae_table_same_numbers_under_ray(tmp_path, ray_local):
    from test_vae import write_data

    from pwgf.cli import main

    data = write_data(tmp_path / "data", n=(60, 20, 20))
    args = ["vae-table", "--estimators", "st", "--archs", "linear", "--seeds", "2"]
    args += ["--steps", "4", "--eval-every", "2", "--data-dir", str(data)]
    args += ["--vae-arg=--no-verify", "--vae-arg=--batch-size=20"]
    assert main([*args, "--out", str(tmp_path / "local")]) == 0
    assert main([*args, "--out", str(tmp_path / "ray"), "--executor", "ray"]) == 0
    local, remote = (
        json.loads((tmp_path / d / "table2.json").read_text())[0]["values"]
        for d in ("local", "ray")
    )
    assert len(local) == 2 and local == remote
