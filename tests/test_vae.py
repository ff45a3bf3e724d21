"""`pwgf vae` and `pwgf vae-table` on tiny synthetic data sets written here."""

from __future__ import annotations

import csv
import gzip
import json
from pathlib import Path

import numpy as np
import pytest
import torch

import pwgf
from pwgf.cli import main
from pwgf.experiments import vae_table
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


def test_resume_continues_and_keeps_evaluations(data_dir, tmp_path):
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
    with pytest.raises(pwgf.PWGFError, match=r"holds a different run.*arch"):
        main(vae_args(data_dir, out, *base, "--arch", "nonlinear"))


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


def test_unknown_or_unsupported_estimator(data_dir, tmp_path):
    with pytest.raises(pwgf.UnknownEstimatorError):
        main(vae_args(data_dir, tmp_path / "o", "--estimator", "nope"))
    with pytest.raises(pwgf.PWGFError, match="option"):
        main(vae_args(data_dir, tmp_path / "o", "--estimator-option", "nope=1"))


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


def test_vae_table_small_grid(data_dir, tmp_path, capsys):
    out = tmp_path / "grid"
    args = [
        "vae-table",
        "--estimators",
        "st,arm,pwgf:bandwidth=std,no-such-estimator",
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
        "--jobs",
        "1",
        "--vae-arg=--no-verify",
        "--vae-arg=--batch-size=20",
    ]
    registered = "arm" in pwgf.estimators_for("bernoulli")
    assert main(args) == 0
    text = capsys.readouterr().out
    assert "Table 2" in text and "(119.1)" in text and "8 steps" in text
    assert "no-such-estimator (not registered" in text
    assert (out / "table2.md").exists()
    assert (out / "table2_curves.png").stat().st_size > 0
    report = json.loads((out / "table2.json").read_text())
    done = [c for c in report["cells"] if c["test_neg_elbo"] is not None]
    assert len(done) == (3 if registered else 2)
    assert "| pwgf:bandwidth=std |" in text
    cfg = json.loads((out / "binarized-mnist/linear/pwgf:bandwidth=std/results.json").read_text())
    assert cfg["config"]["estimator_options"] == {"bandwidth": "std"}
    assert all(c["steps_done"] == 8 for c in done)
    # finished cells are kept: a rerun trains nothing
    mtime = (out / "binarized-mnist" / "linear" / "st" / "checkpoint.pt").stat().st_mtime_ns
    assert main(args) == 0
    assert (out / "binarized-mnist" / "linear" / "st" / "checkpoint.pt").stat().st_mtime_ns == mtime


def test_paper_table_constant():
    t = vae_table.PAPER_TABLE2
    assert t["linear"]["st"] == 119.1 and t["two-layer"]["st-gumbel"] is None
    assert set(t) == {"linear", "two-layer", "nonlinear"}


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
