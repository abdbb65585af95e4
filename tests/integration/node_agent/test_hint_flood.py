"""A flood of stage hints from many pods does not starve the control tick.

Thirty serving pods, each on its own process, open eight connections apiece to the real hint
server (a unix socket in a temporary directory) and send hints as fast as the socket takes
them: every pod within its own rate limit, the node as a whole far over what the agent can
act on. The agent's tick runs on the same event loop, as in `triserve agent`, every
`TICK_S`; the test counts the ticks that ran while the flood lasted and requires most of
them (a loop kept busy by the hint server runs few: the watchdog then resets every GPU).
The simulated GPUs answer after `NVML_CALL_S`, as NVML's blocking calls do on a real node:
the control steps hints start cost the loop that time. Figures are printed; the bounds on
wall time are generous.

    .venv/bin/pytest tests/integration/node_agent/test_hint_flood.py -s -q
"""

from __future__ import annotations

import asyncio
import dataclasses
import subprocess
import sys
import time
import uuid
from pathlib import Path

from triserve.api.models import EnergyPolicySpec
from triserve.gpu.backend import GpuSample
from triserve.gpu.delegating import DelegatingBackend
from triserve.node_agent.agent import NodeAgent, PolicyRef
from triserve.node_agent.hints import ACCEPTED
from triserve.node_agent.hintserver import HintServer
from triserve.node_agent.safety import StateFile
from triserve.simnode.node import SimNode, open_simulation

PODS = 30
CONNECTIONS_PER_POD = 8
TICK_S = 0.05
FLOOD_S = 3.0
NVML_CALL_S = 0.001

# Each sender: say it is up, wait for "go", connect, then keep every connection's send buffer full.
SENDER = r"""
import select, socket, sys
path, count = sys.argv[1], int(sys.argv[2])
print("ready", flush=True)
sys.stdin.readline()
socks = []
for _ in range(count):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        s.connect(path)
    except OSError:
        continue
    s.setblocking(False)
    socks.append(s)
messages = [b'{"event":"busy","phase":"prefill"}', b'{"event":"idle"}']
i = 0
while socks:
    for s in list(socks):
        try:
            s.send(messages[i & 1])
            i += 1
        except BlockingIOError:
            pass
        except OSError:
            socks.remove(s)
    if socks:
        select.select([], socks, [], 0.05)
"""


class _RealNvmlLatency(DelegatingBackend):
    """The simulated GPUs, with NVML's cost: a real device query blocks for about 1 ms."""

    def sample(self, index: int) -> GpuSample:
        time.sleep(NVML_CALL_S)
        return self.inner.sample(index)

    def lock_sm_clocks(self, index: int, min_mhz: int, max_mhz: int) -> None:
        time.sleep(NVML_CALL_S)
        self.inner.lock_sm_clocks(index, min_mhz, max_mhz)

    def reset_sm_clocks(self, index: int) -> None:
        time.sleep(NVML_CALL_S)
        self.inner.reset_sm_clocks(index)


async def _tick(
    agent: NodeAgent, started_s: float, done: asyncio.Event, gaps_s: list[float]
) -> int:
    """The runtime's wall-clock tick loop: tick, then sleep out the rest of the period."""
    ticks, last = 0, time.monotonic()
    while not done.is_set():
        began = time.monotonic()
        gaps_s.append(began - last)
        last = began
        agent.tick(began - started_s)
        ticks += 1
        await asyncio.sleep(max(TICK_S - (time.monotonic() - began), 0.001))
    return ticks


async def test_a_hint_flood_from_many_pods_leaves_the_tick_running(tmp_path: Path) -> None:
    sim = open_simulation("reference", seed=0)
    agent = NodeAgent(_RealNvmlLatency(sim.backend), "node-1", StateFile(tmp_path / "state.json"))
    node = SimNode(sim, agent, scrape_interval_s=0.25)
    node.publish_pods()
    agent.set_policy(PolicyRef("p1", EnergyPolicySpec.model_validate({}), 1))
    # Thirty pods on the node's GPUs: the simulated stages and copies of them.
    pods = [
        dataclasses.replace(base, name=f"{base.name}-{i}", uid=str(uuid.uuid4()))
        for i, base in zip(range(PODS), node.pods * PODS, strict=False)
    ]
    agent.set_pods(pods)
    assert all(agent.knows_pod(p.uid) for p in pods)
    started_s = time.monotonic()
    proc = tmp_path / "proc"
    server = HintServer(
        tmp_path / "run" / "hints.sock",
        lambda uid, data: agent.receive_hint(uid, data, time.monotonic() - started_s),
        agent.knows_pod,
        proc_root=proc,
        on_refused=agent.hint_refused,
    )
    await server.start()
    senders = [
        subprocess.Popen(
            [sys.executable, "-c", SENDER, str(server.path), str(CONNECTIONS_PER_POD)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        for _ in pods
    ]
    try:
        for sender, pod in zip(senders, pods, strict=True):
            assert sender.stdout is not None
            await asyncio.to_thread(sender.stdout.readline)  # its interpreter is up
            (proc / str(sender.pid)).mkdir(parents=True)
            (proc / str(sender.pid) / "cgroup").write_text(
                f"0::/kubepods/burstable/pod{pod.uid}/c1\n"
            )
        done = asyncio.Event()
        gaps_s: list[float] = []
        ticker = asyncio.create_task(_tick(agent, started_s, done, gaps_s))
        for sender in senders:
            assert sender.stdin is not None
            sender.stdin.write(b"go\n")
            sender.stdin.flush()
        await asyncio.sleep(FLOOD_S)
        done.set()
        ticks = await ticker
    finally:
        for sender in senders:
            sender.kill()
        for sender in senders:
            sender.wait()
        await server.close()
    counts = dict(agent.hints.counts)
    expected = FLOOD_S / TICK_S
    print(
        f"\n{PODS} pods x {CONNECTIONS_PER_POD} connections for {FLOOD_S:g} s: {ticks} ticks "
        f"of {expected:.0f} expected, largest gap {max(gaps_s) * 1000:.0f} ms; hints {counts}, "
        f"event ticks {agent.ticks.hint_ticks}"
    )
    assert counts.get(ACCEPTED, 0) > 100, "the flood never reached the agent"
    assert ticks >= 0.8 * expected, f"the tick starved under the hint flood: {ticks} ticks"
