"""A local HTTP server (127.0.0.1) that plays well-behaved and hostile serving pods.

Paths: `/good` (a vLLM exposition), `/inf` (running requests = +Inf), `/trickle` (one byte
every 0.3 s, forever), `/huge` (an endless body), `/empty` (200 with no body) and
`/dcgm-other` (another node's dcgm-exporter series), `/bulky` (a valid ~0.9 MB exposition).
"""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import sys
import threading
from collections.abc import AsyncIterator
from pathlib import Path

GOOD = (
    "# TYPE vllm:num_requests_running gauge\n"
    'vllm:num_requests_running{engine="0"} 2\n'
    'vllm:generation_tokens_total{engine="0"} 100\n'
)
INF = 'vllm:num_requests_running{engine="0"} +Inf\nvllm:generation_tokens_total 1e309\n'
#: Another node's dcgm-exporter, as a cluster Service may answer.
OTHER_NODE_DCGM = (
    'DCGM_FI_PROF_DRAM_ACTIVE{gpu="0",UUID="GPU-other",Hostname="node-2"} 0.9\n'
    'DCGM_FI_PROF_PIPE_TENSOR_ACTIVE{gpu="0",UUID="GPU-other",Hostname="node-2"} 0.9\n'
)
#: A valid but bulky exposition (~0.9 MB, under the default cap) whose parse takes real CPU time.
BULKY = "".join(f'vllm:num_requests_running{{engine="0",shard="{i}"}} 1\n' for i in range(18000))
BODIES = {
    "/good": GOOD,
    "/inf": INF,
    "/empty": "",
    "/dcgm-other": OTHER_NODE_DCGM,
    "/bulky": BULKY,
}


async def _answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        request = await reader.readuntil(b"\r\n\r\n")
        path = request.split(b" ", 2)[1].decode()
        head = "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nConnection: close\r\n"
        if path in BODIES:
            body = BODIES[path].encode()
            writer.write(f"{head}Content-Length: {len(body)}\r\n\r\n".encode() + body)
        elif path == "/trickle":
            writer.write(f"{head}\r\n".encode())
            while True:
                writer.write(b"#")
                await writer.drain()
                await asyncio.sleep(0.3)
        elif path == "/huge":
            writer.write(f"{head}\r\n".encode())
            line = b"vllm:num_requests_running 1\n" * 4096
            while True:
                writer.write(line)
                await writer.drain()
        await writer.drain()
    except (ConnectionError, asyncio.IncompleteReadError):
        pass
    finally:
        with contextlib.suppress(Exception):
            writer.close()


@contextlib.asynccontextmanager
async def hostile_server() -> AsyncIterator[str]:
    """Serve the paths above from a thread of its own (its work never runs on the caller's
    event loop, so tick measurements see only the agent's side); yields the base URL."""
    loop = asyncio.new_event_loop()
    started = threading.Event()
    holder: dict[str, asyncio.Server] = {}

    async def start() -> None:
        holder["server"] = await asyncio.start_server(_answer, "127.0.0.1", 0)
        started.set()

    def serve() -> None:
        loop.run_until_complete(start())
        loop.run_forever()

    thread = threading.Thread(target=serve, name="hostile-pods", daemon=True)
    thread.start()
    await asyncio.to_thread(started.wait, 5.0)
    port = holder["server"].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        loop.call_soon_threadsafe(holder["server"].close)
        loop.call_soon_threadsafe(loop.stop)
        await asyncio.to_thread(thread.join, 2.0)


@contextlib.asynccontextmanager
async def hostile_process() -> AsyncIterator[str]:
    """The same paths served by a process of its own (its CPU and interpreter lock are not the
    agent's, as with real pods on a node); yields the base URL."""
    repo = Path(__file__).resolve().parents[3]
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.unit.node_agent.hostile"],
        cwd=repo,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        port = int(await asyncio.to_thread(proc.stdout.readline))
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        await asyncio.to_thread(proc.wait, 5.0)


async def _serve_forever() -> None:
    server = await asyncio.start_server(_answer, "127.0.0.1", 0, backlog=1024)
    print(server.sockets[0].getsockname()[1], flush=True)
    await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(_serve_forever())
