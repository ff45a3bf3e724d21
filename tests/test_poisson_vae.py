"""``pwgf poisson-vae``: the closed-form expected loss, gradient and Hessian of the linear P-VAE
against enumeration and autograd, a tiny resumable run on IDX data written here, the structure
of what it writes, and clear errors for bad options."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.distributions import Independent, Poisson

import pwgf
from pwgf.cli import build_parser, main
from pwgf.experiments import poisson_vae as pv
from pwgf.experiments.poisson_vae_model import PoissonVAE, exact_grad_u, hessian_vector_product


def tiny_model(latents: int = 3, pixels: int = 4, seed: int = 0) -> PoissonVAE:
    torch.manual_seed(seed)
    m = PoissonVAE(latents, pixels, dtype=torch.float64)
    with torch.no_grad():
        m.decoder.weight.normal_(0, 0.7)
        m.prior_log_rate.uniform_(-1.5, 0.0)
    return m


def test_expected_sse_and_its_gradient_match_enumeration():
    m = tiny_model()
    x = torch.rand(4, dtype=torch.float64)
    rate = torch.tensor([0.3, 1.2, 0.05], dtype=torch.float64)

    def f(z: torch.Tensor) -> torch.Tensor:
        return m.sse(x, z).detach() if not z.requires_grad else m.sse(x, z)

    dist = Independent(Poisson(rate), 1)
    exact_value = pwgf.exact_expectation(f, dist)
    leaf = rate.clone().requires_grad_(True)
    closed = m.expected_sse(x.unsqueeze(0), leaf.unsqueeze(0)).sum()
    (g_closed,) = torch.autograd.grad(closed, leaf)
    g_enum = pwgf.exact_gradient(f, dist)
    # the truncation leaves out at most 1e-10 of the mass per coordinate
    assert float(closed.detach()) == pytest.approx(float(exact_value), rel=1e-8)
    torch.testing.assert_close(g_closed, g_enum, rtol=1e-7, atol=1e-8)


def test_closed_form_log_rate_gradient_and_hessian_match_autograd():
    m = tiny_model(latents=5, pixels=6)
    x = torch.rand(2, 6, dtype=torch.float64)
    u = (torch.randn(2, 5, dtype=torch.float64) - 1).requires_grad_(True)
    beta = 0.7

    def loss(u: torch.Tensor) -> torch.Tensor:
        return (m.expected_sse(x, u.exp()) + beta * m.kl(u)).sum()

    (g,) = torch.autograd.grad(loss(u), u, create_graph=True)
    torch.testing.assert_close(exact_grad_u(m, x, u.detach(), beta), g.detach())
    v = torch.randn(3, 2, 5, dtype=torch.float64)
    hv = torch.stack([torch.autograd.grad(g, u, vi, retain_graph=True)[0] for vi in v])
    torch.testing.assert_close(hessian_vector_product(m, x, u.detach(), v, beta), hv)


def test_unbiased_estimators_agree_with_the_exact_gradient_in_log_rates():
    m = tiny_model(latents=4, pixels=5)
    x = torch.rand(3, 5, dtype=torch.float64)
    torch.manual_seed(1)
    rows = pv.measure_quality(m, x, [["mvd", "mvd", {}], ["st", "st", {}]], 400, 0.5)
    by = {r["estimator"]: r for r in rows}
    # mvd is unbiased: its bias is Monte Carlo noise (5 s.e.); ST is not: it misses the
    # Σ λ_k ‖φ_k‖² term of the expected SSE
    assert by["mvd"]["rel_bias"] < 5 * by["mvd"]["rel_bias_noise"]
    assert by["st"]["rel_bias"] > 5 * by["st"]["rel_bias_noise"]
    assert -1 <= by["st"]["cosine"] <= 1


# -- the command -----------------------------------------------------------------------------------
def _idx(x: np.ndarray) -> bytes:
    header = bytes([0, 0, 0x08, x.ndim]) + b"".join(struct.pack(">I", d) for d in x.shape)
    return header + x.astype(np.uint8).tobytes()


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("mnist")
    rng = np.random.default_rng(0)
    for name, n in (("train-images-idx3-ubyte", 120), ("t10k-images-idx3-ubyte", 40)):
        x = rng.random((n, 28, 28)) * 255 * (rng.random((n, 28, 28)) < 0.2)
        (d / name).write_bytes(_idx(x))
    return d


def args(data_dir: Path, out: Path, *extra: str) -> list[str]:
    return [
        "poisson-vae",
        "--data-dir",
        str(data_dir),
        "--no-verify",
        "--latents",
        "8",
        "--batch-size",
        "20",
        "--steps",
        "12",
        "--eval-every",
        "4",
        "--quality-batch",
        "4",
        "--quality-draws",
        "3",
        "--quality-points",
        "2",
        "--no-plots",
        "--quiet",
        "--out",
        str(out),
        *extra,
    ]


def test_run_writes_results_and_resumes_to_the_same_numbers(data_dir, tmp_path):
    est = ["--estimators", "exact,st,eat-sigmoid", "--quality-estimators", "exact,st,mvd"]
    est += ["--seeds", "0,1"]
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    assert main(args(data_dir, whole, *est)) == 0
    assert main(args(data_dir, parts, *est, "--stop-after", "5")) == 0  # stopped, saved
    partial = json.loads((parts / "results.json").read_text())
    assert all(e["n"] == 0 for e in partial["estimators"].values())
    assert main(args(data_dir, parts, *est)) == 0  # resumed
    a = json.loads((whole / "results.json").read_text())
    b = json.loads((parts / "results.json").read_text())
    assert set(a["estimators"]) == {"exact", "st", "eat-sigmoid"}
    for name, e in a["estimators"].items():
        assert e["n"] == 2 and len(e["test_neg_elbo"]) == 2 and e["seeds"] == [0, 1]
        assert e["settings"]["estimator"] in ("exact", "st", "eat")
        assert b["estimators"][name]["test_neg_elbo"] == e["test_neg_elbo"]
    assert a["estimators"]["exact"]["paper"] == [41.5, 0.1]
    assert a["settings"]["steps"] == 12 and a["settings"]["batch_size"] == 20
    q = {(r["step"], r["estimator"]) for r in a["quality"]}
    assert q == {(s, n) for s in (0, 12) for n in ("exact", "st", "mvd")}
    assert [r["bias_energy"] for r in a["quality"]] == [r["bias_energy"] for r in b["quality"]]
    for f in ("results.csv", "seeds.csv", "quality.csv", "table.txt"):
        assert (whole / f).stat().st_size > 0


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--estimators", "nope"], "unknown estimator"),
        (["--estimators", "arm"], "does not support Poisson"),
        (["--estimators", "eat:indicator=square"], "indicator"),
        (["--estimators", "eat:temperature=0"], "temperature"),
        (["--estimators", "st:variant"], "key=value"),
        (["--estimators", "exact:tail=1"], "no options"),
        (["--device", "cuda:99"], "--device"),
        (["--steps", "0"], "--steps"),
        (["--quality-draws", "1"], "--quality-draws"),
    ],
)
def test_bad_options_are_clear_errors(data_dir, tmp_path, capsys, extra, message):
    try:
        code = main(args(data_dir, tmp_path / "bad", *extra))
    except SystemExit as exc:  # argparse's own checks
        code = exc.code
    assert code == 2
    assert message in capsys.readouterr().err


def test_missing_data_is_a_clear_error(tmp_path, capsys):
    assert main(args(tmp_path, tmp_path / "out")) == 2
    assert "not found" in capsys.readouterr().err


# -- the Poisson problem of pwgf diagnose ----------------------------------------------------------
def test_diagnose_pvae_problem_closed_forms_and_energies(tmp_path):
    from pwgf.experiments.problems import poisson_linear_gaussian

    prob = poisson_linear_gaussian()
    lam = prob.param
    eye = torch.eye(lam.numel(), dtype=lam.dtype)
    h = prob.hvp(eye)  # the Hessian 2ΦᵀΦ, one row per basis vector
    g_exact = pwgf.exact_gradient(prob.f, prob.dist())
    st_mean = pwgf.estimator_expectation(pwgf.get_estimator("st"), prob.f, prob.dist())
    # ST differentiates f at the sample: its mean is ∇f(λ), missing the ‖φ_k‖² = H_kk / 2 term
    torch.testing.assert_close(st_mean - g_exact, -torch.diagonal(h) / 2)
    # the Hessian of E f = ‖x - Φλ‖² + Σ λ_k ‖φ_k‖² by finite differences of the exact gradient
    eps = 1e-4
    for k in range(lam.numel()):
        up = pwgf.exact_gradient(prob.f, prob.make(lam + eps * eye[k]))
        torch.testing.assert_close((up - g_exact) / eps, h[k], rtol=1e-4, atol=1e-4)
    argv = ["diagnose", "--problems", "pvae", "--estimators", "st,mvd", "--draws", "400"]
    argv += ["--time-reps", "1", "--quiet", "--no-plots", "--out", str(tmp_path)]
    assert main(argv) == 0
    rows = {r["estimator"]: r for r in json.loads((tmp_path / "diagnose.json").read_text())["rows"]}
    bias = st_mean - g_exact
    want = float(bias @ h @ bias) / float(g_exact @ h @ g_exact)
    assert rows["st"]["bias_energy"] == pytest.approx(want, rel=1e-9)
    assert abs(rows["mvd"]["bias_energy"]) < 1e-12  # unbiased, from its exact mean
    assert rows["mvd"]["noise_energy"] > 0


def test_conv_encoder_runs_and_prints_the_paper_row(data_dir, tmp_path, capsys):
    argv = args(data_dir, tmp_path, "--encoder", "conv", "--estimators", "exact,eat-hard")
    argv += ["--steps", "2", "--seeds", "1", "--quality-estimators", ""]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "39.7 ± 0.2" in out and "44.2 ± 0.1" in out  # Table 4's conv row, exact and eat-hard
    res = json.loads((tmp_path / "results.json").read_text())
    assert res["quality"] == [] and res["settings"]["encoder"] == "conv"


def test_quality_settings_change_only_the_measuring_run(data_dir, tmp_path):
    base = args(data_dir, tmp_path, "--estimators", "exact,st", "--seeds", "0,1")
    parser = build_parser()
    a, _ = pv.resolve(parser.parse_args(base))
    b, _ = pv.resolve(parser.parse_args([*base, "--quality-draws", "9"]))
    changed = [x.key for x, y in zip(a, b, strict=True) if x.config != y.config]
    assert changed == [{"estimator": "exact", "encoder": "linear", "seed": 0}]
