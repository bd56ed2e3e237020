"""Shared helpers for the aimz-io tests: synthetic layouts and a block streamer."""

from __future__ import annotations

from collections.abc import Callable, Iterable

import numpy as np
import pytest
from aimz_core.streaming import Sink, SiteLayout, StreamInfo


def layout_for(
    name: str, values: np.ndarray, *, stream_axis: int, chunk: int, dims: tuple[str, ...]
) -> SiteLayout:
    return SiteLayout(name, values.shape, values.dtype, stream_axis, chunk, dims)


def blocks(values: np.ndarray, axis: int, chunk: int) -> list[tuple[int, np.ndarray]]:
    """``(start, block)`` pieces of ``values`` along ``axis``, ``chunk`` long."""
    size = values.shape[axis]
    return [
        (start, np.take(values, np.arange(start, min(start + chunk, size)), axis=axis))
        for start in range(0, size, chunk)
    ]


def feed(
    sink: Sink, info: StreamInfo, data: dict[str, np.ndarray], order: Iterable[int] | None = None
) -> None:
    """Open ``sink`` and write every site of ``data`` block by block (optionally permuted)."""
    sink.open(info)
    pieces = {
        name: blocks(data[name], layout.stream_axis, layout.chunk)
        for name, layout in info.sites.items()
    }
    count = len(next(iter(pieces.values())))
    for i in order if order is not None else range(count):
        for name, site_pieces in pieces.items():
            sink.write(name, *site_pieces[i])


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)


@pytest.fixture
def make_info(rng: np.random.Generator) -> Callable[..., tuple[StreamInfo, dict]]:
    """Build ``(info, data)``: ``y`` (draws, obs) float32 and ``z`` (draws, obs, 2) int32."""

    def make(
        *,
        draws: int = 6,
        obs: int = 10,
        chunk: int = 4,
        stream_axis: int = 1,
        num_chains: int = 1,
        group: str = "posterior_predictive",
        posterior: bool = True,
    ) -> tuple[StreamInfo, dict[str, np.ndarray]]:
        data = {
            "y": rng.normal(size=(draws, obs)).astype("float32"),
            "z": rng.poisson(3, size=(draws, obs, 2)).astype("int32"),
        }
        sites = {
            "y": layout_for("y", data["y"], stream_axis=stream_axis, chunk=chunk, dims=("obs",)),
            "z": layout_for(
                "z", data["z"], stream_axis=stream_axis, chunk=chunk, dims=("obs", "z_dim_1")
            ),
        }
        post = {"w": rng.normal(size=(draws, 3))} if posterior else {}
        info = StreamInfo(
            group=group,
            caller="predict",
            num_chains=num_chains,
            sites=sites,
            posterior=post,
            posterior_dims={"w": ("feature",)},
            attrs={"note": "test"},
        )
        return info, data

    return make


@pytest.fixture
def feed_sink() -> Callable[..., None]:
    """The :func:`feed` helper as a fixture."""
    return feed


@pytest.fixture
def split_blocks() -> Callable[..., list[tuple[int, np.ndarray]]]:
    """The :func:`blocks` helper as a fixture."""
    return blocks
