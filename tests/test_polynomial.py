"""``pwgf polynomial``: the authors' two-logit (softmax) parameterisation and the one-logit form,
the authors' figure and its printed reference, the time cap (off with ``--full``) stated in the
table, and resuming from the saved runs."""

from __future__ import annotations

import argparse
import json
import math

import pytest
import torch
from torch.distributions import Bernoulli, Independent, OneHotCategorical

import pwgf
from pwgf.cli import main
from pwgf.experiments import polynomial

TINY = ["polynomial", "--steps", "6", "--dim", "8", "--samples", "4", "--seeds", "3"]
TINY += ["--powers", "2", "3", "--record-every", "3", "--quiet"]


@pytest.mark.parametrize("name", ["st", "reinmax"])
def test_two_logits_give_the_one_logit_gradient_and_its_negative(name):
    """Exact expected estimates: on the 2-class one-hot with logits (a, b), ∂/∂a = -∂/∂b =
    the Bernoulli estimate for ℓ = a - b, so Adam (per element) moves ℓ twice as far a step."""
    theta = torch.tensor([[0.3, -0.2], [-1.0, 0.4]], dtype=torch.float64)
    est = pwgf.get_estimator(name)
    f_cat = polynomial.cost(1.5, one_hot=True)
    f_bern = polynomial.cost(1.5, one_hot=False)
    g_cat = pwgf.estimator_expectation(
        est, f_cat, Independent(OneHotCategorical(logits=theta.clone().requires_grad_()), 1)
    )
    ell = (theta[:, 0] - theta[:, 1]).requires_grad_()
    g_bern = pwgf.estimator_expectation(est, f_bern, Independent(Bernoulli(logits=ell), 1))
    torch.testing.assert_close(g_cat[:, 0], g_bern)
    torch.testing.assert_close(g_cat[:, 1], -g_bern)
    torch.testing.assert_close(
        polynomial.exact_loss(theta[None], 2.0), polynomial.exact_loss(ell.detach()[None], 2.0)
    )


def test_softmax_form_is_the_default_and_reports_the_authors_figure(tmp_path, capsys):
    argv = [*TINY, "--estimators", "st,reinmax,disarm", "--out", str(tmp_path)]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "two logits per variable through a softmax" in out
    assert "reinmax (ref.)" in out and "0.2038" in out and "issue 10" in out
    report = json.loads((tmp_path / "polynomial.json").read_text())
    assert report["settings"]["param"] == "softmax"
    families = {r["estimator"]: r["family"] for r in report["results"]}
    assert families == {"st": "categorical", "reinmax": "categorical", "disarm": "bernoulli"}
    for r in report["results"]:
        assert not r.get("error"), r
        assert r["last_epoch_steps"] == 6 and len(r["last_epoch_loss"]) == 3
        assert 0.45 ** r["p"] <= r["last_epoch_mean"] <= 0.55 ** r["p"]


def test_one_logit_form_and_resume(tmp_path, capsys):
    argv = [*TINY, "--estimators", "st", "--param", "logit", "--out", str(tmp_path)]
    assert main(argv) == 0
    first = json.loads((tmp_path / "polynomial.json").read_text())["results"]
    assert {r["family"] for r in first} == {"bernoulli"}
    saved = sorted(p.name for p in (tmp_path / "runs").iterdir())
    assert saved == ["st_p2_logit.json", "st_p3_logit.json"]
    capsys.readouterr()
    assert main(argv) == 0  # finished runs are read back, not recomputed
    again = json.loads((tmp_path / "polynomial.json").read_text())["results"]
    assert again == first
    (tmp_path / "runs" / "st_p2_logit.json").write_text("{not json")
    capsys.readouterr()
    assert main(argv) == 2
    assert "cannot read the saved run" in capsys.readouterr().err


def test_time_cap_is_stated_in_the_table_and_off_with_full(tmp_path, capsys):
    argv = ["polynomial", "--steps", "30", "--dim", "4", "--samples", "2", "--seeds", "2"]
    argv += ["--powers", "2", "--estimators", "st", "--max-run-seconds", "0", "--quiet"]
    assert main([*argv, "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "skipped (time cap)" in out and "skipped: st p=2: predicted" in out
    assert not (tmp_path / "runs").exists()  # a skipped run is not saved as finished
    full = argparse.Namespace(max_run_seconds=None, full=True)
    assert math.isinf(polynomial._cap(full))
    full.full = False
    assert polynomial._cap(full) == polynomial.DEFAULT_CAP
