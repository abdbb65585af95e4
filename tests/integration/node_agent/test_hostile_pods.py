"""A hostile pod on the node does not slow the control tick.

The agent ticks on the event loop while its scrapers read pods that trickle bytes, send an
endless body, send +Inf, and send a valid ~0.9 MB exposition that takes real CPU to parse. The
test counts the ticks that ran while each scrape round was in flight and the largest gap
between two ticks, first with only the well-behaved pod and then with the hostile ones too,
and requires that ticks kept coming during every round (a blocked loop runs none). Both sets
of figures are printed; nothing is asserted about wall time.

    .venv/bin/pytest tests/integration/node_agent/test_hostile_pods.py -s -q
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import httpx

from triserve.api.models import EnergyPolicySpec
from triserve.node_agent.agent import NodeAgent, PolicyRef
from triserve.node_agent.safety import StateFile
from triserve.node_agent.scraping import ScrapeLimits, Scrapers, fetch_bounded
from triserve.node_agent.serving import parse_serving_scrape
from triserve.node_agent.stages import ServingPod
from triserve.simnode import open_simulation

from ...unit.node_agent.hostile import hostile_server

TICK_S = 0.01
ROUNDS = 3


async def _tick_while(agent: NodeAgent, done: asyncio.Event, gaps: list[float]) -> int:
    sim_now, ticks, last = 0.0, 0, time.perf_counter()
    while not done.is_set():
        sim_now += TICK_S
        agent.tick(sim_now)
        ticks += 1
        now = time.perf_counter()
        gaps.append(now - last)
        last = now
        await asyncio.sleep(TICK_S)
    return ticks


async def test_hostile_pods_leave_the_tick_running(tmp_path: Path) -> None:
    sim = open_simulation("reference", seed=0)
    agent = NodeAgent(sim.backend, "node-1", StateFile(tmp_path / "state.json"))
    agent.set_policy(PolicyRef("p1", EnergyPolicySpec.model_validate({}), 1))
    limits = ScrapeLimits(deadline_s=0.5, max_body_bytes=1024 * 1024)
    ticks_per_round: list[int] = []
    gaps: list[float] = []
    async with hostile_server() as base, httpx.AsyncClient() as client:
        port = int(base.rsplit(":", 1)[1])
        paths = ("/trickle", "/huge", "/inf", "/bulky", "/good")
        agent.set_pods(
            [
                ServingPod(
                    "omni",
                    f"p{i}",
                    "thinker",
                    metrics_port=port,
                    metrics_path=path,
                    pod_ip="127.0.0.1",
                )
                for i, path in enumerate(paths)
            ]
        )
        scrapers = Scrapers(agent, client, limits=limits)
        calm_ticks: list[int] = []
        calm_gaps: list[float] = []
        try:
            for hostile in (False, True):
                for _ in range(ROUNDS):
                    done = asyncio.Event()
                    ticker = asyncio.create_task(
                        _tick_while(agent, done, gaps if hostile else calm_gaps)
                    )
                    await (_hostile_round(scrapers) if hostile else _scrape_good(scrapers, port))
                    done.set()
                    (ticks_per_round if hostile else calm_ticks).append(await ticker)
        finally:
            scrapers.close()
    assert agent.inputs.serving[("omni", "p4")].running == 2  # the good pod
    assert (
        agent.inputs.serving[("omni", "p3")].running == 18000
    )  # the bulky one parsed, off the loop
    assert ("omni", "p2") not in agent.inputs.serving  # +Inf rejected
    # Trickle, huge (cut at 1 MiB) and +Inf fail on every try; a try that took long (the
    # trickle, cut at the deadline) makes that target wait in proportion before the next.
    assert 3 <= agent.errors["scrape"] <= 3 * ROUNDS
    assert min(ticks_per_round) >= 5, f"the tick starved during a scrape round: {ticks_per_round}"
    print(
        f"\ntick every {TICK_S * 1000:.0f} ms, scrape round ≈ {limits.deadline_s} s; "
        f"well-behaved pod only: ticks per round {calm_ticks}, largest gap "
        f"{max(calm_gaps) * 1000:.1f} ms; with the hostile pods: ticks per round "
        f"{ticks_per_round}, largest gap {max(gaps) * 1000:.1f} ms"
    )


async def _hostile_round(scrapers: Scrapers) -> None:
    """A round over every pod, measured over at least 0.5 s like the calm one (a round whose
    targets are all still in flight or spaced out returns at once)."""
    started = time.perf_counter()
    await scrapers.scrape_once()
    await asyncio.sleep(max(0.5 - (time.perf_counter() - started), 0.0))


async def _scrape_good(scrapers: Scrapers, port: int) -> None:
    """A round of the well-behaved pod alone, for comparison (as long as a hostile round)."""
    started = time.perf_counter()
    text = await fetch_bounded(scrapers.client, f"http://127.0.0.1:{port}/good", scrapers.limits)
    scrape = await scrapers.parser.parse(len(text), parse_serving_scrape, text, 0.0)
    scrapers.agent.set_serving(("omni", "p4"), scrape.total, scrape.engines)
    await asyncio.sleep(max(0.5 - (time.perf_counter() - started), 0.0))
