"""Kernels of the distributed tests, importable by Dask worker processes by name."""

from __future__ import annotations

from aimz_core import ImpactModel
from aimz_core.testing import fitted_linreg

N_DRAWS = 30


def fitted_model(num_draws: int = N_DRAWS) -> ImpactModel:
    """A linear regression with a fixed synthetic posterior (no fitting needed)."""
    return fitted_linreg(num_draws=num_draws, seed=0)


def set_fault_hook(hook) -> None:
    """Install ``hook`` as the distributed runner's test hook (run on every worker)."""
    from aimz_io import distributed

    distributed._FAULT_HOOK = hook


def fail_on_region(failing: int):
    """A hook that raises in region ``failing`` after its data is written."""

    def hook(i: int) -> None:
        if i == failing:
            raise OSError(f"injected failure in region {i}")

    return hook


def kill_on_region(killing: int):
    """A hook that SIGKILLs its own process in region ``killing`` (a lost worker)."""

    def hook(i: int) -> None:
        if i == killing:
            import os
            import signal

            os.kill(os.getpid(), signal.SIGKILL)

    return hook


def warm_up() -> None:
    """Import JAX, NumPyro and aimz on a worker (run in the background by the tests)."""
    import aimz_io.distributed  # noqa: F401
