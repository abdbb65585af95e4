"""What a simulation run measured: per-GPU energy and clock accounting, per-request latency.

`GpuAccount` is filled by `triserve.sim.simulation.Simulation` every segment after the
warm-up; `SimReport` (from `Simulation.report()`) is what `triserve.bench` tabulates and
what the D/A/T acceptance tests read. `.to_dict()` gives plain JSON-able data.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

__all__ = ["CLOCK_BANDS_MHZ", "GpuAccount", "GpuReport", "SimReport", "percentile"]

# Band edges for "time in each clock band" (MHz); the last band is open-ended.
CLOCK_BANDS_MHZ: tuple[int, ...] = (0, 600, 900, 1200, 1500, 1800)
HIGH_CLOCK_MHZ = 1500
PHASE_KINDS = ("prefill", "decode", "oneshot", "idle")


def _band_name(lo: int, hi: int | None) -> str:
    return f"{lo}-{hi}" if hi is not None else f"{lo}+"


def percentile(values: Sequence[float], q: float) -> float | None:
    """The q-quantile (0..1) by linear interpolation, None for no values."""
    if not values:
        return None
    xs = sorted(values)
    pos = q * (len(xs) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


@dataclass(slots=True)
class GpuAccount:
    """Running totals for one GPU over the measured window."""

    energy_j: float = 0.0
    window_s: float = 0.0
    band_s: list[float] = field(default_factory=lambda: [0.0] * len(CLOCK_BANDS_MHZ))
    stall_s: float = 0.0
    stall_high_s: float = 0.0
    throttle_s: float = 0.0
    power_capped_s: float = 0.0
    phase_s: dict[str, float] = field(default_factory=lambda: dict.fromkeys(PHASE_KINDS, 0.0))
    phase_clock_int: dict[str, float] = field(
        default_factory=lambda: dict.fromkeys(PHASE_KINDS, 0.0)
    )
    phase_energy_j: dict[str, float] = field(
        default_factory=lambda: dict.fromkeys(PHASE_KINDS, 0.0)
    )

    def add(
        self,
        dt_s: float,
        power_w: float,
        clock_mhz: int,
        kind: str,
        stalled: bool,
        thermal: bool,
        capped: bool,
    ) -> None:
        """Account one constant segment of length `dt_s`."""
        self.energy_j += power_w * dt_s
        self.window_s += dt_s
        band = len(CLOCK_BANDS_MHZ) - 1
        while clock_mhz < CLOCK_BANDS_MHZ[band]:
            band -= 1
        self.band_s[band] += dt_s
        if stalled:
            self.stall_s += dt_s
            if clock_mhz >= HIGH_CLOCK_MHZ:
                self.stall_high_s += dt_s
        if thermal:
            self.throttle_s += dt_s
        if capped:
            self.power_capped_s += dt_s
        self.phase_s[kind] += dt_s
        self.phase_clock_int[kind] += clock_mhz * dt_s
        self.phase_energy_j[kind] += power_w * dt_s


@dataclass(frozen=True, slots=True)
class GpuReport:
    """One GPU's totals over the measured window (after warm-up)."""

    index: int
    name: str
    stages: tuple[str, ...]
    energy_j: float
    mean_power_w: float
    clock_band_s: dict[str, float]
    stall_s: float
    stall_high_clock_s: float
    throttle_s: float
    power_capped_s: float
    time_by_phase_s: dict[str, float]
    mean_clock_mhz_by_phase: dict[str, float | None]
    max_temperature_c: float
    energy_by_phase_j: dict[str, float] = field(default_factory=dict)

    @classmethod
    def from_account(
        cls, index: int, name: str, stages: tuple[str, ...], acc: GpuAccount, max_temp_c: float
    ) -> GpuReport:
        """A GPU's report from its accumulated account."""
        edges = CLOCK_BANDS_MHZ
        bands = {
            _band_name(lo, edges[i + 1] if i + 1 < len(edges) else None): acc.band_s[i]
            for i, lo in enumerate(edges)
        }
        means = {
            k: (acc.phase_clock_int[k] / acc.phase_s[k] if acc.phase_s[k] > 0 else None)
            for k in PHASE_KINDS
        }
        return cls(
            index=index,
            name=name,
            stages=stages,
            energy_j=acc.energy_j,
            mean_power_w=acc.energy_j / acc.window_s if acc.window_s > 0 else 0.0,
            clock_band_s=bands,
            stall_s=acc.stall_s,
            stall_high_clock_s=acc.stall_high_s,
            throttle_s=acc.throttle_s,
            power_capped_s=acc.power_capped_s,
            time_by_phase_s=dict(acc.phase_s),
            mean_clock_mhz_by_phase=means,
            max_temperature_c=max_temp_c,
            energy_by_phase_j=dict(acc.phase_energy_j),
        )


@dataclass(frozen=True, slots=True)
class SimReport:
    """Everything a run measured after `warmup_s`; latencies are per request, in seconds."""

    scenario: str
    seed: int
    warmup_s: float
    window_s: float
    gpus: tuple[GpuReport, ...]
    energy_j: float
    arrived_requests: int
    completed_requests: int
    ttft_s: tuple[float, ...]
    first_audio_s: tuple[float, ...]
    e2e_s: tuple[float, ...]
    generated_tokens: float
    generated_tokens_by_stage: dict[str, float]
    throughput_rps: float
    tokens_per_joule: float
    ttft_p50_s: float | None
    ttft_p99_s: float | None
    e2e_p50_s: float | None
    e2e_p99_s: float | None
    # Requests that arrived in the window but had not finished when it ended. Latency
    # percentiles cover finished requests only, so a run that leaves many unfinished
    # flatters its p99; benches must report this next to it.
    unfinished_requests: int = 0

    @property
    def unfinished_share(self) -> float:
        """Unfinished requests over those that arrived in the window (0 when none did)."""
        return self.unfinished_requests / self.arrived_requests if self.arrived_requests else 0.0

    @property
    def stall_high_clock_s(self) -> float:
        """Seconds (all GPUs) stalled on upstream at ≥1.5 GHz — inefficiency D."""
        return sum(g.stall_high_clock_s for g in self.gpus)

    @property
    def throttle_s(self) -> float:
        """Seconds (all GPUs) with a thermal clock event active — inefficiency T."""
        return sum(g.throttle_s for g in self.gpus)

    @property
    def power_capped_s(self) -> float:
        """Seconds (all GPUs) with the power-cap clock event active."""
        return sum(g.power_capped_s for g in self.gpus)

    def mean_clock_mhz(self, kind: str) -> float | None:
        """Time-weighted mean clock in a phase kind over all GPUs (A shows prefill < decode)."""
        total = sum(g.time_by_phase_s[kind] for g in self.gpus)
        if total <= 0:
            return None
        return (
            sum(
                (g.mean_clock_mhz_by_phase[kind] or 0.0) * g.time_by_phase_s[kind]
                for g in self.gpus
            )
            / total
        )

    def to_dict(self) -> dict[str, object]:
        """Plain data (JSON-able), with the aggregate D/A/T figures added."""
        d = asdict(self)
        d["stall_high_clock_s"] = self.stall_high_clock_s
        d["throttle_s"] = self.throttle_s
        d["power_capped_s"] = self.power_capped_s
        d["unfinished_share"] = self.unfinished_share
        d["mean_clock_mhz_by_phase"] = {k: self.mean_clock_mhz(k) for k in PHASE_KINDS}
        return d
