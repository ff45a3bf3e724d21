"""``pwgf bench``: a tiny run through the CLI (structure only, no timing assertions), the caps,
resuming, and the storchastic comparison's skip path and subprocess protocol (with a fake
interpreter: storchastic itself is not assumed)."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import textwrap

import pytest

import pwgf
from pwgf.cli import main
from pwgf.experiments import bench, storch_compare

TINY = [
    "--bernoulli-sizes",
    "2x4x1,3x5x2",
    "--categorical-sizes",
    "2x2x3x1",
    "--poisson-sizes",
    "2x3x1@1,2x3x1@1e4",
    "--x-dim",
    "6",
    "--rounds",
    "1",
    "--quiet",
]
SIZES = {
    "bernoulli": ["2x4x1", "3x5x2"],
    "categorical": ["2x2x3x1"],
    "poisson": ["2x3x1@1", "2x3x1@10000"],
}


def _report(tmp_path, *extra):
    assert main(["bench", *TINY, *extra, "--out", str(tmp_path)]) == 0
    return json.loads((tmp_path / "results.json").read_text())


def test_bench_measures_every_estimator_on_every_family(tmp_path, capsys):
    no_python = str(tmp_path / "no-such-python")
    report = _report(tmp_path, "--storchastic-python", no_python, "--pyro-python", no_python)
    assert {"machine", "settings", "cells", "targets", "storchastic", "pyro"} <= set(report)
    assert report["machine"]["device"] == "cpu" and report["machine"]["threads"] >= 1
    assert report["settings"]["sizes"] == SIZES
    for family, sizes in SIZES.items():
        names = {e.name for e in pwgf.list_estimators() if family in e.families} - {"exact"}
        for size in sizes:
            for name in names:
                r = report["cells"][f"{family}/{size}/{name}"]
                assert r["family"] == family and r["estimator"] == name
                assert "ratio" in r or "skipped" in r or "error" in r, r
                if "ratio" in r:
                    assert r["ratio_min"] <= r["ratio"] <= r["ratio_max"]
                    assert r["seconds"] > 0 and r["floor_seconds"] > 0
                    assert r["verdict"] in ("PASS", "-") or r["verdict"].startswith("FAIL")
    # the floor has the estimator's number of samples
    assert report["cells"]["bernoulli/2x4x1/reinforce-loo"]["samples"] == 2
    assert report["cells"]["poisson/2x3x1@10000/pwgf"].get("ratio") is not None
    out = capsys.readouterr().out
    for family in SIZES:
        assert f"== {family}: ratio to the floor" in out
    assert "skipped:" in out and "cannot run" in report["storchastic"]["skipped"]
    assert "not run" in report["pyro"]["skipped"] and "cannot run" in report["pyro"]["skipped"]
    rows = (tmp_path / "results.csv").read_text().splitlines()
    assert len(rows) == 1 + len(report["cells"])


def test_bench_reports_cells_over_the_caps_without_running_them(tmp_path, capsys):
    argv = ["--no-storchastic", "--no-pyro", "--estimators", "st"]
    report = _report(tmp_path, *argv, "--cell-seconds", "1e-9")
    cells = report["cells"].values()
    assert cells and all("predicted" in r["skipped"] and "ratio" not in r for r in cells)
    assert "not attempted" in capsys.readouterr().out
    report = _report(tmp_path / "m", *argv, "--max-memory-gb", "1e-12")
    skipped = [r for r in report["cells"].values() if "skipped" in r]
    assert all("memory" in r["skipped"] for r in skipped)


def test_bench_resumes_finished_cells(tmp_path):
    argv = ["--no-storchastic", "--no-pyro", "--estimators", "st", "--families", "bernoulli"]
    report = _report(tmp_path, *argv)
    path = tmp_path / "results.json"
    report["cells"]["bernoulli/2x4x1/st"]["marker"] = 1
    path.write_text(json.dumps(report))
    again = _report(tmp_path, *argv)
    assert again["cells"]["bernoulli/2x4x1/st"]["marker"] == 1  # kept, not remeasured


def test_bench_rejects_bad_sizes():
    with pytest.raises(pwgf.PWGFError, match="is not BxDxK@rate"):
        bench.parse_sizes("poisson", "2x3x1")
    with pytest.raises(pwgf.PWGFError, match="is not BxLxCxK"):
        bench.parse_sizes("categorical", "2x3x1")


@pytest.mark.skipif(
    importlib.util.find_spec("storch") is not None, reason="storchastic is importable here"
)
def test_probe_reports_missing_storchastic():
    versions, reason = bench.probe_storchastic(sys.executable)
    assert versions is None and "not importable" in reason


FAKE = """\
#!{python}
# A stand-in for an interpreter with storchastic: answers the probe, and for a run writes the
# exact gradient as ARM's mean, a zero mean for DisARM, and an error for REBAR.
import json, sys
import torch
import pwgf
from torch.distributions import Bernoulli, Independent
if sys.argv[2:] == ["--probe"]:
    print(json.dumps({{"storchastic": "0.0-fake", "torch": torch.__version__}}))
    sys.exit(0)
cfg = json.load(open(sys.argv[2]))
p = cfg["problem"]
t, a = torch.tensor(p["t"]), torch.tensor(p["a"])
f = lambda x: ((x - t) ** 2).sum(-1) + ((x * a).sum(-1)) ** 2
exact = pwgf.exact_gradient(f, Independent(Bernoulli(logits=torch.tensor(p["logits"])), 1))
sizes = ["x".join(map(str, s)) for s in cfg["timing"]["sizes"]]
timing = {{s: {{"seconds": 0.5, "floor_seconds": 0.25, "ratio": 2.0, "ratio_min": 1.5,
              "ratio_max": 2.5}} for s in sizes}}
methods = {{
    "exact": {{"error": None, "mean": exact.tolist(), "se": [0.0] * 6, "storch_method": "E"}},
    "arm": {{"error": None, "mean": exact.tolist(), "se": [0.01] * 6, "storch_method": "A",
             "timing": timing}},
    "disarm": {{"error": None, "mean": [0.0] * 6, "se": [1e-4] * 6, "storch_method": "D",
                "timing": timing}},
    "rebar": {{"error": "TypeError: fake", "timing": {{}}}},
}}
json.dump({{"storchastic": "0.0-fake", "torch": "x", "threads": 1,
            "methods": {{m: methods[m] for m in cfg["methods"] if m in methods}}}},
          open(sys.argv[3], "w"))
"""


def test_storchastic_protocol_with_a_fake_interpreter(tmp_path, capsys):
    fake = tmp_path / "fakepython"
    fake.write_text(textwrap.dedent(FAKE.format(python=sys.executable)))
    fake.chmod(0o755)
    argv = ["bench", *TINY, "--families", "bernoulli", "--estimators", "st,arm,disarm,rebar"]
    argv += ["--storchastic-python", str(fake), "--storchastic-draws", "4", "5", "--no-pyro"]
    assert main([*argv, "--out", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "results.json").read_text())["storchastic"]
    assert report["storchastic"] == "0.0-fake"
    assert report["sizes"] == ["2x4x1", "3x5x2"] and report["draws"] == 20
    rows = {r["estimator"]: r for r in report["rows"]}
    assert set(rows) == {"exact", "arm", "disarm", "rebar"}  # st has no counterpart
    assert rows["exact"]["storch_rel_error"] < 1e-6
    assert rows["arm"]["storch_z_vs_exact"] < 1e-3
    assert rows["disarm"]["storch_z_vs_exact"] > 5 and "pwgf_mean" in rows["disarm"]
    assert rows["rebar"]["error"] == "TypeError: fake"
    cell = rows["arm"]["timing"]["2x4x1"]
    assert cell["storch"]["ratio"] == 2.0 and cell["pwgf_ratio"] > 0
    out = capsys.readouterr().out
    assert "WRONG: mean != exact" in out and "ERROR in storchastic: TypeError: fake" in out
    assert "storchastic 2.00x, pwgf" in out


def test_storch_script_probe_and_usage():
    res = subprocess.run(
        [sys.executable, storch_compare.__file__], capture_output=True, text=True, timeout=60
    )
    assert res.returncode == 2 and "usage" in res.stderr
    assert set(storch_compare.METHODS) >= {"reinforce", "arm", "disarm", "rebar", "relax"}


def test_pyro_script_usage_and_skip_without_pyro(tmp_path):
    from pwgf.experiments import pyro_compare

    res = subprocess.run(
        [sys.executable, pyro_compare.__file__], capture_output=True, text=True, timeout=60
    )
    assert res.returncode == 2 and "usage" in res.stderr
    args = bench.argparse.Namespace(pyro_python=str(tmp_path / "none"))
    assert "not run" in bench.compare_pyro(args, {})["skipped"]
