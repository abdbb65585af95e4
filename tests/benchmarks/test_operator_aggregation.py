"""Status aggregation scales: 1,000 nodes x 8 GPUs per status update, CPU time and RSS.

Runs once even under the default `--benchmark-disable` and asserts the targets (under
200 ms CPU per status update, under 300 MB RSS). `pytest tests/benchmarks -s` prints the
figures; `python -m triserve.operator.bench_aggregation` prints them without pytest.
"""

from __future__ import annotations

from typing import Any

from triserve.operator.bench_aggregation import measure


def test_status_update_for_1000_nodes_x_8_gpus_is_cheap(benchmark: Any) -> None:
    figures = benchmark.pedantic(measure, kwargs={"nodes": 1000, "gpus": 8}, rounds=1, iterations=1)
    print(
        f"\n1000 nodes x 8 GPUs: {figures.cpu_ms_per_status_update:.1f} ms CPU per status "
        f"update, {figures.cpu_ms_index_all_reports:.1f} ms to index all reports, "
        f"RSS {figures.rss_mb:.0f} MB"
    )
    assert figures.cpu_ms_per_status_update < 200
    assert figures.cpu_ms_index_all_reports < 1000
    assert figures.rss_mb < 300
    assert figures.status_patch_keys > 0  # the first update writes the status
    assert figures.repeat_patches == 0  # unchanged fleet: no further writes
