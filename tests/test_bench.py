"""``pwgf bench``: a tiny run through the CLI, the cost cap, and the storchastic comparison's skip
path and subprocess protocol (with a fake interpreter: storchastic itself is not assumed)."""

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

TINY = ["--sizes", "2x4x1,3x5x2", "--x-dim", "6", "--warmup", "0", "--repeats", "1", "--quiet"]


def test_bench_writes_results_and_skips_missing_storchastic(tmp_path, capsys):
    argv = ["bench", *TINY, "--storchastic-python", str(tmp_path / "no-such-python")]
    assert main([*argv, "--out", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "results.json").read_text())
    assert {"machine", "settings", "plain", "results", "storchastic"} <= set(report)
    assert report["machine"]["device"] == "cpu" and report["machine"]["threads"] >= 1
    assert set(report["plain"]) == {"2x4x1", "3x5x2"}
    bernoulli = [e.name for e in pwgf.list_estimators() if "bernoulli" in e.families]
    assert set(report["results"]) == set(bernoulli) - {"exact"}
    for name, per_size in report["results"].items():
        for size, r in per_size.items():
            assert r.get("seconds", 0) > 0 and r["ratio"] > 0, (name, size, r)
    assert "skipped" in report["storchastic"]
    assert "cannot run" in report["storchastic"]["skipped"]
    assert "skipped:" in capsys.readouterr().out


def test_bench_caps_estimators_whose_cost_grows_with_the_latents(tmp_path):
    argv = ["bench", *TINY, "--max-seconds", "0", "--no-storchastic", "--estimators", "st,mvd"]
    assert main([*argv, "--out", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "results.json").read_text())
    assert "storchastic" not in report
    assert "seconds" in report["results"]["st"]["2x4x1"]  # constant cost: never capped
    for r in report["results"]["mvd"].values():
        assert "grow with the number of latents" in r["skipped"]


def test_predicted_evaluations():
    evals, grows = bench.predicted_evaluations("mvd", 10, 20, 3)
    assert grows and evals == pytest.approx(3 * (1 + 20))  # per-entry: D, not B·D
    assert bench.predicted_evaluations("arm", 10, 20, 3) == (6, False)


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
timing = {{s: {{"seconds": 0.5}} for s in sizes}}
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
    argv = ["bench", *TINY, "--estimators", "st,arm,disarm,rebar", "--storchastic-python"]
    argv += [str(fake), "--storchastic-draws", "4", "5", "--out", str(tmp_path)]
    assert main(argv) == 0
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
    assert cell["storch"]["seconds"] == 0.5 and cell["storch_over_pwgf"] > 0
    out = capsys.readouterr().out
    assert "WRONG: mean != exact" in out and "ERROR in storchastic: TypeError: fake" in out


def test_storch_script_probe_and_usage():
    res = subprocess.run(
        [sys.executable, storch_compare.__file__], capture_output=True, text=True, timeout=60
    )
    assert res.returncode == 2 and "usage" in res.stderr
    assert set(storch_compare.METHODS) >= {"reinforce", "arm", "disarm", "rebar", "relax"}
