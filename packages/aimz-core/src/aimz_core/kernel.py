"""The kernel contract: signature checks at construction, body checks per trace."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Mapping
from typing import Any

from aimz_core.exceptions import KernelValidationError

RESERVED_SITE_NAMES = ("chain", "draw")


def unwrap_kernel(kernel: Callable) -> Callable:
    """Return the plain function behind handlers, ``functools.partial`` and wrappers.

    Example:
        >>> import functools
        >>> def k(X, y=None, a=1): ...
        >>> unwrap_kernel(functools.partial(k, a=2)) is k
        True
    """
    seen: set[int] = set()
    fn: Any = kernel
    while id(fn) not in seen:
        seen.add(id(fn))
        if isinstance(fn, functools.partial):
            fn = fn.func
        elif hasattr(fn, "__wrapped__"):
            fn = fn.__wrapped__
        elif (
            hasattr(fn, "fn")
            and callable(fn.fn)
            and type(fn).__module__.startswith("numpyro.handlers")
        ):
            fn = fn.fn
        else:
            break
    return fn


def kernel_signature(kernel: Callable) -> inspect.Signature:
    """Signature used to bind call arguments (handlers see through to the model)."""
    try:
        return inspect.signature(kernel)
    except (TypeError, ValueError):
        return inspect.signature(unwrap_kernel(kernel))


def kernel_name(kernel: Callable) -> str:
    """Human-readable name of a kernel."""
    fn = unwrap_kernel(kernel)
    return getattr(fn, "__qualname__", None) or getattr(fn, "__name__", repr(fn))


def validate_kernel_signature(kernel: Callable, param_input: str, param_output: str) -> None:
    """Check the kernel's parameters against the kernel contract.

    Raises:
        KernelValidationError: On variable arguments, positional-only parameters,
            a missing input/output parameter, a default on the input parameter or
            an output default other than ``None``.

    Example:
        >>> def k(X, y=None): ...
        >>> validate_kernel_signature(k, "X", "y")
    """
    if not callable(kernel):
        raise TypeError(f"`kernel` must be callable, got {type(kernel).__name__}.")
    params = kernel_signature(kernel).parameters
    variadic = [p.name for p in params.values() if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    if variadic:
        raise KernelValidationError(
            f"Kernel must not accept variable arguments (*args/**kwargs); found "
            f"{', '.join(variadic)}. Name every argument explicitly."
        )
    positional_only = [p.name for p in params.values() if p.kind == p.POSITIONAL_ONLY]
    if positional_only:
        raise KernelValidationError(
            f"Kernel parameters must be passable by keyword; positional-only: "
            f"{', '.join(positional_only)}."
        )
    missing = [p for p in (param_input, param_output) if p not in params]
    if missing:
        names = ", ".join(repr(m) for m in missing)
        raise KernelValidationError(
            f"Kernel must accept {names} as argument(s) (input {param_input!r}, "
            f"output {param_output!r}), or set `param_input` and `param_output` "
            "accordingly."
        )
    if params[param_input].default is not inspect.Parameter.empty:
        raise KernelValidationError(
            f"Kernel input parameter {param_input!r} must not have a default value."
        )
    if params[param_output].default is not None:
        raise KernelValidationError(
            f"Kernel output parameter {param_output!r} must default to `None` "
            f"(got {params[param_output].default!r}), so the model can be run "
            "without observations."
        )


def validate_kernel_body(
    trace: Mapping[str, Mapping[str, Any]],
    *,
    param_output: str,
    with_output: bool,
    kernel_params: tuple[str, ...],
) -> None:
    """Check one trace of the kernel against the kernel contract.

    Raises:
        KernelValidationError: If a site name contains ``/``, the output site is
            missing or of the wrong kind, or a parameter name equals a site name.
    """
    slashed = [name for name in trace if "/" in name]
    if slashed:
        raise KernelValidationError(
            f"Site names must not contain '/': {', '.join(slashed)}. Rename the sites."
        )
    site = trace.get(param_output)
    if site is None:
        raise KernelValidationError(
            f"Kernel must define a site named {param_output!r} (the output); found "
            f"sites: {', '.join(trace) or 'none'}."
        )
    if with_output:
        if site["type"] != "sample":
            raise KernelValidationError(
                f"Output site {param_output!r} must be a `numpyro.sample` site to "
                f"fit the model, got type {site['type']!r}."
            )
        if not site.get("is_observed", False):
            raise KernelValidationError(
                f"Output site {param_output!r} must be observed: pass "
                f"`obs={param_output}` to `numpyro.sample`."
            )
    elif site["type"] not in ("sample", "deterministic"):
        raise KernelValidationError(
            f"Output site {param_output!r} must be a sample or deterministic site, "
            f"got type {site['type']!r}."
        )
    conflicts = sorted((set(kernel_params) - {param_output}) & set(trace))
    if conflicts:
        raise KernelValidationError(
            f"Kernel parameters conflict with model sites: {', '.join(conflicts)}. "
            "Rename either the parameter or the site."
        )


def validate_model_arguments(
    kernel: Callable, inference: Any, param_input: str, param_output: str
) -> None:
    """Check the arguments of :class:`~aimz_core.model.ImpactModel` (the kernel
    signature included).

    Raises:
        TypeError: For empty or non-string parameter names, or an ``inference``
            that is neither ``SVI`` nor ``MCMC``.
        ValueError: For equal parameter names or SVI ``static_kwargs``.
        KernelValidationError: If the kernel signature breaks the contract.

    Example:
        >>> from aimz_core.testing import linreg, make_svi
        >>> validate_model_arguments(linreg, make_svi(), "X", "y")
    """
    from numpyro.infer import MCMC, SVI

    for name, value in (("param_input", param_input), ("param_output", param_output)):
        if not isinstance(value, str) or not value:
            raise TypeError(f"`{name}` must be a non-empty string, got {value!r}.")
    if param_input == param_output:
        raise ValueError("`param_input` and `param_output` must differ.")
    validate_kernel_signature(kernel, param_input, param_output)
    if not isinstance(inference, (SVI, MCMC)):
        raise TypeError(
            f"Unsupported inference object: `{type(inference).__name__}`. Expected "
            "`SVI` or `MCMC` from `numpyro.infer`."
        )
    if isinstance(inference, SVI) and inference.static_kwargs:
        raise ValueError(
            "SVI `static_kwargs` are not supported: pass extra kernel arguments as "
            "keyword arguments of the model's methods instead (non-array values are "
            f"static automatically); got {sorted(inference.static_kwargs)}."
        )
