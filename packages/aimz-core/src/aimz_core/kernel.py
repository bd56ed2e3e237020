"""The kernel contract: signature checks at construction, body checks per trace."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Mapping
from typing import Any

from numpyro.primitives import Messenger

from aimz_core.exceptions import KernelValidationError
from aimz_core.naming import RESERVED_DIMS

#: Site names that name a dimension of the output trees.
RESERVED_SITE_NAMES = RESERVED_DIMS

#: Wrappers followed at most this deep (a guard against self-referencing wrappers).
_MAX_UNWRAP = 100


def _inner(fn: Any) -> Any:
    """The callable one wrapper layer hides, or ``None`` for a plain callable.

    A NumPyro handler (``handlers.scale(kernel)``, or ``@handlers.scale(scale=...)``
    used as a decorator, which sets no ``__wrapped__``) hides its ``.fn``; any other
    wrapper hides its ``__wrapped__``. ``functools.partial`` is handled by the
    callers, since its bound arguments change the signature.
    """
    if isinstance(fn, Messenger):
        return fn.fn if callable(fn.fn) else None
    inner = getattr(fn, "__wrapped__", None)
    return inner if callable(inner) else None


def unwrap_kernel(kernel: Callable) -> Callable:
    """Return the plain function behind handlers, ``functools.partial`` and wrappers.

    Example:
        >>> import functools
        >>> from numpyro import handlers
        >>> def k(X, y=None, a=1): ...
        >>> unwrap_kernel(functools.partial(k, a=2)) is k
        True
        >>> unwrap_kernel(handlers.scale(scale=0.5)(k)) is k
        True
    """
    fn: Any = kernel
    for _ in range(_MAX_UNWRAP):
        inner = fn.func if isinstance(fn, functools.partial) else _inner(fn)
        if inner is None or inner is fn:
            break
        fn = inner
    return fn


def kernel_signature(kernel: Callable) -> inspect.Signature:
    """The parameters the kernel accepts, as seen through its wrappers.

    NumPyro handlers (as functions or as decorators) and any wrapper with
    ``__wrapped__`` are seen through to the function they wrap; a
    ``functools.partial`` drops the positional arguments it binds and turns the
    keywords it binds into keyword-only parameters with those defaults, as calling
    it does.

    Raises:
        KernelValidationError: If a ``functools.partial`` binds arguments the
            wrapped kernel does not accept.

    Example:
        >>> import functools
        >>> from numpyro import handlers
        >>> def k(X, y=None, a=1): ...
        >>> str(kernel_signature(handlers.scale(scale=2.0)(functools.partial(k, a=2))))
        '(X, y=None, *, a=2)'
    """
    return _signature(kernel, _MAX_UNWRAP)


def _signature(fn: Any, depth: int) -> inspect.Signature:
    if depth > 0 and isinstance(fn, functools.partial):
        inner = _signature(fn.func, depth - 1)

        def stub(*args: Any, **kwargs: Any) -> None: ...

        stub.__signature__ = inner  # type: ignore[attr-defined]
        try:
            return inspect.signature(functools.partial(stub, *fn.args, **fn.keywords))
        except (TypeError, ValueError) as err:
            raise KernelValidationError(
                f"The `functools.partial` around the kernel binds arguments that the "
                f"kernel {inner} does not accept: {err}."
            ) from None
    inner = _inner(fn) if depth > 0 else None
    if inner is not None and inner is not fn:
        return _signature(inner, depth - 1)
    return inspect.signature(fn)


def kernel_name(kernel: Callable) -> str:
    """Human-readable name of a kernel."""
    fn = unwrap_kernel(kernel)
    return getattr(fn, "__qualname__", None) or getattr(fn, "__name__", repr(fn))


def reserved_names_message(names: list[str]) -> str:
    """The message for site names that name a dimension of the output trees.

    Example:
        >>> reserved_names_message(["draw"])
        "The site name(s) 'draw' are reserved for a dimension of the output trees. Rename the site(s)."
    """  # noqa: E501
    return (
        f"The site name(s) {', '.join(map(repr, names))} are reserved for a dimension "
        "of the output trees. Rename the site(s)."
    )


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

    Args:
        trace: A NumPyro trace of the kernel.
        param_output: Name of the output site.
        with_output: Whether the trace ran with the output observed (fitting).
        kernel_params: The kernel's parameter names.

    Raises:
        KernelValidationError: If a site name contains ``/``; when fitting, if a
            ``sample`` or ``deterministic`` site is named ``chain`` or ``draw``
            (dimensions of the output trees); if the output site is missing or of
            the wrong kind (fitting needs an observed ``sample`` site); or if a
            parameter name equals a site name.

    Example:
        >>> trace = {"w": {"type": "sample"}, "y": {"type": "sample", "is_observed": True}}
        >>> validate_kernel_body(trace, param_output="y", with_output=True,
        ...                      kernel_params=("X", "y"))
        >>> validate_kernel_body({"x/y": {"type": "sample"}}, param_output="y",
        ...                      with_output=False, kernel_params=("X", "y"))
        Traceback (most recent call last):
        ...
        aimz_core.exceptions.KernelValidationError: Invalid site names containing '/': ['x/y']. '/' separates the groups of the output trees; rename the site(s).
    """  # noqa: E501
    slashed = [name for name in trace if "/" in name]
    if slashed:
        raise KernelValidationError(
            f"Invalid site names containing '/': {slashed}. '/' separates the groups of "
            "the output trees; rename the site(s)."
        )
    if with_output:
        reserved = [
            name
            for name, site in trace.items()
            if name in RESERVED_SITE_NAMES and site["type"] in ("sample", "deterministic")
        ]
        if reserved:
            raise KernelValidationError(reserved_names_message(reserved))
    site = trace.get(param_output)
    if site is None or site["type"] not in ("sample", "deterministic"):
        found = ", ".join(f"{n!r} ({s['type']})" for n, s in trace.items()) or "none"
        raise KernelValidationError(
            f"Kernel must include a sample or deterministic site named {param_output!r}. "
            f"Sites of the trace: {found}. Name the output site {param_output!r}, or set "
            "`param_output` to its name."
        )
    if with_output:
        if site["type"] != "sample":
            if f"{param_output}_observed" in trace:
                hint = (
                    "`obs_mask` on the output site is not supported; mask its "
                    f"distribution instead, as in `sample({param_output!r}, "
                    f"d.mask(mask), obs={param_output})`."
                )
            else:
                hint = "Fitting needs the output as an observed `numpyro.sample` site."
            raise KernelValidationError(
                f"Expected {param_output!r} to have type 'sample', got {site['type']!r}. {hint}"
            )
        if not site.get("is_observed", False):
            raise KernelValidationError(
                f"{param_output!r} must be observed (i.e., defined with `obs=` in the "
                f"kernel). Pass `obs={param_output}` to `numpyro.sample({param_output!r}, "
                "...)`."
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
