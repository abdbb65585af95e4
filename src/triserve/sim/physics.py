"""GPU physics: roofline throughput, power, thermal RC, the PMU and NVML-like actuation.

`GpuModel` is one simulated GPU. `triserve.sim.simulation.Simulation` gives it the phase it is
running (or None when idle) at every event and advances it through time; the calibration
tests drive it directly. Nothing here knows about requests or stages.

Model (docs/calibration.md):
- a `Phase` is a round-robin of `Kernel`s; a kernel's roofline time at SM clock f (MHz) is
  ``max(flops / (η·f), bytes / β)`` with η = peak FLOP/s x kernel efficiency / max clock;
  a clock-sensitive share s of its time at the boost clock (launches, synchronisation,
  element-wise work that does not overlap memory traffic) scales with 1/f instead, so
  ``t(f) = (1 - s)·roofline(f) + s·roofline(f_max)·f_max / f``: memory-bound decode costs a
  few percent of latency below and somewhat above the ridge, as measured on hardware;
- power = static + leakage(V, T) + clock tree ∝ V²·f + dynamic ∝ activity·V²·f
  + memory ∝ bandwidth used + the high performance state's fixed premium, V rising linearly
  above a knee clock; static, clock tree and premium are solved by `fit_idle` from the
  profile's published bare and context idle powers;
- temperature follows ``C·dT/dt = P - (T - T_amb)/R``, solved in closed form per segment;
- the PMU boosts to max clock when busy. Idle with a CUDA context resident it holds the boost
  state for as long as the context lives (arXiv 2605.23918); without a context, or with
  ``CUDA_DISABLE_PERF_BOOST=1`` (``perf_boost=False``), it holds the clock for `idle_hold_s`
  and then drops to the idle clock and the lowest performance state (bare idle power). It
  cuts the clock to stay under the power limit and, above the slowdown temperature, to the
  power the cooling can sustain;
- a clock lock is a floor/ceiling on the PMU's choice; power and thermal still cut below it.
  A GPU locked at a low clock stays in its high performance state: it keeps the share
  `parked_share` of the context premium that does not scale with the SM clock (not
  published; a scenario parameter, swept by the bench);
- a forced low performance state (`force_low_pstate`, what nvidia-pstated sets) caps the
  clock at the idle clock and draws bare-idle power until it is lifted, busy or not.
Clock changes requested by the PMU or a lock take effect after `clock_change_latency_s`;
power and thermal cuts are immediate. Activity counters (`triserve.sim.counters`) are
integrated per segment and sampled at fixed collection boundaries.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from triserve.gpu.backend import ClockEventReason
from triserve.sim.counters import (
    IDLE_COUNTERS,
    N_COUNTERS,
    PeriodTrack,
    Snapshot,
)
from triserve.sim.profiles import DeviceProfile

__all__ = ["GpuModel", "IdleFit", "Kernel", "OperatingPoint", "Phase", "fit_idle"]


@dataclass(frozen=True, slots=True)
class Kernel:
    """One unit of GPU work and how it occupies the GPU.

    `sm_fill` is the share of SMs holding at least one warp while it runs (big GEMMs and
    weight-streaming GEMVs fill every SM; a tiny attention grid does not), `occupancy` the
    resident warps per SM over the maximum on those SMs, and `clock_share` the share of its
    boost-clock time that scales with 1/f regardless of the roofline.
    """

    flops: float
    bytes: float
    efficiency: float
    tensor_share: float
    sm_fill: float = 1.0
    occupancy: float = 0.5
    clock_share: float = 0.0

    @property
    def ai(self) -> float:
        """Arithmetic intensity in FLOP/byte."""
        return self.flops / self.bytes if self.bytes > 0 else math.inf


@dataclass(frozen=True, slots=True)
class OperatingPoint:
    """A phase evaluated at one clock: round time, power inputs and counter rates.

    `counters` are the documented counter meanings (order `triserve.sim.counters.
    COUNTER_NAMES`); `ideal` the older identities kept for ``counters: ideal``.
    `mem_frac` (bandwidth actually used) and `power_activity` drive the power model.
    """

    round_s: float
    mem_frac: float
    power_activity: float
    counters: tuple[float, ...]
    ideal: tuple[float, ...]

    @property
    def sm_active(self) -> float:
        """SM_ACTIVE: share of cycles an SM holds a warp."""
        return self.counters[1]

    @property
    def dram_active(self) -> float:
        """DRAM_ACTIVE: achieved bandwidth share (tops out near 0.8)."""
        return self.counters[5]

    @property
    def tensor_active(self) -> float:
        """PIPE_TENSOR_ACTIVE: achieved over peak tensor FLOP/s at the current clock."""
        return self.counters[3]


@dataclass(slots=True, eq=False)
class Phase:
    """What a GPU runs between two events: kernels executed round-robin, and a kind label.

    `kind` is one of ``prefill``, ``decode``, ``oneshot`` (for reports and the oracle).
    """

    kind: str
    kernels: tuple[Kernel, ...]
    _cache: dict[int, OperatingPoint] = field(default_factory=dict)

    @property
    def ai(self) -> float:
        """Aggregate arithmetic intensity of one round (FLOP/byte)."""
        flops = sum(k.flops for k in self.kernels)
        nbytes = sum(k.bytes for k in self.kernels)
        return flops / nbytes if nbytes > 0 else math.inf

    def at(self, profile: DeviceProfile, clock_mhz: int) -> OperatingPoint:
        """Round time, power inputs and counters of this phase at `clock_mhz` on `profile`."""
        op = self._cache.get(clock_mhz)
        if op is None:
            op = self._cache[clock_mhz] = _operating_point(self.kernels, profile, clock_mhz)
        return op


def _operating_point(
    kernels: tuple[Kernel, ...], profile: DeviceProfile, clock_mhz: int
) -> OperatingPoint:
    fmax = profile.max_clock_mhz
    peak_per_mhz = profile.peak_bf16_flops_per_s / fmax
    fp32_per_mhz = profile.peak_fp32_flops_per_s / fmax
    bw = profile.mem_bandwidth_bytes_per_s
    base = profile.dyn_base_frac
    total_s = comp_s = mem_tot_s = ideal_tensor_s = act_s = 0.0
    fill_s = occ_s = tensor_flops = other_flops = 0.0
    for k in kernels:
        compute_s = k.flops / (peak_per_mhz * k.efficiency * clock_mhz)
        mem_s = k.bytes / bw
        t = max(compute_s, mem_s)
        clocked_s = 0.0
        if k.clock_share > 0:
            boost_s = max(k.flops / (peak_per_mhz * k.efficiency * fmax), mem_s)
            clocked_s = k.clock_share * boost_s * fmax / clock_mhz
            t = (1.0 - k.clock_share) * t + clocked_s
        total_s += t
        comp_s += compute_s
        mem_tot_s += mem_s
        ideal_tensor_s += compute_s * k.tensor_share
        busy_compute_s = min(compute_s, t - clocked_s)
        # SMs that only issue loads and wait on memory draw less than computing ones.
        stream_s = max(min(mem_s, t - clocked_s) - busy_compute_s, 0.0)
        act_s += (
            busy_compute_s * (base + (1.0 - base) * k.tensor_share)
            + clocked_s * base
            + stream_s * profile.dyn_stream_frac
        )
        fill_s += t * k.sm_fill
        occ_s += t * k.sm_fill * k.occupancy
        tensor_flops += k.flops * k.tensor_share
        other_flops += k.flops * (1.0 - k.tensor_share)
    if total_s <= 0:
        return OperatingPoint(0.0, 0.0, 0.0, IDLE_COUNTERS, IDLE_COUNTERS)
    mem_frac = min(mem_tot_s / total_s, 1.0)
    tensor = min(tensor_flops / (total_s * peak_per_mhz * clock_mhz), 1.0)
    fp32 = min(other_flops / (total_s * fp32_per_mhz * clock_mhz), 1.0)
    counters = (
        1.0,
        fill_s / total_s,
        occ_s / total_s,
        tensor,
        fp32,
        profile.dram_active_max * mem_frac,
    )
    sm_ideal = min(comp_s / total_s, 1.0)
    ideal = (
        1.0,
        sm_ideal,
        sm_ideal,
        min(ideal_tensor_s / total_s, 1.0),
        min((comp_s - ideal_tensor_s) / total_s, 1.0),
        mem_frac,
    )
    return OperatingPoint(total_s, mem_frac, min(act_s / total_s, 1.0), counters, ideal)


_IDLE_POINT = OperatingPoint(0.0, 0.0, 0.0, IDLE_COUNTERS, IDLE_COUNTERS)


def _voltage(p: DeviceProfile, clock_mhz: float) -> float:
    if clock_mhz <= p.v_knee_mhz:
        return p.v_min
    span = p.max_clock_mhz - p.v_knee_mhz
    return p.v_min + (1.0 - p.v_min) * (clock_mhz - p.v_knee_mhz) / span


def _leak_w(p: DeviceProfile, volts: float, temperature_c: float) -> float:
    return p.leak_ref_w * volts * math.exp(p.leak_per_c * (temperature_c - 25.0))


@dataclass(frozen=True, slots=True)
class IdleFit:
    """The idle power terms of one profile at one parked share (W): see `fit_idle`."""

    static_w: float
    clock_tree_w: float
    p0_premium_w: float


def fit_idle(p: DeviceProfile, parked_share: float) -> IdleFit:
    """Static, clock-tree and fixed high-state power that reproduce the published idle powers.

    Two published figures per profile (`bare_idle_w`: lowest performance state at the idle
    clock; `context_idle_w`: boost state held at the max clock with a context resident),
    each at its equilibrium temperature at 25 °C inlet. The context premium splits into a
    part that scales with V²·f (the clock tree) and a fixed part that stays while the GPU is
    in its high performance state at any SM clock: `parked_share` of the premium. Raises
    ValueError naming ``pmu.parked_share`` when the leakage change alone leaves no room.
    """
    premium_w = p.context_idle_w - p.bare_idle_w
    v_idle = _voltage(p, p.idle_clock_mhz)
    g_idle = v_idle * v_idle * p.idle_clock_mhz / p.max_clock_mhz
    t_bare_c = 25.0 + p.thermal_r_c_per_w * p.bare_idle_w
    t_ctx_c = 25.0 + p.thermal_r_c_per_w * p.context_idle_w
    leak_rise_w = _leak_w(p, 1.0, t_ctx_c) - _leak_w(p, v_idle, t_bare_c)
    most = 1.0 - leak_rise_w / premium_w if premium_w > 0 else 0.0
    if not 0.0 <= parked_share <= most + 1e-9:
        raise ValueError(
            f"pmu.parked_share {parked_share:g} is out of range for {p.key}: the fixed share "
            f"of its {premium_w:.1f} W context premium must lie in [0, {max(most, 0.0):.2f}] "
            "(the rest is leakage and clock-tree power that falls with the clock)"
        )
    clock_tree_w = ((1.0 - parked_share) * premium_w - leak_rise_w) / (1.0 - g_idle)
    static_w = p.bare_idle_w - p.mem_idle_w - _leak_w(p, v_idle, t_bare_c) - clock_tree_w * g_idle
    return IdleFit(static_w, max(clock_tree_w, 0.0), parked_share * premium_w)


class GpuModel:
    """One simulated GPU: clock, power, temperature, energy and the PMU's decisions."""

    def __init__(
        self,
        profile: DeviceProfile,
        *,
        ambient_c: float = 25.0,
        thermal_r_scale: float = 1.0,
        idle_hold_s: float = 1.5,
        clock_change_latency_s: float = 0.02,
        initial_temperature_c: float | None = None,
        ideal_counters: bool = False,
        context_resident: bool = True,
        perf_boost: bool = True,
        parked_share: float = 0.35,
    ) -> None:
        self.profile = profile
        self.idle_fit = fit_idle(profile, parked_share)
        # A serving engine keeps its CUDA context for its whole life; with perf boost on
        # (the driver default) the idle GPU then holds its boost state indefinitely.
        self.context_resident = context_resident
        self.perf_boost = perf_boost
        self.low_pstate = not (context_resident and perf_boost)
        self.forced_low_pstate = False
        self.ambient_c = ambient_c
        self.r_c_per_w = profile.thermal_r_c_per_w * thermal_r_scale
        self.c_j_per_c = profile.thermal_c_j_per_c
        self.idle_hold_s = idle_hold_s
        self.clock_change_latency_s = clock_change_latency_s
        self.clocks_mhz = profile.supported_clocks_mhz
        self.clock_mhz = profile.idle_clock_mhz if self.low_pstate else profile.max_clock_mhz
        self.power_limit_w = profile.power_limit_default_w
        self.lock: tuple[int, int] | None = None
        self.phase: Phase | None = None
        self.busy_since_s: float | None = None
        self.idle_since_s = 0.0
        self.pending: tuple[float, int] | None = None
        self.thermal_active = False
        self.reasons = ClockEventReason.GPU_IDLE
        self.energy_j = 0.0
        self.now_s = 0.0
        # Cumulative counter integrals (order `counters.COUNTER_NAMES`), the rates they grow
        # at now, and the fixed-period collections (NVML utilisation, dcgm-exporter) fed
        # from them.
        self.ideal_counters = ideal_counters
        self.integrals_s = [0.0] * N_COUNTERS
        self.rates: tuple[float, ...] = IDLE_COUNTERS
        self.tracks: dict[str, PeriodTrack] = {}
        self.point = _IDLE_POINT
        if initial_temperature_c is None:
            # Start at the idle equilibrium so short runs are not dominated by warm-up.
            t = ambient_c
            for _ in range(20):
                t = ambient_c + self.r_c_per_w * self.power_at(self.clock_mhz, None, t)
            initial_temperature_c = t
        self.temperature_c = initial_temperature_c
        self.power_w = self.power_at(self.clock_mhz, None, self.temperature_c)

    # ----------------------------------------------------------------- physics
    def voltage(self, clock_mhz: float) -> float:
        """Normalised core voltage (1.0 at max clock), flat below the knee."""
        return _voltage(self.profile, clock_mhz)

    def power_at(self, clock_mhz: int, phase: Phase | None, temperature_c: float) -> float:
        """Board power in W at `clock_mhz` running `phase` (None = idle) at a temperature.

        In the performance state the GPU is in now (`low_pstate`).
        """
        p = self.profile
        fit = self.idle_fit
        op = phase.at(p, clock_mhz) if phase is not None else _IDLE_POINT
        v = _voltage(p, clock_mhz)
        v2f = v * v * clock_mhz / p.max_clock_mhz
        return (
            fit.static_w
            + (0.0 if self.low_pstate else fit.p0_premium_w)
            + p.mem_idle_w
            + p.mem_bw_w * op.mem_frac
            + _leak_w(p, v, temperature_c)
            + fit.clock_tree_w * v2f
            + p.dynamic_w * op.power_activity * v2f
        )

    def advance(self, dt_s: float) -> None:
        """Move time forward by `dt_s` with the current clock and phase held constant."""
        if dt_s <= 0:
            return
        p_w = self.power_w
        t_inf = self.ambient_c + p_w * self.r_c_per_w
        decay = math.exp(-dt_s / (self.r_c_per_w * self.c_j_per_c))
        now_s, ints, rates = self.now_s, self.integrals_s, self.rates
        for track in self.tracks.values():
            if now_s + dt_s >= track.next_boundary_s() - 1e-9:
                track.cross(
                    now_s, dt_s, ints, rates, self.energy_j, p_w, self.clock_mhz, self.temperature_c
                )
        if rates is not IDLE_COUNTERS:
            for i in range(N_COUNTERS):
                ints[i] += rates[i] * dt_s
        self.energy_j += p_w * dt_s
        self.temperature_c = t_inf + (self.temperature_c - t_inf) * decay
        self.now_s = now_s + dt_s

    def add_track(self, name: str, period_s: float) -> PeriodTrack:
        """Start collecting counter snapshots every `period_s` under `name` (from now)."""
        start = Snapshot(
            self.now_s,
            tuple(self.integrals_s),
            self.energy_j,
            self.clock_mhz,
            self.power_w,
            self.temperature_c,
        )
        track = PeriodTrack(period_s, start)
        track.index = math.floor(self.now_s / period_s + 1e-9)
        self.tracks[name] = track
        return track

    def time_to_temperature_s(self, target_c: float) -> float:
        """Time until the temperature reaches `target_c` at the current power (inf if never)."""
        t_inf = self.ambient_c + self.power_w * self.r_c_per_w
        t0 = self.temperature_c
        if (t0 - target_c) * (t_inf - target_c) >= 0:
            return math.inf
        tau = self.r_c_per_w * self.c_j_per_c
        return -tau * math.log((target_c - t_inf) / (t0 - t_inf))

    # --------------------------------------------------------------------- PMU
    def set_phase(self, phase: Phase | None) -> None:
        """Tell the GPU what it runs from now on (None = idle); call `update_clock` after."""
        if phase is None and self.phase is not None:
            self.idle_since_s = self.now_s
        self.phase = phase

    def _snap_down(self, clock_mhz: float) -> int:
        """Highest supported clock ≤ `clock_mhz` (the minimum if none)."""
        best = self.clocks_mhz[0]
        for c in self.clocks_mhz:
            if c <= clock_mhz:
                best = c
            else:
                break
        return best

    def _ceiling_for_power(self, budget_w: float, upper_mhz: int) -> int:
        """Highest supported clock ≤ `upper_mhz` whose power stays within `budget_w`."""
        phase, t = self.phase, self.temperature_c
        if self.power_at(upper_mhz, phase, t) <= budget_w:
            return upper_mhz
        lo, hi = 0, self.clocks_mhz.index(upper_mhz)
        if self.power_at(self.clocks_mhz[0], phase, t) > budget_w:
            return self.clocks_mhz[0]
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if self.power_at(self.clocks_mhz[mid], phase, t) <= budget_w:
                lo = mid
            else:
                hi = mid
        return self.clocks_mhz[lo]

    def _pmu_choice(self, now: float) -> tuple[int, float, bool]:
        """The driver's own clock choice: (clock MHz, next wake, dropped to the idle state)."""
        p = self.profile
        if self.phase is not None:
            return p.max_clock_mhz, math.inf, False
        if self.context_resident and self.perf_boost:
            return p.max_clock_mhz, math.inf, False  # held while the context lives
        if now - self.idle_since_s < self.idle_hold_s - 1e-9:
            return (
                max(self.clock_mhz, p.idle_clock_mhz),
                self.idle_since_s + self.idle_hold_s,
                False,
            )
        return p.idle_clock_mhz, math.inf, True

    def update_clock(self) -> float:
        """Re-run the PMU at `now_s`; returns the next time it needs to run again (or inf)."""
        p = self.profile
        now = self.now_s
        if self.pending is not None and self.pending[0] <= now + 1e-12:
            self.clock_mhz = self.pending[1]
            self.pending = None
        desired, wake, dropped = self._pmu_choice(now)
        reasons = ClockEventReason.GPU_IDLE if self.phase is None else ClockEventReason.NONE
        if self.lock is not None:
            desired = min(max(desired, self.lock[0]), self.lock[1])
        if self.forced_low_pstate:
            desired = min(desired, p.idle_clock_mhz)
        desired = self._snap_down(desired)
        # The idle drop leaves the high performance state only where no lock floor holds
        # the clock up; a forced low state always does.
        self.low_pstate = self.forced_low_pstate or (dropped and desired <= p.idle_clock_mhz)
        # Thermal slowdown with hysteresis: hold the power the cooling can carry away.
        if self.temperature_c >= p.slowdown_c:
            self.thermal_active = True
        elif self.temperature_c < p.slowdown_c - 1.0:
            self.thermal_active = False
        ceiling = self._ceiling_for_power(self.power_limit_w, desired)
        if ceiling < desired:
            reasons |= ClockEventReason.SW_POWER_CAP
        if self.thermal_active:
            sustain_w = (p.slowdown_c - 1.5 - self.ambient_c) / self.r_c_per_w
            thermal = self._ceiling_for_power(sustain_w, ceiling)
            if thermal < ceiling:
                reasons |= ClockEventReason.SW_THERMAL
                if self.temperature_c >= p.max_operating_c + 2.0:
                    reasons |= ClockEventReason.HW_SLOWDOWN
            ceiling = thermal
        target = min(desired, ceiling)
        if target < self.clock_mhz and target == ceiling and ceiling < desired:
            self.clock_mhz = target  # power/thermal cuts are immediate
            self.pending = None
        elif target != self.clock_mhz:
            if self.pending is None or self.pending[1] != target:
                self.pending = (now + self.clock_change_latency_s, target)
            wake = min(wake, self.pending[0])
        else:
            self.pending = None
        self.reasons = reasons
        self._refresh_power()
        # Wake when the temperature crosses the slowdown threshold either way.
        cross = p.slowdown_c - 1.0 if self.thermal_active else p.slowdown_c
        wake = min(wake, now + self.time_to_temperature_s(cross))
        return wake if wake > now + 1e-9 else now + 1e-6

    def _refresh_power(self) -> None:
        """Recompute operating point and power after a clock, phase or limit change."""
        phase = self.phase
        self.point = phase.at(self.profile, self.clock_mhz) if phase is not None else _IDLE_POINT
        if phase is None:
            self.rates = IDLE_COUNTERS
        else:
            self.rates = self.point.ideal if self.ideal_counters else self.point.counters
        self.power_w = self.power_at(self.clock_mhz, phase, self.temperature_c)

    # ------------------------------------------------------------- actuation
    def lock_clocks(self, min_mhz: int, max_mhz: int) -> None:
        """Lock the SM clock into [min_mhz, max_mhz] (validated by the backend)."""
        self.lock = (min_mhz, max_mhz)
        self.update_clock()

    def reset_clocks(self) -> None:
        """Remove the clock lock."""
        self.lock = None
        self.update_clock()

    def set_power_limit(self, limit_w: float) -> None:
        """Set the enforced power limit in W (validated by the backend)."""
        self.power_limit_w = limit_w
        self.update_clock()

    def force_low_pstate(self, forced: bool) -> None:
        """Force the lowest performance state (True) or hand it back to the driver (False).

        What NVAPI's forced P-state does for nvidia-pstated.
        """
        self.forced_low_pstate = forced
        self.update_clock()
