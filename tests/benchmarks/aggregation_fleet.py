"""Measure a status update on a large fleet: `python -m tests.benchmarks.aggregation_fleet`.

Builds a synthetic cluster of 1,000 GPU nodes with 8 GPUs each, all labelled for one policy
and all reporting, then times what the status timer does for that policy on every tick:
re-plan placement over every node, diff the labels, aggregate every report, build the
conditions and the status patch. Also times the one-off cost of condensing the 1,000 raw
reports into index views (paid once per report change, not per status update) and reports
the process RSS. Used by tests/benchmarks/test_operator_aggregation.py.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import time
from collections.abc import Mapping, Sequence
from typing import Any

import psutil

from triserve.api.annotations import GPU_RESOURCE, POLICY_LABEL
from triserve.operator import aggregation, placement
from triserve.operator.reconciler import Placer
from triserve.operator.settings import OperatorSettings

STAGES = ("thinker", "talker", "code2wav")


class _NoWrites:
    """A labeller that must never be called: a settled fleet needs no label writes."""

    async def patch_node(self, name: str, patch: dict[str, Any]) -> dict[str, Any]:
        raise AssertionError(f"unexpected label write on {name}")

    async def post_event(
        self, ref: Mapping[str, Any], reason: str, message: str, *, warning: bool = False
    ) -> None:
        """Events are not part of the measured cost."""


def fleet(nodes: int, gpus: int, policy: str = "omni") -> tuple[list[Any], list[Any]]:
    """Raw Node objects and NodeEnergyReports for a fleet where every agent reports."""
    now = datetime.datetime.now(tz=datetime.UTC)
    stamp = now.strftime("%Y-%m-%dT%H:%M:%SZ")
    node_bodies, report_bodies = [], []
    for i in range(nodes):
        name = f"gpu-node-{i:04d}"
        labels = {"nvidia.com/gpu.product": "H100", POLICY_LABEL: policy}
        capacity = {GPU_RESOURCE: str(gpus)}
        node_bodies.append(
            {"metadata": {"name": name, "labels": labels}, "status": {"capacity": capacity}}
        )
        gpu_reports = [
            {
                "index": g,
                "uuid": f"GPU-{i:04d}-{g}",
                "state": "Managed",
                "pods": [f"serving/{STAGES[g % 3]}-{i}"],
                "stages": [STAGES[g % 3]],
                "targetSmClockMhz": 1410,
                "appliedSmClockMhz": 1410,
                "powerWatts": 350.0 + g,
                "temperatureCelsius": 61.5,
                "energyJoules": 10500.0,
                "decisions": {"stall": 3, "ridge": 5},
            }
            for g in range(gpus)
        ]
        status = {
            "policy": policy,
            "policyGeneration": 1,
            "phase": "Managing",
            "lastReportTime": stamp,
            "managedGpus": gpus,
            "gpus": gpu_reports,
            "pods": {stage: 1 for stage in STAGES},
            "energy": {"joules": 84000.0 + i, "averageWatts": 2800.0, "windowSeconds": 30.0},
            "efficiency": {
                "tokens": 120000.0,
                "tokensPerJoule": 1.42,
                "baselineTokensPerJoule": 1.15,
                "method": "pmu-model",
            },
        }
        report_bodies.append(
            {"metadata": {"name": name}, "spec": {"nodeName": name}, "status": status}
        )
    return node_bodies, report_bodies


@dataclasses.dataclass(frozen=True)
class Figures:
    """Benchmark results (CPU milliseconds, megabytes).

    `repeat_patches` counts status updates after the first that still produced a patch
    (0 when nothing changed: an unchanged fleet costs no API call).
    """

    nodes: int
    gpus_per_node: int
    cpu_ms_per_status_update: float
    cpu_ms_index_all_reports: float
    rss_mb: float
    status_patch_keys: int
    repeat_patches: int


def measure(nodes: int = 1000, gpus: int = 8, repeats: int = 5) -> Figures:
    """Build the fleet, then time `repeats` status updates; returns the median CPU time."""
    node_bodies, report_bodies = fleet(nodes, gpus)
    policy = placement.policy_view(
        {
            "metadata": {
                "name": "omni",
                "generation": 1,
                "creationTimestamp": "2025-01-01T00:00:00Z",
            },
            "spec": {"nodeSelector": {"matchLabels": {"nvidia.com/gpu.product": "H100"}}},
        }
    )
    node_views = [placement.node_view(body) for body in node_bodies]
    started = time.process_time()
    views = [aggregation.report_view(body) for body in report_bodies]
    index_ms = (time.process_time() - started) * 1000
    reports = {view.node: view for view in views if view is not None}
    placer = Placer(OperatorSettings(), _NoWrites())
    stored: dict[str, Any] = {}
    timings: list[float] = []
    patch_keys = repeat_patches = 0
    for _ in range(repeats):
        started = time.process_time()
        result = placement.plan(node_views, [policy])
        assert not placement.label_changes(node_views, result)
        update = placer.status_update(policy, stored, result, node_views, reports)
        timings.append((time.process_time() - started) * 1000)
        if not stored:
            patch_keys, stored = len(update.patch), update.patch
        elif update.patch:
            repeat_patches += 1
    timings.sort()
    rss_mb = psutil.Process().memory_info().rss / 2**20
    return Figures(
        nodes=nodes,
        gpus_per_node=gpus,
        cpu_ms_per_status_update=timings[len(timings) // 2],
        cpu_ms_index_all_reports=index_ms,
        rss_mb=rss_mb,
        status_patch_keys=patch_keys,
        repeat_patches=repeat_patches,
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Print the figures for `--nodes` x `--gpus`."""
    p = argparse.ArgumentParser(prog="python -m tests.benchmarks.aggregation_fleet")
    p.add_argument("--nodes", type=int, default=1000)
    p.add_argument("--gpus", type=int, default=8)
    args = p.parse_args(argv)
    figures = measure(args.nodes, args.gpus)
    print(
        f"{figures.nodes} nodes x {figures.gpus_per_node} GPUs: "
        f"{figures.cpu_ms_per_status_update:.1f} ms CPU per status update "
        f"(target < 200 ms); indexing all reports once: "
        f"{figures.cpu_ms_index_all_reports:.1f} ms CPU; RSS {figures.rss_mb:.0f} MB "
        "(target < 300 MB)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
