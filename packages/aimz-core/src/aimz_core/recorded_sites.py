"""Which sites the traces of a kernel record, and guide sites that are not among them.

An SVI guide may sample sites of its own: every ``AutoContinuous`` guide
(``AutoMultivariateNormal``, ``AutoDiagonalNormal``, ``AutoLowRankMultivariateNormal``,
``AutoBNAFNormal``, ``AutoIAFNormal``, ``AutoLaplaceApproximation``) draws one
flattened ``_auto_latent`` vector and then unpacks it into the kernel's sites. Such
guide-only sites are internal to the guide and never belong to the posterior.

Two kinds of traces of the kernel are known without tracing again: the model's
:class:`~aimz_core.kernel_spec.KernelSpec` (once a real trace has happened) and the
prototype trace an automatic guide records when SVI initialises it.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from aimz_core.kernel_spec import KernelSpec

_SITE_TYPES = ("sample", "deterministic")


def _guide_parts(guide: Any) -> Iterator[Any]:
    """The guide and, for an ``AutoGuideList``, its parts (recursively)."""
    yield guide
    for part in getattr(guide, "_guides", None) or ():
        yield from _guide_parts(part)


def prototype_sites(guide: Any, kinds: tuple[str, ...] = _SITE_TYPES) -> dict[str, str] | None:
    """Sites of the kernel traces that an automatic guide recorded when set up.

    Args:
        guide: An SVI guide (any callable; only NumPyro auto guides keep a trace).
        kinds: Site types to report.

    Returns:
        ``{site: type}`` over the guide's (and its parts') prototype traces, or
        ``None`` when no prototype trace exists (a custom guide function, or an auto
        guide SVI has not initialised yet).

    Example:
        >>> prototype_sites(lambda X: None) is None
        True
    """
    sites: dict[str, str] = {}
    found = False
    for part in _guide_parts(guide):
        trace = getattr(part, "prototype_trace", None)
        if not isinstance(trace, Mapping):
            continue
        found = True
        for name, site in trace.items():
            kind = site.get("type") if isinstance(site, Mapping) else None
            if kind in kinds:
                sites.setdefault(str(name), str(kind))
    return sites if found else None


def recorded_sites(
    spec: KernelSpec | None, guide: Any = None, *, sample_only: bool = False
) -> set[str] | None:
    """Names of the sites any known trace of the kernel records.

    Args:
        spec: The model's kernel spec (used only once a real trace has happened).
        guide: The SVI guide, whose prototype trace is a trace of the kernel too.
        sample_only: Only ``sample`` sites (else deterministic sites too).

    Returns:
        The site names, or ``None`` when no trace of the kernel is known.

    Example:
        >>> spec = KernelSpec(True, ("w", "y"), ("y", "mu"), True)
        >>> sorted(recorded_sites(spec)), sorted(recorded_sites(spec, sample_only=True))
        (['mu', 'w', 'y'], ['w', 'y'])
        >>> recorded_sites(KernelSpec(False, ("w",), ("y",), False)) is None
        True
    """
    names: set[str] = set()
    known = False
    if spec is not None and spec.traced:
        known = True
        names.update(spec.sample_sites)
        if not sample_only:
            names.update(spec.return_sites)
    if guide is not None:
        kinds = ("sample",) if sample_only else _SITE_TYPES
        proto = prototype_sites(guide, kinds)
        if proto is not None:
            known = True
            names.update(proto)
    return names if known else None


def latent_sites(spec: KernelSpec | None, guide: Any, param_output: str) -> set[str] | None:
    """Names of the latent ``sample`` sites any known trace of the kernel records.

    A site is latent unless it is the output or some trace saw it observed (as
    ``obs=`` given through a kernel argument).

    Args:
        spec: The model's kernel spec (used only once a real trace has happened).
        guide: The SVI guide, whose prototype trace is a trace of the kernel too.
        param_output: Name of the output site.

    Returns:
        The latent site names, or ``None`` when no trace of the kernel is known.

    Example:
        >>> spec = KernelSpec(True, ("w", "t", "y"), ("y",), True, observed_sites=("t", "y"))
        >>> sorted(latent_sites(spec, None, "y"))
        ['w']
    """
    names: set[str] = set()
    observed: set[str] = {param_output}
    known = False
    if spec is not None and spec.traced:
        known = True
        names.update(spec.sample_sites)
        observed.update(spec.observed_sites)
    for part in _guide_parts(guide) if guide is not None else ():
        trace = getattr(part, "prototype_trace", None)
        if not isinstance(trace, Mapping):
            continue
        known = True
        for name, site in trace.items():
            if isinstance(site, Mapping) and site.get("type") == "sample":
                names.add(str(name))
                if site.get("is_observed", False):
                    observed.add(str(name))
    return names - observed if known else None


def drop_guide_only_sites(
    samples: Mapping[str, Any], spec: KernelSpec | None, guide: Any
) -> dict[str, Any]:
    """Keep only the draws of sites that a trace of the kernel records as ``sample``.

    Guide-only sites such as ``_auto_latent`` are dropped. When no trace of the
    kernel is known, every site is kept.

    Example:
        >>> spec = KernelSpec(True, ("w", "y"), ("y",), True)
        >>> sorted(drop_guide_only_sites({"w": 1, "_auto_latent": 2}, spec, None))
        ['w']
    """
    kernel_sites = recorded_sites(spec, guide, sample_only=True)
    if kernel_sites is None:
        return dict(samples)
    return {name: value for name, value in samples.items() if name in kernel_sites}


__all__ = ["drop_guide_only_sites", "latent_sites", "prototype_sites", "recorded_sites"]
