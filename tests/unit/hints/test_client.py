"""The stage-hints client: well-formed messages, and it never blocks or raises in an engine."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from triserve import hints
from triserve.node_agent.hints import parse_hint


@pytest.fixture
def listener(tmp_path: Path) -> socket.socket:
    """A SEQPACKET socket where the agent's would be."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    sock.bind(str(tmp_path / "hints.sock"))
    sock.listen(4)
    sock.settimeout(2.0)
    return sock


def test_client_messages_arrive_one_per_packet_and_parse(
    tmp_path: Path, listener: socket.socket
) -> None:
    client = hints.HintClient(str(tmp_path / "hints.sock"))
    assert client.busy("prefill")
    conn, _ = listener.accept()
    conn.settimeout(2.0)
    assert client.queue(3, running=2)
    assert client.handoff()
    assert client.idle()
    got = [parse_hint(conn.recv(512)) for _ in range(4)]
    assert [(e.event, e.phase, e.waiting, e.running) for e in got] == [
        ("busy", "prefill", None, None),
        ("queue", None, 3, 2),
        ("handoff", None, None, None),
        ("idle", None, None, None),
    ]
    assert client.sent == 4 and client.dropped == 0
    client.close()
    conn.close()


def test_client_without_an_agent_drops_events_quietly(tmp_path: Path) -> None:
    client = hints.HintClient(str(tmp_path / "nobody.sock"))
    assert client.busy("decode") is False
    assert client.idle() is False  # no reconnect storm: the retry waits retry_s
    assert client.dropped == 2 and client.sent == 0


def test_client_reaches_an_agent_that_starts_later(tmp_path: Path) -> None:
    now = [0.0]
    client = hints.HintClient(str(tmp_path / "late.sock"), retry_s=1.0, clock=lambda: now[0])
    assert not client.idle()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    sock.bind(str(tmp_path / "late.sock"))
    sock.listen(1)
    assert not client.idle()  # still inside the retry interval
    now[0] = 1.5
    assert client.idle()
    client.close()
    sock.close()


def test_heartbeat_is_sent_only_after_a_quiet_interval(
    tmp_path: Path, listener: socket.socket
) -> None:
    now = [10.0]
    client = hints.HintClient(str(tmp_path / "hints.sock"), clock=lambda: now[0])
    assert client.busy("decode")
    now[0] = 10.5
    assert not client.heartbeat()
    now[0] = 11.2
    assert client.heartbeat()
    conn, _ = listener.accept()
    conn.settimeout(2.0)
    conn.recv(512)
    assert parse_hint(conn.recv(512)).event == "alive"
    client.close()
    conn.close()


def test_client_never_blocks_when_the_agent_stops_reading(
    tmp_path: Path, listener: socket.socket
) -> None:
    client = hints.HintClient(str(tmp_path / "hints.sock"))
    for _ in range(20_000):  # far more than a socket buffer holds
        client.queue(1)
    assert client.dropped > 0
    assert client.sent + client.dropped == 20_000
    client.close()


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"event": "busy"}, "phase"),
        ({"event": "busy", "phase": "warmup"}, "phase"),
        ({"event": "idle", "phase": "decode"}, "phase"),
        ({"event": "queue"}, "waiting"),
        ({"event": "queue", "waiting": -1}, "waiting"),
        ({"event": "queue", "waiting": 1, "running": True}, "running"),
        ({"event": "idle", "waiting": 1}, "waiting"),
        ({"event": "stalled"}, "event"),
    ],
)
def test_encode_refuses_what_the_agent_would_refuse(kwargs: dict[str, object], field: str) -> None:
    with pytest.raises(ValueError, match=field):
        hints.encode(**kwargs)  # type: ignore[arg-type]


def test_socket_path_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(hints.SOCKET_ENV, "/run/x/hints.sock")
    assert hints.HintClient().path == "/run/x/hints.sock"
    monkeypatch.delenv(hints.SOCKET_ENV)
    assert hints.HintClient().path == hints.DEFAULT_SOCKET
