"""Device profiles: datasheet values plus the physical constants of the simulated GPU.

Called by `triserve.sim.physics` (which turns a profile into power, clock and temperature
behaviour), by `triserve.sim.scenario` (scenario files name a profile) and by
`triserve.sim.backend.SimBackend` (identity, clock list, power-limit range, thresholds).

Datasheet columns are public datasheet and `nvidia-smi -q` values (docs/calibration.md).
`bare_idle_w` and `context_idle_w` are the idle powers measured without and with a CUDA
context resident (arXiv 2605.23918 for H100 SXM, A100 and L40S; the other profiles state
their assumption in docs/calibration.md). The static and clock-tree power are not free
constants: `fit_idle` solves them from those two figures (and the scenario's parked share),
so every profile idles at its published powers. The remaining physical constants (dynamic,
leakage and memory power, the voltage knee, thermal resistance and capacitance) are not
published; they are chosen so that the H100 SXM profile reproduces the published busy
anchors (decode ≈380 W, compute-bound work pinned at the 700 W limit) and are frozen by
tests/unit/sim/test_calibration.py. Other profiles scale them by power limit.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from triserve.gpu.idle_powers import IdlePowers, published_idle_powers

__all__ = ["PROFILES", "DeviceProfile", "get_profile"]


@dataclass(frozen=True, slots=True)
class DeviceProfile:
    """One GPU model: datasheet values and simulator physics constants (units in names)."""

    key: str
    name: str
    min_clock_mhz: int
    max_clock_mhz: int
    step_mhz: int
    idle_clock_mhz: int
    mem_clock_mhz: int
    power_limit_min_w: float
    power_limit_default_w: float
    power_limit_max_w: float
    mem_bandwidth_bytes_per_s: float
    peak_bf16_flops_per_s: float
    shutdown_c: float
    slowdown_c: float
    max_operating_c: float
    #: Idle power without a CUDA context (lowest P-state, idle clock) and with one resident
    #: (the driver holds its boost state while the context lives), in W.
    bare_idle_w: float
    context_idle_w: float
    # Whether NVML on a current driver reports thermal limits as T.Limit offsets.
    tlimit_offsets: bool
    # --- physics constants (not published; calibrated, see module docstring) ---
    mem_idle_w: float
    mem_bw_w: float
    dynamic_w: float
    leak_ref_w: float
    leak_per_c: float
    v_min: float
    v_knee_mhz: int
    thermal_r_c_per_w: float
    thermal_tau_s: float
    # Share of dynamic power drawn by an SM busy on non-tensor work (tensor work draws 1.0).
    dyn_base_frac: float = 0.15
    # Share of dynamic power drawn by SMs streaming memory (load/store, L2) while stalled on
    # it: memory-bound decode is not idle silicon (calibrated to the decode anchors).
    dyn_stream_frac: float = 0.2
    # --- counters (docs/calibration.md, "What the activity counters measure") ---
    # Dense non-tensor FP32 peak at the max clock (datasheet), for PIPE_FP32_ACTIVE.
    peak_fp32_flops_per_s: float = 67e12
    # GPM (NVML GPU performance monitoring) exists on Hopper and newer only.
    has_gpm: bool = True
    # NVML utilisation sample period: documented as 1/6 s to 1 s depending on the product,
    # not published per product; 1/6 s is the default, a scenario can override it.
    util_period_s: float = 1.0 / 6.0
    # DRAM_ACTIVE of a kernel that saturates memory bandwidth (DCGM: about 0.8 in practice).
    dram_active_max: float = 0.8

    @property
    def supported_clocks_mhz(self) -> tuple[int, ...]:
        """Every SM clock the device accepts, ascending (min … max in `step_mhz`)."""
        clocks = list(range(self.min_clock_mhz, self.max_clock_mhz + 1, self.step_mhz))
        if clocks[-1] != self.max_clock_mhz:
            clocks.append(self.max_clock_mhz)
        return tuple(clocks)

    @property
    def thermal_c_j_per_c(self) -> float:
        """Heat capacity (J/°C) giving the profile's thermal time constant."""
        return self.thermal_tau_s / self.thermal_r_c_per_w


def _published(name: str) -> IdlePowers:
    powers = published_idle_powers(name)
    assert powers is not None, name
    return powers


_H100 = _published("NVIDIA H100 80GB HBM3")
_A100 = _published("NVIDIA A100-SXM4-80GB")
_L40S = _published("NVIDIA L40S")

_H100_SXM = DeviceProfile(
    key="h100-sxm",
    name="NVIDIA H100 80GB HBM3",
    min_clock_mhz=345,
    max_clock_mhz=1980,
    step_mhz=15,
    idle_clock_mhz=345,
    mem_clock_mhz=2619,
    power_limit_min_w=200.0,
    power_limit_default_w=700.0,
    power_limit_max_w=700.0,
    mem_bandwidth_bytes_per_s=3.35e12,
    peak_bf16_flops_per_s=989e12,
    shutdown_c=92.0,
    slowdown_c=89.0,
    max_operating_c=87.0,
    bare_idle_w=_H100.bare_w,
    context_idle_w=_H100.context_w,
    tlimit_offsets=False,
    mem_idle_w=20.0,
    mem_bw_w=110.0,
    dynamic_w=760.0,
    leak_ref_w=30.0,
    leak_per_c=0.012,
    v_min=0.68,
    v_knee_mhz=1000,
    thermal_r_c_per_w=0.065,
    thermal_tau_s=30.0,
)


def _scaled(
    base: DeviceProfile, power_scale: float, idle_scale: float, **kw: object
) -> DeviceProfile:
    """A profile derived from `base`: power terms scaled by TDP, idle terms by idle power."""
    derived = replace(
        base,
        mem_idle_w=base.mem_idle_w * idle_scale,
        leak_ref_w=base.leak_ref_w * idle_scale,
        dynamic_w=base.dynamic_w * power_scale,
        mem_bw_w=base.mem_bw_w * power_scale,
        thermal_r_c_per_w=base.thermal_r_c_per_w / power_scale,
    )
    return replace(derived, **kw)  # type: ignore[arg-type]


PROFILES: dict[str, DeviceProfile] = {
    "h100-sxm": _H100_SXM,
    "h100-pcie": _scaled(
        _H100_SXM,
        350 / 700,
        0.8,
        key="h100-pcie",
        name="NVIDIA H100 PCIe",
        min_clock_mhz=210,
        max_clock_mhz=1755,
        idle_clock_mhz=210,
        mem_clock_mhz=1593,
        power_limit_min_w=200.0,
        power_limit_default_w=350.0,
        power_limit_max_w=350.0,
        mem_bandwidth_bytes_per_s=2.0e12,
        peak_bf16_flops_per_s=756e12,
        peak_fp32_flops_per_s=51e12,
        # Not published: bare idle from public nvidia-smi readings (≈60 W); the context
        # premium assumed to be H100 SXM's scaled by TDP (docs/calibration.md).
        bare_idle_w=60.0,
        context_idle_w=60.0 + _H100.premium_w * 350 / 700,
    ),
    "h200": _scaled(
        _H100_SXM,
        1.0,
        1.0,
        key="h200",
        name="NVIDIA H200",
        mem_clock_mhz=3201,
        mem_bandwidth_bytes_per_s=4.8e12,
        # Not published separately: the H100 SXM figures (same die, board and limit).
        tlimit_offsets=True,
    ),
    "a100-sxm-80gb": _scaled(
        _H100_SXM,
        400 / 700,
        52 / 75,
        key="a100-sxm-80gb",
        name="NVIDIA A100-SXM4-80GB",
        min_clock_mhz=210,
        max_clock_mhz=1410,
        idle_clock_mhz=210,
        mem_clock_mhz=1593,
        power_limit_min_w=100.0,
        power_limit_default_w=400.0,
        power_limit_max_w=400.0,
        mem_bandwidth_bytes_per_s=2.04e12,
        peak_bf16_flops_per_s=312e12,
        peak_fp32_flops_per_s=19.5e12,
        has_gpm=False,
        max_operating_c=85.0,
        bare_idle_w=_A100.bare_w,
        context_idle_w=_A100.context_w,
        v_knee_mhz=750,
    ),
    "l40s": _scaled(
        _H100_SXM,
        350 / 700,
        36 / 75,
        key="l40s",
        name="NVIDIA L40S",
        min_clock_mhz=210,
        max_clock_mhz=2520,
        idle_clock_mhz=210,
        mem_clock_mhz=9001,
        power_limit_min_w=150.0,
        power_limit_default_w=350.0,
        power_limit_max_w=350.0,
        mem_bandwidth_bytes_per_s=864e9,
        peak_bf16_flops_per_s=362e12,
        peak_fp32_flops_per_s=91.6e12,
        has_gpm=False,
        shutdown_c=93.0,
        slowdown_c=90.0,
        max_operating_c=88.0,
        bare_idle_w=_L40S.bare_w,
        context_idle_w=_L40S.context_w,
        tlimit_offsets=True,
        v_knee_mhz=1300,
    ),
}


def get_profile(key: str) -> DeviceProfile:
    """The profile named `key` (e.g. ``h100-sxm``); KeyError lists the known names."""
    try:
        return PROFILES[key]
    except KeyError:
        known = ", ".join(sorted(PROFILES))
        raise KeyError(f"unknown GPU profile {key!r}; known profiles: {known}") from None
