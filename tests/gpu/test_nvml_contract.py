"""Opt-in: the GpuBackend contract against a real GPU through NVML (marked `gpu`).

The only run of the contract against NvmlBackend (tests/unit/sim/test_backend_contract.py
runs it against the simulator). Skipped without `--with-gpu` (tests/gpu/conftest.py), and
with it where NVML or a GPU is missing. Setter checks change clocks and power limits and
restore them; run on a machine you may reconfigure (needs root or CAP_SYS_ADMIN):

    .venv/bin/pytest tests/gpu --with-gpu --no-cov
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from tests.unit.gpu import contract
from triserve.gpu.backend import GpuBackend, GpuUnavailableError

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module")
def nvml() -> Iterator[GpuBackend]:
    # Only "no NVML or no GPU here" skips: pynvml missing (ImportError), its shared library
    # failing to load (OSError), or NVML reporting library/driver/GPU not found, which
    # NvmlBackend maps to GpuUnavailableError. Any other error is a bug and fails the test.
    try:
        from triserve.gpu.nvml import NvmlBackend

        backend = NvmlBackend()
    except (ImportError, OSError, GpuUnavailableError) as exc:
        pytest.skip(f"NVML unavailable: {exc}")
    try:
        if backend.device_count() == 0:
            pytest.skip("NVML loaded but sees no GPU")
        yield backend
    finally:
        backend.close()


@pytest.mark.parametrize(
    "check", contract.READ_CHECKS + contract.WRITE_CHECKS, ids=lambda c: c.__name__
)
def test_nvml_contract(nvml: GpuBackend, check: Callable[[GpuBackend, int], None]) -> None:
    check(nvml, 0)
