"""Timing shared by the peer scripts ``pyro_compare.py`` and ``storch_compare.py``.

Those scripts run in another library's interpreter, where ``pwgf`` need not be installed, so
this module imports nothing from ``pwgf`` (and ``torch`` only inside ``decoder_floor``):
the scripts import it as a sibling file when run, and as ``pwgf.experiments.peers`` when
imported from the package.

Both peers measure a step against a floor the same way ``pwgf bench`` does in its own process:
round ``i`` times the step then the floor, or the floor first on odd rounds, so that drift in
the machine's speed falls on both alike; ``ratio`` is the median of the per-round
``step / floor``.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable


def decoder_floor(x, w, bias, enc, k: int) -> Callable[[], None]:
    """The floor: a plain forward+backward of the bench's Bernoulli decoder likelihood.

    ``z ~ Bernoulli(sigmoid(enc))`` drawn without a graph, K times over the (B, D) batch, then
    ``sum_x softplus(z w + bias) - x (z w + bias)`` (``-log p(x | z)``), averaged over the K
    draws and summed over the batch, back-propagated into ``w``, ``bias`` and the sample.
    """
    import torch
    import torch.nn.functional as F

    def floor() -> None:
        w.grad = None
        bias.grad = None
        with torch.no_grad():
            z = torch.bernoulli(torch.sigmoid(enc.detach()).expand(k, *enc.shape).contiguous())
        z.requires_grad_(True)
        out = z @ w + bias
        (F.softplus(out) - x * out).sum(-1).mean(0).sum().backward()

    return floor


def interleaved(
    step: Callable[[], None],
    floor: Callable[[], None],
    *,
    warmup: int,
    repeats: int,
    sync: Callable[[], None] | None = None,
    max_seconds: float = math.inf,
) -> dict:
    """Time ``step`` against ``floor``, alternating which goes first, round by round.

    ``warmup`` rounds of both run untimed first. ``sync`` runs before and after each timed call
    (a CUDA synchronize, so that the clock sees the queued work). Rounds stop after
    ``repeats``, or after the first round that ends past ``max_seconds`` from the start.
    Returns ``{"seconds", "floor_seconds", "ratio", "ratio_min", "ratio_max", "repeats"}``:
    the medians of the step's and the floor's times, of their per-round ratios, the least and
    greatest ratio, and the number of rounds run.
    """
    wait = sync or (lambda: None)

    def timed(fn: Callable[[], None]) -> float:
        wait()
        t0 = time.perf_counter()
        fn()
        wait()
        return time.perf_counter() - t0

    for _ in range(warmup):
        floor()
        step()
    times: list[float] = []
    floors: list[float] = []
    start = time.perf_counter()
    for i in range(repeats):
        if i % 2:
            times.append(timed(step))
            floors.append(timed(floor))
        else:
            floors.append(timed(floor))
            times.append(timed(step))
        if time.perf_counter() - start > max_seconds:
            break
    ratios = [t / f for t, f in zip(times, floors, strict=True)]
    return {
        "seconds": statistics.median(times),
        "floor_seconds": statistics.median(floors),
        "ratio": statistics.median(ratios),
        "ratio_min": min(ratios),
        "ratio_max": max(ratios),
        "repeats": len(times),
    }
