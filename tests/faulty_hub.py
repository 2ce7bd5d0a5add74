"""Loopback servers that fail the way a Hub can fail, for the network-fault tests.

    with faulty_hub("refuse") as url: ...   # nothing listens: connection refused
    with faulty_hub("hang") as url: ...     # accepts the connection and never answers (a timeout)
    with faulty_hub(500) as url: ...        # answers every request with HTTP 500 (also 401, 403, 404, ...)

Each server listens on 127.0.0.1 only, on a free port, and stops with the block.
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


__all__ = ["faulty_hub"]


def _status_handler(status: int):
    error_codes = {404: "RepoNotFound"}

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format, *args):  # no per-request lines on stderr
            pass

        def _answer(self):
            body = json.dumps({"error": f"fake Hub answers {status}"}).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            if status in error_codes:
                self.send_header("X-Error-Code", error_codes[status])
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def _read_body_and_answer(self):  # read the body first, so the client sees the answer, not a reset
            length = int(self.headers.get("Content-Length") or 0)
            if length:
                self.rfile.read(length)
            self._answer()

        do_GET = do_HEAD = _answer  # noqa: N815 - http.server's handler names
        do_POST = do_PUT = do_DELETE = _read_body_and_answer  # noqa: N815

    return Handler


@contextlib.contextmanager
def faulty_hub(mode):
    if mode == "refuse":
        with socket.socket() as sock:  # a port that was free a moment ago and has no listener now
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        yield f"http://127.0.0.1:{port}"
        return
    if mode == "hang":
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        sock.listen(64)  # connections complete in the kernel's backlog; nothing ever reads or answers them
        try:
            yield f"http://127.0.0.1:{sock.getsockname()[1]}"
        finally:
            sock.close()
        return
    server = ThreadingHTTPServer(("127.0.0.1", 0), _status_handler(int(mode)))
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
