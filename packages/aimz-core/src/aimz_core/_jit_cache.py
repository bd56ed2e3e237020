"""Compilation caches: JAX's persistent compilation cache and aimz's executable cache.

**Compilation cache.** JAX's persistent compilation cache is switched on for aimz
unless the user opts out. Compiled batch functions are written to disk so a second
process that runs the same model skips compilation. The cache lives in
``$AIMZ_CACHE_DIR`` (default ``$XDG_CACHE_HOME/aimz/jax`` or ``~/.cache/aimz/jax``).
Set ``AIMZ_COMPILATION_CACHE=0`` to leave JAX's configuration untouched; a cache
directory the user configured themselves is always respected.

**Executable cache.** Compiled batch functions are kept on disk, so a new process
skips lowering and compiling. JAX's persistent compilation cache
(:func:`ensure_compilation_cache`) saves the XLA compile, but its key is computed
from the lowered module: a new process still
traces and lowers every batch function (0.4-0.5 s for the benchmark models, a third
of the first call). :class:`PersistentJit` keys the *serialized executable* on the
traced program instead: the printed jaxpr, the values of its constants, the input
and output types and shardings, the JAX/XLA versions, the devices and the flags
that change code generation. A hit loads the executable without lowering or
compiling; anything unusual (host callbacks, a failed load, a JAX without the
serialization API) falls back to the ordinary jitted call.

Only executables compiled in this process are saved: an executable that JAX
itself loaded from its persistent cache serializes into a blob that fails at run
time on CPU ("Function ... not found", measured with jax 0.12). Batch functions
are therefore compiled with :data:`FRESH_COMPILE_OPTIONS` (settings that change
JAX's cache key but not the code), and a compile that JAX's cache served anyway
is used but not saved. To reset both caches, delete the whole cache directory.

The cache follows the compilation cache switch: ``AIMZ_COMPILATION_CACHE=0``
turns both off. Entries live in ``<cache dir>/executables`` (see
:func:`default_cache_dir`) and can be deleted at any time. The directory is
bounded by ``AIMZ_EXECUTABLE_CACHE_BYTES`` (default 1 GiB, ``0``: no bound): a
write that takes it over the bound deletes the least recently used entries.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import pickle
import platform
import tempfile
import threading
from collections import OrderedDict
from collections.abc import Callable
from functools import cache
from pathlib import Path
from typing import Any

import jax
import numpy as np

from aimz_core._locks import TRACE_LOCK
from aimz_core._precision import precision_key

logger = logging.getLogger("aimz")

_configured = False


def default_cache_dir() -> Path:
    """Directory used for the persistent cache when none is configured.

    Example:
        >>> default_cache_dir().name
        'jax'
    """
    if os.environ.get("AIMZ_CACHE_DIR"):
        return Path(os.environ["AIMZ_CACHE_DIR"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "aimz" / "jax"


def enabled_by_env() -> bool:
    """Whether ``AIMZ_COMPILATION_CACHE`` allows aimz to configure the cache."""
    return os.environ.get("AIMZ_COMPILATION_CACHE", "1").strip().lower() not in (
        "0",
        "false",
        "no",
        "off",
    )


def ensure_compilation_cache() -> str | None:
    """Turn on JAX's persistent compilation cache once per process.

    Returns:
        The cache directory in use, or ``None`` when disabled.

    Example:
        >>> ensure_compilation_cache() is None or isinstance(ensure_compilation_cache(), str)
        True
    """
    global _configured
    current = jax.config.jax_compilation_cache_dir
    if _configured or current:
        return current or None
    _configured = True
    if not enabled_by_env():
        return None
    path = default_cache_dir()
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        logger.info("Persistent compilation cache disabled: %s", err)
        return None
    jax.config.update("jax_compilation_cache_dir", str(path))
    # Small functions too (key splitting, slicing): each costs 20-100 ms to
    # compile, and together they were a third of a cached first call.
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    return str(path)


#: Bumped when the key or the file layout changes.
FORMAT_VERSION = 2
#: Compiler options of batch functions, tried in turn until a compile is not served
#: by JAX's persistent cache: settings that only change JAX's cache key (an
#: explicit default; then the HLO kept in the executable), see the module docstring.
FRESH_COMPILE_OPTIONS = (
    {"xla_embed_ir_in_executable": False},
    {"xla_embed_ir_in_executable": True},
)
#: Configuration values that change the generated code.
_CONFIG_KEYS = (
    "jax_enable_x64",
    "jax_default_matmul_precision",
    "jax_threefry_partitionable",
    "jax_default_prng_impl",
)


_local = threading.local()
_listening = False
_listen_lock = threading.Lock()


def _on_event(name: str, **_: Any) -> None:
    if name == "/jax/compilation_cache/cache_hits":
        _local.hits = getattr(_local, "hits", 0) + 1


def _jax_cache_hits() -> int:
    """JAX persistent-cache hits seen by this thread (listening starts on first use)."""
    global _listening
    with _listen_lock:
        if not _listening:
            jax.monitoring.register_event_listener(_on_event)
            _listening = True
    return getattr(_local, "hits", 0)


def executable_cache_dir() -> Path | None:
    """Where serialized executables are kept, or ``None`` when the cache is off.

    Example:
        >>> path = executable_cache_dir()
        >>> path is None or path.name == "executables"
        True
    """
    if not enabled_by_env():
        return None
    return default_cache_dir() / "executables"


#: Default of ``AIMZ_EXECUTABLE_CACHE_BYTES``: 1 GiB.
DEFAULT_EXECUTABLE_CACHE_BYTES = 2**30


def executable_cache_bytes() -> int:
    """Bytes the executable cache may hold (``AIMZ_EXECUTABLE_CACHE_BYTES``, default
    1 GiB; ``0``: no bound). Least recently used entries are deleted beyond it.

    Example:
        >>> executable_cache_bytes() >= 0
        True
    """
    raw = os.environ.get("AIMZ_EXECUTABLE_CACHE_BYTES", "").strip()
    try:
        return max(0, int(float(raw))) if raw else DEFAULT_EXECUTABLE_CACHE_BYTES
    except ValueError:
        return DEFAULT_EXECUTABLE_CACHE_BYTES


def evict_executables(directory: Path, limit: int, keep: Path | None = None) -> int:
    """Delete the least recently used entries of ``directory`` (oldest modification
    time first: a load touches its entry) until it holds at most ``limit`` bytes.
    ``keep`` (the entry just written) goes last. Returns the bytes deleted.

    Example:
        >>> import tempfile
        >>> d = Path(tempfile.mkdtemp())
        >>> for i in range(3):
        ...     _ = (d / f"{i}.bin").write_bytes(b"x" * 10)
        ...     os.utime(d / f"{i}.bin", (i, i))
        >>> evict_executables(d, 25), sorted(p.name for p in d.iterdir())
        (10, ['1.bin', '2.bin'])
    """
    if limit <= 0:
        return 0
    entries = []
    for path in directory.glob("*.bin"):
        try:
            stat = path.stat()
        except OSError:  # deleted by another process
            continue
        entries.append((path == keep, stat.st_mtime, stat.st_size, path))
    total = sum(entry[2] for entry in entries)
    deleted = 0
    for _, _, size, path in sorted(entries, key=lambda e: e[:2]):
        if total <= limit:
            break
        path.unlink(missing_ok=True)
        total -= size
        deleted += size
    return deleted


@cache
def _environment_digest() -> bytes:
    """Versions, devices, CPU features and flags: what a loaded executable relies on."""
    parts: list[str] = [f"format={FORMAT_VERSION}", f"jax={jax.__version__}"]
    try:
        import jaxlib

        parts.append(f"jaxlib={jaxlib.__version__}")
    except Exception:  # pragma: no cover - jaxlib always ships with jax
        pass
    from jax.extend.backend import get_backend

    backend = get_backend()
    parts += [f"platform={backend.platform}", f"platform_version={backend.platform_version}"]
    parts += [f"device={d.id}:{d.device_kind}" for d in jax.devices()]
    parts += [f"{name}={os.environ.get(name, '')}" for name in ("XLA_FLAGS", "LIBTPU_INIT_ARGS")]
    parts += [f"{key}={getattr(jax.config, key, None)}" for key in _CONFIG_KEYS]
    parts.append(f"machine={platform.machine()}")
    if backend.platform == "cpu":  # AOT CPU code uses the host's instruction set
        try:
            flags = next(
                line for line in Path("/proc/cpuinfo").read_text().splitlines() if "flags" in line
            )
            parts.append(f"cpu_flags={flags}")
        except (OSError, StopIteration):
            parts.append(f"cpu={platform.processor()}")
    return "\n".join(parts).encode()


def _has_callbacks(jaxpr: Any) -> bool:
    from jax.extend.core import jaxprs_in_params

    for eqn in jaxpr.eqns:
        if "callback" in eqn.primitive.name:
            return True
        if any(_has_callbacks(sub) for sub in jaxprs_in_params(eqn.params)):
            return True
    return False


def program_key(traced: Any) -> str | None:
    """A digest of a traced program and of the environment it will run in.

    ``None`` when the program cannot be cached safely (host callbacks, constants
    that are not arrays).

    Example:
        >>> import jax.numpy as jnp
        >>> f = jax.jit(lambda x: x * 2.0)
        >>> program_key(f.trace(jnp.ones(3))) == program_key(f.trace(jnp.zeros(3)))
        True
    """
    closed = traced.jaxpr
    if _has_callbacks(closed.jaxpr):
        return None
    digest = hashlib.sha256(_environment_digest())
    digest.update(str(closed.jaxpr).encode())
    for const in closed.consts:
        try:
            value = np.asarray(const)
        except Exception:
            return None
        if value.dtype == object:
            return None
        digest.update(f"{value.dtype}{value.shape}".encode())
        digest.update(np.ascontiguousarray(value).tobytes())
    digest.update(repr(traced.in_tree).encode())
    digest.update(repr(traced.out_tree).encode())
    for info in jax.tree.leaves(traced.args_info):
        aval = getattr(info, "_aval", None) or getattr(info, "aval", None)
        digest.update(repr(aval).encode())
        digest.update(repr(getattr(info, "sharding", None)).encode())
    return digest.hexdigest()


def _serialization() -> Any:
    try:
        from jax.experimental import serialize_executable
    except ImportError:  # pragma: no cover - very old JAX
        return None
    return serialize_executable


def call_signature(args: Any) -> tuple | None:
    """Hashable types of ``args``: structure, and shape, dtype, weak type and sharding of
    every leaf with a shape and a dtype (arrays, ``ShapeDtypeStruct``); ``None`` when a
    leaf is a tracer (a call inside another transformation).

    Example:
        >>> import numpy as np
        >>> call_signature({"x": np.zeros((2, 3))}) == call_signature({"x": np.ones((2, 3))})
        True
    """
    leaves, treedef = jax.tree.flatten(args)
    out = []
    for leaf in leaves:
        if isinstance(leaf, jax.core.Tracer):
            return None
        if hasattr(leaf, "shape") and hasattr(leaf, "dtype"):
            out.append(
                (
                    tuple(leaf.shape),
                    str(leaf.dtype),
                    getattr(leaf, "weak_type", False),
                    getattr(leaf, "sharding", None),
                )
            )
        else:
            out.append((type(leaf), np.shape(leaf)))
    return treedef, tuple(out)


class PersistentJit:
    """A jitted function whose compiled executables are also kept on disk.

    Calls with new argument types trace the function, look for an executable
    saved under the program's key (see :func:`program_key`) and load it, or
    lower and compile it and save it. Later calls with the same types run the
    compiled executable directly.

    Args:
        jitted: The ``jax.jit``-wrapped function.
        directory: Where executables are kept; default :func:`executable_cache_dir`
            (``None`` there: plain jitted calls).

    Example:
        >>> import jax.numpy as jnp
        >>> f = PersistentJit(jax.jit(lambda x: x + 1.0), directory=None)
        >>> f(jnp.ones(2)).tolist()
        [2.0, 2.0]
    """

    _UNSET: Any = object()

    def __init__(self, jitted: Callable[..., Any], directory: Path | None = _UNSET) -> None:
        self.jitted = jitted
        self.directory = executable_cache_dir() if directory is self._UNSET else directory
        self._compiled: OrderedDict[tuple, Any] = OrderedDict()
        #: Executables kept in memory, least recently used dropped first (0: all).
        self.max_executables = 0
        #: Signatures already traced by the plain jitted function (no directory).
        self._seen: set[tuple] = set()
        #: Where each executable came from: ``"disk"`` or ``"compiled"``.
        self.sources: list[str] = []

    def __call__(self, *args: Any) -> Any:
        signature = call_signature(args)
        if signature is None:  # traced inside another transformation
            return self.jitted(*args)
        # Programs traced under bfloat16 matrix products differ (`aimz_core._precision`).
        signature = (signature, precision_key())
        if self.directory is None:
            if signature not in self._seen:
                # The first call with new types traces: one thread at a time
                # (see `aimz_core._locks`); later calls run concurrently.
                with TRACE_LOCK:
                    out = self.jitted(*args)
                    self._seen.add(signature)
                return out
            return self.jitted(*args)
        compiled = self._compiled.get(signature)
        if compiled is None:
            with TRACE_LOCK:  # trace, lower and compile once; run outside the lock
                compiled = self._compiled.get(signature)
                if compiled is None:
                    compiled = self._load_or_compile(args)
                    self._compiled[signature] = compiled
                    while 0 < self.max_executables < len(self._compiled):
                        self._compiled.popitem(last=False)
        elif self.max_executables > 0:
            with contextlib.suppress(KeyError):  # dropped by another thread meanwhile
                self._compiled.move_to_end(signature)
        return compiled(*args)

    def executable(self, args: tuple) -> Any | None:
        """The compiled executable kept for arguments like ``args`` (``None`` before
        the first such call, or when executables are not kept: no cache directory).

        Calling it skips the signature lookup of :meth:`__call__`.

        Example:
            >>> import jax.numpy as jnp
            >>> f = PersistentJit(jax.jit(lambda x: x + 1.0), directory=None)
            >>> f.executable((jnp.ones(2),)) is None
            True
        """
        return self._compiled.get((call_signature(args), precision_key()))

    def eval_shape(self, *args: Any) -> Any:
        """Output shapes and dtypes for ``args`` (traces, never compiles)."""
        with TRACE_LOCK:
            return jax.eval_shape(self.jitted, *args)

    def _cache_size(self) -> int:
        return max(len(self._compiled), self.jitted._cache_size())

    def _load_or_compile(self, args: tuple) -> Any:
        module = _serialization()
        traced = self.jitted.trace(*args)
        try:
            key = program_key(traced) if module is not None else None
        except Exception as err:  # an unusual program: compile it, do not cache it
            logger.info("No executable cache key: %s", err)
            key = None
        path = self.directory / f"{key}.bin" if key else None
        if path is not None and path.is_file():
            try:
                payload, in_tree, out_tree, device_ids = pickle.loads(path.read_bytes())
                by_id = {device.id: device for device in jax.devices()}
                compiled = module.deserialize_and_load(
                    payload,
                    in_tree,
                    out_tree,
                    execution_devices=[by_id[i] for i in device_ids],
                )
                self.sources.append("disk")
                _touch(path)
                return compiled
            except Exception as err:  # stale or corrupt entry: compile instead
                logger.info("Removing unusable cached executable %s: %s", path.name, err)
                path.unlink(missing_ok=True)
        if path is None:
            compiled = traced.lower().compile()
            self.sources.append("compiled")
            return compiled
        lowered = traced.lower()
        for options in FRESH_COMPILE_OPTIONS:
            hits = _jax_cache_hits()
            compiled = lowered.compile(compiler_options=options)
            if _jax_cache_hits() == hits:
                self.sources.append("compiled")
                self._save(module, compiled, path)
                return compiled
        # Loaded by JAX's own cache each time: usable, not serializable.
        self.sources.append("jax-cache")
        return compiled

    @staticmethod
    def _save(module: Any, compiled: Any, path: Path) -> None:
        try:
            # The devices it runs on, in order: loading onto every device of the
            # process would turn a one-device executable into a four-device one.
            devices = [device.id for device in compiled.runtime_executable().local_devices()]
            blob = pickle.dumps(
                (*module.serialize(compiled), devices), protocol=pickle.HIGHEST_PROTOCOL
            )
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".bin")
            try:
                with os.fdopen(fd, "wb") as f:
                    f.write(blob)
                os.replace(tmp, path)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
            evict_executables(path.parent, executable_cache_bytes(), keep=path)
        except Exception as err:  # not serializable, read-only disk: keep it in memory
            logger.info("Executable not saved to %s: %s", path.parent, err)


def _touch(path: Path) -> None:
    """Mark a cache entry as used (eviction goes by modification time)."""
    with contextlib.suppress(OSError):  # read-only cache: order is only a preference
        os.utime(path)


__all__ = [
    # JAX's persistent compilation cache
    "default_cache_dir",
    "enabled_by_env",
    "ensure_compilation_cache",
    # the executable cache
    "FORMAT_VERSION",
    "FRESH_COMPILE_OPTIONS",
    "DEFAULT_EXECUTABLE_CACHE_BYTES",
    "PersistentJit",
    "call_signature",
    "evict_executables",
    "executable_cache_bytes",
    "executable_cache_dir",
    "program_key",
]
