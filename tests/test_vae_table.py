"""`pwgf vae-table` through the sweep layer, on a tiny synthetic data set written here."""

from __future__ import annotations

import json

import pytest
from test_vae import write_data

import pwgf
from pwgf.cli import main
from pwgf.experiments import vae_table
from pwgf.experiments.sweep import Cell


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return write_data(tmp_path_factory.mktemp("data"))


def grid_args(data_dir, out, *extra):
    return [
        "vae-table",
        "--archs",
        "linear",
        "--steps",
        "8",
        "--eval-every",
        "4",
        "--data-dir",
        str(data_dir),
        "--out",
        str(out),
        "--vae-arg=--no-verify",
        "--vae-arg=--batch-size=20",
        *extra,
    ]


def test_small_grid_with_seeds(data_dir, tmp_path, capsys):
    out = tmp_path / "grid"
    args = grid_args(
        data_dir, out, "--estimators", "st,pwgf:bandwidth=std,no-such-estimator", "--seeds", "2"
    )
    assert main(args) == 0
    text = capsys.readouterr().out
    assert "Table 2" in text and "(119.1)" in text and "8 steps" in text and "2 seed(s)" in text
    assert "no-such-estimator (not registered" in text
    assert " ± " in text and "paper: " in text
    for name in ("table2.md", "table2.csv", "table2.json", "table2_report.json"):
        assert (out / name).stat().st_size > 0, name
    assert (out / "table2_curves.png").stat().st_size > 0
    rows = json.loads((out / "table2.json").read_text())
    assert [r["estimator"] for r in rows] == ["st", "pwgf:bandwidth=std"]
    for r in rows:
        assert r["n"] == 2 and r["seeds"] == [0, 1] and len(r["values"]) == 2
        assert r["se"] is not None and r["se"] > 0  # two seeds train differently
    cell = Cell(
        {
            "dataset": "binarized-mnist",
            "arch": "linear",
            "estimator": "pwgf:bandwidth=std",
            "seed": 1,
        }
    )
    res = json.loads((out / cell.name / "results.json").read_text())
    assert res["config"]["estimator_options"] == {"bandwidth": "std"} and res["config"]["seed"] == 1
    assert res["steps_done"] == 8
    # finished cells are kept: a rerun trains nothing
    mtime = (out / cell.name / "checkpoint.pt").stat().st_mtime_ns
    assert main(args) == 0
    assert (out / cell.name / "checkpoint.pt").stat().st_mtime_ns == mtime
    assert main([*args, "--report-only"]) == 0


def test_failed_cell_is_reported_and_others_go_on(data_dir, tmp_path, capsys):
    out = tmp_path / "grid"
    # a bad option for one estimator only: that cell fails, st's runs
    args = grid_args(data_dir, out, "--estimators", "st,pwgf:no_such_option=1")
    assert main(args) == 1
    text = capsys.readouterr().out
    assert "failed: binarized-mnist/linear/pwgf:no_such_option=1/0:" in text
    rows = json.loads((out / "table2.json").read_text())
    st = next(r for r in rows if r["estimator"] == "st")
    assert st["n"] == 1


@pytest.mark.parametrize(
    "bad",
    [["--steps", "0"], ["--eval-every", "-1"], ["--measure", "-2"], ["--estimators", "nope"]],
)
def test_bad_options_exit_2(data_dir, tmp_path, capsys, bad):
    assert main(grid_args(data_dir, tmp_path / "o", *bad)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("pwgf vae-table: error: ")


@pytest.mark.parametrize(
    "bad",
    [["--seeds", "abc"], ["--seeds", "1,1"], ["--cpus-per-cell", "-1"], ["--jobs", "0"]],
)
def test_bad_sweep_options_exit_2(data_dir, tmp_path, capsys, bad):
    with pytest.raises(SystemExit) as e:
        main(grid_args(data_dir, tmp_path / "o", *bad))
    assert e.value.code == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1


def test_paper_table_constant():
    t = vae_table.PAPER_TABLE2
    assert t["linear"]["st"] == 119.1 and t["two-layer"]["st-gumbel"] is None
    assert set(t) == {"linear", "two-layer", "nonlinear"}


def test_ranking_marks_ties():
    rows = [
        {"estimator": "a", "mean": 100.0, "se": 0.1, "n": 3, "failed": 0},
        {"estimator": "b", "mean": 100.1, "se": 0.1, "n": 3, "failed": 0},
        {"estimator": "c", "mean": 105.0, "se": 0.1, "n": 3, "failed": 0},
    ]
    assert vae_table.ranking(rows) == "a 100.00 ± 0.10 ≈ b 100.10 ± 0.10 < c 105.00 ± 0.10"
    assert pwgf  # the registry is importable


def test_library_spec_spelling_is_read():
    assert vae_table.registered("pwgf-mmd:step=0.5,bandwidth=2") == "pwgf:step=0.5:bandwidth=2"
    assert vae_table.registered("pwgf:step=0.5") == "pwgf:step=0.5"
    assert vae_table.base_name("pwgf:step=0.5:bandwidth=2") == "pwgf"
    assert vae_table.registered("no-such-estimator") is None
