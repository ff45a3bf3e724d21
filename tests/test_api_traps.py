"""The API without traps: relaxed inputs, estimator specs, pwgf.sample's reasons and docstring,
and the likelihood helpers that hold at relaxed values."""

from __future__ import annotations

import re

import pytest
import torch
from torch.autograd.forward_ad import unpack_dual
from torch.distributions import Bernoulli, Independent, Normal, OneHotCategorical, Poisson

import pwgf
from pwgf.registry import format_spec, parse_spec, split_specs


def make_dist(family: str, param: torch.Tensor):
    if family == "bernoulli":
        return Bernoulli(logits=param)
    if family == "categorical":
        return OneHotCategorical(logits=param)
    return Poisson(param.exp())


PARAMS = {
    "bernoulli": lambda: torch.tensor([[-0.3, 0.8, 0.1], [1.2, -1.0, 0.4]]),
    "categorical": lambda: torch.tensor([[0.2, -0.5, 0.9], [0.0, 0.3, -0.2]]),
    "poisson": lambda: torch.tensor([[0.1, 0.7, -0.4], [1.5, 0.0, 0.3]]),
}

PAIRS = [(i.name, fam) for i in pwgf.list_estimators() for fam in i.families]


@pytest.mark.parametrize(("name", "family"), PAIRS)
def test_relaxed_inputs_flag_says_what_f_receives(name, family):
    """Every estimator x family: ``relaxed_inputs`` (the estimator table's column and the
    trigger of the relaxed-input error) is true exactly when f is called off the support."""
    torch.manual_seed(0)
    param = PARAMS[family]()
    if name == "exact":  # enumeration: a small problem
        param = param[:1, :2] if family != "categorical" else param[:1]
    param.requires_grad_(True)
    seen: list[bool] = []

    def f(z):
        with torch.no_grad():
            v = unpack_dual(z).primal.detach()
            seen.append(bool((v != v.round()).any()))
        return (z * torch.linspace(-1, 1, z.shape[-1], dtype=z.dtype)).sum(-1) ** 2

    info = {i.name: i for i in pwgf.list_estimators()}[name]
    est = pwgf.get_estimator(name)
    for _ in range(3):
        est.surrogate(f, make_dist(family, param), max(2, info.min_samples)).sum().backward()
        clear = getattr(est, "clear_variance_loss", None)
        if clear is not None:
            clear()
    assert seen, "f was never called"
    assert any(seen) == info.relaxed_inputs, (name, family, seen)


def torch_cost(family: str):
    """The cost a new user writes: torch's own log_prob, support check on."""

    def f(z):
        if family == "bernoulli":
            return -Bernoulli(logits=torch.zeros(3), validate_args=True).log_prob(z).sum(-1)
        if family == "categorical":
            return -OneHotCategorical(logits=torch.zeros(3), validate_args=True).log_prob(z)
        return -Poisson(torch.ones(3), validate_args=True).log_prob(z).sum(-1)

    return f


def helper_cost(family: str):
    def f(z):
        if family == "bernoulli":
            return -pwgf.log_prob(Bernoulli(logits=torch.zeros(3)), z).sum(-1)
        if family == "categorical":
            return -pwgf.log_prob(OneHotCategorical(logits=torch.zeros(3)), z)
        return -pwgf.log_prob(Poisson(torch.ones(3)), z).sum(-1)

    return f


RELAXED = [
    (n, f) for n, f in PAIRS if {i.name: i for i in pwgf.list_estimators()}[n].relaxed_inputs
]


@pytest.mark.parametrize(("name", "family"), RELAXED)
def test_relaxed_failure_names_estimator_and_fix(name, family):
    assert RELAXED, "no estimator evaluates f at relaxed points?"
    param = PARAMS[family]()[0].requires_grad_(True)
    est = pwgf.get_estimator(name)
    torch.manual_seed(0)
    with pytest.raises(pwgf.RelaxedInputError) as exc:
        for _ in range(5):  # a relaxed point comes up at once for all but hard-mode estimators
            est.surrogate(torch_cost(family), make_dist(family, param), 2)
    msg = str(exc.value)
    assert f"estimator '{name}' evaluates f at relaxed" in msg
    assert "validate_args=False" in msg and "pwgf.log_prob" in msg
    assert isinstance(exc.value.__cause__, ValueError)  # torch's error, chained
    assert "\n" not in msg
    # written with the library's helper, the same cost works
    loss = est.surrogate(helper_cost(family), make_dist(family, param), 2).sum()
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(param.grad).all()


def test_errors_at_discrete_points_pass_through_unchanged():
    def f(z):
        raise KeyError("my bug")

    for name in ("st", "reinforce"):
        with pytest.raises(KeyError, match="my bug"):
            pwgf.get_estimator(name).surrogate(f, Bernoulli(logits=torch.zeros(2)), 2)


# -- likelihood helpers -------------------------------------------------------------------------
def test_bernoulli_log_prob_equals_torch_and_is_linear_between():
    torch.manual_seed(0)
    logits = torch.cat([torch.randn(50, dtype=torch.float64) * 3, torch.tensor([-40.0, 40.0])])
    logits = logits.double()
    for z in (torch.zeros_like(logits), torch.ones_like(logits)):
        torch.testing.assert_close(
            pwgf.bernoulli_log_prob(z, logits), Bernoulli(logits=logits).log_prob(z)
        )
    t = torch.rand_like(logits)
    lp0 = pwgf.bernoulli_log_prob(torch.zeros_like(t), logits)
    lp1 = pwgf.bernoulli_log_prob(torch.ones_like(t), logits)
    # z log σ(ℓ) + (1 - z) log σ(-ℓ): linear in z
    torch.testing.assert_close(pwgf.bernoulli_log_prob(t, logits), t * lp1 + (1 - t) * lp0)
    torch.testing.assert_close(
        pwgf.bernoulli_log_prob(t, logits),
        Bernoulli(logits=logits, validate_args=False).log_prob(t),
    )


def test_categorical_log_prob_equals_torch_with_masks_and_relaxed():
    torch.manual_seed(1)
    logits = torch.randn(4, 5, dtype=torch.float64)
    logits[0, 1] = float("-inf")
    logits[1, :4] = float("-inf")  # all but one class masked
    dist = OneHotCategorical(logits=logits)
    z = dist.sample((20,))
    torch.testing.assert_close(pwgf.categorical_log_prob(z, logits), dist.log_prob(z))
    # on the simplex: linear in z, and finite (value and gradient) with masked classes
    lg = logits.clone().requires_grad_(True)
    w = torch.distributions.Dirichlet(torch.ones(5, dtype=torch.float64)).sample((4,))
    w = torch.where(torch.isinf(logits), 0.0, w)
    w = (w / w.sum(-1, keepdim=True)).requires_grad_(True)
    lp = pwgf.categorical_log_prob(w, lg)
    eye = torch.eye(5, dtype=torch.float64)
    per_class = torch.stack(
        [pwgf.categorical_log_prob(eye[c].expand(4, 5), logits) for c in range(5)]
    )
    expected = (w.detach() * torch.nan_to_num(per_class.T, neginf=0.0)).sum(-1)
    torch.testing.assert_close(lp.detach(), expected)
    lp.sum().backward()
    assert torch.isfinite(lp).all() and torch.isfinite(lg.grad).all()
    assert torch.isfinite(w.grad).all()


def test_poisson_log_prob_equals_torch_and_extends_smoothly():
    rate = torch.tensor([1e-3, 0.5, 3.0, 40.0], dtype=torch.float64)
    z = torch.arange(0, 60, dtype=torch.float64)[:, None].expand(60, 4)
    torch.testing.assert_close(pwgf.poisson_log_prob(z, rate), Poisson(rate).log_prob(z))
    zr = (z + 0.37).requires_grad_(True)
    lp = pwgf.poisson_log_prob(zr, rate)
    torch.testing.assert_close(lp, Poisson(rate, validate_args=False).log_prob(zr))
    lp.sum().backward()
    assert torch.isfinite(zr.grad).all()
    # rate 0: log p(0) = 0, not NaN
    assert pwgf.poisson_log_prob(torch.zeros(1), torch.zeros(1)).item() == 0.0


def test_log_prob_dispatches_and_refuses_others():
    logits = torch.randn(3, 4)
    d = Independent(Bernoulli(logits=logits), 1)
    z = d.sample((2,))
    torch.testing.assert_close(pwgf.log_prob(d, z), d.log_prob(z))
    with pytest.raises(pwgf.UnsupportedDistributionError, match="Normal"):
        pwgf.log_prob(Normal(0.0, 1.0), torch.zeros(1))


# -- specs ----------------------------------------------------------------------------------------
def test_parse_spec_values():
    name, opts = parse_spec("pwgf:step=0.5,bandwidth=2,kernel=rbf,flag=true,x=none,y=-1e-3")
    assert name == "pwgf"
    assert opts == {
        "step": 0.5,
        "bandwidth": 2,
        "kernel": "rbf",
        "flag": True,
        "x": None,
        "y": -1e-3,
    }
    assert type(opts["bandwidth"]) is int
    assert parse_spec("pwgf:bandwidth=std*2:step=0.1") == (
        "pwgf",
        {"bandwidth": "std*2", "step": 0.1},
    )
    assert parse_spec(format_spec("pwgf", {"step": 0.5, "bandwidth": "std"})) == (
        "pwgf",
        {"step": 0.5, "bandwidth": "std"},
    )
    assert split_specs("st, pwgf:step=0.5,bandwidth=2,arm") == [
        "st",
        "pwgf:step=0.5,bandwidth=2",
        "arm",
    ]


@pytest.mark.parametrize(
    ("spec", "match"),
    [
        ("pwgf:step", "key=value"),
        (":step=1", "no name"),
        ("pwgf:step=1,step=2", "twice"),
        ("pwgf:bandwith=2", r"no option \['bandwith'\].*bandwidth"),
        ("nope:step=1", "unknown estimator 'nope'"),
    ],
)
def test_bad_specs_are_clear_errors(spec, match):
    with pytest.raises(pwgf.PWGFError, match=match):
        pwgf.get_estimator(spec)


def test_spec_and_keywords_are_one_spelling():
    a = pwgf.get_estimator("pwgf:step=0.5,bandwidth=2")
    b = pwgf.get_estimator("pwgf", step=0.5, bandwidth=2)
    c = pwgf.get_estimator("pwgf-mmd:step=0.5", bandwidth=2)
    for e in (a, b, c):
        assert e.name == "pwgf" and e.step == 0.5 and e.bandwidth == 2
    assert pwgf.get_estimator("pwgf:step=0.5", step=0.5).step == 0.5  # agreeing: fine
    with pytest.raises(pwgf.PWGFError, match=r"both in the spec and as a keyword.*step"):
        pwgf.get_estimator("pwgf:step=0.5", step=0.25)
    logits = torch.zeros(4, requires_grad=True)
    torch.manual_seed(0)
    z1 = pwgf.sample(Bernoulli(logits=logits), "pwgf:bandwidth=2", n_samples=3)
    torch.manual_seed(0)
    z2 = pwgf.sample(Bernoulli(logits=logits), "pwgf", n_samples=3, bandwidth=2)
    assert torch.equal(z1, z2)


@pytest.mark.parametrize("how", ["keyword", "spec"])
def test_sample_names_step_as_the_reason(how):
    dist = Bernoulli(logits=torch.zeros(2))
    with pytest.raises(pwgf.NeedsCostFunctionError) as exc:
        if how == "keyword":
            pwgf.sample(dist, "pwgf", step=0.5)
        else:
            pwgf.sample(dist, "pwgf:step=0.5,bandwidth=2")
    msg = str(exc.value)
    assert "with step=0.5 must evaluate f itself" in msg
    assert "step=None" in msg and "surrogate(f, dist, n_samples)" in msg
    assert "bandwidth=2 must" not in msg  # only the option that is the reason


def test_sample_docstring_lists_exactly_the_pathwise_estimators():
    line = re.search(r"work here: (.*?)\(", " ".join(pwgf.sample.__doc__.split())).group(1)
    listed = re.findall(r"``([a-z0-9-]+)``", line)
    pathwise = [i.name for i in pwgf.list_estimators() if i.pathwise]
    assert listed == pathwise


def test_estimator_info_has_min_samples_and_learnable():
    infos = {i.name: i for i in pwgf.list_estimators()}
    assert infos["reinforce-loo"].min_samples == 2 and infos["st"].min_samples == 1
    assert infos["rebar"].learnable and not infos["st"].learnable
    for name, info in infos.items():
        assert info.min_samples == pwgf.get_estimator(name).min_samples
