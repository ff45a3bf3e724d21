"""RELAX: a learned control variate, tuned online to minimise the estimator's variance.

Source: Grathwohl, Choi, Wu, Roeder & Duvenaud, "Backpropagation through the Void: Optimizing
control variates for black-box gradient estimation" (ICLR 2018): discrete RELAX, with the control
variate in its "REBAR + learned" form. With z, b = H(z) and the conditional sample z̃ ~ p(z | b)
exactly as in REBAR (``pwgf.estimators.rebar``), for any differentiable c_φ,

    ĝ_ℓ = [f(b) - c_φ(z̃)] ∇_ℓ log p(b) + ∇_ℓ c_φ(z(ℓ, u)) - ∇_ℓ c_φ(z̃(ℓ, v, b)),

unbiased for every φ. Here c_φ is the paper's "REBAR + learned" form

    c_φ(z) = η f(σ_λ(z)) + r_ρ(σ_λ(z)),     φ = (λ, η, ρ),

where r_ρ is a small MLP: ``Linear(n, hidden) -> tanh -> Linear(hidden, 1)``. Its last layer starts
at zero, so RELAX starts as REBAR with the same λ and η.

The network's input is the relaxed sample σ_λ(z) (bounded in (0, 1), the values f sees) of one
control-variate group, flattened: per batch entry when f's outputs are credited per batch entry
(its n = the atoms of one entry times the number of categories, independent of the batch size),
or the whole sample when credit is joint (see ``pwgf.estimators.rebar``). Because the estimator
is created before it sees data, ``input_size=None`` (the default) makes the first layer an
``nn.LazyLinear`` that takes n from the first call. An optimiser may be built over
``est.parameters()`` before that call: torch materialises a lazy parameter in place, so the
optimiser holds the same object, and ``load_state_dict`` into a fresh estimator materialises it
from the saved weights. Pass ``input_size=n`` to create the network at once. Either way a later
call with another n is refused with an error naming both sizes.

Tuning and gradient routing are REBAR's: ``(loss.mean() + est.variance_loss()).backward()`` trains
λ, η and ρ on ``∇_φ E‖ĝ‖²`` only; f's parameters get the ordinary gradient of the mean of f(b).
The network's parameters are created in the default dtype; inputs are cast to the network's dtype
and device and its output back, so the estimate follows the distribution's dtype and device.
"""

from __future__ import annotations

from torch import Tensor, nn
from torch.nn.parameter import UninitializedParameter

from ..errors import PWGFError
from .rebar import Rebar


class Relax(Rebar):
    """RELAX with ``c_φ(z) = η f(σ_λ(z)) + r_ρ(σ_λ(z))``; see the module docstring."""

    name = "relax"
    evaluations = "3 f, 2 ∇f (as REBAR), 2 r_ρ"
    option_docs = {
        **Rebar.option_docs,
        "hidden": "32: hidden units of the control-variate network r_ρ (one tanh layer)",
        "input_size": "None: r_ρ's input size n, taken from the first call; or an int",
    }

    def __init__(
        self,
        temperature: float = 0.5,
        eta: float = 1.0,
        hidden: int = 32,
        input_size: int | None = None,
        tune: bool = True,
        joint_score: bool = False,
    ) -> None:
        super().__init__(temperature=temperature, eta=eta, tune=tune, joint_score=joint_score)
        if isinstance(hidden, bool) or not isinstance(hidden, int) or hidden < 1:
            raise PWGFError(f"relax: hidden must be a positive int, got {hidden!r}")
        if input_size is not None and (
            isinstance(input_size, bool) or not isinstance(input_size, int) or input_size < 1
        ):
            raise PWGFError(f"relax: input_size must be None or a positive int, got {input_size!r}")
        self.hidden = hidden
        first = nn.LazyLinear(hidden) if input_size is None else nn.Linear(input_size, hidden)
        last = nn.Linear(hidden, 1)
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)
        self.net = nn.Sequential(first, nn.Tanh(), last)
        self.register_load_state_dict_post_hook(_sync_lazy_size)

    def _network(self, x: Tensor) -> Tensor:
        first = self.net[0]
        n = x.shape[-1]
        if not isinstance(first.weight, UninitializedParameter) and first.in_features != n:
            raise PWGFError(
                f"relax: the control-variate network takes inputs of size {first.in_features}, "
                f"but this call's relaxed sample has {n} values per control-variate group (one "
                "batch entry, or the whole sample with joint credit); use one estimator per "
                "problem shape, or input_size to fix it"
            )
        ref = self.net[-1].weight
        return self.net(x.to(ref)).squeeze(-1).to(x)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, hidden={self.hidden}"


def _sync_lazy_size(module: nn.Module, incompatible: object) -> None:
    # Loading a state dict materialises a lazy layer's weight from the saved shape but leaves
    # its in_features at 0; take it from the weight, so the loaded network is usable at once.
    first = module.net[0]
    if not isinstance(first.weight, UninitializedParameter):
        first.in_features = first.weight.shape[1]
