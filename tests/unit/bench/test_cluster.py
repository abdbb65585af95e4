"""The cluster power-budget bench: the operator's caps fit the budget, and every row prints."""

from __future__ import annotations

import pytest

from triserve.bench.cluster import ClusterConfig, run
from triserve.bench.cluster_cli import main

SMALL = ClusterConfig(nodes=8, duration_s=60.0, lower_budget_at_s=40.0, silence_node_at_s=30.0)


def test_operator_caps_never_exceed_the_usable_budget_and_follow_a_lowered_one() -> None:
    row = run("budget", SMALL)
    usable = 1.0 - SMALL.margin_percent / 100.0
    assert row.max_caps_w <= row.budget_w * usable
    assert row.max_over_budget_w <= 0.0
    assert row.caps_settle_s is not None and row.caps_settle_s <= SMALL.rebalance_s
    assert row.cap_writes > 0


def test_cli_prints_every_row(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--nodes", "4", "--duration-s", "30", "--scaling-nodes", "10"]) == 0
    out = capsys.readouterr().out
    for label in ("operator budget", "uniform caps", "proportional to TDP", "re-balance at 10"):
        assert label in out
