"""A small in-process HTTP server that plays the Holt API for the SDK's unit tests.

Tests register handlers per (method, path); each request is recorded with its decoded body, so a
test can check what the SDK sent. A handler answers a Reply, or a generator of bytes, which is sent
with chunked encoding piece by piece (for NDJSON streams).
"""

from __future__ import annotations

import hashlib
import http.server
import json
import re
import threading
import urllib.parse
from dataclasses import dataclass, field
from typing import Any, Callable


@dataclass
class Recorded:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: bytes
    body_size: int
    body_sha256: str
    chunked: bool
    client_port: int

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Reply:
    status: int = 200
    body: Any = None  # dict/list: sent as JSON; bytes: as is
    headers: dict[str, str] = field(default_factory=dict)


def error(status: int, code: str, message: str) -> Reply:
    return Reply(status, {"error": {"code": code, "message": message}})


Handler = Callable[[Recorded, re.Match], Any]


class FakeHolt:
    """Serves on 127.0.0.1 on a free port; ``url`` is its base URL."""

    def __init__(self) -> None:
        self.routes: list[tuple[str, re.Pattern, Handler]] = []
        self.requests: list[Recorded] = []
        # Bodies bigger than this are hashed as they stream in, not kept.
        self.keep_body_limit = 1 << 20
        fake = self

        class RequestHandler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def _read_body(self) -> tuple[bytes, int, str, bool]:
                digest = hashlib.sha256()
                kept = bytearray()
                size = 0

                def take(data: bytes) -> None:
                    nonlocal size
                    digest.update(data)
                    size += len(data)
                    if len(kept) < fake.keep_body_limit:
                        kept.extend(data)

                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    while True:
                        n = int(self.rfile.readline().split(b";")[0], 16)
                        if n == 0:
                            while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                                pass
                            break
                        while n > 0:
                            piece = self.rfile.read(min(n, 1 << 20))
                            take(piece)
                            n -= len(piece)
                        self.rfile.readline()
                    return bytes(kept), size, digest.hexdigest(), True
                remaining = int(self.headers.get("Content-Length") or 0)
                while remaining > 0:
                    piece = self.rfile.read(min(remaining, 1 << 20))
                    if not piece:
                        break
                    take(piece)
                    remaining -= len(piece)
                return bytes(kept), size, digest.hexdigest(), False

            def _handle(self) -> None:
                url = urllib.parse.urlsplit(self.path)
                body, size, sha, chunked = self._read_body()
                rec = Recorded(
                    method=self.command,
                    path=url.path,
                    query=dict(urllib.parse.parse_qsl(url.query)),
                    headers={k.lower(): v for k, v in self.headers.items()},
                    body=body,
                    body_size=size,
                    body_sha256=sha,
                    chunked=chunked,
                    client_port=self.client_address[1],
                )
                fake.requests.append(rec)
                for method, pattern, handler in fake.routes:
                    m = pattern.fullmatch(url.path)
                    if method == self.command and m:
                        self._answer(handler(rec, m))
                        return
                self._answer(error(404, "not_found", f"no route {self.command} {url.path}"))

            def _answer(self, reply: Any) -> None:
                if isinstance(reply, Reply):
                    if isinstance(reply.body, (bytes, bytearray)):
                        data, ctype = bytes(reply.body), "application/octet-stream"
                    elif reply.body is None:
                        data, ctype = b"", None
                    else:
                        data, ctype = json.dumps(reply.body).encode(), "application/json"
                    self.send_response(reply.status)
                    if ctype:
                        self.send_header("Content-Type", ctype)
                    self.send_header("Content-Length", str(len(data)))
                    for k, v in reply.headers.items():
                        self.send_header(k, v)
                    self.end_headers()
                    self.wfile.write(data)
                    return
                # A generator: a streamed, chunked 200 answer.
                self.send_response(200)
                self.send_header("Content-Type", "application/x-ndjson")
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                for piece in reply:
                    if isinstance(piece, dict):
                        piece = (json.dumps(piece) + "\n").encode()
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
                    self.wfile.flush()
                self.wfile.write(b"0\r\n\r\n")
                self.wfile.flush()

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _handle

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), RequestHandler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self.thread.start()

    def route(self, method: str, path: str, handler: Handler | Reply | dict) -> None:
        """Answers requests to ``path`` (a regex matched against the whole path)."""
        if not callable(handler):
            reply = handler if isinstance(handler, Reply) else Reply(200, handler)
            handler = lambda rec, m: reply  # noqa: E731
        self.routes.insert(0, (method, re.compile(path), handler))

    def last(self, method: str | None = None) -> Recorded:
        for rec in reversed(self.requests):
            if method is None or rec.method == method:
                return rec
        raise AssertionError("no request recorded")

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
