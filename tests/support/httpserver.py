"""A plain HTTP server on 127.0.0.1 for tests that need a scrape target (serving, DCGM)."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

#: Answers one GET path with its body, or None for 404.
Route = Callable[[str], str | None]


@contextlib.contextmanager
def http_server(route: Route) -> Iterator[int]:
    """Serve `route` on an ephemeral 127.0.0.1 port; yields the port, shuts down on exit."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            text = route(self.path)
            body = (text if text is not None else "not found").encode()
            self.send_response(200 if text is not None else 404)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield int(server.server_address[1])
    finally:
        server.shutdown()
        server.server_close()
