"""``pwgf diagnose``, ``pwgf toy`` and ``pwgf polynomial``: tiny runs through the CLI, the
structure of what they write, and the agreement of measured and exact moments."""

from __future__ import annotations

import csv
import json

import pytest
import torch

import pwgf
from pwgf.cli import main
from pwgf.experiments import diagnose
from pwgf.experiments.problems import bernoulli_nonlinear

ROW_KEYS = {
    "problem",
    "estimator",
    "samples",
    "f_evals_per_estimate",
    "seconds_per_estimate",
    "mc_rel_bias",
    "exact_rel_bias",
    "mc_var_trace",
    "exact_var_trace",
    "cosine",
    "z_mean",
    "z_var",
    "check",
}


@pytest.fixture(scope="module")
def diagnose_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("diagnose")
    argv = ["diagnose", "--draws", "1500", "--time-reps", "2", "--dim", "4", "--rates", "3"]
    argv += ["--problems", "bernoulli,categorical,poisson", "--quiet", "--out", str(out)]
    assert main(argv) == 0
    return out, json.loads((out / "diagnose.json").read_text())


def test_diagnose_writes_csv_json_and_plots(diagnose_run):
    out, report = diagnose_run
    assert {"settings", "machine", "problems", "rows"} <= set(report)
    assert (out / "diagnose_quality.png").stat().st_size > 0
    assert (out / "diagnose_poisson.png").stat().st_size > 0
    with (out / "diagnose.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == len(report["rows"])
    pairs = {(r["estimator"], r["problem"]) for r in report["rows"]}
    for info in pwgf.list_estimators():  # every registered estimator, on each family it supports
        if info.name == "exact":
            continue
        for fam, prob in (("bernoulli", "bernoulli-4"), ("categorical", "categorical-3x4")):
            assert ((info.name, prob) in pairs) == (fam in info.families)
    for r in report["rows"]:
        assert not r.get("error"), r
        assert ROW_KEYS <= set(r)
        assert r["f_evals_per_estimate"] >= r["samples"]
        assert -1.0 <= r["cosine"] <= 1.0


def test_diagnose_measured_moments_agree_with_exact(diagnose_run):
    _, report = diagnose_run
    checked = 0
    for r in report["rows"]:
        if r["exact_mean"] is not None:  # per-sample estimators: exact mean and variance
            checked += 1
            assert r["z_mean"] <= diagnose.N_SE, r
            assert abs(r["z_var"]) <= diagnose.N_SE, r
            if not r["biased"]:
                assert r["exact_rel_bias"] < 1e-6, r
        elif not r["biased"]:  # unbiased without exact moments: MC mean vs exact gradient
            assert r["z_mean"] <= diagnose.N_SE, r
        assert r["check"] != "FAIL", r
    assert checked >= 5


def test_diagnose_counts_evaluations():
    prob = bernoulli_nonlinear(d=3)
    for name, expected in (("st", 1), ("arm", 2), ("mvd", 4)):
        est = pwgf.get_estimator(name)
        _, evals, _ = diagnose.time_estimates(est, prob, 1, 2)
        assert evals == expected, name


def test_batched_draws_match_one_at_a_time():
    """The batch of copies gives the same estimates as separate calls with the same noise."""
    prob = bernoulli_nonlinear(d=3)
    est = pwgf.get_estimator("reinmax")
    torch.manual_seed(1)
    batched = diagnose.draw_estimates(est, prob, 4, 1, block=4, loop=False)
    m = diagnose.measure(batched, pwgf.exact_gradient(prob.f, prob.dist()))
    assert batched.shape == (4, 3) and m.var.shape == (3,)
    # recompute each row from its own samples: the same z gives the same pathwise estimate
    torch.manual_seed(1)
    z = pwgf.as_family(prob.make(prob.param.expand(4, 3))).sample(1)[0]
    for i in range(4):
        leaf = prob.param.detach().clone().requires_grad_(True)
        fam = pwgf.as_family(prob.make(leaf))
        (g,) = torch.autograd.grad(est.surrogate_at(prob.f, fam, z[i : i + 1]).sum(), leaf)
        torch.testing.assert_close(g, batched[i])


def test_toy_writes_trajectories(tmp_path):
    argv = ["toy", "--iterations", "12", "--var-every", "6", "--var-draws", "40"]
    argv += ["--estimators", "st,reinforce-loo,arm,relax", "--quiet", "--out", str(tmp_path)]
    assert main(argv) == 0
    report = json.loads((tmp_path / "toy.json").read_text())
    assert report["targets"] == [0.49, 0.499, 0.501, 0.51]
    for r in report["results"]:
        assert not r.get("error"), r
        assert {"sigma", "final_sigma", "variance", "variance_iterations"} <= set(r)
        assert len(r["final_sigma"][0]) == 4
        assert r["variance_iterations"] == [0, 6, 12]
    assert {r["estimator"]: r["samples"] for r in report["results"]}["reinforce-loo"] == 2
    assert (tmp_path / "toy_sigma.png").exists() and (tmp_path / "toy_variance.png").exists()


def test_polynomial_writes_final_losses(tmp_path):
    argv = ["polynomial", "--steps", "6", "--dim", "8", "--samples", "4", "--seeds", "3"]
    argv += ["--powers", "2", "3", "--estimators", "st,disarm,rebar", "--record-every", "3"]
    argv += ["--quiet", "--out", str(tmp_path)]
    assert main(argv) == 0
    report = json.loads((tmp_path / "polynomial.json").read_text())
    assert len(report["results"]) == 6
    for r in report["results"]:
        assert not r.get("error"), r
        assert len(r["final_loss"]) == 3
        assert r["curve_steps"] == [0, 3, 6]
        assert 0.45 ** r["p"] <= r["final_mean"] <= 0.55 ** r["p"]
    assert (tmp_path / "polynomial.png").exists()
