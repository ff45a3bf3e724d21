"""`pwgf poisson-bias`: outputs, ESTIMATORS.md's Poisson oracle, and the rescaling identity."""

import csv
import json

import pytest

from pwgf.cli import main


def rows_of(path):
    return json.loads((path / "bias.json").read_text())["rows"]


def pick(rows, cost, variant):
    (row,) = [r for r in rows if r["cost"] == cost and r["variant"] == variant]
    return row


def test_oracle_and_outputs(tmp_path, capsys):
    argv = ["poisson-bias", "--costs", "quad+,quad-", "--rates", "5", "--bandwidths", "0.5,1"]
    argv += ["--normalizations", "projection", "--steps", "none", "--out", str(tmp_path)]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "Oracle" in printed and "Relative bias" in printed and "Summary" in printed
    rows = rows_of(tmp_path)
    # ESTIMATORS.md, fact 5: f = (z-7)², λ = 5 (cost quad+ at λ = 5)
    st = pick(rows, "quad+", "st")
    assert st["exact"] == pytest.approx(-3.0, abs=1e-6)
    assert st["mean"] == pytest.approx(-4.0, abs=1e-6)
    assert pick(rows, "quad+", "pwgf h=0.5 projection")["mean"] == pytest.approx(-3.28, abs=5e-3)
    assert pick(rows, "quad+", "pwgf h=1 projection")["mean"] == pytest.approx(-3.90, abs=5e-3)
    assert pick(rows, "quad+", "mvd")["mean"] == pytest.approx(-3.0, abs=1e-6)
    # quadratic costs: pWGF is ST times a constant c(h) (Cov(w(z), z) = 0), whatever the target,
    # so the same shrinkage that helps quad+ (ST overshoots) hurts quad- (ST undershoots)
    for h in ("0.5", "1"):
        v = f"pwgf h={h} projection"
        plus, minus = pick(rows, "quad+", v), pick(rows, "quad-", v)
        assert plus["ratio_to_st"] == pytest.approx(minus["ratio_to_st"], rel=1e-9)
        assert abs(plus["rel_bias"]) < abs(st["rel_bias"])
        assert abs(minus["rel_bias"]) > abs(pick(rows, "quad-", "st")["rel_bias"])
    # c = E[w(z)] from the per-sample weights is that same ratio
    at5 = json.loads((tmp_path / "bias.json").read_text())["pwgf_weights"]["weights"][0]
    assert at5["rate"] == 5.0
    ratio = pick(rows, "quad+", "pwgf h=1 projection")["ratio_to_st"]
    assert at5["c"]["1"] == pytest.approx(ratio, rel=1e-6)
    table = list(csv.DictReader(open(tmp_path / "bias.csv")))
    assert len(table) == len(rows) == 2 * (1 + 2 + 2)  # st, 2 pwgf, mvd, reinforce per cost
    png = tmp_path / "poisson_bias.png"
    assert png.exists() and png.stat().st_size > 1000


def test_all_forms_and_rules_run(tmp_path):
    argv = ["poisson-bias", "--costs", "logistic,sqrt", "--rates", "0.5,20"]
    argv += ["--bandwidths", "1,std*0.5", "--steps", "none,0.1", "--no-variance", "--no-plot"]
    assert main([*argv, "--out", str(tmp_path)]) == 0
    rows = rows_of(tmp_path)
    assert len(rows) == 2 * 2 * (1 + 2 * 2 * 2)
    assert all(r["exact"] != 0 and r["mean"] == r["mean"] for r in rows)
    # the raw form differs from the projection only by a positive scalar per (λ, h)
    raw = [r for r in rows if r.get("normalization") == "raw"]
    assert len(raw) == 2 * 2 * 2 * 2
    for r in raw:
        twin = r["variant"].replace("raw", "projection")
        (p,) = [
            q for q in rows if (q["variant"], q["cost"], q["rate"]) == (twin, r["cost"], r["rate"])
        ]
        assert r["mean"] * p["mean"] > 0
