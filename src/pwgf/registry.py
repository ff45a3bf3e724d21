"""The table of estimators: name -> where it lives. Modules are imported on first use."""

from __future__ import annotations

import importlib
from dataclasses import dataclass

from .errors import PWGFError, UnknownEstimatorError
from .estimators.base import Estimator

# name -> (module under pwgf.estimators, class)
_TABLE: dict[str, tuple[str, str]] = {
    "st": ("st", "StraightThrough"),
    "pwgf": ("pwgf_mmd", "PWGFKernel"),
    "reinforce": ("reinforce", "Reinforce"),
    "reinforce-loo": ("reinforce", "ReinforceLOO"),
    "mvd": ("mvd", "MeasureValued"),
    "gumbel-softmax": ("gumbel", "GumbelSoftmax"),
    "st-gumbel": ("gumbel", "StraightThroughGumbel"),
    "muprop": ("muprop", "MuProp"),
    "arm": ("arm", "ARM"),
    "disarm": ("disarm", "DisARM"),
    "reinmax": ("reinmax", "ReinMax"),
    "rebar": ("rebar", "Rebar"),
    "relax": ("relax", "Relax"),
    "exact": ("exact", "Exact"),
}


def _load(name: str) -> type[Estimator]:
    module, cls = _TABLE[name]
    return getattr(importlib.import_module(f"pwgf.estimators.{module}"), cls)


def _aliases() -> dict[str, str]:
    return {alias: name for name in _TABLE for alias in _load(name).aliases}


def resolve(name: str) -> str:
    """The canonical name for ``name`` or one of its aliases (case-insensitive)."""
    key = name.lower().replace("_", "-") if isinstance(name, str) else name
    if key in _TABLE:
        return key
    aliases = _aliases()
    if key in aliases:
        return aliases[key]
    raise UnknownEstimatorError(
        f"unknown estimator {name!r}; valid names: {', '.join(sorted(_TABLE))}"
        f" (aliases: {', '.join(f'{a}={n}' for a, n in sorted(aliases.items()))})"
    )


def get_estimator(name: str, **options: object) -> Estimator:
    """An estimator by name (or alias), configured with its keyword options."""
    cls = _load(resolve(name))
    unknown = sorted(set(options) - set(cls.option_docs))
    if unknown:
        valid = ", ".join(cls.option_docs) or "none"
        raise PWGFError(f"estimator '{cls.name}' has no option {unknown}; its options: {valid}")
    return cls(**options)


@dataclass(frozen=True)
class EstimatorInfo:
    name: str
    aliases: tuple[str, ...]
    families: tuple[str, ...]
    biased: bool
    evaluations: str
    pathwise: bool
    learnable: bool
    options: dict[str, str]


def list_estimators() -> list[EstimatorInfo]:
    """Every estimator with its families, evaluations of f, bias and options."""
    out = []
    for name in _TABLE:
        cls = _load(name)
        out.append(
            EstimatorInfo(
                name=name,
                aliases=cls.aliases,
                families=cls.families,
                biased=cls.biased,
                evaluations=cls.evaluations,
                pathwise=cls.pathwise,
                learnable=cls.learnable,
                options=dict(cls.option_docs),
            )
        )
    return out


def estimators_for(family: str) -> list[str]:
    """Names of the estimators that support ``family``."""
    return [name for name in _TABLE if family in _load(name).families]
