"""The streaming loop: dispatch batch k+1 while batch k is copied and written."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

import jax
import numpy as np
from tqdm.auto import tqdm

from aimz_core.sinks import Sink, StreamInfo

Launch = Callable[[int, int, int], dict[str, jax.Array]]


def pad_rows(x: Any, size: int) -> Any:
    """Pad ``x`` along axis 0 to ``size`` rows by repeating the last row.

    Example:
        >>> import numpy as np
        >>> pad_rows(np.array([1, 2]), 4).tolist()
        [1, 2, 2, 2]
    """
    n = x.shape[0]
    if n == size:
        return x
    if isinstance(x, np.ndarray):
        return np.concatenate([x, np.repeat(x[-1:], size - n, axis=0)], axis=0)
    return jax.numpy.concatenate([x, jax.numpy.repeat(x[-1:], size - n, axis=0)], axis=0)


@partial(jax.jit, static_argnums=2)
def take_draws(
    post: dict[str, jax.Array], start: int, size: int
) -> tuple[dict[str, jax.Array], jax.Array]:
    """Draws ``[start, start + size)`` of a posterior and their draw indices.

    Past the last draw the chunk repeats the last draw (batch padding, trimmed
    later), so the posterior is never copied into a padded version.

    Example:
        >>> import jax.numpy as jnp
        >>> chunk, idx = take_draws({"w": jnp.arange(6.0)}, 4, 3)
        >>> chunk["w"].tolist(), idx.tolist()
        ([4.0, 5.0, 5.0], [4, 5, 6])
    """
    idx = start + jax.numpy.arange(size)
    chunk = {k: jax.numpy.take(v, idx, axis=0, mode="clip") for k, v in post.items()}
    return chunk, idx


def split_range(total: int, size: int) -> list[tuple[int, int]]:
    """Cut ``range(total)`` into ``(start, stop)`` pieces of ``size``.

    Example:
        >>> split_range(5, 2)
        [(0, 2), (2, 4), (4, 5)]
    """
    return [(start, min(start + size, total)) for start in range(0, total, size)]


def trim_block(block: np.ndarray, axis: int, length: int) -> np.ndarray:
    """The first ``length`` entries of ``block`` along ``axis`` (drops batch padding).

    Example:
        >>> trim_block(np.zeros((2, 4)), 1, 3).shape
        (2, 3)
    """
    if block.shape[axis] == length:
        return block
    index = [slice(None)] * block.ndim
    index[axis] = slice(0, length)
    return block[tuple(index)]


def stream(
    ranges: Sequence[tuple[int, int]],
    launch: Launch,
    *,
    stream_axis: int,
    sink: Sink,
    info: StreamInfo,
    progress: bool = True,
    desc: str = "Sampling",
    depth: int = 2,
) -> Any:
    """Run every batch through ``launch`` and hand the trimmed blocks to ``sink``.

    ``launch(i, start, stop)`` dispatches batch ``i`` (asynchronously) and returns
    its device outputs, padded along ``stream_axis``. Up to ``depth`` batches are in
    flight: batch k+1 is dispatched before the host copy of batch k is awaited.
    The sink is opened right after the first dispatch, so creating the output
    store overlaps the first batch's computation. On any exception (including
    ``KeyboardInterrupt``) the sink is aborted, the batches in flight are dropped
    and the exception propagates.

    Returns:
        Whatever ``sink.commit()`` returns.
    """
    pending: deque[tuple[int, int, dict[str, jax.Array]]] = deque()
    bar = tqdm(total=len(ranges), desc=desc, disable=not progress, leave=False)
    opened = False
    try:

        def finish() -> None:
            start, stop, outputs = pending.popleft()
            for site, value in outputs.items():
                sink.write(site, start, trim_block(np.asarray(value), stream_axis, stop - start))
            bar.update(1)

        for i, (start, stop) in enumerate(ranges):
            outputs = launch(i, start, stop)
            for value in outputs.values():
                value.copy_to_host_async()
            pending.append((start, stop, outputs))
            if not opened:
                sink.open(info)
                opened = True
            if len(pending) >= depth:
                finish()
        if not opened:
            sink.open(info)
        while pending:
            finish()
        bar.set_description("Writing in progress...")
        result = sink.commit()
    except BaseException:
        pending.clear()
        sink.abort()
        raise
    finally:
        bar.close()
    return result
