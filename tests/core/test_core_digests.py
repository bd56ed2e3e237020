"""Digests of what an output depends on: hashed in place, they keep the values a
``tobytes`` copy gave (stores started earlier stay resumable), and the posterior
digest a store records still tells posteriors apart."""

from __future__ import annotations

import hashlib

import numpy as np
from aimz_core.streaming.plan import _digest
from aimz_core.streaming.sinks import DIGEST_BYTES, posterior_digest


def _copied(values):
    h = hashlib.sha256()
    for name in sorted(values):
        arr = np.ascontiguousarray(np.asarray(values[name]))
        h.update(f"{name}:{arr.dtype.str}:{arr.shape};".encode())
        h.update(arr.tobytes())
    return h.hexdigest()


def test_the_plan_digest_reads_values_in_place_with_the_same_result():
    rng = np.random.default_rng(0)
    values = {
        "w": rng.normal(size=(3, 4)).astype(np.float32),
        "scalar": np.float32(2.0),
        "mask": np.arange(5) > 2,
        "strided": rng.normal(size=(4, 6))[:, ::2],
        "empty": np.zeros((0, 3)),
    }
    assert _digest(values) == _copied(values)
    changed = dict(values, strided=values["strided"] + 1e-12)
    assert _digest(changed) != _digest(values)


def test_the_posterior_digest_tells_large_sites_apart():
    rng = np.random.default_rng(1)
    w = rng.normal(size=(4 * DIGEST_BYTES // 4 + 7,)).astype(np.float32)  # sampled
    refit = w + np.float32(1e-3)
    assert posterior_digest({"w": w}) == posterior_digest({"w": w.copy()})
    assert posterior_digest({"w": w}) != posterior_digest({"w": refit})
