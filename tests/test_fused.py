"""pwgf.fused: the compiled Poisson kernels agree with the eager ones and with exact sums; a
kernel that cannot compile warns and runs eagerly; the switch checks its input.

The compiled run happens in a subprocess: it takes inductor's compile time once (15-25 s cold on
two cores for the three kernels), and a process that has run inductor traces some of
torch.distributions differently under a later ``torch.compile(fullgraph=True)``, which would
make other tests' results depend on their order.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

import pwgf
from pwgf import fused, poisson_kernel

SCRIPT = textwrap.dedent(
    """
    import json, warnings
    import torch
    import pwgf
    from pwgf import fused, poisson_kernel as pk

    torch.manual_seed(0)
    out = {}
    warnings.simplefilter("error", fused.FusedKernelWarning)
    # rates where A takes the small window, a rule, and where G takes rules of several sizes
    # (rate, atoms): the reference's O(M²) Gram matrix limits the atoms at large rates
    for rate, n in ((1e-3, 3000), (0.7, 3000), (3.0, 3000), (12.0, 1000), (150.0, 100), (1e4, 8)):
        lam = rate * (torch.randn(n, dtype=torch.float64) / 10).exp()
        h = (2 * lam.sqrt()).clamp(min=1.0)
        b = torch.poisson(lam.expand(2, -1))
        ref_a, ref_g = pk.reference_sums(lam, h, b, margin=2.0)
        with fused.fused_mode(False):
            eager = pk.rbf_mean_grad(lam, h, b), pk.rbf_metric(lam, h)
        with fused.fused_mode(True):
            comp = pk.rbf_mean_grad(lam, h, b), pk.rbf_metric(lam, h)
        kernels = [pk._gh_mean_grad_kernel, pk._gh_metric_kernel, pk._small_mean_grad_kernel]
        scale_a = ref_a.abs().amax(0)
        out[str(rate)] = {
            "plan_a": pk._batch_plan(lam, h, False)[0],
            "a_vs_eager": float(((comp[0] - eager[0]).abs() / scale_a).max()),
            "g_vs_eager": float(((comp[1] - eager[1]).abs() / ref_g).max()),
            "a_vs_exact": float(((comp[0] - ref_a).abs() / scale_a).max()),
            "g_vs_exact": float(((comp[1] - ref_g).abs() / ref_g).max()),
            "compiled": [k._compiled is not None for k in kernels],
            "failed": [k.failed for k in kernels],
        }
    print(json.dumps(out))
    """
)


@pytest.fixture(scope="module")
def compiled_run():
    env = dict(os.environ, PWGF_FUSED="0")
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT], capture_output=True, text=True, env=env, timeout=900
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_compiled_kernels_match_eager_and_exact_sums(compiled_run):
    plans = {r["plan_a"] for r in compiled_run.values()}
    assert {"small", "gh"} <= plans  # both A kernels were exercised
    for rate, r in compiled_run.items():
        assert r["failed"] == [None, None, None], rate
        # the same formulas, summed in another order
        assert r["a_vs_eager"] < 1e-11 and r["g_vs_eager"] < 1e-11, (rate, r)
        # the module's stated accuracy
        assert r["a_vs_exact"] < 2e-7 and r["g_vs_exact"] < 2e-7, (rate, r)
    assert all(any(r["compiled"]) for r in compiled_run.values())


def test_a_kernel_that_cannot_compile_warns_once_and_runs_eagerly(monkeypatch):
    def broken(fn, **kwargs):
        def run(*args):
            raise RuntimeError("no compiler here")

        return run

    monkeypatch.setattr(torch, "compile", broken)
    k = fused.Kernel(lambda x: 2 * x)
    x = torch.arange(4.0)
    with fused.fused_mode(True):
        with pytest.warns(fused.FusedKernelWarning, match="no compiler here"):
            assert torch.equal(k(x), 2 * x)
        assert k.failed is not None and not k.runs_fused()
        assert torch.equal(k(x), 2 * x)  # no second warning: the eager path from now on


def test_off_by_default_and_switch_checks_its_input(monkeypatch):
    assert not fused.is_fused()
    assert not poisson_kernel._gh_metric_kernel.runs_fused()
    with fused.fused_mode(True):
        assert fused.is_fused()
    assert not fused.is_fused()
    with pytest.raises(TypeError, match="True or False"):
        pwgf.set_fused("yes")
    monkeypatch.setenv("PWGF_FUSED", "maybe")
    with pytest.raises(pwgf.PWGFError, match="PWGF_FUSED must be 1 or 0"):
        fused._from_env()
    monkeypatch.setenv("PWGF_FUSED", "1")
    assert fused._from_env() is True


def test_a_bad_environment_variable_is_a_one_line_command_error(monkeypatch, capsys):
    from pwgf.cli import main

    monkeypatch.setenv("PWGF_FUSED", "maybe")
    monkeypatch.setattr(fused, "_MODE", None)  # as in a fresh process: the variable not read yet
    argv = ["bench", "--families", "poisson", "--estimators", "pwgf", "--poisson-sizes", "2x2x1@1"]
    assert main([*argv, "--no-storchastic", "--no-pyro", "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        "pwgf bench: error: the environment variable PWGF_FUSED must be 1 or 0, got 'maybe'"
    ]
