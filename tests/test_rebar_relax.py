"""REBAR and RELAX: unbiasedness, gradient routing, the tuning API, and errors.

Most statistical tests draw R independent estimates in one call: the problem is replicated over a
leading batch dimension of R rows (same logits in every row), f is applied row by row with one
output per row, and outputs are credited per batch entry, so the gradient for row r's logits is
an independent single-row estimate. The target is the exact gradient of one row (enumeration).
"""

from __future__ import annotations

import math

import pytest
import torch
from stats import assert_mean_matches, draw_gradients
from torch import nn
from torch.distributions import Bernoulli, Independent, OneHotCategorical, Poisson

import pwgf
from pwgf.errors import PWGFError, UnsupportedFamilyError

# Several tests draw many surrogates in training mode without tuning, on purpose; the warning that
# says so is tested in tests/test_hardening.py.
pytestmark = pytest.mark.filterwarnings("ignore::pwgf.errors.UntunedEstimatorWarning")

NAMES = ["rebar", "relax"]


R = 12000  # independent rows per unbiasedness check

# -- problems ------------------------------------------------------------------------------------
L_BERN = torch.tensor([0.3, -1.2, 0.8], dtype=torch.float64)
W_BERN = torch.tensor([0.5, -1.0, 2.0], dtype=torch.float64)


T_SEP = torch.tensor([0.1, 0.8, 0.3, 0.6, 0.2], dtype=torch.float64)


def f_sep(z):  # separable, quadratic: (K, ..., D) -> (K, ...)
    return ((z - T_SEP.to(z)[: z.shape[-1]]) ** 2).sum(-1)


def f_inter(z):  # nonlinear with interactions between the coordinates
    w = W_BERN.to(z)
    return torch.sin(2 * z[..., 0] * z[..., 1] - z[..., 2]) + (z * w).sum(-1) ** 2


FS = {"separable": f_sep, "interacting": f_inter}

L_CAT = torch.tensor([[0.2, -0.5, 1.0], [1.5, 0.0, -1.0]], dtype=torch.float64)
V_CAT = torch.tensor([[1.0, -2.0, 0.5], [0.3, 1.2, -0.7]], dtype=torch.float64)


def fc_linear(z):  # (K, ..., 2, 3) -> (K, ...)
    return (z * V_CAT.to(z)).sum((-1, -2))


def fc_inter(z):
    s = (z * V_CAT.to(z)).sum(-1)
    return torch.sin(3 * s[..., 0] * s[..., 1]) + s[..., 0] ** 2


FCS = {"linear": fc_linear, "interacting": fc_inter}


def make_estimator(name: str, params: str, input_size: int, **opts) -> pwgf.Estimator:
    """``default`` parameters, or arbitrary non-default ones (RELAX: a random, non-zero net)."""
    if params == "default":
        return pwgf.get_estimator(name, **opts)
    if name == "rebar":
        return pwgf.get_estimator(name, temperature=2.5, eta=-0.7, **opts)
    est = pwgf.get_estimator(
        name, temperature=0.2, eta=1.6, input_size=input_size, hidden=8, **opts
    )
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in est.net.parameters():
            p.copy_(0.3 * torch.randn(p.shape, generator=gen, dtype=p.dtype))
    return est


def bern_dist(logits: torch.Tensor, build: str, wrap: str):
    kw = {"logits": logits} if build == "logits" else {"probs": torch.sigmoid(logits)}
    d = Bernoulli(**kw)
    return Independent(d, 1) if wrap == "independent" else d


def row_gradients(est, f, dist_of, l0, k=2):
    """R independent estimates for the logits of one row, from one call."""
    leaf = l0.expand(R, *l0.shape).clone().requires_grad_(True)
    loss = est.surrogate(f, dist_of(leaf), k)
    assert loss.shape == (R,)
    (g,) = torch.autograd.grad(loss.sum(), leaf)
    return g


def assert_powerful(draws: torch.Tensor, target: torch.Tensor, frac: float = 0.05) -> None:
    """The check can see a bias: the standard error is a small fraction of the target."""
    se = draws.std(0) / draws.shape[0] ** 0.5
    assert se.max() < frac * target.abs().max(), (se.max(), target.abs().max())


# -- unbiasedness for the distribution's parameters ----------------------------------------------
# The unbiasedness checks run with tune=False (half the cost): tuning does not change the estimate,
# see test_tuning_changes_neither_the_model_gradient_nor_model_parameters.
@pytest.mark.parametrize("params", ["default", "other"])
@pytest.mark.parametrize("fname", list(FS))
@pytest.mark.parametrize(
    ("wrap", "build"), [("independent", "logits"), ("independent", "probs"), ("plain", "logits")]
)
@pytest.mark.parametrize("name", NAMES)
def test_unbiased_bernoulli(name, wrap, build, fname, params):
    f = FS[fname]
    est = make_estimator(name, params, input_size=3, tune=False)
    p0 = L_BERN if build == "logits" else torch.sigmoid(L_BERN)

    def dist_of(leaf):
        kw = {"logits": leaf} if build == "logits" else {"probs": leaf}
        d = Bernoulli(**kw)
        return Independent(d, 1) if wrap == "independent" else d

    draws = row_gradients(est, f, dist_of, p0)
    target = pwgf.exact_gradient(f, dist_of(p0))
    assert_mean_matches(draws, target)
    assert_powerful(draws, target, frac=0.05 if params == "default" else 0.1)


@pytest.mark.parametrize("params", ["default", "other"])
@pytest.mark.parametrize(
    ("build", "fname"), [("logits", "linear"), ("logits", "interacting"), ("probs", "interacting")]
)
@pytest.mark.parametrize("name", NAMES)
def test_unbiased_categorical(name, build, fname, params):
    f = FCS[fname]
    est = make_estimator(name, params, input_size=6, tune=False)
    p0 = L_CAT if build == "logits" else torch.softmax(L_CAT, -1)

    def dist_of(leaf):
        kw = {"logits": leaf} if build == "logits" else {"probs": leaf}
        return Independent(OneHotCategorical(**kw), 1)

    draws = row_gradients(est, f, dist_of, p0, k=1)
    target = pwgf.exact_gradient(f, dist_of(p0))
    assert_mean_matches(draws, target)
    assert_powerful(draws, target, frac=0.05 if params == "default" else 0.1)


def f_coupled(z):  # (K, 2, 3) -> (K, 2): each output depends on both batch entries
    a = (z * W_BERN.to(z)).sum(-1)
    return torch.stack([torch.sin(a[..., 0] * a[..., 1]), (a[..., 0] - a[..., 1]) ** 2], -1)


@pytest.mark.parametrize("name", NAMES)
def test_unbiased_with_joint_score_when_outputs_couple_entries(name):
    logits = torch.tensor([[0.3, -1.2, 0.8], [-0.4, 0.9, 0.1]])
    est = make_estimator(name, "other", input_size=6, joint_score=True)
    draws = draw_gradients(est, f_coupled, lambda p: Bernoulli(logits=p), logits, 600, 4)
    target = pwgf.exact_gradient(f_coupled, Bernoulli(logits=logits))
    assert_mean_matches(draws, target)
    assert_powerful(draws, target, frac=0.1)


def f_two(z):  # (K, 3) -> (K, 2): S = (2,) is not a prefix of the batch shape (3,)
    return torch.stack([f_sep(z), f_inter(z)], -1)


@pytest.mark.parametrize("fname", ["scalar", "not-a-prefix"])
@pytest.mark.parametrize("name", NAMES)
def test_unbiased_when_outputs_are_not_per_entry(name, fname):
    # S = (): the whole sample is one control-variate group; S not a prefix of the batch shape:
    # credit is joint automatically, and the estimate is for the sum of the outputs.
    f, logits = (f_sep, torch.tensor([0.5, -0.3])) if fname == "scalar" else (f_two, L_BERN)
    est = make_estimator(name, "other", input_size=logits.numel())
    draws = draw_gradients(est, f, lambda p: Bernoulli(logits=p), logits, 600, 4)
    assert_mean_matches(draws, pwgf.exact_gradient(f, Bernoulli(logits=logits)))


# -- f's own parameters --------------------------------------------------------------------------
def f_weighted(z, w):
    return torch.sin(3 * (z * w).sum(-1)) + ((z - w) ** 2).sum(-1)


@pytest.mark.parametrize("family", ["bernoulli", "categorical"])
@pytest.mark.parametrize("name", NAMES)
def test_gradient_for_a_weight_inside_f_is_unbiased(name, family):
    l0 = L_BERN if family == "bernoulli" else L_CAT
    est = make_estimator(name, "other", input_size=l0.numel())

    def dist_of(logits):
        base = (
            Bernoulli(logits=logits) if family == "bernoulli" else OneHotCategorical(logits=logits)
        )
        return Independent(base, 1)

    w0 = 0.3 * torch.arange(l0.numel(), dtype=l0.dtype).reshape(l0.shape) - 0.5
    w = nn.Parameter(w0.expand(R, *l0.shape).clone())  # one weight per row: R draws at once
    logits = l0.expand(R, *l0.shape).clone().requires_grad_(True)
    red = (lambda t: t) if family == "bernoulli" else (lambda t: t.sum(-1))

    loss = est.surrogate(lambda z: red(f_weighted(z, w)), dist_of(logits), 2)
    loss.sum().backward()
    w_one = w0.clone().requires_grad_(True)
    exact = pwgf.exact_expectation(lambda z: red(f_weighted(z, w_one)), dist_of(l0))
    (target,) = torch.autograd.grad(exact.sum(), w_one)
    assert_mean_matches(w.grad, target)
    assert_powerful(w.grad, target)


@pytest.mark.parametrize("name", NAMES)
def test_control_variate_gives_f_parameters_no_gradient(name):
    # Exactly the gradient of mean_k f(b_k), and the value is mean_k f(b_k): the relaxed
    # evaluations contribute nothing to f's parameters, not even zero-mean noise.
    w = nn.Parameter(torch.tensor([0.4, -0.6, 1.1]))
    seen = []

    def f(z):
        seen.append(z.detach().clone())
        return f_weighted(z, w)

    est = make_estimator(name, "other", input_size=3)  # training mode, tune=True
    logits = L_BERN.expand(5, 3).clone().requires_grad_(True)
    loss = est.surrogate(f, Independent(Bernoulli(logits=logits), 1), 4)
    loss.sum().backward()
    b = seen[0]
    assert b.shape == (4, 5, 3) and bool(((b == 0) | (b == 1)).all())
    assert all(bool(((x > 0) & (x < 1)).any()) for x in seen[1:])  # the relaxed inputs
    w_ref = w.detach().clone().requires_grad_(True)
    ref = f_weighted(b, w_ref).mean(0)
    torch.testing.assert_close(loss.detach(), ref.detach(), rtol=0, atol=1e-12)
    (g_ref,) = torch.autograd.grad(ref.sum(), w_ref)
    torch.testing.assert_close(w.grad, g_ref, rtol=0, atol=1e-12)
    assert all(p.grad is None for p in est.parameters())  # the model's loss leaves φ alone


# -- gradient routing with an encoder, and the one-line tuning API -------------------------------
class Toy(nn.Module):
    """Encoder -> logits -> Bernoulli(8) -> decoder; f is the decoder's squared error."""

    def __init__(self):
        super().__init__()
        self.enc = nn.Linear(4, 8)
        self.dec = nn.Linear(8, 4)

    def dist(self, x):
        return Independent(Bernoulli(logits=self.enc(x)), 1)

    def cost(self, x):
        return lambda z: ((self.dec(z) - x) ** 2).sum(-1)


def grads_of(module):
    return [None if p.grad is None else p.grad.clone() for p in module.parameters()]


@pytest.mark.parametrize("name", NAMES)
def test_tuning_changes_neither_the_model_gradient_nor_model_parameters(name):
    x = torch.randn(6, 4)
    model = Toy()
    runs = []
    for tune in (True, False):
        model.zero_grad()
        est = make_estimator(name, "other", input_size=8, tune=tune)
        torch.manual_seed(5)
        loss = est.surrogate(model.cost(x), model.dist(x), 3)
        loss.mean().backward()
        before = grads_of(model)
        if tune:
            vl = est.variance_loss()
            assert vl.ndim == 0 and vl.item() > 0
            vl.backward()
            for p in est.parameters():
                assert p.grad is not None and bool(torch.isfinite(p.grad).all())
        else:
            with pytest.raises(PWGFError, match="variance_loss"):
                est.variance_loss()
        after = grads_of(model)
        for g0, g1 in zip(before, after, strict=True):  # variance_loss reaches only the estimator
            torch.testing.assert_close(g0, g1, rtol=0, atol=0)
        runs.append(before)
    for g_tune, g_plain in zip(*runs, strict=True):  # same seed: the same model gradient
        torch.testing.assert_close(g_tune, g_plain, rtol=0, atol=1e-12)
    assert all(g is not None for g in runs[0])


def test_encoder_gradient_is_the_chain_rule_of_the_logits_estimate():
    x = torch.randn(6, 4)
    model = Toy()
    est = pwgf.get_estimator("relax")
    dist = model.dist(x)
    logits = dist.base_dist.logits
    logits.retain_grad()
    est.surrogate(model.cost(x), dist, 2).sum().backward()
    (ref,) = torch.autograd.grad(model.enc(x), model.enc.weight, logits.grad)
    torch.testing.assert_close(model.enc.weight.grad, ref)


@pytest.mark.parametrize("name", NAMES)
def test_one_line_training_loop(name):
    # The documented use: one optimiser over model and estimator, built before the first call
    # (RELAX's lazy network included).
    x = torch.randn(16, 4)
    model = Toy()
    est = pwgf.get_estimator(name)
    opt = torch.optim.Adam([*model.parameters(), *est.parameters()], lr=1e-2)
    start = None
    for _ in range(5):
        opt.zero_grad()
        loss = est.surrogate(model.cost(x), model.dist(x), 2)
        (loss.mean() + est.variance_loss()).backward()
        if start is None:  # RELAX's lazy layer exists after the first call
            start = [p.detach().clone() for p in est.parameters()]
        opt.step()
    end = [p.detach() for p in est.parameters()]
    assert len(end) == len(start)
    assert all(not torch.equal(a, b) for a, b in zip(start, end, strict=True))


def test_variance_loss_sums_pending_surrogates_and_forgets_them():
    est = pwgf.get_estimator("rebar")
    logits = torch.tensor([0.2, -0.3], requires_grad=True)
    est.surrogate(f_sep, Bernoulli(logits=logits), 3)
    first = est._pending_value.clone()
    est.surrogate(f_sep, Bernoulli(logits=logits), 3)
    second = est._pending_value.clone()
    assert 0 < first < second
    loss = est.variance_loss()
    assert loss.item() == second.item()
    loss.backward()
    assert torch.isfinite(est.eta.grad)
    with pytest.raises(PWGFError, match="none is pending"):
        est.variance_loss()
    est.eval()  # no tuning in eval mode, nor under no_grad
    est.surrogate(f_sep, Bernoulli(logits=logits), 3)
    est.train()
    with torch.no_grad():
        est.surrogate(f_sep, Bernoulli(logits=logits), 3)
    with pytest.raises(PWGFError, match="none is pending"):
        est.variance_loss()


# -- variance falls as the parameters train ------------------------------------------------------
def trace_variance(est, f, dist_of, l0, rows, seed):
    """Unbiased estimate of tr Var(ĝ) for one row from ``rows`` independent rows, and its
    standard error: the per-row squared deviations d_r have mean tr Var·(R-1)/R, and their
    sample std / sqrt(R) is the s.e. of that mean (delta method: the fitted mean adds O(1/R))."""
    est.eval()
    torch.manual_seed(seed)
    leaf = l0.expand(rows, *l0.shape).clone().requires_grad_(True)
    (g,) = torch.autograd.grad(est.surrogate(f, dist_of(leaf), 1).sum(), leaf)
    est.train()
    d = (g - g.mean(0)).pow(2).reshape(rows, -1).sum(-1) * rows / (rows - 1)
    return d.mean(), d.std() / rows**0.5


def f_offset(z):  # a large constant makes the untuned (η = 0) score term noisy
    return ((z - 0.45) ** 2).sum(-1) + 5.0 * z[..., 0] * z[..., 1] + 10.0


@pytest.mark.parametrize(
    ("name", "family", "eta"),
    [
        ("rebar", "bernoulli", 0.0),
        ("relax", "bernoulli", 0.0),
        ("relax", "categorical", 0.0),
        ("rebar", "categorical", 1.0),  # from the default initialisation
        ("relax", "categorical", 1.0),
    ],
)
def test_variance_falls_as_the_parameters_train(name, family, eta):
    if family == "bernoulli":
        l0, f = torch.tensor([0.3, -1.2, 0.8, 0.0]), f_offset

        def dist_of(leaf):
            return Independent(Bernoulli(logits=leaf), 1)

    else:
        l0, f = L_CAT, lambda z: fc_inter(z) + 10.0

        def dist_of(leaf):
            return Independent(OneHotCategorical(logits=leaf), 1)

    # η = 0 is plain REINFORCE without a baseline: a legitimate but poor starting point.
    est = pwgf.get_estimator(name, eta=eta)
    if name == "relax":
        est.surrogate(f, dist_of(l0.expand(2, *l0.shape)), 1)  # materialise the lazy net
        est.clear_variance_loss()
    opt = torch.optim.Adam(est.parameters(), lr=0.05)
    v0, se0 = trace_variance(est, f, dist_of, l0, 4000, seed=11)
    torch.manual_seed(12)
    for _ in range(60):  # the public one-line API, on batches of 128 rows
        opt.zero_grad()
        leaf = l0.expand(128, *l0.shape).clone().requires_grad_(True)
        loss = est.surrogate(f, dist_of(leaf), 1)
        (loss.mean() + est.variance_loss()).backward()
        opt.step()
    v1, se1 = trace_variance(est, f, dist_of, l0, 4000, seed=13)
    # The two estimates are independent (disjoint seeds), so the s.e. of v0 - v1 is
    # sqrt(se0² + se1²); demand a fall of more than 5 of those, and by at least half.
    margin = 5 * math.sqrt(se0**2 + se1**2)
    assert v0 - v1 > margin, (float(v0), float(v1), margin)
    assert v1 < 0.5 * v0, (float(v0), float(v1))


# -- dtype, device, API, errors -------------------------------------------------------------------
@pytest.mark.parametrize("name", NAMES)
def test_float32_inputs_with_float64_estimator(name):
    est = pwgf.get_estimator(name)  # parameters in float64 (the test default)
    logits = torch.tensor([[0.3, -0.2]], dtype=torch.float32, requires_grad=True)
    loss = est.surrogate(f_sep, Bernoulli(logits=logits), 3)
    assert loss.dtype == torch.float32
    (g,) = torch.autograd.grad(loss.sum(), logits)
    assert g.dtype == torch.float32 and bool(torch.isfinite(g).all())
    assert est.variance_loss().dtype == torch.float32


@pytest.mark.parametrize("name", NAMES)
def test_no_grad_gives_the_value_only(name):
    est = pwgf.get_estimator(name)
    logits = torch.tensor([0.3, -0.2], requires_grad=True)
    calls = []

    def f(z):
        calls.append(z.shape[0])
        return f_sep(z)

    with torch.no_grad():
        out = est.surrogate(f, Bernoulli(logits=logits), 5)
    assert calls == [5] and not out.requires_grad


def test_registry_entries():
    info = {e.name: e for e in pwgf.list_estimators()}
    for name in NAMES:
        e = info[name]
        assert e.families == ("bernoulli", "categorical")
        assert e.learnable and not e.biased and not e.pathwise
        assert {"temperature", "eta", "tune", "joint_score"} <= set(e.options)
    assert {"hidden", "input_size"} <= set(info["relax"].options)


@pytest.mark.parametrize("name", NAMES)
def test_poisson_is_unsupported(name):
    with pytest.raises(UnsupportedFamilyError):
        pwgf.get_estimator(name).surrogate(f_sep, Poisson(torch.tensor([2.0])), 1)


@pytest.mark.parametrize(
    ("name", "opts"),
    [
        ("rebar", {"temperature": 0.0}),
        ("rebar", {"temperature": -1.0}),
        ("rebar", {"temperature": float("nan")}),
        ("rebar", {"temperature": "hot"}),
        ("rebar", {"eta": float("inf")}),
        ("rebar", {"eta": None}),
        ("rebar", {"tune": "yes"}),
        ("rebar", {"joint_score": 1}),
        ("relax", {"hidden": 0}),
        ("relax", {"hidden": 2.5}),
        ("relax", {"input_size": 0}),
        ("relax", {"input_size": True}),
        ("rebar", {"hidden": 8}),  # not an option of REBAR
    ],
)
def test_bad_options_are_refused(name, opts):
    with pytest.raises(PWGFError):
        pwgf.get_estimator(name, **opts)


def test_relax_refuses_a_different_input_size():
    est = pwgf.get_estimator("relax", input_size=3)
    with pytest.raises(PWGFError, match="inputs of size 3"):
        est.surrogate(f_sep, Bernoulli(logits=torch.zeros(2, 4, requires_grad=True)), 1)
    lazy = pwgf.get_estimator("relax")
    lazy.surrogate(f_sep, Bernoulli(logits=torch.zeros(2, 4, requires_grad=True)), 1)
    assert lazy.net[0].in_features == 4  # per batch entry: independent of the batch size
    lazy.surrogate(f_sep, Bernoulli(logits=torch.zeros(7, 4, requires_grad=True)), 1)
    with pytest.raises(PWGFError, match="inputs of size 4"):
        lazy.surrogate(f_sep, Bernoulli(logits=torch.zeros(2, 5, requires_grad=True)), 1)


@pytest.mark.parametrize("name", ["rebar", "relax"])
def test_non_finite_tuning_gradient_is_dropped_not_stepped(name):
    """One singular relaxed point must not turn the estimator's parameters into nan."""
    est = pwgf.get_estimator(name, **({"input_size": 3} if name == "relax" else {}))
    bad = (est.eta * torch.tensor(float("nan"))).sum()
    est._record(bad)
    assert est.skipped_tuning_steps == 1
    loss = est.variance_loss()
    assert loss.item() == 0.0
    loss.backward()  # differentiable on its own, with zero gradients: nothing to step on
    assert all(p.grad is not None and bool((p.grad == 0).all()) for p in est.parameters())
