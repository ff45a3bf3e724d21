"""Bad input gets a clear error; dtypes, devices, shapes and torch.compile behave."""

import pytest
import torch
from torch.distributions import (
    Bernoulli,
    Distribution,
    Independent,
    Normal,
    OneHotCategorical,
    Poisson,
)

import pwgf
from pwgf.experiments import estimators as estimators_cmd


def quad(z):
    return (z**2).sum(-1)


def test_unknown_estimator_lists_valid_names():
    with pytest.raises(pwgf.UnknownEstimatorError, match=r"valid names: .*reinforce.*st"):
        pwgf.get_estimator("straight-thru")


def test_aliases_resolve():
    assert pwgf.get_estimator("pwgf-st").name == "st"
    assert pwgf.get_estimator("pwgf-mmd").name == "pwgf"
    assert pwgf.get_estimator("PWGF_MMD").name == "pwgf"


def test_unknown_option_lists_valid_options():
    with pytest.raises(pwgf.PWGFError, match=r"no option.*bandwith.*bandwidth"):
        pwgf.get_estimator("pwgf", bandwith=2.0)


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"kernel": "cosine"}, "kernel must be one of"),
        ({"bandwidth": -1.0}, "bandwidth must be positive"),
        ({"bandwidth": "median"}, "bandwidth must be"),
        ({"bandwidth": "std*-2"}, "bandwidth must be"),
        ({"bandwidth": "std*inf"}, "bandwidth must be"),
        ({"normalization": "newton"}, "normalization must be one of"),
        ({"step": 0.0}, "step must be None or a positive"),
    ],
)
def test_bad_pwgf_options(options, match):
    with pytest.raises(pwgf.PWGFError, match=match):
        pwgf.get_estimator("pwgf", **options)


def test_unsupported_distribution():
    with pytest.raises(pwgf.UnsupportedDistributionError, match=r"Normal.*Bernoulli"):
        pwgf.sample(Normal(0.0, 1.0), estimator="st")
    with pytest.raises(pwgf.UnsupportedDistributionError, match=r"torch.distributions"):
        pwgf.exact_expectation(quad, torch.ones(3))


def test_family_mismatch_names_estimators_that_can():
    dist = OneHotCategorical(logits=torch.zeros(3))
    with pytest.raises(pwgf.UnsupportedFamilyError, match=r"categorical.*st.*pwgf.*reinforce"):
        pwgf.get_estimator("mvd").surrogate(quad, dist)


@pytest.mark.parametrize(
    "make",
    [
        lambda: Bernoulli(logits=torch.tensor([0.0, float("nan")])),
        lambda: Bernoulli(probs=torch.tensor([0.5, 1.5])),
        lambda: Poisson(torch.tensor([1.0, float("inf")])),
        lambda: Poisson(torch.tensor([-1.0])),
        lambda: OneHotCategorical(logits=torch.tensor([0.0, float("nan")])),
    ],
)
def test_non_finite_or_out_of_range_parameters(make):
    # torch's own check is off by default (as under python -O): pwgf must still refuse. (An
    # explicit validate_args=False turns pwgf's checks off too: tests/test_hardening.py.)
    Distribution.set_default_validate_args(False)
    try:
        dist = make()
    finally:
        Distribution.set_default_validate_args(True)
    with pytest.raises(pwgf.InvalidParameterError, match=r"rate|probs|logits"):
        pwgf.sample(dist, estimator="st")


@pytest.mark.parametrize("n", [0, -2, 1.5, True])
def test_n_samples_must_be_a_positive_int(n):
    with pytest.raises(pwgf.PWGFError, match=r"n_samples"):
        pwgf.sample(Bernoulli(logits=torch.zeros(2)), estimator="st", n_samples=n)


def test_leave_one_out_needs_two_samples():
    with pytest.raises(pwgf.PWGFError, match=r">= 2"):
        pwgf.get_estimator("reinforce-loo").surrogate(quad, Bernoulli(logits=torch.zeros(2)), 1)


@pytest.mark.parametrize(
    ("f", "match"),
    [
        (lambda z: z.sum(), "shape \\(K, \\*S\\)"),
        (lambda z: z.sum(-1)[:1], "shape \\(K, \\*S\\)"),
        (lambda z: (z > 0).sum(-1), "floating-point"),
        (lambda z: 3.0, "torch.Tensor"),
    ],
)
def test_cost_with_wrong_output(f, match):
    dist = Bernoulli(logits=torch.zeros(2, 3))
    with pytest.raises(pwgf.InvalidCostError, match=match):
        pwgf.get_estimator("reinforce").surrogate(f, dist, n_samples=3)


def test_minus_infinity_logits_mask_a_category():
    logits = torch.tensor([0.0, float("-inf"), 1.0], requires_grad=True)
    z = pwgf.sample(OneHotCategorical(logits=logits), estimator="pwgf", n_samples=50)
    assert z[:, 1].sum() == 0
    (z @ torch.tensor([1.0, 2.0, 3.0])).mean().backward()
    assert torch.isfinite(logits.grad).all()


def test_sample_refuses_estimators_that_need_f():
    for name, opts in (("reinforce", {}), ("mvd", {}), ("pwgf", {"step": 0.1})):
        with pytest.raises(pwgf.NeedsCostFunctionError, match=r"surrogate"):
            pwgf.sample(Bernoulli(logits=torch.zeros(2)), estimator=name, **opts)


def test_too_large_to_enumerate_says_so():
    dist = Independent(Bernoulli(logits=torch.zeros(64)), 1)
    with pytest.raises(pwgf.TooLargeToEnumerateError, match=r"2\^64.*max_configs"):
        pwgf.exact_gradient(quad, dist)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("name", ["st", "pwgf", "reinforce", "reinforce-loo", "mvd", "exact"])
def test_dtype_follows_inputs(dtype, name):
    for make in (
        lambda p: Independent(Bernoulli(logits=p), 1),
        lambda p: Independent(Poisson(p.exp()), 1),
    ):
        param = torch.zeros(3, dtype=dtype, requires_grad=True)
        loss = pwgf.get_estimator(name).surrogate(quad, make(param), n_samples=2)
        assert loss.dtype == dtype
        loss.sum().backward()
        assert param.grad.dtype == dtype and torch.isfinite(param.grad).all()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("name", ["st", "pwgf", "reinforce", "mvd", "exact"])
def test_runs_on_cuda(name):
    param = torch.zeros(3, device="cuda", requires_grad=True)
    loss = pwgf.get_estimator(name).surrogate(quad, Independent(Poisson(param.exp()), 1), 2)
    loss.sum().backward()
    assert param.grad.device.type == "cuda"


def test_works_under_torch_compile():
    logits = torch.randn(4, 3, requires_grad=True)

    def model(lg):
        z = pwgf.sample(Independent(Bernoulli(logits=lg), 1), estimator="pwgf", n_samples=2)
        return (z.sum(-1) - 1.0).pow(2).mean()

    compiled = torch.compile(model, backend="aot_eager")
    torch.manual_seed(1)
    eager = torch.autograd.grad(model(logits), logits)[0]
    torch.manual_seed(1)
    comp = torch.autograd.grad(compiled(logits), logits)[0]
    torch.testing.assert_close(comp, eager)


def test_list_estimators_describes_each():
    infos = {e.name: e for e in pwgf.list_estimators()}
    assert {"st", "pwgf", "reinforce", "reinforce-loo", "mvd", "exact"} <= set(infos)
    assert infos["pwgf"].pathwise and infos["st"].biased and not infos["mvd"].biased
    assert infos["mvd"].families == ("bernoulli", "poisson")
    assert "bandwidth" in infos["pwgf"].options
    assert "| `pwgf` |" in estimators_cmd.table()


def test_cli_help_and_demo(capsys, tmp_path):
    from pwgf.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    assert "demo" in capsys.readouterr().out
    assert main(["demo", "--draws", "5", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "poisson-quadratic" in out and "bernoulli-8" in out
    assert (tmp_path / "demo.json").stat().st_size > 0
