"""Status aggregation scales: 1,000 nodes x 8 GPUs per status update, CPU time and RSS.

Runs once even under the default `--benchmark-disable` and prints the figures against the
targets (under 200 ms CPU per status update, under 300 MB RSS) without asserting them, since
timings flake on a loaded machine; what it asserts is that an unchanged fleet is not
rewritten. `make perf` prints the figures; so does
`python -m tests.benchmarks.aggregation_fleet`, without pytest.
"""

from __future__ import annotations

from typing import Any

from tests.benchmarks.aggregation_fleet import measure


def test_status_update_for_1000_nodes_x_8_gpus_is_cheap(benchmark: Any) -> None:
    figures = benchmark.pedantic(measure, kwargs={"nodes": 1000, "gpus": 8}, rounds=1, iterations=1)
    print(
        f"\n1000 nodes x 8 GPUs: {figures.cpu_ms_per_status_update:.1f} ms CPU per status "
        f"update, {figures.cpu_ms_index_all_reports:.1f} ms to index all reports, "
        f"RSS {figures.rss_mb:.0f} MB"
    )
    cpu_ok = "met" if figures.cpu_ms_per_status_update < 200 else "MISSED"
    rss_ok = "met" if figures.rss_mb < 300 else "MISSED"
    print(f"targets: < 200 ms CPU per update {cpu_ok}; RSS < 300 MB {rss_ok}")
    assert figures.status_patch_keys > 0  # the first update writes the status
    assert figures.repeat_patches == 0  # unchanged fleet: no further writes
