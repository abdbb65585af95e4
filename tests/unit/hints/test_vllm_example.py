"""The vLLM-style integration example sends the hints docs/serving-pods.md describes."""

from __future__ import annotations

import importlib.util
import socket
import sys
from pathlib import Path
from types import SimpleNamespace

from triserve.hints import HintClient
from triserve.node_agent.hints import parse_hint

EXAMPLE = Path(__file__).resolve().parents[3] / "examples" / "hints" / "vllm_hints.py"


def test_example_hints_phase_changes_and_queue_depth_once_each(tmp_path: Path) -> None:
    spec = importlib.util.spec_from_file_location("vllm_hints", EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["vllm_hints"] = module
    spec.loader.exec_module(module)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    listener.bind(str(tmp_path / "h.sock"))
    listener.listen(1)
    sched = SimpleNamespace(waiting=[1], running=[], last_step_prefill=True)
    now = [0.0]
    hinted = module.HintedStep(
        lambda: None, sched, HintClient(str(tmp_path / "h.sock"), clock=lambda: now[0])
    )
    hinted()  # prefill of a new prompt
    sched.waiting, sched.running, sched.last_step_prefill = [], [1], False
    hinted()  # decode
    hinted()  # decode again: nothing new to say
    sched.running = []
    hinted()  # done
    conn, _ = listener.accept()
    conn.settimeout(2.0)
    events = []
    for _ in range(6):
        e = parse_hint(conn.recv(512))
        events.append((e.event, e.phase, e.waiting, e.running))
    assert events == [
        ("busy", "prefill", None, None),
        ("queue", None, 1, 0),
        ("busy", "decode", None, None),
        ("queue", None, 0, 1),
        ("idle", None, None, None),
        ("queue", None, 0, 0),
    ]
    conn.close()
    listener.close()
