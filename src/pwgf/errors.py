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
