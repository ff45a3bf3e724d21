"""`pwgf vae --variance-every`: estimator variances on the same parameters and batch."""

from __future__ import annotations

import csv

import pytest
from test_vae import vae_args, write_data

from pwgf.cli import main


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return write_data(tmp_path_factory.mktemp("data"))


def _rows(out):
    with open(out / "history.csv") as fh:
        return list(csv.DictReader(fh))


def test_variance_is_logged_plotted_and_leaves_training_unchanged(data_dir, tmp_path):
    common = ["--steps", "4", "--eval-every", "2", "--estimator", "st", "--seed", "3"]
    measured = tmp_path / "measured"
    extra = ["--variance-every", "2", "--variance-estimators", "st,reinforce-loo,arm"]
    assert main(vae_args(data_dir, measured, *common, *extra, "--variance-draws", "6")) == 0
    rows = _rows(measured)
    assert [r["step"] for r in rows] == ["0", "2", "4"]
    for r in rows:
        for name in ("st", "reinforce-loo", "arm"):
            assert float(r[f"var_{name}"]) >= 0 and float(r[f"sqnorm_{name}"]) >= 0
        # the score-function estimator is far noisier than ST on a VAE's encoder
        assert float(r["var_reinforce-loo"]) > float(r["var_st"])
    assert (measured / "gradient_variance.png").stat().st_size > 0

    plain = tmp_path / "plain"
    assert main(vae_args(data_dir, plain, *common)) == 0
    for a, b in zip(rows, _rows(plain), strict=True):
        assert a["valid_neg_elbo"] == b["valid_neg_elbo"]  # measurement does not touch training


def test_variance_every_must_be_a_multiple_of_eval_every(data_dir, tmp_path, capsys):
    argv = vae_args(
        data_dir, tmp_path, "--steps", "4", "--eval-every", "2", "--variance-every", "3"
    )
    assert main(argv) == 2
    assert "multiple of --eval-every" in capsys.readouterr().err
