"""A local HTTP server (127.0.0.1) that plays well-behaved and hostile serving pods.

Paths: `/good` (a vLLM exposition), `/inf` (running requests = +Inf), `/trickle` (one byte
every 0.3 s, forever), `/huge` (an endless body), `/empty` (200 with no body) and
`/dcgm-other` (another node's dcgm-exporter series).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

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
BODIES = {"/good": GOOD, "/inf": INF, "/empty": "", "/dcgm-other": OTHER_NODE_DCGM}


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
    """Serve the paths above; yields the base URL."""
    server = await asyncio.start_server(_answer, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(server.wait_closed(), timeout=1.0)
