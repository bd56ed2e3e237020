"""Public exceptions and warning classes of aimz."""

from __future__ import annotations


class NotFittedError(ValueError, AttributeError):
    """Raised when a method needs posterior samples and the model has none.

    Example:
        >>> from aimz_core import NotFittedError
        >>> issubclass(NotFittedError, ValueError)
        True
    """


class KernelValidationError(Exception):
    """Raised when a kernel's signature or body breaks the kernel contract.

    Example:
        >>> from aimz_core import KernelValidationError
        >>> str(KernelValidationError("bad kernel"))
        'bad kernel'
    """


class AimzWarning(UserWarning):
    """Base class of every warning aimz emits.

    Example:
        >>> import warnings
        >>> from aimz_core import AimzWarning
        >>> warnings.simplefilter("ignore", AimzWarning)
    """


class FitWarning(AimzWarning, RuntimeWarning):
    """A fit went wrong in a way that may not be fatal (for example NaN losses, or a
    minibatch output not scaled to the whole data).

    Example:
        >>> import warnings
        >>> from aimz_core import FitWarning
        >>> with warnings.catch_warnings():
        ...     warnings.simplefilter("error", FitWarning)  # make fit problems fatal
        ...     issubclass(FitWarning, RuntimeWarning)
        True
    """


class OutputWarning(AimzWarning):
    """Outputs may not be what the caller expects (unpaired draws, renamed dims...).

    Example:
        >>> import warnings
        >>> from aimz_core import OutputWarning
        >>> with warnings.catch_warnings(record=True) as caught:
        ...     warnings.simplefilter("always")
        ...     warnings.warn("dims renamed", OutputWarning)
        >>> caught[0].category.__name__
        'OutputWarning'
    """


class PerformanceWarning(AimzWarning):
    """A call fell back to a slower strategy (for example draw sharding).

    Example:
        >>> import warnings
        >>> from aimz_core import PerformanceWarning
        >>> warnings.filterwarnings("ignore", category=PerformanceWarning)
    """


__all__ = [
    "AimzWarning",
    "FitWarning",
    "KernelValidationError",
    "NotFittedError",
    "OutputWarning",
    "PerformanceWarning",
]
