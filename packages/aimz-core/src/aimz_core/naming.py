"""Default dimension names of output sites: ``<site>_dim_<i>``.

A site's axes after the draw axis are named ``<site>_dim_0``, ``<site>_dim_1``, ...
unless the kernel gives them names (plates, ``dims`` of the ``KernelSpec``). The
core and ``aimz-io`` both name axes with these functions, so arrays and DataTrees
agree.

Example:
    >>> default_dims("y", 2)
    ('y_dim_0', 'y_dim_1')
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence

from aimz_core.exceptions import OutputWarning

__all__ = ["RESERVED_DIMS", "default_dim", "default_dims", "plate_dims", "without_reserved_dims"]

#: Dimensions every output tree has first; no site or other axis may take these names.
RESERVED_DIMS = ("chain", "draw")


def default_dim(site: str, axis: int) -> str:
    """The default name of axis ``axis`` (counted after the draw axis) of ``site``.

    Args:
        site: The site name.
        axis: The axis, ``0`` for the first axis after the draw axis.

    Returns:
        ``"<site>_dim_<axis>"``.

    Example:
        >>> default_dim("mu", 0)
        'mu_dim_0'
    """
    return f"{site}_dim_{axis}"


def default_dims(site: str, ndim: int) -> tuple[str, ...]:
    """The default names of the ``ndim`` axes after the draw axis of ``site``.

    Args:
        site: The site name.
        ndim: Number of axes after the draw axis.

    Returns:
        ``("<site>_dim_0", ..., "<site>_dim_<ndim-1>")``.

    Example:
        >>> default_dims("w", 1)
        ('w_dim_0',)
    """
    return tuple(default_dim(site, i) for i in range(ndim))


def plate_dims(site: str, ndim: int, plates: Mapping[int, str]) -> tuple[str, ...]:
    """Names of the ``ndim`` axes after the draw axis of ``site``.

    An axis a plate covers takes the plate's name, unless that name is reserved
    (:data:`RESERVED_DIMS`); the other axes take the default names, numbered among
    themselves (as :func:`~aimz_core.streaming.blocks.dim_names` numbers them).

    Args:
        site: The site name.
        ndim: Number of axes after the draw axis.
        plates: Axis index to plate name (axes of one draw).

    Returns:
        One name per axis.

    Example:
        >>> plate_dims("y", 2, {0: "obs"})
        ('obs', 'y_dim_0')
        >>> plate_dims("y", 1, {0: "chain"})
        ('y_dim_0',)
    """
    names, unnamed = [], 0
    for axis in range(ndim):
        name = plates.get(axis)
        if name in (None, *RESERVED_DIMS):
            name, unnamed = default_dim(site, unnamed), unnamed + 1
        names.append(name)
    return tuple(names)


def without_reserved_dims(
    dims: Mapping[str, Sequence[str]], *, stacklevel: int = 2
) -> dict[str, tuple[str, ...]]:
    """Drop the dim names of sites in a plate with a reserved name, with a warning.

    The sites left out keep the default dimension names when the output tree is
    built.

    Args:
        dims: Site name to the names of its axes after the draw axis.
        stacklevel: Passed to :func:`warnings.warn`.

    Returns:
        ``dims`` without the sites that use a name of :data:`RESERVED_DIMS`.

    Warns:
        OutputWarning: Once per reserved plate name found.

    Example:
        >>> import warnings
        >>> with warnings.catch_warnings(record=True) as caught:
        ...     warnings.simplefilter("always")
        ...     without_reserved_dims({"y": ("chain",), "mu": ("obs",)})
        {'mu': ('obs',)}
        >>> print(caught[0].message)
        The plate name 'chain' is reserved for a dimension of the output trees, so the sites in the plate keep the default dimension names. Sites: 'y'; rename the plate to name their axis.
    """  # noqa: E501
    kept: dict[str, tuple[str, ...]] = {}
    found: dict[str, list[str]] = {}
    for site, names in dims.items():
        reserved = [name for name in names if name in RESERVED_DIMS]
        for name in reserved:
            found.setdefault(name, []).append(site)
        if not reserved:
            kept[site] = tuple(names)
    for name, sites in found.items():
        warnings.warn(
            f"The plate name {name!r} is reserved for a dimension of the output trees, so "
            "the sites in the plate keep the default dimension names. Sites: "
            f"{', '.join(map(repr, sites))}; rename the plate to name their axis.",
            OutputWarning,
            stacklevel=stacklevel + 1,
        )
    return kept
