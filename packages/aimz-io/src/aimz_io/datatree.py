"""Build aimz output trees: one ``xr.Dataset`` per group under a root named ``root``.

Every variable has dims ``("chain", "draw", *site_dims)`` and integer ``np.arange``
coordinates on every dim. Arrays arrive with a flattened leading draw axis of size
``chain * draw`` and are split into ``(chain, draw)`` here. Variables are sorted by
name, whatever store produced them.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import xarray as xr
from aimz_core.exceptions import OutputWarning
from aimz_core.naming import default_dim, default_dims
from aimz_core.streaming.sinks import POSTERIOR_ATTR, posterior_digest

from aimz_io.provenance import base_attrs, utc_now

CHAIN, DRAW = "chain", "draw"
RESERVED_DIMS = (CHAIN, DRAW)


def storage_dtype(dtype: Any) -> np.dtype:
    """The dtype an output is stored with: ``bfloat16`` becomes ``float32``.

    Example:
        >>> storage_dtype("int32")
        dtype('int32')
    """
    dtype = np.dtype(dtype)
    return np.dtype("float32") if dtype.name == "bfloat16" else dtype


def as_host_array(value: Any) -> np.ndarray:
    """Convert a JAX / NumPy value to a NumPy array in its storage dtype.

    Example:
        >>> as_host_array([1.0, 2.0]).dtype
        dtype('float64')
    """
    array = np.asarray(value)
    return array.astype(storage_dtype(array.dtype), copy=False)


def resolve_dims(
    shapes: Mapping[str, Sequence[int]],
    dims: Mapping[str, Sequence[str]] | None = None,
) -> dict[str, tuple[str, ...]]:
    """Choose dim names for the sites of one group.

    A site uses its requested dims when there is one name per axis, the names are
    unique, avoid ``chain``/``draw`` and the group's site names, and agree in size
    with the dims already taken by earlier sites. Otherwise it falls back to
    ``<site>_dim_<i>`` with an :class:`~aimz_core.exceptions.OutputWarning`. Sites
    without requested dims, or whose requested dims are those defaults, fall back
    silently. A default name taken by a site of the group (a site named
    ``mu_dim_0`` next to ``mu``) or by a dim of another size gets ``_`` appended
    until it is free, so building the group never fails on names.

    Args:
        shapes: Site name to the shape *after* the draw axis.
        dims: Requested dim names per site.

    Returns:
        Site name to dim names, in the order of ``shapes``.

    Example:
        >>> resolve_dims({"y": (3,), "w": (2,)}, {"y": ("obs",)})
        {'y': ('obs',), 'w': ('w_dim_0',)}
        >>> resolve_dims({"mu": (3,), "mu_dim_0": (3,)})
        {'mu': ('mu_dim_0_',), 'mu_dim_0': ('mu_dim_0_dim_0',)}
    """
    dims = dims or {}
    variables = set(shapes)
    sizes: dict[str, int] = {}
    resolved: dict[str, tuple[str, ...]] = {}
    for site, shape in shapes.items():
        shape = tuple(shape)
        wanted = dims.get(site)
        candidate = tuple(wanted) if wanted is not None else None
        problem = None
        if candidate is not None:
            problem = _dims_problem(candidate, shape, sizes, variables)
        if candidate is None or problem:
            fallback = _free_defaults(site, shape, sizes, variables)
            if problem and candidate != default_dims(site, len(shape)):
                warnings.warn(
                    f"Site {site!r}: dims {candidate} cannot be used ({problem}); "
                    f"using {fallback} instead.",
                    OutputWarning,
                    stacklevel=2,
                )
            candidate = fallback
        sizes.update(zip(candidate, shape, strict=True))
        resolved[site] = candidate
    return resolved


def _free_defaults(
    site: str, shape: tuple[int, ...], sizes: Mapping[str, int], variables: set[str]
) -> tuple[str, ...]:
    """``<site>_dim_<i>`` names, each made free of site names and differently sized dims."""
    names: list[str] = []
    for axis, size in enumerate(shape):
        name = default_dim(site, axis)
        while (
            name in variables
            or name in RESERVED_DIMS
            or name in names
            or sizes.get(name, size) != size
        ):
            name += "_"
        names.append(name)
    return tuple(names)


def _dims_problem(
    names: tuple[str, ...], shape: tuple[int, ...], sizes: Mapping[str, int], variables: set[str]
) -> str | None:
    if len(names) != len(shape):
        return f"{len(names)} names for {len(shape)} axes"
    if len(set(names)) != len(names):
        return "repeated names"
    if reserved := set(names) & set(RESERVED_DIMS):
        return f"reserved name {sorted(reserved)[0]!r}"
    if taken := set(names) & variables:
        return f"{sorted(taken)[0]!r} is also a site name"
    for name, size in zip(names, shape, strict=True):
        if sizes.get(name, size) != size:
            return f"dim {name!r} has size {sizes[name]} in another site, {size} here"
    return None


def split_chains(array: np.ndarray, num_chains: int) -> np.ndarray:
    """Reshape a flattened draw axis ``(chain * draw, ...)`` to ``(chain, draw, ...)``.

    Example:
        >>> split_chains(np.zeros((6, 2)), 2).shape
        (2, 3, 2)
    """
    total = array.shape[0]
    check_num_chains(total, num_chains)
    return array.reshape(num_chains, total // num_chains, *array.shape[1:])


def check_num_chains(total_draws: int, num_chains: int) -> None:
    """Raise ``ValueError`` unless ``num_chains`` splits ``total_draws`` evenly.

    Example:
        >>> check_num_chains(6, 3)
    """
    if (
        isinstance(num_chains, bool)
        or not isinstance(num_chains, (int, np.integer))
        or num_chains < 1
        or total_draws % num_chains
    ):
        raise ValueError(
            f"`num_chains` must be a positive integer dividing the number of draws "
            f"({total_draws}), got {num_chains!r}."
        )


def make_dataset(
    arrays: Mapping[str, Any],
    dims: Mapping[str, Sequence[str]],
    attrs: Mapping[str, Any] | None = None,
) -> xr.Dataset:
    """Wrap ``(chain, draw, ...)`` arrays into a Dataset with ``arange`` coords.

    NumPy arrays of a structure seen before (site names, dims, shapes and dtypes)
    are placed into a copy of a template Dataset of that structure
    (``Dataset.copy(data=...)``): building the Dataset anew (merging and aligning
    its variables and coordinates) is most of the cost of a small on-batch tree.
    The template's own data are zero-strided placeholders, so it keeps no array.

    Args:
        arrays: Site name to an array-like already shaped ``(chain, draw, ...)``
            (NumPy, Dask or a lazily indexed xarray backend array).
        dims: Site name to the dims after ``chain``/``draw``.
        attrs: Dataset attributes.

    Returns:
        The Dataset, variables sorted by name.

    Example:
        >>> ds = make_dataset({"y": np.zeros((1, 4, 3))}, {"y": ("obs",)})
        >>> dict(ds.sizes)
        {'chain': 1, 'draw': 4, 'obs': 3}
    """
    structure = _structure(arrays, dims)
    if structure is None:
        return _build_dataset(arrays, dims, attrs)
    ds = _template(structure).copy(deep=False, data=dict(arrays))
    ds.attrs = dict(attrs or {})
    return ds


def _build_dataset(
    arrays: Mapping[str, Any],
    dims: Mapping[str, Sequence[str]],
    attrs: Mapping[str, Any] | None = None,
) -> xr.Dataset:
    variables = {}
    sizes: dict[str, int] = {}
    for site in sorted(arrays):
        names = (CHAIN, DRAW, *dims[site])
        variables[site] = xr.Variable(names, arrays[site])
        sizes.update(zip(names, variables[site].shape, strict=True))
    return xr.Dataset(
        variables, coords=_arange_coords(tuple(sizes.items())), attrs=dict(attrs or {})
    )


def _structure(arrays: Mapping[str, Any], dims: Mapping[str, Sequence[str]]) -> tuple | None:
    """Hashable structure of NumPy numeric ``arrays`` (``None``: build anew)."""
    parts = []
    for site in sorted(arrays):
        value = arrays[site]
        if type(value) is not np.ndarray or value.dtype.kind not in "biufc":
            return None
        names = (CHAIN, DRAW, *dims[site])
        if len(names) != value.ndim:
            return None  # let xarray raise its error
        parts.append((site, names, value.shape, value.dtype.str))
    return tuple(parts)


@functools.lru_cache(maxsize=128)
def _template(structure: tuple) -> xr.Dataset:
    """A Dataset of ``structure`` holding zero-strided placeholders (no memory)."""
    placeholders = {
        site: np.broadcast_to(np.zeros((), dtype), shape)
        for site, _names, shape, dtype in structure
    }
    dims = {site: names[2:] for site, names, _shape, _dtype in structure}
    return _build_dataset(placeholders, dims)


@functools.lru_cache(maxsize=256)
def _arange_coords(sizes: tuple[tuple[str, int], ...]) -> xr.Coordinates:
    """``np.arange`` coordinates (with their indexes) for ``(dim, size)`` pairs.

    Built once per set of sizes: creating the default indexes is most of the cost of
    a small Dataset. Sharing them is safe: indexes are immutable, and every Dataset
    holds its own copies of the coordinate variables (their attributes included).
    """
    return xr.Coordinates({name: np.arange(size) for name, size in sizes})


def dataset_from_arrays(
    arrays: Mapping[str, Any],
    *,
    num_chains: int,
    dims: Mapping[str, Sequence[str]] | None = None,
    attrs: Mapping[str, Any] | None = None,
) -> xr.Dataset:
    """Dataset from host arrays with a flattened leading draw axis.

    Example:
        >>> ds = dataset_from_arrays({"w": np.zeros((4, 2))}, num_chains=2)
        >>> ds["w"].dims
        ('chain', 'draw', 'w_dim_0')
    """
    host = {site: as_host_array(value) for site, value in arrays.items()}
    for site, value in host.items():
        if value.ndim == 0:
            raise ValueError(f"Site {site!r} has no draw axis (a 0-d value).")
    resolved = resolve_dims({site: v.shape[1:] for site, v in host.items()}, dims)
    split = {site: split_chains(value, num_chains) for site, value in host.items()}
    return make_dataset(split, resolved, attrs)


_EMPTY = xr.Dataset()


def assemble_tree(groups: Mapping[str, xr.Dataset], attrs: Mapping[str, Any]) -> xr.DataTree:
    """Root node ``"root"`` carrying ``attrs`` with one child per group, in order.

    Example:
        >>> tree = assemble_tree({"posterior": xr.Dataset()}, {"num_chains": 1})
        >>> tree.name, list(tree.children)
        ('root', ['posterior'])
    """
    # The node copies the (shared, empty) Dataset; setting its attrs afterwards is
    # 0.1 ms cheaper than building a Dataset with them.
    root = xr.DataTree(_EMPTY, name="root")
    root.attrs = dict(attrs)
    children = {name: xr.DataTree(dataset) for name, dataset in groups.items()}
    if _direct_attach_works():
        _attach_under_empty_root(root, children)
    else:
        # Assigning `children` attaches the new nodes as they are; `DataTree.from_dict`
        # (and the `children=` argument) would copy every node once more.
        root.children = children
    return root


def _attach_under_empty_root(root: xr.DataTree, children: Mapping[str, xr.DataTree]) -> None:
    """Link fresh, parentless ``children`` under ``root``, which holds no variables.

    What ``root.children = children`` does, less its per-child checks, which cannot
    fail here: a child is aligned against its parent's coordinates and indexes, and
    an empty root has none, so the check and the removal of inherited duplicates do
    nothing (they were half the cost of a small on-batch tree: 0.4-0.5 ms of
    0.6-0.8). Names are plain group names, distinct and free of ``/``.
    """
    for name, child in children.items():
        child._name = name
        child._parent = root
        root._children[name] = child


@functools.lru_cache(maxsize=1)
def _direct_attach_works() -> bool:
    """Whether :func:`_attach_under_empty_root` gives the tree xarray itself builds.

    It writes xarray's private tree links, so it is used only after a one-time check
    against the public ``children`` setter on this xarray: the same tree, the same
    paths, parents and inherited coordinates. A release that lays out its nodes
    otherwise falls back to the public (slower) path.
    """
    try:
        groups = {
            "a": xr.Dataset({"v": (("chain", "x"), np.zeros((1, 2)))}, coords={"x": [0, 1]}),
            "b": xr.Dataset(),
        }
        public = xr.DataTree(_EMPTY, name="root")
        public.children = {name: xr.DataTree(ds) for name, ds in groups.items()}
        direct = xr.DataTree(_EMPTY, name="root")
        _attach_under_empty_root(direct, {name: xr.DataTree(ds) for name, ds in groups.items()})
        xr.testing.assert_identical(public, direct)
        node = direct["a"]
        return (
            node.parent is direct
            and node.path == "/a"
            and list(direct.children) == ["a", "b"]
            and [n.path for n in direct.subtree] == [n.path for n in public.subtree]
            and node.xindexes.keys() == public["a"].xindexes.keys()
        )
    except Exception:  # any surprise means: use the public path
        return False


def _base_attrs(num_chains: int) -> dict[str, Any]:
    """:func:`~aimz_io.provenance.base_attrs` with the installed version looked up once
    (reading package metadata costs milliseconds per call)."""
    return {**_static_attrs(int(num_chains)), "created_at": utc_now().isoformat()}


@functools.lru_cache(maxsize=64)
def _static_attrs(num_chains: int) -> dict[str, Any]:
    return base_attrs(num_chains, created_at="")


def posterior_dataset(
    arrays: Mapping[str, Any],
    *,
    num_chains: int = 1,
    dims: Mapping[str, Sequence[str]] | None = None,
) -> xr.Dataset:
    """The ``posterior`` group of :func:`tree_from_arrays`, built ahead of time.

    A model that returns many small trees from one posterior builds this once and
    passes it as the ``posterior`` group; its ``posterior_digest`` attribute is
    computed here, once.

    Example:
        >>> ds = posterior_dataset({"w": np.zeros((4, 2))}, num_chains=2)
        >>> dict(ds.sizes), POSTERIOR_ATTR in ds.attrs
        ({'chain': 2, 'draw': 2, 'w_dim_0': 2}, True)
    """
    attrs = {POSTERIOR_ATTR: posterior_digest(arrays)}
    return dataset_from_arrays(arrays, num_chains=num_chains, dims=dims, attrs=attrs)


def tree_from_arrays(
    groups: Mapping[str, Mapping[str, Any] | xr.Dataset],
    *,
    num_chains: int = 1,
    dims: Mapping[str, Sequence[str]] | None = None,
    attrs: Mapping[str, Any] | None = None,
) -> xr.DataTree:
    """Build an in-memory output tree from host arrays (the on-batch results).

    Args:
        groups: Group name to ``{site: array}``; every array has a flattened
            leading draw axis of size ``chain * draw``. Groups keep this order. A
            group may also be a Dataset built ahead of time (a ``posterior`` group
            from ``aimz_io.datatree.posterior_dataset``); it is used as it is, with the tree's
            attributes.
        num_chains: Number of chains the draw axis splits into.
        dims: Dim names (after the draw axis) per site name, for any group.
        attrs: Extra attributes for the root and every group.

    Returns:
        A DataTree named ``"root"``; root and groups carry ``created_at``,
        ``aimz_version`` and ``num_chains`` (plus ``attrs``), and, with a
        ``posterior`` group, the ``posterior_digest`` of its samples.

    Example:
        >>> import numpy as np
        >>> tree = tree_from_arrays(
        ...     {"posterior": {"w": np.zeros((4, 2))},
        ...      "posterior_predictive": {"y": np.zeros((4, 3))}},
        ...     num_chains=2, dims={"y": ("obs",)})
        >>> dict(tree["posterior_predictive"].sizes)
        {'chain': 2, 'draw': 2, 'obs': 3}
    """
    common = {**dict(attrs or {}), **_base_attrs(num_chains)}
    post = groups.get("posterior")
    if post is not None and POSTERIOR_ATTR not in common:
        common[POSTERIOR_ATTR] = (
            post.attrs[POSTERIOR_ATTR] if isinstance(post, xr.Dataset) else posterior_digest(post)
        )
    datasets = {
        name: arrays
        if isinstance(arrays, xr.Dataset)
        else dataset_from_arrays(arrays, num_chains=num_chains, dims=dims, attrs=common)
        for name, arrays in groups.items()
    }
    tree = assemble_tree(datasets, common)
    for name, group in groups.items():
        if isinstance(group, xr.Dataset):  # the node holds its own copy of the attrs
            tree.children[name].attrs = dict(common)
    return tree
