"""Run storchastic's estimators for ``pwgf bench``, in a separate interpreter.

This file is a standalone script: it imports only ``torch``, ``storch`` (storchastic 0.3.7,
which patches torch when imported, hence the separate process) and its sibling ``peers``,
never ``pwgf``. ``pwgf bench`` launches it as ``PYTHON storch_compare.py CONFIG.json OUT.json``
and reads OUT.json back; the exact answers it is compared with are computed by the parent with
pwgf.

``PYTHON storch_compare.py --probe`` prints ``{"storchastic": VERSION, "torch": VERSION}`` and
exits 0 when storchastic imports, or exits 3 with the import error on stderr.

CONFIG (JSON)::

    {"methods": ["reinforce", "arm", ...],       # pwgf names; see METHODS
     "problem": {"logits": [...], "t": [...], "a": [...]},   # f(x) = Σ(x - t)² + (Σ a x)²
     "calls": 40, "n": 50, "seed": 0,             # mean: `calls` estimates of n samples each
     "timing": {"sizes": [[B, D, K], ...], "x_dim": 784, "warmup": 1, "repeats": 5,
                "device": "cpu", "threads": 2, "max_seconds": 20.0}}

OUT (JSON)::

    {"storchastic": VERSION, "torch": VERSION, "threads": N,
     "methods": {name: {"storch_method": "...", "error": null | "...",
                        "mean": [...], "se": [...], "var_single": [...], "draws": calls * n,
                        "timing": {"BxDxK": {"seconds": s, "floor_seconds": s,
                                             "ratio": r, "ratio_min": r, "ratio_max": r}
                                   | {"error": "..."}}}}}

Timing alternates storchastic's forward+backward with a plain forward+backward of the same f
(the floor) in this process, round by round; ``ratio`` is the median of the per-round ratios.

``mean`` is the average of ``calls`` gradient estimates, each the storchastic estimate with
``n`` samples (its own average over the samples); ``se`` is the standard error of that average
from the spread of the ``calls`` estimates; ``var_single`` is ``n`` times their variance (the
variance of a one-sample estimate, for estimators that average independent samples).
"""

from __future__ import annotations

import json
import math
import os
import sys
import traceback

try:
    from . import peers
except ImportError:  # run as a script, in the peer's interpreter, where pwgf may be absent
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # also under python -P
    import peers

# pwgf name -> (storchastic class, keyword arguments, least n)
METHODS: dict[str, tuple[str, dict, int]] = {
    "exact": ("Expect", {}, 1),
    "reinforce": ("ScoreFunction", {}, 1),
    "reinforce-loo": ("ScoreFunction", {"baseline_factory": "batch_average"}, 2),
    "gumbel-softmax": ("GumbelSoftmax", {"annealing_rate": 0.0}, 1),
    "st-gumbel": ("GumbelSoftmax", {"annealing_rate": 0.0, "straight_through": True}, 1),
    "arm": ("ARM", {}, 1),
    "disarm": ("DisARM", {}, 1),
    "rebar": ("REBAR", {}, 1),
    "relax": ("RELAX", {"in_dim": None}, 1),  # in_dim: the number of latents, filled in
}


def probe() -> int:
    try:
        import storch  # noqa: F401
        import torch
    except Exception as exc:  # any import failure means: no storchastic here
        print(f"storchastic is not importable: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 3
    from importlib.metadata import PackageNotFoundError, version

    try:
        ver = version("storchastic")
    except PackageNotFoundError:
        ver = "unknown"
    print(json.dumps({"storchastic": ver, "torch": torch.__version__}))
    return 0


def make_method(name: str, n: int, d: int):
    import storch.method as sm

    cls, kwargs, _ = METHODS[name]
    kwargs = dict(kwargs)
    if "in_dim" in kwargs:
        kwargs["in_dim"] = d
    if cls == "Expect":
        return sm.Expect("z"), "Expect('z')"
    desc = f"{cls}('z', n_samples={n}{''.join(f', {k}={v!r}' for k, v in kwargs.items())})"
    return getattr(sm, cls)("z", n_samples=n, **kwargs), desc


def as_float(x):
    # storchastic's DisARM returns bool samples; f needs numbers
    import torch

    return x.float() if x.dtype == torch.bool else x


def gradient_mean(name: str, problem: dict, calls: int, n: int) -> dict:
    import storch
    import torch
    from torch.distributions import Bernoulli

    logits0 = torch.tensor(problem["logits"], dtype=torch.float32)
    t = torch.tensor(problem["t"], dtype=torch.float32)
    a = torch.tensor(problem["a"], dtype=torch.float32)
    d = logits0.numel()
    n = max(n, METHODS[name][2])
    method, desc = make_method(name, n, d)
    grads = []
    for _ in range(1 if name == "exact" else calls):
        leaf = logits0.clone().requires_grad_(True)
        storch.reset()
        x = as_float(method(Bernoulli(logits=leaf)))
        cost = ((x - t) ** 2).sum(-1) + ((x * a).sum(-1)) ** 2
        storch.add_cost(cost, "cost")
        storch.backward()
        if leaf.grad is None:
            raise RuntimeError("no gradient reached the logits")
        grads.append(leaf.grad.detach().double().clone())
    g = torch.stack(grads)
    r = g.shape[0]
    mean = g.mean(0)
    var = g.var(0) if r > 1 else torch.zeros_like(mean)
    return {
        "storch_method": desc,
        "mean": mean.tolist(),
        "se": (var / r).sqrt().tolist(),
        "var_single": (var * n).tolist(),
        "draws": r * n,
        "samples_per_call": n,
    }


def time_size(name: str, b: int, d: int, k: int, cfg: dict) -> dict:
    import storch
    import torch
    import torch.nn.functional as F
    from torch.distributions import Bernoulli

    device = torch.device(cfg.get("device", "cpu"))
    x_dim = int(cfg.get("x_dim", 784))
    gen = torch.Generator().manual_seed(0)
    x = (torch.rand(b, x_dim, generator=gen) < 0.3).float().to(device)
    w = (torch.randn(d, x_dim, generator=gen) / math.sqrt(d)).to(device).requires_grad_(True)
    bias = torch.zeros(x_dim, device=device, requires_grad=True)
    enc = torch.randn(b, d, generator=gen).to(device).requires_grad_(True)
    k = max(k, METHODS[name][2])
    method, _ = make_method(name, k, d)
    method.to(device)

    def step() -> None:
        storch.reset()
        data = storch.denote_independent(x, 0, "data")
        logits = storch.denote_independent(enc, 0, "data")
        z = as_float(method(Bernoulli(logits=logits)))
        out = z @ w + bias
        cost = (F.softplus(out) - data * out).sum(-1)  # -log p(x | z), Bernoulli decoder
        storch.add_cost(cost, "nll")
        storch.backward()

    return peers.interleaved(
        step,
        peers.decoder_floor(x, w, bias, enc, k),  # plain forward+backward of the same f
        warmup=int(cfg.get("warmup", 1)),
        repeats=int(cfg.get("repeats", 5)),
        sync=torch.cuda.synchronize if device.type == "cuda" else None,
        max_seconds=float(cfg.get("max_seconds", 20.0)),
    )


def main(argv: list[str]) -> int:
    if argv[:1] == ["--probe"]:
        return probe()
    if len(argv) != 2:
        print("usage: storch_compare.py CONFIG.json OUT.json | --probe", file=sys.stderr)
        return 2
    cfg = json.loads(open(argv[0]).read())
    import storch  # noqa: F401  (patches torch)
    import torch

    timing = cfg.get("timing") or {}
    if timing.get("threads"):
        torch.set_num_threads(int(timing["threads"]))
    torch.manual_seed(int(cfg.get("seed", 0)))
    from importlib.metadata import version

    out = {
        "storchastic": version("storchastic"),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "methods": {},
    }
    for name in cfg["methods"]:
        if name not in METHODS:
            out["methods"][name] = {"error": "no storchastic counterpart"}
            continue
        print(f"[storchastic] {name}", file=sys.stderr, flush=True)
        entry: dict = {"error": None}
        try:
            entry.update(gradient_mean(name, cfg["problem"], cfg["calls"], cfg["n"]))
        except Exception as exc:
            entry["error"] = f"{type(exc).__name__}: {exc}"
            entry["traceback"] = traceback.format_exc(limit=4)
        entry["timing"] = {}
        if name != "exact":
            for b, d, k in timing.get("sizes", []):
                key = f"{b}x{d}x{k}"
                try:
                    entry["timing"][key] = time_size(name, b, d, k, timing)
                except Exception as exc:
                    entry["timing"][key] = {"error": f"{type(exc).__name__}: {exc}"}
        out["methods"][name] = entry
        with open(argv[1], "w") as fh:  # rewritten after each method: partial results survive
            json.dump(out, fh, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
