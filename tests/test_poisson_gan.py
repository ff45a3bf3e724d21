"""`pwgf poisson-gan`: outputs, convergence where it is certain, and resume."""

import argparse
import csv
import json
import signal
import subprocess
import sys
import time
from contextlib import nullcontext

import pytest
import torch

from pwgf.cli import main
from pwgf.experiments import poisson_gan

TINY = ["--seeds", "2", "--steps", "20", "--batch", "8", "--hidden", "8"]


def run(tmp_path, *extra):
    return main(["poisson-gan", *TINY, "--out", str(tmp_path), *extra])


def test_outputs_and_table(tmp_path, capsys):
    assert run(tmp_path, "--estimators", "st,pwgf") == 0
    printed = capsys.readouterr().out
    assert "Table 1" in printed and "5.0076" in printed and "arXiv 1910.02176" in printed
    res = json.loads((tmp_path / "results.json").read_text())
    assert set(res) >= {"settings", "estimators", "paper_table1", "wall_s_this_invocation"}
    assert res["settings"]["seeds"] == [0, 1] and res["settings"]["steps"] == 20
    assert res["paper_table1"]["values"]["pwgf"] == {"mean": 5.0076, "std": 0.013}
    for name in ("st", "pwgf"):
        r = res["estimators"][name]
        assert len(r["final_rate"]) == len(r["oscillation"]) == 2
        assert all(v > 0 for v in r["final_rate"])
        assert {"final_mean", "final_std", "oscillation_mean", "tail_mean"} <= set(r)
    rows = list(csv.DictReader(open(tmp_path / "results.csv")))
    assert len(rows) == 4 and {r["estimator"] for r in rows} == {"st", "pwgf"}
    curves = list(csv.DictReader(open(tmp_path / "curves.csv")))
    assert len(curves) == 2 * 20 * 2  # every step of every seed, both estimators
    png = tmp_path / "poisson_gan_curves.png"
    assert png.exists() and png.stat().st_size > 1000


def test_seed_lists():
    assert poisson_gan.parse_seeds("3") == [0, 1, 2]
    assert poisson_gan.parse_seeds("3,7") == [3, 7]
    assert poisson_gan.parse_seeds("10-12") == [10, 11, 12]


def test_default_estimators_are_registered_poisson_ones():
    names = poisson_gan.default_estimators()
    assert names[:2] == ["pwgf", "st"] and "exact" not in names
    assert set(names) <= set(poisson_gan.DEFAULT_ESTIMATORS)


@pytest.mark.parametrize("estimator", ["mvd", "exact"])
def test_rate_moves_to_data_rate_with_oracle_discriminator(tmp_path, estimator):
    # With D* for the current λ < 5, f(z) = -log D*(z) = softplus(z log(λ/5) + 5 - λ) decreases
    # in z, so every mvd term f(z+1) - f(z) (and the exact gradient) is negative: λ can only go up
    # while below 5 and only down while above it. From λ = 2, 150 Adam steps of ~0.02 in log λ
    # reach 5; the answer cannot end near 2.
    args = ["--estimators", estimator, "--discriminator", "oracle", "--steps", "150"]
    assert run(tmp_path, *args, "--lr-g", "0.02") == 0
    res = json.loads((tmp_path / "results.json").read_text())["estimators"][estimator]
    assert all(abs(v - 5.0) < 0.5 for v in res["final_rate"]), res["final_rate"]


def test_resume_reuses_finished_work(tmp_path, monkeypatch, capsys):
    assert run(tmp_path, "--estimators", "st") == 0
    first = json.loads((tmp_path / "results.json").read_text())

    def no_training(*a, **k):
        raise AssertionError("recomputed a finished estimator")

    monkeypatch.setattr(poisson_gan, "train", no_training)
    assert run(tmp_path, "--estimators", "st") == 0
    again = json.loads((tmp_path / "results.json").read_text())
    assert again["reused_from_checkpoint"] == ["st"]
    assert again["estimators"]["st"]["final_rate"] == first["estimators"]["st"]["final_rate"]
    # pWGF's options do not concern ST's run
    assert run(tmp_path, "--estimators", "st", "--bandwidth", "std*2") == 0
    # other settings: refused, not mixed; --fresh recomputes
    capsys.readouterr()
    assert run(tmp_path, "--estimators", "st", "--lr-g", "0.1") == 2
    assert "other settings (lr_g)" in capsys.readouterr().err
    monkeypatch.undo()
    assert run(tmp_path, "--estimators", "st", "--fresh") == 0
    fresh = json.loads((tmp_path / "results.json").read_text())
    assert fresh["reused_from_checkpoint"] == []
    assert fresh["estimators"]["st"]["final_rate"] == first["estimators"]["st"]["final_rate"]


def test_stopped_run_resumes_to_the_same_numbers(tmp_path):
    straight = tmp_path / "straight"
    assert run(straight, "--estimators", "pwgf") == 0
    expected = json.loads((straight / "results.json").read_text())["estimators"]["pwgf"]

    cut = tmp_path / "cut"
    # --stop-after: the cell stops (reported failed, checkpoint kept); a rerun resumes it
    assert run(cut, "--estimators", "pwgf", "--stop-after", "11") == 1
    saved = torch.load(cut / "estimator-pwgf" / "checkpoint.pt", weights_only=False)
    assert saved["status"] == "partial" and saved["step"] == 11
    assert run(cut, "--estimators", "pwgf", "--checkpoint-every", "0") == 0
    got = json.loads((cut / "results.json").read_text())["estimators"]["pwgf"]
    assert got["final_rate"] == expected["final_rate"]
    assert got["oscillation"] == expected["oscillation"]


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("--init-rate", "0"),
        ("--init-rate", "nan"),
        ("--hidden", "0"),
        ("--layers", "0"),
        ("--seeds", "abc"),
        ("--seeds", "1,1"),
        ("--tail-frac", "0"),
        ("--tail-frac", "2"),
        ("--tail-frac", "-1"),
        ("--d-steps", "-1"),
        ("--record-every", "-1"),
        ("--steps", "1"),
        ("--lr-g", "0"),
        ("--beta1", "1"),
        ("--vary", "nope=1,2"),
        ("--vary", "lr-g=0.1,0.1"),
    ],
)
def test_bad_options_give_one_line_and_exit_2(tmp_path, capsys, option, value):
    with pytest.raises(SystemExit) if option == "--seeds" else nullcontext() as e:
        rc = run(tmp_path, "--estimators", "st", option, value)
    if option == "--seeds":
        rc = e.value.code
    assert rc == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("pwgf poisson-gan: error:"), err
    assert option.lstrip("-").split("-")[0] in err[0]
    assert not (tmp_path / "estimator-st").exists()  # nothing trained


def test_grid_of_settings(tmp_path):
    assert run(tmp_path, "--estimators", "st", "--vary", "discriminator=mlp,oracle") == 0
    res = json.loads((tmp_path / "results.json").read_text())
    assert [g["setting"] for g in res["grid"]] == [
        {"discriminator": "mlp"},
        {"discriminator": "oracle"},
    ]
    a, b = (g["estimators"]["st"]["final_rate"] for g in res["grid"])
    assert a != b
    rows = list(csv.DictReader(open(tmp_path / "results.csv")))
    assert {r["discriminator"] for r in rows} == {"mlp", "oracle"} and len(rows) == 4
    assert (tmp_path / "poisson_gan_curves_1.png").exists()


def test_failed_checkpoint_write_leaves_no_tmp(tmp_path, monkeypatch, capsys):
    real_save = torch.save

    def disk_full(obj, f, *a, **k):
        with open(f, "wb") as fh:
            fh.write(b"half a checkpoint")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(poisson_gan.torch, "save", disk_full)
    assert run(tmp_path, "--estimators", "st") == 1
    assert "No space left on device" in capsys.readouterr().out
    assert not list(tmp_path.rglob("*.tmp"))
    assert not (tmp_path / "estimator-st" / "checkpoint.pt").exists()
    monkeypatch.setattr(poisson_gan.torch, "save", real_save)
    assert run(tmp_path, "--estimators", "st") == 0  # the failed cell runs again


def test_write_helper_cleans_up(tmp_path, monkeypatch):
    def fail(*a):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(poisson_gan.os, "replace", fail)
    with pytest.raises(OSError):
        poisson_gan._write(tmp_path / "results.json", "{}")
    assert list(tmp_path.iterdir()) == []


def test_sigint_saves_a_checkpoint(tmp_path):
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "pwgf.cli", "poisson-gan", *TINY, "--steps", "1000000"]
    cmd += ["--estimators", "st", "--checkpoint-every", "1e9", "--out", str(out)]
    p = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True)
    try:
        # the grid's progress bar shows the cell running: training has started
        buf = ""
        while "running=1" not in buf:
            ch = p.stderr.read(1)
            assert ch, buf
            buf += ch
        time.sleep(1.0)
        p.send_signal(signal.SIGINT)
        rc = p.wait(timeout=60)
    finally:
        p.kill()
    assert rc == 130
    saved = torch.load(out / "estimator-st" / "checkpoint.pt", weights_only=False)
    assert saved["status"] == "partial" and saved["step"] > 0
    assert saved["history"].shape[0] == saved["step"]
    assert not list(out.rglob("*.tmp"))


def test_estimator_specs_carry_options():
    """``--estimators 'st,pwgf:bandwidth=2,min_bandwidth=0.5'``: the library's spec spelling, with
    the options written in it overriding the command's pWGF flags."""
    parser = argparse.ArgumentParser()
    poisson_gan.add_arguments(parser)
    args = parser.parse_args([])
    assert poisson_gan.canonical_spec("pwgf-mmd:bandwidth=2") == "pwgf:bandwidth=2"
    opts = poisson_gan.estimator_options("pwgf:bandwidth=2,min_bandwidth=0.5", args)
    assert opts["bandwidth"] == 2 and opts["min_bandwidth"] == 0.5
    assert poisson_gan.estimator_options("pwgf", args)["bandwidth"] == "std*2"
    assert poisson_gan.estimator_options("st", args) == {}
