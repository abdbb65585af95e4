"""Component T: predict temperature with an online first-order model and cap the clock.

The GPU is a thermal RC: ``C·dT/dt = P - (T - T_amb)/R``, i.e. ``dT/dt = a·P + b·T + c``
with ``b = -1/τ``. `ThermalModel` fits (a, b, c) by recursive least squares with forgetting
from (power, temperature) samples taken about a second apart, so it needs no datasheet.
`ThermalGovernor` predicts where the temperature goes at the present power and, when it would
reach ``slowdown - headroom`` within the horizon, lowers a clock ceiling to the sustainable
power; it lifts the ceiling again once the prediction leaves room. Called by
`triserve.control.tristrategy.TriServeStrategy` every tick.
"""

from __future__ import annotations

import math

from triserve.control.decisions import DeviceLimits, TickContext

#: Seconds between the samples the model is fitted on (derivatives need a real change).
FIT_INTERVAL_S = 1.0
#: How far ahead the governor looks, in seconds.
HORIZON_S = 5.0
#: Power ~ static + k·f^EXP in the range the governor moves in (V grows with f above a knee).
POWER_CLOCK_EXP = 2.4


class ThermalModel:
    """Online fit of ``dT/dt = a·P_w + b·T_c + c`` by recursive least squares."""

    def __init__(self, forgetting: float = 0.995) -> None:
        self._lam = forgetting
        self._theta = [0.0, 0.0, 0.0]
        self._p = [[1e3 if i == j else 0.0 for j in range(3)] for i in range(3)]
        self.updates = 0

    def update(self, power_w: float, temp_c: float, dtemp_c_per_s: float) -> None:
        """Add one observation of the temperature slope at a power and temperature."""
        x = (power_w / 100.0, temp_c / 10.0, 1.0)
        p = self._p
        px = [sum(p[i][j] * x[j] for j in range(3)) for i in range(3)]
        denom = self._lam + sum(x[i] * px[i] for i in range(3))
        gain = [v / denom for v in px]
        err = dtemp_c_per_s - sum(self._theta[i] * x[i] for i in range(3))
        self._theta = [self._theta[i] + gain[i] * err for i in range(3)]
        self._p = [[(p[i][j] - gain[i] * px[j]) / self._lam for j in range(3)] for i in range(3)]
        self.updates += 1

    @property
    def fitted(self) -> bool:
        """True once the fit is physically plausible (heats with power, relaxes to ambient)."""
        a, b, _ = self.coefficients()
        return self.updates >= 20 and a > 0 and -1.0 < b < -1e-3

    def coefficients(self) -> tuple[float, float, float]:
        """(a per W, b per s, c °C/s) of ``dT/dt = a·P + b·T + c``."""
        a, b, c = self._theta
        return a / 100.0, b / 10.0, c

    def steady_state_c(self, power_w: float) -> float:
        """Temperature the GPU settles at if it keeps drawing `power_w`."""
        a, b, c = self.coefficients()
        return -(a * power_w + c) / b

    def predict_c(self, temp_c: float, power_w: float, horizon_s: float) -> float:
        """Temperature after `horizon_s` at constant `power_w`, starting from `temp_c`."""
        _, b, _ = self.coefficients()
        t_ss = self.steady_state_c(power_w)
        return t_ss + (temp_c - t_ss) * math.exp(b * horizon_s)

    def sustainable_power_w(self, limit_c: float) -> float:
        """The power at which the steady-state temperature equals `limit_c`."""
        a, b, c = self.coefficients()
        return (-b * limit_c - c) / a


class ThermalGovernor:
    """Holds a clock ceiling that keeps the predicted temperature under the limit."""

    def __init__(self, headroom_c: float) -> None:
        self.headroom_c = headroom_c
        self.model = ThermalModel()
        self.cap_mhz: int | None = None
        self._fit_t_s: float | None = None
        self._fit_temp_c = 0.0
        self._energy_mj = 0
        self._idle_power_w = float("inf")
        self._review_s: float | None = None  # when the ceiling was last reviewed
        self.message = ""

    def limit_c(self, limits: DeviceLimits) -> float:
        """The temperature the governor keeps under: slowdown minus the headroom."""
        return limits.thresholds.slowdown_c - self.headroom_c

    def update(self, ctx: TickContext) -> int | None:
        """Learn from this tick's sample; return the clock ceiling to respect (None = none)."""
        s = ctx.sample
        power_w = s.power_mw / 1000.0
        self._idle_power_w = min(self._idle_power_w, power_w)
        self._learn(s.timestamp_s, s.temperature_c, s.energy_mj)
        if self._review_s is not None and ctx.now_s - self._review_s < 0.5:
            return self.cap_mhz
        self._review_s = ctx.now_s
        limit_c = self.limit_c(ctx.limits)
        temp_c = s.temperature_c
        if self.model.fitted:
            predicted_c = self.model.predict_c(temp_c, power_w, HORIZON_S)
            sustainable_w = self.model.sustainable_power_w(limit_c)
        else:
            # Until the model fits there is no prediction: act only on the temperature reached.
            predicted_c = temp_c
            sustainable_w = power_w
        if temp_c >= limit_c or (predicted_c > limit_c and power_w > sustainable_w):
            self._lower(ctx, power_w, sustainable_w, temp_c, predicted_c, limit_c)
        elif self.cap_mhz is not None and temp_c < limit_c - 0.5:
            self._maybe_raise(ctx, power_w, limit_c)
        return self.cap_mhz

    def _maybe_raise(self, ctx: TickContext, power_w: float, limit_c: float) -> None:
        """Lift the ceiling a step when even the higher clock's power stays under the limit."""
        assert self.cap_mhz is not None
        raised = ctx.limits.step(self.cap_mhz, 2)
        clock = max(ctx.sample.sm_clock_mhz, 1)
        dyn_w = max(power_w - self._idle_power_w, 0.0)
        raised_w = self._idle_power_w + dyn_w * (raised / clock) ** POWER_CLOCK_EXP
        if self.model.fitted:
            predicted_c = self.model.predict_c(ctx.sample.temperature_c, raised_w, HORIZON_S)
        else:
            predicted_c = ctx.sample.temperature_c + 1.0
        if predicted_c < limit_c - 0.5:
            self.cap_mhz = None if raised >= ctx.limits.default_max_mhz else raised
            self.message = f"predicted {predicted_c:.1f} °C at {raised} MHz: raising ceiling"

    def _lower(
        self,
        ctx: TickContext,
        power_w: float,
        sustainable_w: float,
        temp_c: float,
        predicted_c: float,
        limit_c: float,
    ) -> None:
        clock = self.cap_mhz if self.cap_mhz is not None else ctx.sample.sm_clock_mhz
        dyn_now = max(power_w - self._idle_power_w, 1.0)
        dyn_ok = max(sustainable_w - self._idle_power_w, 0.1 * dyn_now)
        ratio = min(1.0, (dyn_ok / dyn_now) ** (1.0 / POWER_CLOCK_EXP))
        wanted = clock * ratio
        if temp_c >= limit_c:
            wanted = min(wanted, float(ctx.limits.step(clock, -2)))
        new_cap = ctx.limits.snap_down(wanted)
        self.cap_mhz = new_cap if self.cap_mhz is None else min(self.cap_mhz, new_cap)
        self.message = (
            f"{temp_c:.1f} °C heading to {predicted_c:.1f} °C (limit {limit_c:.1f} °C, "
            f"sustainable {sustainable_w:.0f} W): ceiling {self.cap_mhz} MHz"
        )

    def _learn(self, t_s: float, temp_c: float, energy_mj: int) -> None:
        if self._fit_t_s is None:
            self._fit_t_s, self._fit_temp_c, self._energy_mj = t_s, temp_c, energy_mj
            return
        span_s = t_s - self._fit_t_s
        if span_s < FIT_INTERVAL_S:
            return
        avg_power_w = (energy_mj - self._energy_mj) / 1000.0 / span_s
        slope = (temp_c - self._fit_temp_c) / span_s
        self.model.update(avg_power_w, 0.5 * (temp_c + self._fit_temp_c), slope)
        self._fit_t_s, self._fit_temp_c, self._energy_mj = t_s, temp_c, energy_mj
