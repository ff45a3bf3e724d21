"""Hardening: the validation switch and host reads, compile, stale distributions, exact tools, the
EMA baseline, RELAX state dicts and the untuned-estimator warning (issues 10, 11 and 15).
Registry-wide boundary behaviour is in tests/test_boundaries.py."""

from __future__ import annotations

import subprocess
import sys
import warnings

import pytest
import torch
from torch.distributions import Bernoulli, Independent, OneHotCategorical, Poisson

import pwgf
from pwgf.errors import (
    BoundaryError,
    PWGFError,
    StaleDistributionError,
    UntunedEstimatorWarning,
)

W = torch.tensor([1.0, -2.0, 0.5])


def cost(z):
    return ((z - 0.3) * W.to(z)).sum(-1) ** 2


def cat_cost(z):
    return (z * torch.tensor([0.3, -1.0, 2.0]).to(z)).sum(-1) ** 2


# -- validation: the switch, and no host read when it is off --------------------------------------
@pytest.fixture
def no_host_reads(monkeypatch):
    """Make every Python-level host read of a tensor (bool, item, int, float, tolist) fail."""

    def refuse(*args, **kwargs):
        raise AssertionError("host read of a tensor (a device sync) on the hot path")

    for attr in ("__bool__", "item", "__int__", "__float__", "tolist", "__index__"):
        monkeypatch.setattr(torch.Tensor, attr, refuse)


def _families_problems():
    return {
        "bernoulli": (lambda p: Independent(Bernoulli(logits=p, validate_args=False), 1), cost),
        "categorical": (lambda p: OneHotCategorical(logits=p, validate_args=False), cat_cost),
    }


def _sync_pairs():
    return [
        pytest.param(info.name, fam, id=f"{info.name}-{fam}")
        for info in pwgf.list_estimators()
        for fam in _families_problems()
        if fam in info.families and info.name != "exact"  # exact enumerates: not a hot path
    ]


@pytest.mark.parametrize(("name", "family"), _sync_pairs())
def test_no_host_read_with_validation_off(name, family, request):
    # Poisson is left out: its support window's width is a host read by nature (a tensor shape)
    make, f = _families_problems()[family]
    est = pwgf.get_estimator(name)
    leaf = torch.randn(3, requires_grad=True)
    est.surrogate(f, make(leaf), 2)  # warm-up: first calls may initialise lazily
    # built before: torch's OneHotCategorical checks its inner Categorical whatever validate_args
    dist = make(leaf)
    request.getfixturevalue("no_host_reads")
    loss = est.surrogate(f, dist, 2).sum()
    if est.learnable:
        loss = loss + est.variance_loss()
    loss.backward()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize(("name", "family"), _sync_pairs())
def test_no_device_sync_on_cuda_with_validation_off(name, family):
    make, f = _families_problems()[family]
    est = pwgf.get_estimator(name).cuda()
    leaf = torch.randn(3, device="cuda", requires_grad=True)
    est.surrogate(f, make(leaf), 2)  # warm-up: first calls may initialise lazily
    dist = make(leaf)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        loss = est.surrogate(f, dist, 2).sum()
        if est.learnable:
            loss = loss + est.variance_loss()
        loss.backward()
    finally:
        torch.cuda.set_sync_debug_mode("default")


def test_validation_switch_and_validate_args():
    bad = torch.tensor([0.0, 0.5, 0.5], requires_grad=True)  # probs 0: refused for reinforce
    est = pwgf.get_estimator("reinforce")
    with pytest.raises(BoundaryError, match=r"mvd.*exact|exact.*mvd"):
        est.surrogate(cost, Independent(Bernoulli(probs=bad), 1), 2)
    # off for one distribution (validate_args=False), or library-wide, or in a block
    est.surrogate(cost, Independent(Bernoulli(probs=bad, validate_args=False), 1), 2)
    with pwgf.validation(False):
        assert not pwgf.is_validating()
        est.surrogate(cost, Independent(Bernoulli(probs=bad), 1), 2)
    assert pwgf.is_validating()
    pwgf.set_validation(False)
    try:
        est.surrogate(cost, Independent(Bernoulli(probs=bad), 1), 2)
    finally:
        pwgf.set_validation(True)
    with pytest.raises(TypeError):
        pwgf.set_validation("no")


def test_boundary_error_names_the_problem_and_the_alternatives():
    rate = torch.tensor([0.0, 1.0, 2.0], requires_grad=True)
    for name in ("reinforce", "reinforce-loo", "muprop"):
        with pytest.raises(BoundaryError, match="Poisson rate of exactly 0") as err:
            pwgf.get_estimator(name).surrogate(cost, Independent(Poisson(rate), 1), 2)
        assert name in str(err.value) and "mvd" in str(err.value)
    # no gradient asked for the parameter: nothing to refuse
    with torch.no_grad():
        pwgf.get_estimator("reinforce").surrogate(cost, Independent(Poisson(rate), 1), 2)


# -- torch.compile --------------------------------------------------------------------------------
def _step(name, family="bernoulli"):
    est = pwgf.get_estimator(name)
    make, f = _families_problems()[family]

    def step(lg):
        loss = est.surrogate(f, make(lg), 2).mean()
        return loss + est.variance_loss() if est.learnable else loss

    return step


@pytest.mark.parametrize(("name", "family"), [("st", "bernoulli"), ("pwgf", "categorical")])
def test_compile_without_graph_breaks(name, family):
    torch._dynamo.reset()
    step = _step(name, family)
    logits = torch.randn(4, 3, requires_grad=True)
    explained = torch._dynamo.explain(step)(logits)
    assert explained.graph_break_count == 0, explained.break_reasons
    compiled = torch.compile(step, backend="aot_eager", fullgraph=True)
    torch.manual_seed(1)
    eager = torch.autograd.grad(step(logits), logits)[0]
    torch.manual_seed(1)
    comp = torch.autograd.grad(compiled(logits), logits)[0]
    torch.testing.assert_close(comp, eager)


@pytest.mark.parametrize("name", ["muprop", "relax"])  # relax: rebar's code and a network
def test_compile_of_second_order_estimators_works(name):
    # Their forward-mode / second-order parts run eagerly (graph breaks), as documented.
    torch._dynamo.reset()
    step = _step(name)
    logits = torch.randn(4, 3, requires_grad=True)
    torch.manual_seed(1)
    eager = torch.autograd.grad(step(logits), logits)[0]
    compiled = torch.compile(step, backend="aot_eager")
    torch.manual_seed(1)
    comp = torch.autograd.grad(compiled(logits), logits)[0]
    assert bool(torch.isfinite(comp).all())
    torch.testing.assert_close(comp, eager)


POISSON_COMPILE = """
import torch, pwgf
from torch.distributions import Independent, Poisson
pwgf.set_validation(False)
est = pwgf.get_estimator("pwgf")
w = torch.randn(20, 5, generator=torch.Generator().manual_seed(0))
def step(leaf):
    d = Independent(Poisson(leaf.exp() * 3), 1)
    return est.surrogate(lambda z: (z @ w).square().mean(-1), d, n_samples=2).sum()
leaf = torch.randn(4, 20, generator=torch.Generator().manual_seed(1)).requires_grad_(True)
compiled = torch.compile(step, backend="aot_eager")
for _ in range(2):
    torch.manual_seed(1)
    eager = torch.autograd.grad(step(leaf), leaf)[0]
    torch.manual_seed(1)
    comp = torch.autograd.grad(compiled(leaf), leaf)[0]
    torch.testing.assert_close(comp, eager)
print("ok")
"""


def test_compile_of_a_poisson_pwgf_step_prints_nothing():
    # pWGF's Poisson table runs eagerly inside a compiled step (host reads choose its path): one
    # graph break, silent, rather than a warning per host read; in a fresh process, so that
    # torch's warnings and dynamo's log lines are not swallowed by earlier tests
    proc = subprocess.run(
        [sys.executable, "-W", "always", "-c", POISSON_COMPILE],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr
    assert (proc.stdout.strip(), proc.stderr) == ("ok", ""), proc.stderr


# -- stale distributions --------------------------------------------------------------------------
@pytest.mark.parametrize(
    "name", ["st", "pwgf", "mvd", "muprop", "reinmax", "exact", "reinforce", "arm", "disarm"]
)
@pytest.mark.parametrize("kind", ["logits", "probs"])
def test_distribution_reused_across_optimiser_steps(name, kind):
    w = torch.nn.Parameter(torch.zeros(3) if kind == "logits" else torch.full((3,), 0.5))
    dist = Independent(Bernoulli(**{kind: w}), 1)  # built once, used for every step
    est = pwgf.get_estimator(name)
    opt = torch.optim.SGD([w], lr=0.1)
    for _ in range(5):
        opt.zero_grad()
        est.surrogate(cost, dist, 2).mean().backward()
        opt.step()
        with torch.no_grad():
            w.clamp_(0.05, 0.95) if kind == "probs" else None
    # pwgf reads the parameter afresh: the mean it uses is the current one, and the gradient
    # is the one a distribution built now would give
    current = w.sigmoid() if kind == "logits" else w
    torch.testing.assert_close(pwgf.as_family(dist).mean(), current, rtol=0, atol=0)
    torch.manual_seed(3)
    (reused,) = torch.autograd.grad(est.surrogate(cost, dist, 2).mean(), w)
    torch.manual_seed(3)
    fresh = Independent(Bernoulli(**{kind: w}), 1)
    (want,) = torch.autograd.grad(est.surrogate(cost, fresh, 2).mean(), w)
    torch.testing.assert_close(reused, want)


def test_stale_categorical_is_refused():
    # OneHotCategorical normalises its logits when built: the copy goes stale after a step
    w = torch.nn.Parameter(torch.zeros(3))
    dist = OneHotCategorical(logits=w)
    opt = torch.optim.SGD([w], lr=0.1)
    est = pwgf.get_estimator("st")
    est.surrogate(cat_cost, dist, 2).mean().backward()
    est.surrogate(cat_cost, dist, 2)  # used again before the step: fine
    opt.step()
    with pytest.raises(StaleDistributionError, match="afresh"):
        est.surrogate(cat_cost, dist, 2)
    est.surrogate(cat_cost, OneHotCategorical(logits=w), 2)  # a fresh one is fine


# -- Poisson rate 0 and Bernoulli probs below eps ------------------------------------------------
def test_poisson_rate_zero_exact_and_pathwise():
    def f(z):
        return ((z - 1.5) ** 2).sum(-1)

    rate = torch.tensor([0.0, 2.0])
    exact = pwgf.exact_gradient(f, Independent(Poisson(rate), 1))
    torch.testing.assert_close(exact[0], torch.tensor(-2.0))  # f(1) - f(0)
    for name in ("pwgf", "st", "mvd"):
        g = pwgf.estimator_expectation(pwgf.get_estimator(name), f, Independent(Poisson(rate), 1))
        assert bool(torch.isfinite(g).all())
    mvd = pwgf.estimator_expectation(pwgf.get_estimator("mvd"), f, Independent(Poisson(rate), 1))
    torch.testing.assert_close(mvd, exact)


@pytest.mark.parametrize("p", [1e-6, 1e-7, 1e-8])
@pytest.mark.parametrize("name", ["reinforce", "muprop"])
def test_bernoulli_probs_below_float32_eps(name, p):
    probs = torch.tensor([p, 0.5], dtype=torch.float32)

    def f(z):
        return (z * torch.tensor([3.0, 1.0])).sum(-1) ** 2

    dist = Independent(Bernoulli(probs=probs), 1)
    exact = pwgf.exact_gradient(f, dist)
    mean = pwgf.estimator_expectation(pwgf.get_estimator(name), f, dist)
    torch.testing.assert_close(mean, exact, rtol=0, atol=1e-5)


# -- reinforce's moving-average baseline ---------------------------------------------------------
def test_ema_baseline_skips_non_finite_batches():
    est = pwgf.get_estimator("reinforce", baseline="ema")
    logits = torch.zeros(3, requires_grad=True)
    est.surrogate(cost, Independent(Bernoulli(logits=logits), 1), 4)
    before = est.running_mean.clone()
    est.surrogate(lambda z: cost(z) * torch.nan, Independent(Bernoulli(logits=logits), 1), 4)
    assert est.skipped_updates == 1 and int(est.n_updates) == 1
    torch.testing.assert_close(est.running_mean, before)
    est.surrogate(cost, Independent(Bernoulli(logits=logits), 1), 4)
    assert bool(torch.isfinite(est.running_mean)) and int(est.n_updates) == 2


def test_ema_baseline_is_the_average_before_the_batch():
    est = pwgf.get_estimator("reinforce", baseline="ema")
    fz = torch.tensor([[1.0], [3.0]])
    assert float(est._baseline(fz)) == 0.0  # first batch: no average yet
    assert float(est._baseline(fz * 10)) == 2.0  # the first batch's mean, not including this one


# -- exact tools --------------------------------------------------------------------------------
def test_exact_tools_under_inference_mode():
    dist = Independent(Bernoulli(logits=torch.tensor([0.3, -0.2, 1.0])), 1)
    want = pwgf.exact_gradient(cost, dist)
    want_st = pwgf.estimator_expectation(pwgf.get_estimator("st"), cost, dist)
    with torch.inference_mode():
        inside = Independent(Bernoulli(logits=torch.tensor([0.3, -0.2, 1.0])), 1)
        torch.testing.assert_close(pwgf.exact_gradient(cost, inside), want)
        est = pwgf.get_estimator("st")
        torch.testing.assert_close(pwgf.estimator_expectation(est, cost, inside), want_st)
        pwgf.estimator_moments(est, cost, inside)


def test_exact_estimator_with_scalar_batch_shape():
    logit = torch.tensor(0.3, requires_grad=True)

    def f(z):
        return (z - 0.2) ** 2

    out = pwgf.get_estimator("exact").surrogate(f, Bernoulli(logits=logit))
    (g,) = torch.autograd.grad(out, logit)
    torch.testing.assert_close(g, pwgf.exact_gradient(f, Bernoulli(logits=logit)))


def test_exact_gradient_is_bitwise_deterministic_with_two_threads():
    gen = torch.Generator().manual_seed(1)
    mix = torch.randn(16, 5, generator=gen, dtype=torch.float32)
    dist = Independent(Bernoulli(logits=torch.randn(2, 8, generator=gen, dtype=torch.float32)), 2)

    def f(z):
        return (z.reshape(z.shape[0], -1) @ mix).pow(2).sum(-1)

    old = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        grads = [pwgf.exact_gradient(f, dist, chunk=4096) for _ in range(3)]
    finally:
        torch.set_num_threads(old)
    for g in grads[1:]:
        assert torch.equal(g, grads[0])


# -- learnable estimators ------------------------------------------------------------------------
def test_relax_state_dict_loads_into_a_fresh_lazy_estimator():
    logits = torch.zeros(2, 4, requires_grad=True)
    trained = pwgf.get_estimator("relax")
    trained.surrogate(cost4 := (lambda z: (z - 0.3).pow(2).sum(-1)), Bernoulli(logits=logits), 2)
    with torch.no_grad():
        for p in trained.net.parameters():
            p.add_(0.1)
    trained.variance_loss()
    fresh = pwgf.get_estimator("relax")
    fresh.load_state_dict(trained.state_dict())
    assert fresh.net[0].in_features == 4
    for a, b in zip(fresh.parameters(), trained.parameters(), strict=True):
        assert torch.equal(a, b)
    fresh.surrogate(cost4, Bernoulli(logits=logits), 2)  # usable at once
    with pytest.raises(PWGFError, match="inputs of size 4"):
        fresh.surrogate(cost4, Bernoulli(logits=torch.zeros(2, 5, requires_grad=True)), 2)


@pytest.mark.parametrize("name", ["rebar", "relax"])
def test_untuned_learnable_estimator_warns_once(name):
    logits = torch.zeros(3, requires_grad=True)
    est = pwgf.get_estimator(name)
    with pytest.warns(UntunedEstimatorWarning, match="variance_loss") as record:
        for _ in range(2 * est.untuned_warn_after):
            est.surrogate(cost, Independent(Bernoulli(logits=logits), 1), 2)
    assert len([w for w in record if issubclass(w.category, UntunedEstimatorWarning)]) == 1
    assert issubclass(UntunedEstimatorWarning, UserWarning)
    tuned = pwgf.get_estimator(name)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UntunedEstimatorWarning)
        for _ in range(2 * tuned.untuned_warn_after):
            loss = tuned.surrogate(cost, Independent(Bernoulli(logits=logits), 1), 2).mean()
            (loss + tuned.variance_loss()).backward()
