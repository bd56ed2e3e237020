"""`KernelSpec`: what one or more traces of a kernel revealed about its sites."""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from aimz_core.exceptions import AimzWarning
from aimz_core.naming import plate_dims


@dataclass(frozen=True)
class KernelSpec:
    """Sites of a kernel discovered by tracing it.

    Attributes:
        traced: Whether a real trace of the kernel has happened.
        sample_sites: Every ``sample`` site seen (latent and observed).
        return_sites: Default return sites: the output first, then every
            ``deterministic`` site in trace order.
        output_observed: Whether a trace ran with the output observed (fitting).
        observed_sites: ``sample`` sites some trace saw observed: the output when
            fitting, and sites given ``obs=`` through other kernel arguments.
        dims: ``(site, names)`` pairs: the names of the axes of one draw of each
            ``sample`` and ``deterministic`` site (plate names, else
            ``<site>_dim_<i>``).

    ``observed_sites`` and ``dims`` describe the sites further; they take no part in
    comparisons of specs.

    Example:
        >>> spec = KernelSpec(True, ("w", "y"), ("y", "mu"), True)
        >>> spec.return_sites
        ('y', 'mu')
    """

    traced: bool
    sample_sites: tuple[str, ...]
    return_sites: tuple[str, ...]
    output_observed: bool
    observed_sites: tuple[str, ...] = field(default=(), compare=False, repr=False)
    dims: tuple[tuple[str, tuple[str, ...]], ...] = field(default=(), compare=False, repr=False)

    @classmethod
    def from_trace(
        cls,
        trace: Mapping[str, Mapping[str, Any]],
        *,
        param_output: str,
        with_output: bool,
    ) -> KernelSpec:
        """Build a spec from a NumPyro trace.

        Example:
            >>> import numpy as np
            >>> tr = {"w": {"type": "sample", "value": np.zeros(2)},
            ...       "mu": {"type": "deterministic", "value": np.zeros(3)},
            ...       "y": {"type": "sample", "is_observed": True, "value": np.zeros(3)}}
            >>> spec = KernelSpec.from_trace(tr, param_output="y", with_output=True)
            >>> spec
            KernelSpec(traced=True, sample_sites=('w', 'y'), return_sites=('y', 'mu'), output_observed=True)
            >>> spec.observed_sites, spec.dims_of("w")
            (('y',), ('w_dim_0',))
        """  # noqa: E501
        sample = tuple(n for n, s in trace.items() if s["type"] == "sample")
        deterministic = tuple(
            n for n, s in trace.items() if s["type"] == "deterministic" and n != param_output
        )
        import numpy as np  # here: `import aimz_core` loads neither NumPy nor JAX

        from aimz_core._draws import site_dims

        observed = tuple(n for n in sample if trace[n].get("is_observed", False))
        dims = []
        for name, site in trace.items():
            if site["type"] in ("sample", "deterministic") and "value" in site:
                ndim = len(np.shape(site["value"]))
                dims.append((name, plate_dims(name, ndim, site_dims(site, ndim))))
        return cls(
            traced=True,
            sample_sites=sample,
            return_sites=(param_output, *deterministic),
            output_observed=with_output,
            observed_sites=observed,
            dims=tuple(dims),
        )

    def dims_of(self, site: str) -> tuple[str, ...] | None:
        """The names of the axes of one draw of ``site`` (``None`` if unknown).

        Example:
            >>> KernelSpec(True, ("w",), ("y",), False, dims=(("w", ("w_dim_0",)),)).dims_of("w")
            ('w_dim_0',)
        """
        return dict(self.dims).get(site)

    def merge(self, newer: KernelSpec) -> KernelSpec:
        """Union of two specs; the newer spec's sites come first.

        Example:
            >>> a = KernelSpec(True, ("w",), ("y",), False)
            >>> b = KernelSpec(True, ("w", "y"), ("y", "mu"), True)
            >>> a.merge(b).return_sites
            ('y', 'mu')
        """
        return KernelSpec(
            traced=self.traced or newer.traced,
            sample_sites=tuple(dict.fromkeys((*newer.sample_sites, *self.sample_sites))),
            return_sites=tuple(dict.fromkeys((*newer.return_sites, *self.return_sites))),
            output_observed=self.output_observed or newer.output_observed,
            observed_sites=tuple(dict.fromkeys((*newer.observed_sites, *self.observed_sites))),
            dims=tuple({**dict(self.dims), **dict(newer.dims)}.items()),
        )

    def covers(self, with_output: bool) -> bool:
        """Whether this spec already answers a trace request (no retrace needed).

        Args:
            with_output: Whether the request traces with the observed output (a fit)
                or without it (predictive sampling).

        Example:
            >>> from aimz_core.testing import fitted_linreg, linreg_data
            >>> model = fitted_linreg()
            >>> _ = model.predict_on_batch(linreg_data()[0][:2], return_datatree=False)
            >>> model.kernel_spec.covers(False)
            True
        """
        return self.output_observed if with_output else self.traced


EMPTY_RETURN_SITES = (
    "`return_sites` is empty: name at least one site, or pass None for the default return sites."
)


def check_return_sites(return_sites: Any) -> None:
    """Refuse an empty ``return_sites`` where no sites means nothing to do
    (:meth:`~aimz_core.ImpactModel.estimate_effect`; the predictive methods return
    an empty result instead).

    Iterators are not consumed here.

    Raises:
        ValueError: If ``return_sites`` is an empty sized collection.

    Example:
        >>> check_return_sites(None); check_return_sites(("y",))
        >>> check_return_sites([])
        Traceback (most recent call last):
        ...
        ValueError: `return_sites` is empty: name at least one site, or pass None for the default return sites.
    """  # noqa: E501
    if (
        return_sites is not None
        and not isinstance(return_sites, str)
        and hasattr(return_sites, "__len__")
        and len(return_sites) == 0
    ):
        raise ValueError(EMPTY_RETURN_SITES)


def coerce_return_sites(
    return_sites: str | Iterable[str] | None, spec: KernelSpec | None, param_output: str
) -> tuple[str, ...]:
    """Normalise a ``return_sites`` argument to a tuple of site names.

    ``None`` means the spec's default return sites; a string is one site; any
    iterable of strings is taken in order (duplicates dropped), an empty one meaning
    no sites. Names that no trace
    has seen are passed through with a warning.

    Example:
        >>> coerce_return_sites("y", None, "y")
        ('y',)
    """
    if return_sites is None:
        return spec.return_sites if spec is not None else (param_output,)
    if isinstance(return_sites, str):
        sites: tuple[str, ...] = (return_sites,)
    else:
        try:
            sites = tuple(dict.fromkeys(return_sites))
        except TypeError:
            raise TypeError(
                "`return_sites` must be a site name, an iterable of site names or "
                f"None, got {type(return_sites).__name__}."
            ) from None
        bad = [s for s in sites if not isinstance(s, str)]
        if bad:
            raise TypeError(f"`return_sites` must contain strings only, got {bad!r}.")
    if spec is not None and spec.traced:
        known = set(spec.sample_sites) | set(spec.return_sites)
        unseen = [s for s in sites if s not in known]
        if unseen:
            warnings.warn(
                f"Return site(s) {', '.join(map(repr, unseen))} not seen in any trace so "
                "far; they are passed through and left out of the output if the "
                "kernel never records them.",
                AimzWarning,
                stacklevel=4,
            )
    return sites


def check_handler_sites(spec: KernelSpec | None, values: Mapping[str, Any], name: str) -> None:
    """``intervention``/``condition`` may only name sample sites a trace has seen.

    Example:
        >>> spec = KernelSpec(True, ("w", "y"), ("y",), True)
        >>> check_handler_sites(spec, {"w": 1.0}, "intervention")
    """
    if not values or spec is None or not spec.traced:
        return
    unknown = [k for k in values if k not in spec.sample_sites]
    if unknown:
        raise ValueError(
            f"{name.capitalize()} site(s) not among the kernel's sample sites: "
            f"{', '.join(map(repr, unknown))}. Sample sites: "
            f"{', '.join(map(repr, spec.sample_sites))}. (`{name}` may only fix sample "
            "sites.)"
        )


def describe_sites(
    spec: KernelSpec | None, posterior: Mapping[str, Any] | None, param_output: str
) -> dict[str, dict[str, Any]]:
    """Every known site with its kind (``latent``, ``observed`` or ``deterministic``),
    dims and draw shape.

    A ``sample`` site is ``observed`` when it is the output or some trace saw it
    observed (``obs=`` given through a kernel argument); ``dims`` are the names of
    the axes of one draw (``None`` for a site no trace has recorded); ``draw_shape``
    is the shape of one posterior draw (``None`` for sites without draws).

    Example:
        >>> import numpy as np
        >>> spec = KernelSpec(True, ("w", "y"), ("y", "mu"), True,
        ...                   dims=(("w", ("w_dim_0",)),))
        >>> describe_sites(spec, {"w": np.zeros((5, 2))}, "y")["w"]
        {'kind': 'latent', 'dims': ['w_dim_0'], 'draw_shape': [2]}
    """
    sites: dict[str, dict[str, Any]] = {}
    if spec is not None:
        observed = {param_output, *spec.observed_sites}
        for name in spec.sample_sites:
            kind = "observed" if name in observed else "latent"
            sites[name] = {"kind": kind, "dims": None, "draw_shape": None}
        for name in spec.return_sites:
            if name not in sites:
                sites[name] = {"kind": "deterministic", "dims": None, "draw_shape": None}
        for name, entry in sites.items():
            dims = spec.dims_of(name)
            entry["dims"] = None if dims is None else list(dims)
    for name, value in (posterior or {}).items():
        entry = sites.setdefault(name, {"kind": "latent", "dims": None})
        entry["draw_shape"] = list(value.shape[1:])
    return sites


def ensure_traced(
    model: Any, X: Any = None, kwargs: Mapping[str, Any] | None = None, *, bound: Any = None
) -> KernelSpec | None:
    """Trace ``model``'s kernel (without its output) unless a real trace has happened.

    A model given its posterior by ``set_posterior_sample`` holds an untraced spec
    (its sample sites are the posterior's keys); the checks of ``intervention`` /
    ``condition`` sites and the default return sites need a real trace, so every
    predictive call traces the kernel here first, with one row of the call's
    inputs (``X`` and ``kwargs``, or already ``bound`` arguments). The trace neither
    draws nor moves the model's key; a traced spec is returned as is.

    Example:
        >>> import numpy as np
        >>> from aimz_core.testing import fitted_linreg
        >>> model = fitted_linreg()
        >>> model.kernel_spec.traced
        False
        >>> ensure_traced(model, np.ones((3, 2))).return_sites
        ('y', 'mu')
    """
    spec = model.kernel_spec
    if spec is not None and spec.traced:
        return spec
    from aimz_core.arguments import bind_arguments, host_rows

    if bound is None:
        names = (model.kernel, model.param_input, model.param_output)
        bound = bind_arguments(*names, X, None, dict(kwargs or {}), lazy=True)
    # Two rows: a kernel with a lag plate of `n - 1` values cannot run on one.
    probe = {k: host_rows(v, 0, 2) for k, v in bound.arrays.items()}
    return model._build_kernel_spec({**probe, **bound.kernel_extras()}, with_output=False)
