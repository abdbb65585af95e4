"""A short soak: the agent's memory stays flat while reports, scrapes and ticks keep coming.

The day-long run on 8 GPUs is `python -m tests.benchmarks.soak --hours 24` (docs/restore.md).
Here the same run has 2 GPUs and lasts 70 simulated minutes with a checkpoint every 10: once
the agent's bounded windows have filled (40 minutes: the latency guard keeps 30 minutes of
reference), the Python heap may not keep growing. Memory, not time, is asserted; the CPU
figures are printed only.
"""

from __future__ import annotations

import pytest

from .soak import soak, table


@pytest.mark.slow
@pytest.mark.no_cover  # memory is what is measured; coverage tracing would only slow it
def test_the_agents_memory_is_flat_over_reports_scrapes_and_ticks() -> None:
    points = soak(hours=70 / 60, checkpoints_per_hour=6, trace=True, gpus=2)
    print("\n" + table(points))
    assert [p.ticks_in_hour for p in points[1:]] == [3600] * (len(points) - 1)
    filled = next(p for p in points if p.hour >= 50 / 60).traced_mb
    # 40 reports and 80 exporter scrapes after the windows filled: ~8 KB each would show.
    assert points[-1].traced_mb - filled < 0.3, table(points)
