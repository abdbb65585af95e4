"""The ridge search's fitted model: one noisy pair never decides, and noise raises the clock."""

from __future__ import annotations

import random
from dataclasses import replace

from triserve.control.decisions import DeviceLimits
from triserve.control.phases import DECODE, PREFILL, PhaseTracker
from triserve.control.search import (
    COARSE_STEPS,
    KeyState,
    Mode,
    RidgeSearch,
    SensitivityFit,
    _Window,
)
from triserve.gpu.backend import Activity
from triserve.sim import Simulation, load_scenario
from triserve.telemetry import ServingSnapshot, StageObservation

#: The clock-sensitive share of the decode the pairs below come from (docs/calibration.md).
SHARE = 0.03


def _limits() -> DeviceLimits:
    sim = Simulation(load_scenario("reference"))
    return DeviceLimits.from_backend(sim.backend, 0)


def _pair(search: RidgeSearch, st: KeyState, limits: DeviceLimits, loss: float) -> None:
    """Judge one reference/trial pair whose trial ran `loss` slower than its references."""
    ref = _Window(1.0, 100.0)
    trial = _Window((1.0 + loss) * 1.0, 100.0)
    search._judge(st, 0.0, limits, ref, trial)


def test_exact_pairs_fit_the_share_and_lock_the_clock_at_the_allowed_loss() -> None:
    fit = SensitivityFit()
    for x in (0.1, 0.3, 0.6):
        fit.add(x, SHARE * x)
    share = fit.upper_share()
    assert share is not None and abs(share - SHARE) < 1e-9, "no noise: no confidence margin"
    noisy = SensitivityFit()
    for x, e in ((0.1, 0.004), (0.3, -0.004), (0.6, 0.004)):
        noisy.add(x, SHARE * x + e)
    wide = noisy.upper_share()
    assert wide is not None and wide > SHARE, "noise widens the bound upwards"


def test_noise_never_walks_the_clock_below_what_the_true_share_allows() -> None:
    """Many re-checks of noisy pairs (SD 0.4%, as batches change between windows) keep the
    clock at or above the one the true share allows; the old accept/reject walk went lower."""
    limits = _limits()
    top = limits.default_max_mhz
    allowed = 0.007
    search = RidgeSearch(100 * allowed)
    truth = min(c for c in range(limits.min_mhz, top + 1) if SHARE * (top / c - 1.0) <= allowed)
    rng = random.Random(7)
    st = KeyState(ok_mhz=top, candidate_mhz=limits.step(top, -COARSE_STEPS))
    below = 0
    for _ in range(200):
        x = top / st.candidate_mhz - 1.0
        _pair(search, st, limits, SHARE * x + rng.gauss(0.0, 0.004))
        if st.mode is Mode.SETTLED:
            st.mode = Mode.REFERENCE  # the next re-check
            st.candidate_mhz = st.ok_mhz if st.ok_mhz < top else limits.step(top, -8)
        below += st.ok_mhz < limits.step(truth, -2)
    assert below <= 10, f"{below} of 200 pairs left the clock below the truth ({truth} MHz)"
    assert st.ok_mhz < top, "the search still finds a lock below boost"


def test_per_tick_counters_end_a_scraped_prefill_that_is_over() -> None:
    """A scrape says a prefill ran in its window; a memory-bound tick says it is over."""
    sim = Simulation(load_scenario("reference"))
    sample = sim.backend.sample(0)
    tracker = PhaseTracker()
    before = ServingSnapshot(0.0, 2, 0, 0.0, 100.0, 0.0)
    after = ServingSnapshot(0.5, 3, 0, 4000.0, 120.0, 0.0)  # prompt tokens: a prefill
    decoding = replace(sample, utilization_gpu_pct=100.0, activity=Activity(0.03, 0.7, 0.95))
    prefilling = replace(sample, utilization_gpu_pct=100.0, activity=Activity(0.6, 0.3, 0.95))
    obs = [StageObservation("thinker", serving=before)]
    tracker.update(decoding, obs)
    obs = [StageObservation("thinker", serving=after)]
    assert tracker.update(decoding, obs).key == (("thinker", DECODE),)
    compute = tracker.update(prefilling, obs)
    assert compute.compute_now and compute.key == (("thinker", PREFILL),)
    # Without per-tick counters (dcgm-exporter's 30 s mean) the scrape's word stands.
    slow = replace(decoding, activity=Activity(0.03, 0.7, 0.95, period_s=30.0))
    assert tracker.update(slow, obs).key == (("thinker", PREFILL),)
