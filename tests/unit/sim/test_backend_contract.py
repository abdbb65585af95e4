"""The GpuBackend contract (tests/unit/gpu/contract.py) against SimBackend.

NvmlBackend runs the same checks in tests/gpu, opt-in.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from tests.unit.gpu import contract
from triserve.gpu.backend import GpuBackend
from triserve.sim import Simulation, load_scenario


@pytest.fixture
def backend() -> GpuBackend:
    sim = Simulation(load_scenario("reference"), seed=0)
    sim.run_until(5.0)
    return sim.backend


@pytest.mark.parametrize(
    "check", contract.READ_CHECKS + contract.WRITE_CHECKS, ids=lambda c: c.__name__
)
def test_sim_backend_contract(
    backend: GpuBackend, check: Callable[[GpuBackend, int], None]
) -> None:
    check(backend, 0)
