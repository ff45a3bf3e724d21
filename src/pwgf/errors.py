"""Exceptions raised by pwgf. Each one names the problem, so a user can fix the call."""

from __future__ import annotations


class PWGFError(ValueError):
    """Base class: a call pwgf cannot answer correctly, rejected rather than answered wrongly."""


class UnsupportedDistributionError(PWGFError, TypeError):
    """The object is not one of the distribution families pwgf handles."""


class UnsupportedFamilyError(PWGFError):
    """The estimator cannot serve this family; the message names those that can."""


class UnknownEstimatorError(PWGFError, KeyError):
    """No estimator of that name; the message lists the valid names."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


class InvalidParameterError(PWGFError):
    """A distribution parameter is non-finite or out of its range."""


class InvalidCostError(PWGFError):
    """The cost function returned something other than a float tensor of shape (K, *S)."""


class TooLargeToEnumerateError(PWGFError):
    """Exact enumeration would need more support points than the stated limit."""


class NeedsCostFunctionError(PWGFError):
    """``pwgf.sample`` was asked for an estimator that must evaluate f itself."""


class BoundaryError(InvalidParameterError):
    """A parameter on the boundary of its range (a Bernoulli probability of exactly 0 or 1, a zero
    categorical probability, a Poisson rate of 0) where the estimator's formula is degenerate;
    the message names the estimators that handle it."""


class StaleDistributionError(PWGFError):
    """The distribution was built from tensors that have changed since (an optimiser step): its
    parameter is an out-of-date copy. Build the distribution afresh at every step."""


class CompileUnsupportedError(PWGFError):
    """The estimator cannot run inside ``torch.compile`` in this configuration; the message says
    why and what to do instead."""


class UntunedEstimatorWarning(UserWarning):
    """A learnable estimator computed surrogates for tuning, but ``variance_loss()`` was never
    called, so its parameters are never tuned."""
