"""The read-only state :class:`~aimz_core.ImpactModel` exposes as properties."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
from numpyro.infer import MCMC, SVI
from numpyro.infer.svi import SVIRunResult

from aimz_core import _fit
from aimz_core.kernel_spec import KernelSpec


class ModelProperties:
    """Properties of :class:`~aimz_core.ImpactModel` (its constructor sets the fields)."""

    _kernel: Callable
    _inference: Any
    _param_input: str
    _param_output: str
    _kernel_spec: KernelSpec | None
    _posterior: dict[str, Any] | None
    _rng_key: jax.Array
    _temp_dir: Any
    _vi_result: SVIRunResult | None

    @property
    def kernel(self) -> Callable:
        """The NumPyro kernel.

        Example:
            >>> from aimz_core.testing import linreg, make_model
            >>> make_model().kernel is linreg
            True
        """
        return self._kernel

    @property
    def inference(self) -> SVI | MCMC:
        """The inference object (``SVI`` or ``MCMC``).

        Example:
            >>> from aimz_core.testing import make_model
            >>> type(make_model().inference).__name__
            'SVI'
        """
        return self._inference

    @property
    def param_input(self) -> str:
        """Name of the kernel's input parameter.

        Example:
            >>> from aimz_core.testing import make_model
            >>> make_model().param_input
            'X'
        """
        return self._param_input

    @property
    def param_output(self) -> str:
        """Name of the kernel's output parameter and site.

        Example:
            >>> from aimz_core.testing import make_model
            >>> make_model().param_output
            'y'
        """
        return self._param_output

    @property
    def kernel_spec(self) -> KernelSpec | None:
        """Sites discovered by tracing the kernel (``None`` before any trace).

        Example:
            >>> from aimz_core.testing import make_model
            >>> make_model().kernel_spec is None
            True
        """
        return self._kernel_spec

    @property
    def posterior(self) -> dict[str, Any] | None:
        """Posterior samples (flattened draw axis first); treat as read-only.

        Example:
            >>> from aimz_core.testing import fitted_linreg
            >>> {k: v.shape for k, v in fitted_linreg(num_draws=10).posterior.items()}
            {'w': (10, 2), 'b': (10,), 'sigma': (10,)}
        """
        return self._posterior

    @property
    def rng_key(self) -> jax.Array:
        """The model's current internal PRNG key (a call without ``rng_key`` splits it).

        Example:
            >>> import jax
            >>> from aimz_core.testing import make_model
            >>> jax.random.key_data(make_model(seed=3).rng_key).tolist()
            [0, 3]
        """
        return self._rng_key

    @property
    def temp_dir(self) -> str | None:
        """Path of the model-owned temporary output directory, if one exists.

        Example:
            >>> from aimz_core.testing import make_model
            >>> make_model().temp_dir is None  # created by the first streamed call
            True
        """
        return None if self._temp_dir is None else self._temp_dir.name

    @property
    def vi_result(self) -> SVIRunResult | None:
        """Result of the last SVI fit (params, state, losses); training continues from
        the state of a result set here (a warm start).

        Example:
            >>> from aimz_core.testing import make_model
            >>> make_model().vi_result is None
            True
        """
        return self._vi_result

    @vi_result.setter
    def vi_result(self, value: SVIRunResult | None) -> None:
        _fit.set_vi_result(self, value)


__all__ = ["ModelProperties"]
