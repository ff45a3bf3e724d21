"""`pwgf vae` and `pwgf vae-table` on tiny synthetic data sets written here."""

from __future__ import annotations

import csv
import errno
import gzip
import json
import re
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import pwgf
from pwgf.cli import main
from pwgf.experiments.vae_model import BernoulliVAE


def write_data(folder: Path, n=(200, 50, 50), seed=0) -> Path:
    """Binarised-MNIST-format files: 4 prototypes with 5 % of their pixels flipped."""
    rng = np.random.default_rng(seed)
    protos = rng.random((4, 784)) < 0.2
    sub = folder / "binarized_mnist"
    sub.mkdir(parents=True, exist_ok=True)
    for split, m in zip(("train", "valid", "test"), n, strict=True):
        x = protos[rng.integers(0, 4, m)] ^ (rng.random((m, 784)) < 0.05)
        text = "".join(" ".join(map(str, r)) + "\n" for r in x.astype(np.uint8).tolist())
        (sub / f"binarized_mnist_{split}.amat.gz").write_bytes(gzip.compress(text.encode()))
    return folder


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    return write_data(tmp_path_factory.mktemp("data"))


def vae_args(data_dir: Path, out: Path, *extra: str) -> list[str]:
    return [
        "vae",
        "--data-dir",
        str(data_dir),
        "--no-verify",
        "--no-download",
        "--batch-size",
        "20",
        "--out",
        str(out),
        "--quiet",
        "--threads",
        "1",
        *extra,
    ]


def history(out: Path) -> list[dict[str, str]]:
    with open(out / "history.csv") as fh:
        return list(csv.DictReader(fh))


def test_st_run_outputs_and_learning(data_dir, tmp_path):
    out = tmp_path / "run"
    args = vae_args(data_dir, out, "--steps", "60", "--eval-every", "20", "--lr", "3e-3")
    assert main(args) == 0
    for name in ("results.json", "history.csv", "learning_curves.png", "config.json"):
        assert (out / name).stat().st_size > 0, name
    assert (out / "checkpoint.pt").exists() and (out / "best.pt").exists()
    res = json.loads((out / "results.json").read_text())
    for key in (
        "valid_neg_elbo",
        "test_neg_elbo",
        "steps_done",
        "train_steps_per_second",
        "best_step",
        "final_valid_neg_elbo",
        "final_test_neg_elbo",
        "config",
    ):
        assert key in res, key
    assert res["finished"] and res["steps_done"] == 60 and res["train_steps_per_second"] > 0
    assert res["config"]["batch_size"] == 20 and res["config"]["prior"] == "learnable"
    rows = history(out)
    assert [int(r["step"]) for r in rows] == [0, 20, 40, 60]
    first, last = float(rows[0]["valid_neg_elbo"]), float(rows[-1]["valid_neg_elbo"])
    assert last < first - 100, (first, last)  # ~545 -> well below on 4 prototypes
    assert res["valid_neg_elbo"] == min(float(r["valid_neg_elbo"]) for r in rows)


def error_of(capsys) -> str:
    """The one line ``pwgf`` printed for a rejected command."""
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(err) == 1, err
    assert err[0].startswith("pwgf vae: error: "), err
    return err[0]


def test_resume_continues_and_keeps_evaluations(data_dir, tmp_path, capsys):
    base = ["--steps", "50", "--eval-every", "10", "--lr", "1e-3", "--seed", "3"]
    out = tmp_path / "cut"
    assert main(vae_args(data_dir, out, *base, "--stop-after", "25")) == 0
    res = json.loads((out / "results.json").read_text())
    assert not res["finished"] and res["steps_done"] == 25
    before = history(out)
    assert [int(r["step"]) for r in before] == [0, 10, 20]
    assert main(vae_args(data_dir, out, *base)) == 0
    after = history(out)
    assert [int(r["step"]) for r in after] == [0, 10, 20, 30, 40, 50]
    assert after[:3] == before  # finished evaluations kept as they were
    res = json.loads((out / "results.json").read_text())
    assert res["finished"] and res["steps_done"] == 50
    # the interrupted run ends where an uninterrupted one does
    whole = tmp_path / "whole"
    assert main(vae_args(data_dir, whole, *base)) == 0
    ref = json.loads((whole / "results.json").read_text())
    assert ref["final_valid_neg_elbo"] == pytest.approx(res["final_valid_neg_elbo"], rel=1e-5)
    # a finished run reruns as a no-op; another configuration in the same folder is refused
    assert main(vae_args(data_dir, out, *base)) == 0
    capsys.readouterr()
    assert main(vae_args(data_dir, out, *base, "--arch", "nonlinear")) == 2
    assert re.search(r"holds a different run.*arch", error_of(capsys))


@pytest.mark.parametrize(
    ("arch", "estimator"),
    [("two-layer", "st"), ("two-layer", "reinforce-loo"), ("nonlinear", "pwgf")],
)
def test_architectures_and_estimators(data_dir, tmp_path, arch, estimator):
    out = tmp_path / "r"
    extra = ["--arch", arch, "--estimator", estimator, "--steps", "6", "--eval-every", "3"]
    assert main(vae_args(data_dir, out, *extra)) == 0
    res = json.loads((out / "results.json").read_text())
    assert np.isfinite(res["test_neg_elbo"]) and res["steps_done"] == 6
    assert res["config"]["samples"] == (2 if estimator == "reinforce-loo" else 1)
    if arch == "nonlinear":  # ARM's nonlinear model: prior fixed at logit 0
        assert res["config"]["prior"] == "fixed" and res["config"]["slope"] == 0.1


def test_bad_data_is_a_clear_error(data_dir, tmp_path, capsys):
    assert main(vae_args(tmp_path / "empty", tmp_path / "o", "--steps", "2")) == 2
    err = capsys.readouterr().err
    assert "binarized_mnist_train.amat" in err and "not found" in err
    # checksums on (the default): these synthetic files are not the real ones
    args = vae_args(data_dir, tmp_path / "o2", "--steps", "2")
    args.remove("--no-verify")
    assert main(args) == 2
    assert "checksum mismatch" in capsys.readouterr().err


def test_unknown_or_unsupported_estimator(data_dir, tmp_path, capsys):
    assert main(vae_args(data_dir, tmp_path / "o", "--estimator", "nope")) == 2
    assert "unknown estimator 'nope'" in error_of(capsys)
    assert main(vae_args(data_dir, tmp_path / "o", "--estimator-option", "nope=1")) == 2
    assert "has no option ['nope']" in error_of(capsys)
    assert main(vae_args(data_dir, tmp_path / "o", "--estimator", "pwgf:bandwith=2")) == 2
    assert "has no option ['bandwith']" in error_of(capsys)


def test_surrogate_gradient_matches_exact_on_tiny_model():
    """The ELBO surrogate through an unbiased estimator averages to the exact gradient: a model
    with 3 latents, where E_q[f] is a sum over 8 states."""
    torch.manual_seed(0)
    m = BernoulliVAE("linear", latent=3, x_dim=5, dtype=torch.float64)
    x = torch.tensor([[1.0, 0, 1, 1, 0]], dtype=torch.float64)
    w = m.encoder.weight

    def exact() -> torch.Tensor:
        logits = m.encoder(x)
        states = torch.tensor(
            [[(i >> j) & 1 for j in range(3)] for i in range(8)], dtype=torch.float64
        ).unsqueeze(1)
        logq = (states * logits - torch.nn.functional.softplus(logits)).sum(-1)
        f = -m.log_px(x, states) - m.log_prior(states) + logq
        (g,) = torch.autograd.grad((logq.exp() * f).sum(), w)
        return g

    est = pwgf.get_estimator("reinforce-loo")
    (g,) = torch.autograd.grad(m.surrogate(x, [est], 20000).sum(), w)
    assert torch.allclose(g, exact(), atol=0.05 * exact().abs().max())


def _states(d: int) -> torch.Tensor:
    return torch.tensor(
        [[(i >> j) & 1 for j in range(d)] for i in range(2**d)], dtype=torch.float64
    )


@pytest.mark.parametrize("estimator", ["reinforce-loo", "arm"])
def test_two_layer_nested_surrogate_is_unbiased(estimator):
    """Two stochastic layers through nested surrogates: the encoder's gradient (both layers)
    averages to the exact one, a sum over the 4 x 4 states of 2 + 2 latents."""
    if estimator not in pwgf.estimators_for("bernoulli"):
        pytest.skip(f"{estimator} is not registered yet")
    torch.manual_seed(1)
    m = BernoulliVAE("two-layer", latent=2, x_dim=4, dtype=torch.float64)
    with torch.no_grad():
        for p in m.parameters():
            p.mul_(3)
    x = torch.tensor([[1.0, 0, 1, 1]], dtype=torch.float64)
    params = [m.encoder.weight, m.encoder2.weight]
    s = _states(2)
    z1 = s[:, None, None, :].expand(4, 4, 1, 2)  # (z1 state, z2 state, batch, D)
    z2 = s[None, :, None, :].expand(4, 4, 1, 2)
    l1, l2 = m.encoder(x), m.encoder2(z1)
    lq = (z1 * l1 - torch.nn.functional.softplus(l1)).sum(-1) + (
        z2 * l2 - torch.nn.functional.softplus(l2)
    ).sum(-1)
    lp = m.log_px(x, z1) + (z1 * m.decoder2(z2) - torch.nn.functional.softplus(m.decoder2(z2))).sum(
        -1
    )
    f = lq - lp - m.log_prior(z2)
    exact = torch.autograd.grad((lq.exp() * f).sum(), params)
    ests = [pwgf.get_estimator(estimator), pwgf.get_estimator(estimator)]
    n = 4000
    grads = torch.autograd.grad(m.surrogate(x.expand(n, 4), ests, 2).mean(), params)
    for g, e in zip(grads, exact, strict=True):
        assert torch.allclose(g, e, atol=0.08 * e.abs().max()), (g, e)


# `pwgf vae-table` (the grid through the sweep layer): tests/test_vae_table.py


@pytest.mark.skipif(
    "rebar" not in pwgf.estimators_for("bernoulli"), reason="rebar is not registered yet"
)
def test_learnable_estimator_is_tuned(data_dir, tmp_path):
    out = tmp_path / "rebar"
    extra = ["--estimator", "rebar", "--steps", "3", "--eval-every", "3", "--estimator-lr", "0.1"]
    assert main(vae_args(data_dir, out, *extra)) == 0
    ck = torch.load(out / "checkpoint.pt", weights_only=False)
    eta = ck["estimators"][0]["eta"]
    assert float(eta) != 1.0  # moved from its initial value by the variance loss
    assert ck["est_opt"] is not None


# -- bad input and unsafe reruns: a clear error, finished work never lost -------------------------
def test_batch_larger_than_the_training_set(data_dir, tmp_path, capsys):
    assert main(vae_args(data_dir, tmp_path / "o", "--steps", "2", "--batch-size", "100000")) == 2
    assert "--batch-size 100000 is larger than the training set (200 images)" in error_of(capsys)


def test_diverging_learning_rate_stops_with_a_clear_error(data_dir, tmp_path, capsys):
    out = tmp_path / "lr"
    assert main(vae_args(data_dir, out, "--steps", "40", "--eval-every", "20", "--lr", "1e6")) == 2
    line = error_of(capsys)
    assert "training diverged by step 20" in line and "--lr 1e+06" in line
    ck = torch.load(out / "checkpoint.pt", weights_only=False)
    assert ck["step"] == 0  # the last good state, not the diverged one
    assert all(torch.isfinite(v).all() for v in ck["model"].values())


def test_device_dtype_and_estimator_spec(data_dir, tmp_path):
    out = tmp_path / "f64"
    extra = ["--steps", "2", "--eval-every", "2", "--dtype", "float64"]
    assert main(vae_args(data_dir, out, *extra, "--estimator", "pwgf:bandwidth=2")) == 0
    res = json.loads((out / "results.json").read_text())
    assert res["config"]["dtype"] == "float64" and res["config"]["device"] == "cpu"
    assert res["config"]["estimator"] == "pwgf"
    assert res["config"]["estimator_options"] == {"bandwidth": 2}
    ck = torch.load(out / "checkpoint.pt", weights_only=False)
    assert ck["model"]["encoder.weight"].dtype == torch.float64


def test_one_run_at_a_time_per_output_folder(data_dir, tmp_path, capsys):
    out = tmp_path / "locked"
    out.mkdir()
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        lock = {"pid": other.pid, "host": socket.gethostname(), "time": 0}
        (out / ".lock").write_text(json.dumps(lock))
        assert main(vae_args(data_dir, out, "--steps", "2")) == 2
        assert f"another pwgf run (pid {other.pid}" in error_of(capsys)
        assert not (out / "checkpoint.pt").exists()
    finally:
        other.kill()
        other.wait()
    # the holder is gone: its lock is stale and taken over; released at the end
    assert main(vae_args(data_dir, out, "--steps", "2")) == 0
    assert (out / "results.json").exists() and not (out / ".lock").exists()


@pytest.mark.parametrize("damage", ["truncated", "garbage", "not-a-dict"])
def test_damaged_checkpoint_is_reported_not_restarted(data_dir, tmp_path, capsys, damage):
    out = tmp_path / "ck"
    base = ["--steps", "4", "--eval-every", "2"]
    assert main(vae_args(data_dir, out, *base)) == 0
    ck = out / "checkpoint.pt"
    if damage == "truncated":
        ck.write_bytes(ck.read_bytes()[: ck.stat().st_size // 2])
    elif damage == "garbage":
        ck.write_bytes(b"\x00garbage" * 100)
    else:
        torch.save([1, 2, 3], ck)
    kept = {n: (out / n).read_bytes() for n in ("checkpoint.pt", "results.json", "history.csv")}
    capsys.readouterr()
    assert main(vae_args(data_dir, out, *base, "--steps", "8")) == 2
    line = error_of(capsys)
    assert str(ck) in line and ("cannot be read" in line or "not a checkpoint" in line)
    assert "--restart" in line
    assert {n: (out / n).read_bytes() for n in kept} == kept  # nothing overwritten
    # a missing checkpoint beside finished results is refused too
    ck.unlink()
    assert main(vae_args(data_dir, out, *base)) == 2
    assert "no checkpoint.pt" in error_of(capsys)


def test_rerun_adds_to_finished_results_never_removes(data_dir, tmp_path, capsys):
    out = tmp_path / "iw"
    base = ["--steps", "4", "--eval-every", "2"]
    assert main(vae_args(data_dir, out, *base, "--final-iw-samples", "2")) == 0
    first = json.loads((out / "results.json").read_text())
    assert first["best_test_iw2"] > 0 and first["best_test_iw2_step"] == first["best_step"]
    assert main(vae_args(data_dir, out, *base)) == 0  # no --final-iw-samples this time
    again = json.loads((out / "results.json").read_text())
    assert again["best_test_iw2"] == first["best_test_iw2"]
    assert set(first) <= set(again)
    # settings that contradict the finished run are refused
    capsys.readouterr()
    assert main(vae_args(data_dir, out, "--steps", "3", "--eval-every", "2")) == 2
    assert "already trained to step 4; --steps 3 contradicts it" in error_of(capsys)


def test_full_disk_leaves_no_temporary_file(data_dir, tmp_path, capsys, monkeypatch):
    out = tmp_path / "full"
    base = ["--steps", "6", "--eval-every", "2"]
    assert main(vae_args(data_dir, out, *base, "--stop-after", "2")) == 0
    before = torch.load(out / "checkpoint.pt", weights_only=False)["step"]
    real_save = torch.save

    def full_disk(obj, f, *a, **k):
        real_save(obj, f, *a, **k)  # the bytes land, then the disk is full
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", full_disk)
    assert main(vae_args(data_dir, out, *base)) == 2
    assert "no space left on the device" in error_of(capsys)
    monkeypatch.undo()
    assert not [p.name for p in out.iterdir() if ".tmp" in p.name]
    assert torch.load(out / "checkpoint.pt", weights_only=False)["step"] == before
