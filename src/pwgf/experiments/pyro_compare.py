"""Time pyro's ``TraceGraph_ELBO`` (REINFORCE with a decaying-average baseline) for ``pwgf bench``.

A standalone script, run in its own interpreter (it imports ``torch``, ``pyro`` and its sibling
``peers``, never ``pwgf``), so that pyro's cost is measured against a floor in the same process:
``PYTHON pyro_compare.py CONFIG.json OUT.json``; ``PYTHON pyro_compare.py --probe`` prints
``{"pyro": VERSION, "torch": VERSION}`` or exits 3 when pyro does not import.

The model is the bench's Bernoulli one: latents ``z ~ Bernoulli(logits)`` from a (B, D) leaf in
the guide (``infer={"baseline": {"use_decaying_avg_baseline": True}}``), a linear decoder
D -> x_dim and the Bernoulli likelihood of a fixed binary batch in the model, with a uniform
Bernoulli prior. One step is ``TraceGraph_ELBO(num_particles=K, vectorize_particles=True)
.loss_and_grads``; the floor is a plain forward+backward of the decoder's likelihood at a
continuous sample of the same shape. They alternate round by round.

CONFIG: ``{"sizes": [[B, D, K], ...], "x_dim": 784, "warmup": 1, "repeats": 5, "threads": 1}``.
OUT: ``{"pyro": V, "torch": V, "threads": N, "timing": {"BxDxK": {"seconds", "floor_seconds",
"ratio", "ratio_min", "ratio_max", "repeats"} | {"error": "..."}}}``.
"""

from __future__ import annotations

import json
import math
import os
import sys

try:
    from . import peers
except ImportError:  # run as a script, in the peer's interpreter, where pwgf may be absent
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # also under python -P
    import peers


def probe() -> int:
    try:
        import pyro
        import torch
    except Exception as exc:
        print(f"pyro is not importable: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 3
    print(json.dumps({"pyro": pyro.__version__, "torch": torch.__version__}))
    return 0


def time_size(b: int, d: int, k: int, cfg: dict) -> dict:
    import pyro
    import pyro.distributions as dist
    import torch
    from pyro.infer import TraceGraph_ELBO

    pyro.clear_param_store()  # the decaying-average baseline keeps state from the last size
    x_dim = int(cfg.get("x_dim", 784))
    gen = torch.Generator().manual_seed(0)
    x = (torch.rand(b, x_dim, generator=gen) < 0.3).float()
    w = (torch.randn(d, x_dim, generator=gen) / math.sqrt(d)).requires_grad_(True)
    bias = torch.zeros(x_dim, requires_grad=True)
    enc = torch.randn(b, d, generator=gen).requires_grad_(True)

    def model() -> None:
        with pyro.plate("data", b):
            z = pyro.sample("z", dist.Bernoulli(torch.full((b, d), 0.5)).to_event(1))
            pyro.sample("x", dist.Bernoulli(logits=z @ w + bias).to_event(1), obs=x)

    def guide() -> None:
        with pyro.plate("data", b):
            pyro.sample(
                "z",
                dist.Bernoulli(logits=enc).to_event(1),
                infer={"baseline": {"use_decaying_avg_baseline": True}},
            )

    elbo = TraceGraph_ELBO(num_particles=k, vectorize_particles=k > 1, max_plate_nesting=1)

    def step() -> None:
        for p in (w, bias, enc):
            p.grad = None
        elbo.loss_and_grads(model, guide)

    return peers.interleaved(
        step,
        peers.decoder_floor(x, w, bias, enc, k),
        warmup=int(cfg.get("warmup", 1)),
        repeats=int(cfg.get("repeats", 5)),
    )


def main(argv: list[str]) -> int:
    if argv[:1] == ["--probe"]:
        return probe()
    if len(argv) != 2:
        print("usage: pyro_compare.py CONFIG.json OUT.json | --probe", file=sys.stderr)
        return 2
    cfg = json.loads(open(argv[0]).read())
    import pyro
    import torch

    if cfg.get("threads"):
        torch.set_num_threads(int(cfg["threads"]))
    torch.manual_seed(0)
    out = {"pyro": pyro.__version__, "torch": torch.__version__, "threads": torch.get_num_threads()}
    out["timing"] = {}
    for b, d, k in cfg.get("sizes", []):
        key = f"{b}x{d}x{k}"
        try:
            out["timing"][key] = time_size(b, d, k, cfg)
        except Exception as exc:
            out["timing"][key] = {"error": f"{type(exc).__name__}: {exc}"}
        with open(argv[1], "w") as fh:
            json.dump(out, fh, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
