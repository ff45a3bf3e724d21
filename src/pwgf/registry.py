"""The table of estimators: name -> where it lives. Modules are imported on first use.

An estimator is named by a *spec*: its name or alias, optionally followed by keyword options,
``"name:key=value,key=value"`` (``"pwgf:step=0.5,bandwidth=2"``; ``:`` also separates options,
``"pwgf:step=0.5:bandwidth=2"``). Values are read as int, float, bool (``true``/``false``),
``None`` (``none``/``null``) or else kept as a string. The same spelling is accepted by
``get_estimator``, ``pwgf.sample`` and every command's ``--estimator(s)``.
"""

from __future__ import annotations

import importlib
import re
from dataclasses import dataclass
from typing import Any

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
    "gumbel-rao": ("gumbel_rao", "GumbelRao"),
    "gapped-st": ("gapped_st", "GappedST"),
    "indecater": ("indecater", "IndeCateR"),
    "eat": ("eat", "ExponentialArrivalTimes"),
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


_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?|[+-]?(inf|nan)", re.IGNORECASE)


def parse_value(text: str) -> Any:
    """An option value from a spec: int, float, bool, None, or the string itself."""
    t = text.strip()
    low = t.lower()
    if low in ("true", "false"):
        return low == "true"
    if low in ("none", "null"):
        return None
    if _NUMBER.fullmatch(t):
        try:
            return int(t)
        except ValueError:
            return float(t)
    return t


def parse_spec(spec: str) -> tuple[str, dict[str, Any]]:
    """``"pwgf:step=0.5,bandwidth=2"`` -> ``("pwgf", {"step": 0.5, "bandwidth": 2})``.

    The name is returned as written (see ``resolve``); option names are not checked here
    (``get_estimator`` checks them against the estimator's). Raises ``PWGFError`` for a
    malformed spec or an option given twice."""
    if not isinstance(spec, str):
        raise PWGFError(f"an estimator is named by a string, got {type(spec).__name__}")
    name, _, rest = spec.strip().partition(":")
    name = name.strip()
    if not name:
        raise PWGFError(f"estimator spec {spec!r} has no name; write e.g. 'pwgf:step=0.5'")
    options: dict[str, Any] = {}
    for item in re.split(r"[,:]", rest) if rest.strip() else []:
        key, sep, value = item.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or not key.isidentifier():
            raise PWGFError(
                f"estimator spec {spec!r}: options are written key=value, got {item.strip()!r}"
            )
        if key in options:
            raise PWGFError(f"estimator spec {spec!r} gives option {key!r} twice")
        options[key] = parse_value(value)
    return name, options


def format_spec(name: str, options: dict[str, Any]) -> str:
    """The spec of ``name`` with ``options``, as ``parse_spec`` reads it back."""
    if not options:
        return name
    return name + ":" + ",".join(f"{k}={v}" for k, v in options.items())


def split_specs(text: str) -> list[str]:
    """A comma-separated list of specs: ``"st,pwgf:step=0.5,bandwidth=2,arm"`` ->
    ``["st", "pwgf:step=0.5,bandwidth=2", "arm"]`` (an item with ``=`` but no ``:`` continues the
    options of the spec before it)."""
    out: list[str] = []
    for item in (s.strip() for s in text.split(",")):
        if not item:
            continue
        if "=" in item and ":" not in item and out and ":" in out[-1]:
            out[-1] += "," + item
        else:
            out.append(item)
    return out


def merge_options(spec: str, options: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """The name and options of ``spec`` together with keyword ``options``; an option given both
    ways with different values is an error."""
    name, spec_options = parse_spec(spec)
    clash = sorted(k for k in set(spec_options) & set(options) if spec_options[k] != options[k])
    if clash:
        both = ", ".join(f"{k}: {spec_options[k]!r} vs {options[k]!r}" for k in clash)
        raise PWGFError(
            f"estimator {spec!r}: option given both in the spec and as a keyword ({both})"
        )
    return name, {**spec_options, **options}


def get_estimator(name: str, **options: object) -> Estimator:
    """An estimator by name, alias or spec (``"pwgf:step=0.5,bandwidth=2"``), configured with
    the spec's options and the keyword ``options``.

    Args:
        name: a name (``"reinforce-loo"``), an alias (``"pwgf-mmd"``, case and ``_``/``-``
            insensitive) or a spec with options (``"pwgf:step=0.5,bandwidth=2"``).
        **options: the estimator's keyword options (``pwgf estimators --options`` lists them,
            with their defaults).

    Returns:
        A fresh estimator, an ``nn.Module`` (learnable ones have parameters to optimise).

    Raises:
        UnknownEstimatorError: an unknown name; the message lists the valid names and aliases.
        PWGFError: an option the estimator does not have (the message lists its options), a
            malformed spec, or an option given both in the spec and as a keyword with different
            values.
    """
    name, options = merge_options(name, options)
    cls = _load(resolve(name))
    unknown = sorted(set(options) - set(cls.option_docs))
    if unknown:
        valid = ", ".join(cls.option_docs) or "none"
        raise PWGFError(f"estimator '{cls.name}' has no option {unknown}; its options: {valid}")
    est = cls(**options)
    est.spec_options = dict(options)
    return est


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
    #: least number of samples per call (2 for leave-one-out forms)
    min_samples: int = 1
    #: evaluates f at non-discrete (relaxed) points, see ``Estimator.relaxed_inputs``
    relaxed_inputs: bool = False


def list_estimators() -> list[EstimatorInfo]:
    """Every registered estimator, in registry order, as an ``EstimatorInfo``: its name,
    aliases, families, evaluations of f per sample, bias, whether it works through
    ``pwgf.sample`` (``pathwise``), whether it has parameters of its own (``learnable``), its
    least number of samples, whether it evaluates f at relaxed points, and its options as
    ``{option: "default: meaning"}``. ``pwgf estimators`` prints this as a table.

    Returns:
        One ``EstimatorInfo`` per estimator.
    """
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
                min_samples=_default_min_samples(cls),
                relaxed_inputs=cls.evaluates_relaxed(),
            )
        )
    return out


def _default_min_samples(cls: type[Estimator]) -> int:
    """``min_samples`` of the estimator with its default options (some set it per instance:
    ``reinforce-loo`` needs 2)."""
    try:
        return int(cls().min_samples)
    except Exception:  # an estimator that cannot be built without options: the class's value
        return int(cls.min_samples)


def estimators_for(family: str) -> list[str]:
    """Names of the estimators that support ``family`` (``"bernoulli"``, ``"categorical"`` or
    ``"poisson"``), in registry order."""
    return [name for name in _TABLE if family in _load(name).families]
