"""The GpuBackend contract suite, run against SimBackend (and NvmlBackend when a GPU exists)."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from triserve.gpu.backend import GpuBackend
from triserve.sim import Simulation, load_scenario

from . import contract

CHECKS = contract.READ_CHECKS + contract.WRITE_CHECKS


def _nvml_backend() -> GpuBackend | None:
    try:
        from triserve.gpu.nvml import NvmlBackend

        b = NvmlBackend()
        return b if b.device_count() > 0 else None
    except Exception:
        return None


@pytest.fixture(params=["sim", "nvml"])
def backend(request: pytest.FixtureRequest) -> Iterator[GpuBackend]:
    if request.param == "sim":
        sim = Simulation(load_scenario("reference"), seed=0)
        sim.run_until(5.0)
        yield sim.backend
        return
    b = _nvml_backend()
    if b is None:
        pytest.skip("no NVML / GPU on this machine")
    yield b


@pytest.mark.parametrize("check", CHECKS, ids=lambda c: c.__name__)
def test_backend_contract(backend: GpuBackend, check: Callable[[GpuBackend, int], None]) -> None:
    if check in contract.WRITE_CHECKS and type(backend).__name__ == "NvmlBackend":
        pytest.skip("setters on a real GPU run only in tests/gpu (opt-in)")
    check(backend, 0)
