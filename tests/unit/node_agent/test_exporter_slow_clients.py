"""Slow clients on the exporter's port cost it bounded time and never fail the health probes.

A client that trickles its request (a header line a second) is cut off once its header or
request time is spent, however steadily it trickles; while such clients hold every slot
of the metrics port, `/healthz` and `/readyz` are still answered where the probes ask.
"""

from __future__ import annotations

import select
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager, suppress

import pytest
from prometheus_client import CollectorRegistry

from triserve.node_agent.exporter import MetricsServer


@contextmanager
def _serving(**kw: object) -> Iterator[MetricsServer]:
    server = MetricsServer(CollectorRegistry(), 0, "127.0.0.1", **kw)  # type: ignore[arg-type]
    server.start()
    try:
        yield server
    finally:
        server.stop()


def _trickle_until_cut(port: int, every_s: float, limit_s: float) -> float | None:
    """Send a request a header line every `every_s`; seconds until the server hung up."""
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", port)) as conn:
        conn.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")
        while time.monotonic() - started < limit_s:
            readable, _, _ = select.select([conn], [], [], every_s)
            if readable:
                try:
                    data = conn.recv(4096)
                except ConnectionResetError:
                    data = b""
                if not data or data.startswith(b"HTTP/"):
                    return time.monotonic() - started
            try:
                conn.sendall(b"X-Slow: 1\r\n")
            except OSError:
                return time.monotonic() - started
    return None


def test_a_client_trickling_its_headers_is_cut_off_at_the_request_deadline() -> None:
    with _serving(timeout_s=1.0) as server:
        cut_s = _trickle_until_cut(server.port, every_s=0.2, limit_s=6.0)
    assert cut_s is not None, "a client sending a header line every 0.2 s was served forever"
    assert cut_s < 3.0


def test_a_client_trickling_its_headers_is_cut_off_at_the_header_deadline() -> None:
    with _serving(timeout_s=5.0, header_timeout_s=0.5) as server:
        cut_s = _trickle_until_cut(server.port, every_s=0.1, limit_s=4.0)
    assert cut_s is not None and cut_s < 2.0, f"cut off after {cut_s} s"


def test_the_health_listener_serves_only_health() -> None:
    with _serving(health_port=0) as server:
        with pytest.raises(urllib.error.HTTPError) as missing:
            urllib.request.urlopen(f"http://127.0.0.1:{server.health_port}/metrics", timeout=2)
        assert missing.value.code == 404
        assert b"/healthz" in missing.value.read()


def _probe(url: str) -> bool:
    try:
        return bool(urllib.request.urlopen(url, timeout=1.0).status == 200)
    except (urllib.error.URLError, OSError):
        return False


def test_health_is_answered_while_slow_clients_hold_every_metrics_slot() -> None:
    with _serving(health_port=0) as server:
        slow = []
        for _ in range(16):
            conn = socket.create_connection(("127.0.0.1", server.port))
            conn.sendall(b"GET /metrics HTTP/1.1\r\n")
            slow.append(conn)
        try:
            answered = 0
            for _ in range(15):
                answered += _probe(f"http://127.0.0.1:{server.health_port}/healthz")
                answered += _probe(f"http://127.0.0.1:{server.health_port}/readyz")
                for conn in slow:
                    with suppress(OSError):
                        conn.sendall(b"X-Slow: 1\r\n")
                time.sleep(0.05)
        finally:
            for conn in slow:
                conn.close()
    assert answered == 30, f"{30 - answered} of 30 health probes failed"
