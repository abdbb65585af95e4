"""Opt-in: the GpuBackend contract against a real GPU through NVML (marked `gpu`).

Skipped unless NVML loads and sees a GPU. Setter checks change clocks and power limits
and restore them; run on a machine you may reconfigure (needs root or CAP_SYS_ADMIN).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from tests.unit.gpu import contract
from triserve.gpu.backend import GpuBackend

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module")
def nvml() -> Iterator[GpuBackend]:
    try:
        from triserve.gpu.nvml import NvmlBackend

        b = NvmlBackend()
        if b.device_count() == 0:
            pytest.skip("NVML sees no GPU")
    except Exception as exc:  # no driver, no library
        pytest.skip(f"NVML unavailable: {exc}")
    yield b
    b.close()


@pytest.mark.parametrize(
    "check", contract.READ_CHECKS + contract.WRITE_CHECKS, ids=lambda c: c.__name__
)
def test_nvml_contract(nvml: GpuBackend, check: Callable[[GpuBackend, int], None]) -> None:
    check(nvml, 0)
