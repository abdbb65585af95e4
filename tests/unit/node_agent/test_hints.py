"""Stage hints on the agent: parsing, rate limits, fuzzing, the endpoint and the event tick."""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.unit.node_agent.conftest import run
from triserve import hints
from triserve.node_agent.agent import NodeAgent
from triserve.node_agent.hints import (
    ACCEPTED,
    INVALID,
    NODE_RATE_LIMITED,
    RATE_LIMITED,
    UNKNOWN_POD,
    HintBook,
    HintError,
    parse_hint,
)
from triserve.node_agent.hintserver import HintServer, HintSocketPathError, pod_uid_from_cgroup
from triserve.sim import Simulation
from triserve.simnode.node import SimNode, pod_uid

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
POD = ("omni", "thinker-0")
THINKER_UID = pod_uid("omni", "qwen3-omni-thinker-0")


@pytest.mark.parametrize(
    ("data", "field"),
    [
        (b"{", "JSON"),
        (b"[1]", "JSON object"),
        (b'{"event":"reboot"}', "event"),
        (b'{"event":"busy","phase":"train"}', "phase"),
        (b'{"event":"queue"}', "waiting"),
        (b'{"event":"queue","waiting":1e3}', "waiting"),
        (b'{"event":"busy","phase":"decode","running":1}', "running"),
        (b'{"event":"idle","pad":"' + b"x" * 300 + b'"}', "limit"),
        (b"\xff\xfe", "JSON"),
    ],
)
def test_bad_hints_are_refused_naming_what_was_wrong(data: bytes, field: str) -> None:
    with pytest.raises(HintError, match=field):
        parse_hint(data)


def test_every_message_the_client_encodes_parses() -> None:
    for event, kw in [
        ("busy", {"phase": "prefill"}),
        ("busy", {"phase": "oneshot"}),
        ("idle", {}),
        ("handoff", {}),
        ("alive", {}),
        ("queue", {"waiting": 0, "running": hints.MAX_QUEUE}),
    ]:
        parsed = parse_hint(hints.encode(event, **kw))  # type: ignore[arg-type]
        assert parsed.event == event


def test_a_flooding_pod_loses_its_excess_and_refills_over_time() -> None:
    book = HintBook(rate_per_s=100.0, burst=10.0)
    idle = hints.encode("idle")
    for _ in range(50):
        book.take(POD, idle, 0.0)
    assert book.counts[ACCEPTED] == 10
    assert book.counts[RATE_LIMITED] == 40
    book.take(POD, idle, 0.05)  # 5 tokens back after 50 ms
    assert book.counts[ACCEPTED] == 11
    # Another pod has its own bucket.
    book.take(("omni", "talker-0"), idle, 0.05)
    assert book.counts[ACCEPTED] == 12


def test_many_pods_each_within_their_rate_share_one_node_budget() -> None:
    book = HintBook(rate_per_s=100.0, burst=10.0, node_rate_per_s=50.0, node_burst=20.0)
    idle = hints.encode("idle")
    for pod in range(30):
        book.take(("omni", f"p{pod}"), idle, 0.0)
    assert book.counts[ACCEPTED] == 20
    assert book.counts[NODE_RATE_LIMITED] == 10
    assert book.counts[RATE_LIMITED] == 0
    book.take(("omni", "p29"), idle, 0.1)  # 5 node tokens back after 100 ms
    assert book.counts[ACCEPTED] == 21


def test_event_ticks_have_a_node_budget_and_the_hint_still_counts() -> None:
    book = HintBook(event_ticks_per_s=10.0, event_tick_burst=2.0)
    changes = [
        book.take(("omni", f"p{i}"), hints.encode("busy", phase="prefill"), 0.0)[1]
        for i in range(4)
    ]
    assert changes == [True, True, False, False]
    hint = book.hint(("omni", "p3"))
    assert hint is not None and hint.busy  # the next regular tick acts on it
    assert book.take(("omni", "p9"), hints.encode("busy", phase="prefill"), 0.1)[1]


def test_only_changes_that_matter_ask_for_an_event_tick() -> None:
    book = HintBook()
    assert book.take(POD, hints.encode("busy", phase="prefill"), 1.0)[1]
    assert not book.take(POD, hints.encode("alive"), 1.1)[1]
    assert not book.take(POD, hints.encode("queue", waiting=2), 1.2)[1]
    assert book.take(POD, hints.encode("busy", phase="decode"), 1.3)[1]
    assert book.take(POD, hints.encode("handoff"), 1.4)[1]
    assert book.take(POD, hints.encode("idle"), 1.5)[1]
    hint = book.hint(POD)
    assert hint is not None and not hint.has_work and hint.waiting == 0
    assert hint.handoff_s == 1.4
    assert hint.fresh(1.5 + book.max_age_s) and not hint.fresh(1.6 + book.max_age_s)


@FUZZ
@given(st.lists(st.binary(max_size=300), max_size=30))
def test_fuzzed_bytes_never_raise_and_every_message_is_counted(messages: list[bytes]) -> None:
    book = HintBook()
    for i, data in enumerate(messages):
        admitted, _changed = book.take(POD, data, i * 0.01)
        assert admitted
    assert sum(book.counts.values()) == len(messages)


JSON_VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**12), max_value=10**12),
    st.floats(allow_nan=True),
    st.text(max_size=10),
    st.sampled_from([*hints.EVENTS, *hints.PHASES]),
)


@FUZZ
@given(
    st.lists(
        st.dictionaries(
            st.sampled_from(["event", "phase", "waiting", "running", "extra"]),
            JSON_VALUES,
            max_size=5,
        ),
        max_size=30,
    )
)
def test_fuzzed_json_keeps_hints_well_formed(bodies: list[dict[str, object]]) -> None:
    book = HintBook()
    for i, body in enumerate(bodies):
        book.take(POD, json.dumps(body).encode(), i * 0.01)
    hint = book.hint(POD)
    if hint is not None:
        assert hint.phase in (None, *hints.PHASES)
        for count in (hint.waiting, hint.running):
            assert count is None or (type(count) is int and 0 <= count <= hints.MAX_QUEUE)


@pytest.mark.parametrize(
    ("line", "uid"),
    [
        (
            "0::/kubepods/burstable/pod0f1e2d3c-4b5a-6978-8a9b-0c1d2e3f4a5b/abc123",
            "0f1e2d3c-4b5a-6978-8a9b-0c1d2e3f4a5b",
        ),
        (
            "0::/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-"
            "pod0f1e2d3c_4b5a_6978_8a9b_0c1d2e3f4a5b.slice/cri-containerd-ab.scope",
            "0f1e2d3c-4b5a-6978-8a9b-0c1d2e3f4a5b",
        ),
        ("0::/user.slice/user-1000.slice/session-2.scope", None),
        ("12:cpu:/docker/pod0f1e2d3c-4b5a-6978-8a9b-0c1d2e3f4a5b", None),
    ],
)
def test_pod_uid_is_read_from_both_cgroup_drivers(line: str, uid: str | None) -> None:
    assert pod_uid_from_cgroup(line + "\n") == uid


OWN = "0f1e2d3c-4b5a-6978-8a9b-0c1d2e3f4a5b"
VICTIM = "99999999-8888-7777-6666-555555555555"
OWN_ = OWN.replace("-", "_")
VICTIM_ = VICTIM.replace("-", "_")


@pytest.mark.parametrize(
    "line",
    [
        # Guaranteed pods sit right under kubepods, the others under their QoS class.
        f"0::/kubepods/pod{OWN}/abc123",
        f"0::/kubepods/besteffort/pod{OWN}/abc123",
        f"0::/kubepods.slice/kubepods-pod{OWN_}.slice/cri-containerd-ab.scope",
        f"0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{OWN_}.slice/"
        "crio-ab.scope",
        # cgroup v1: one line per hierarchy, all naming the same pod.
        f"12:memory:/kubepods/burstable/pod{OWN}/abc\n11:cpu,cpuacct:/kubepods/burstable/"
        f"pod{OWN}/abc\n1:name=systemd:/kubepods/burstable/pod{OWN}/abc",
        # A kubelet --cgroup-root (kind nodes: /kubelet) puts a prefix above kubepods.
        f"0::/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-besteffort.slice/"
        f"kubelet-kubepods-besteffort-pod{OWN_}.slice/cri-containerd-ab.scope",
        # Read from inside the agent's own cgroup namespace: the path starts with `..`.
        f"0::/../../kubepods-besteffort-pod{OWN_}.slice/cri-containerd-ab.scope",
        f"0::/../../../burstable/pod{OWN}/abc",
    ],
)
def test_the_pod_is_read_where_the_kubelet_puts_it(line: str) -> None:
    assert pod_uid_from_cgroup(line + "\n") == OWN


@pytest.mark.parametrize(
    "line",
    [
        f"0::/kubepods/burstable/pod{OWN}/abc/pod{VICTIM}/x",
        f"0::/kubepods/burstable/pod{OWN}/abc/kubepods/burstable/pod{VICTIM}/x",
        f"0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{OWN_}.slice/"
        f"cri-containerd-ab.scope/kubepods-burstable-pod{VICTIM_}.slice/x.scope",
        f"0::/../../kubepods-besteffort-pod{OWN_}.slice/cri-containerd-ab.scope/"
        f"kubepods-besteffort-pod{VICTIM_}.slice/x.scope",
    ],
)
def test_a_tenants_nested_cgroup_cannot_speak_for_another_pod(line: str) -> None:
    assert pod_uid_from_cgroup(line + "\n") == OWN


@pytest.mark.parametrize(
    "line",
    [
        f"0::/kubepods/burstable/notapod/pod{VICTIM}/x",  # pod not where the kubelet puts it
        f"0::/kubepods/burstable/pod{VICTIM}",  # the pod's own cgroup: no container
        f"0::/user.slice/kubepods-fake/pod{VICTIM}/x",  # not under kubepods at all
        f"0::/kubepods/burstable/pod{VICTIM_}/x",  # systemd spelling under cgroupfs
        f"0::/kubepods.slice/kubepods-burstable.slice/kubepods-besteffort-pod{VICTIM_}.slice/x",
        f"0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{VICTIM}.slice/x",
        f"0::/../../tenant/pod{VICTIM}/x",  # relative, but not a kubelet segment first
        # cgroup v1 hierarchies that disagree about the pod.
        f"12:memory:/kubepods/pod{OWN}/abc\n11:cpu:/kubepods/pod{VICTIM}/abc",
    ],
)
def test_a_cgroup_path_off_the_kubelets_layout_is_refused(line: str) -> None:
    assert pod_uid_from_cgroup(line + "\n") is None


def _proc_for_self(tmp_path: Path, uid: str) -> Path:
    proc = tmp_path / "proc"
    (proc / str(os.getpid())).mkdir(parents=True)
    (proc / str(os.getpid()) / "cgroup").write_text(f"0::/kubepods/burstable/pod{uid}/c1\n")
    return proc


def _serve(
    tmp_path: Path, uid: str, known: set[str], client_calls: Callable[[hints.HintClient], object]
) -> tuple[list[tuple[str, bytes]], HintServer]:
    got: list[tuple[str, bytes]] = []

    def deliver(who: str, data: bytes) -> bool:
        got.append((who, data))
        return True

    server = HintServer(
        tmp_path / "run" / "hints.sock", deliver, known.__contains__,
        proc_root=_proc_for_self(tmp_path, uid),
    )  # fmt: skip

    async def main() -> None:
        await server.start()
        client = hints.HintClient(str(server.path))
        await asyncio.to_thread(client_calls, client)
        for _ in range(200):
            await asyncio.sleep(0.01)
            if len(got) >= 2 or server.refused:
                break
        client.close()
        await server.close()

    asyncio.run(main())
    return got, server


def test_endpoint_attributes_messages_to_the_senders_pod(tmp_path: Path) -> None:
    uid = "0f1e2d3c-4b5a-6978-8a9b-0c1d2e3f4a5b"

    def talk(client: hints.HintClient) -> None:
        client.busy("prefill")
        client.idle()

    got, server = _serve(tmp_path, uid, {uid}, talk)
    assert [who for who, _ in got] == [uid, uid]
    assert parse_hint(got[0][1]).phase == "prefill"
    assert not server.path.exists()  # removed on close


def test_endpoint_refuses_a_process_outside_the_known_pods(tmp_path: Path) -> None:
    uid = "0f1e2d3c-4b5a-6978-8a9b-0c1d2e3f4a5b"
    got, server = _serve(tmp_path, uid, set(), lambda client: client.idle())
    assert got == []
    assert server.refused["unknown-pod"] == 1


def test_prefill_hint_unlocks_a_ridge_locked_gpu_before_the_next_tick(
    sim: Simulation, make_agent: Callable[..., tuple[NodeAgent, SimNode]]
) -> None:
    agent, node = make_agent()
    gpu = agent.gpus[0]
    until_s = 30.0
    while True:  # until the thinker GPU decodes under a ridge lock
        run(sim, node, until_s)
        assert gpu.loop is not None and gpu.loop.last_result is not None
        if gpu.loop.last_result.decision.reason.value == "ridge" or until_s > 600:
            break
        until_s += 0.5
    assert gpu.loop.last_result.decision.target_sm_clock_mhz is not None
    last_tick_s = gpu.loop.last_result.now_s
    now_s = last_tick_s + 0.01  # between two ticks
    agent.receive_hint(THINKER_UID, hints.encode("busy", phase="prefill"), now_s)
    result = gpu.loop.last_result
    assert result.now_s == now_s
    assert result.decision.reason.value == "compute"
    assert result.decision.target_sm_clock_mhz is None
    assert agent.ticks.hint_ticks == 2  # the thinker's GPU, and the talker's GPU it feeds


def test_stale_hints_fall_back_to_the_scrapes(
    sim: Simulation, make_agent: Callable[..., tuple[NodeAgent, SimNode]]
) -> None:
    agent, node = make_agent()
    run(sim, node, 20.0)
    agent.receive_hint(THINKER_UID, hints.encode("busy", phase="prefill"), sim.now_s)
    obs = agent.gpus[0].stages[0]
    assert obs.fresh_hint(sim.now_s) is not None
    assert obs.fresh_hint(sim.now_s + agent.hints.max_age_s + 0.1) is None


def test_flooding_and_garbage_never_stop_the_agent(
    sim: Simulation, make_agent: Callable[..., tuple[NodeAgent, SimNode]]
) -> None:
    agent, node = make_agent()
    run(sim, node, 10.0)
    for i in range(2_000):
        data = b"\x00garbage" if i % 2 else hints.encode("busy", phase="decode")
        agent.receive_hint(THINKER_UID, data, sim.now_s)
    agent.receive_hint("not-a-pod", hints.encode("idle"), sim.now_s)
    counts = agent.hints.counts
    assert counts[RATE_LIMITED] > 1_500
    assert counts[INVALID] > 0 and counts[UNKNOWN_POD] == 1
    gpu = agent.gpus[0]
    assert gpu.loop is not None
    ticks_before = sum(gpu.totals.decisions.values())
    run(sim, node, 11.0)
    assert sum(gpu.totals.decisions.values()) > ticks_before


def test_simulated_engines_send_hints_that_drive_event_ticks(tmp_path: Path) -> None:
    from triserve.sim import load_scenario
    from triserve.simnode import run_agent

    ran = run_agent(load_scenario("reference"), until_s=40.0, hints=True, state_dir=tmp_path)
    counts = ran.agent.hints.counts
    assert ran.node.hints_sent > 0
    assert counts[ACCEPTED] == ran.node.hints_sent
    assert counts[INVALID] == counts[RATE_LIMITED] == 0
    assert ran.agent.ticks.hint_ticks > 0


def _server_at(path: Path) -> HintServer:
    return HintServer(path, lambda _uid, _data: True, lambda _uid: True)


def test_a_regular_file_at_the_socket_path_is_named_and_kept(tmp_path: Path) -> None:
    path = tmp_path / "hints.sock"
    path.write_text("not ours\n")
    with pytest.raises(HintSocketPathError) as refused:
        _server_at(path).bind()
    message = str(refused.value)
    assert str(path) in message and "not a socket" in message and "--hints-socket" in message
    assert "\n" not in message
    assert path.read_text() == "not ours\n"  # never deleted


def test_a_stale_socket_a_crashed_agent_left_is_replaced(tmp_path: Path) -> None:
    import socket

    path = tmp_path / "hints.sock"
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    stale.bind(str(path))
    stale.close()  # the file stays, nobody listens
    server = _server_at(path)
    server.bind()
    try:
        client = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        client.connect(str(path))
        client.close()
    finally:
        asyncio.run(server.close())


def test_a_socket_another_process_still_serves_is_not_taken_over(tmp_path: Path) -> None:
    import socket

    path = tmp_path / "hints.sock"
    live = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    live.bind(str(path))
    live.listen(1)
    try:
        with pytest.raises(HintSocketPathError, match="serves"):
            _server_at(path).bind()
        assert path.is_socket()
    finally:
        live.close()


def test_the_agent_refuses_to_start_on_a_file_at_the_socket_path_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from triserve import cli

    path = tmp_path / "run" / "hints.sock"
    path.parent.mkdir()
    path.write_text("not ours\n")
    policy = Path(__file__).resolve().parents[3] / "examples" / "energypolicy-minimal.yaml"
    code = cli.main(
        ["agent", "--standalone", "--policy", str(policy), "--sim", "reference",
         "--duration-s", "5", "--metrics-port", "0", "--state-file", str(tmp_path / "s.json"),
         "--hints-socket", str(path)]
    )  # fmt: skip
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1 and str(path) in err[0] and "not a socket" in err[0]
    assert path.read_text() == "not ours\n"


def test_the_endpoint_keeps_nothing_of_a_pod_once_its_connections_close(
    tmp_path: Path,
) -> None:
    uid = "0f1e2d3c-4b5a-6978-8a9b-0c1d2e3f4a5b"
    server = HintServer(
        tmp_path / "run" / "hints.sock", lambda _uid, _data: True, {uid}.__contains__,
        proc_root=_proc_for_self(tmp_path, uid),
    )  # fmt: skip

    async def main() -> None:
        await server.start()
        for _ in range(3):
            client = hints.HintClient(str(server.path))
            await asyncio.to_thread(client.idle)
            for _ in range(100):
                await asyncio.sleep(0.01)
                if server._tasks:
                    break
            client.close()
            for _ in range(100):
                await asyncio.sleep(0.01)
                if not server._tasks:
                    break
        await server.close()

    asyncio.run(main())
    assert not server._tasks
    assert dict(server._per_pod) == {}, "per-pod connection counts outlive the connections"
