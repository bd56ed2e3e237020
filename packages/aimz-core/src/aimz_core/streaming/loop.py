"""The streaming loop: dispatch batch k+1 while batch k is copied and written.

:func:`run_plan` runs a planned call: through the IO backend's distributed runner
(Dask, resumable or object-store runs), or through :func:`stream` into a sink.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import jax
import numpy as np
from tqdm.auto import tqdm

from aimz_core.arguments import host_rows
from aimz_core.streaming.sinks import MemorySink, Sink, StreamInfo

if TYPE_CHECKING:
    from aimz_core.model import ImpactModel
    from aimz_core.streaming.options import StreamOptions
    from aimz_core.streaming.plan import StreamPlan

Launch = Callable[[int, int, int], dict[str, jax.Array]]


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
    span: Callable[[int], int] | None = None,
) -> Any:
    """Run every batch through ``launch`` and hand the trimmed blocks to ``sink``.

    ``launch(i, start, stop)`` dispatches batch ``i`` (asynchronously) and returns
    its device outputs, padded along ``stream_axis``. With ``span``, the launch at
    batch ``i`` covers ``span(i)`` consecutive batches (``start`` of the first,
    ``stop`` of the last), written as one block. Up to ``depth`` launches are in
    flight: launch k+1 is dispatched before the host copy of launch k is awaited.
    The sink is opened right after the first dispatch, so creating the output
    store overlaps the first batch's computation. On any exception (including
    ``KeyboardInterrupt``) the sink is aborted, the batches in flight are dropped
    and the exception propagates.

    Returns:
        Whatever ``sink.commit()`` returns.
    """
    pending: deque[tuple[int, int, dict[str, jax.Array], int]] = deque()
    bar = tqdm(total=len(ranges), desc=desc, disable=not progress, leave=False)
    opened = False
    try:

        def finish() -> None:
            start, stop, outputs, count = pending.popleft()
            for site, value in outputs.items():
                sink.write(site, start, trim_block(np.asarray(value), stream_axis, stop - start))
            bar.update(count)

        i = 0
        while i < len(ranges):
            count = max(1, min(span(i) if span is not None else 1, len(ranges) - i))
            start, stop = ranges[i][0], ranges[i + count - 1][1]
            outputs = launch(i, start, stop)
            for value in outputs.values():
                value.copy_to_host_async()
            pending.append((start, stop, outputs, count))
            i += count
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


def run_plan(
    model: ImpactModel, plan: StreamPlan, options: StreamOptions, dask_client: Any = None
) -> Any:
    """Run every batch of ``plan`` and return the call's result.

    Example:
        >>> import numpy as np
        >>> from aimz_core.streaming.options import StreamOptions
        >>> from aimz_core.streaming.plan import plan_call, resolve_inputs
        >>> from aimz_core.testing import fitted_linreg
        >>> model = fitted_linreg()
        >>> opts = StreamOptions(kind="predict", caller="predict", progress=False,
        ...                      store="memory", return_datatree=False)
        >>> inputs = resolve_inputs(model, np.ones((6, 2)), None, opts)
        >>> plan = plan_call(opts, inputs, model._runner(), param_input="X")
        >>> run_plan(model, plan, opts)["y"].shape
        (100, 6)
    """
    from aimz_core.backend import io_backend

    progress = options.progress
    if options.distributed:
        return io_backend("Distributed and resumable runs").run_distributed(
            model,
            plan,
            client=dask_client,
            base_dir=model._base_dir(options.output_dir),
            resume=options.resume,
            progress=progress,
            storage_options=options.storage_options,
        )
    if options.return_datatree:
        store = options.store
        base = model._base_dir(options.output_dir) if store == "persistent" else None
        sink = io_backend().make_sink(
            store=store,
            base_dir=base,
            progress=progress,
            # Hashed when the store opens (after batch 0 is dispatched), not here.
            fingerprint=lambda: plan.fingerprint(plan.info.posterior),
        )
    else:
        sink = MemorySink()
    runner, arrays = model._runner(), plan.arrays
    tuned = None
    if plan.shard_axis == "obs":
        from aimz_core.streaming._autotune import TunedLaunch, tunable

        # A tunable call may compute its batches with a measured formulation, and
        # several batches per launch.
        if tunable(plan, runner):
            tuned = TunedLaunch(runner, plan)

        def launch(i: int, start: int, stop: int) -> dict[str, jax.Array]:
            rows = {k: host_rows(v, start, stop) for k, v in arrays.items()}
            if tuned is not None:
                return tuned(i, start, stop, rows)
            return runner.launch(plan, i, start, rows)

    else:

        def launch(i: int, start: int, stop: int) -> dict[str, jax.Array]:
            return runner.launch(plan, i, start, arrays)

    completed = False
    try:
        result = stream(
            plan.ranges,
            launch,
            stream_axis=plan.stream_axis,
            sink=sink,
            info=plan.info,
            progress=progress,
            desc=plan.desc,
            span=tuned.span if tuned is not None else None,
        )
        completed = True
    finally:
        if tuned is not None:
            tuned.finish(completed)
    return result
