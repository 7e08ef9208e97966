"""The HTTP transport under the SDK: one :class:`Client` per API URL and key.

It speaks HTTP/1.1 with ``http.client`` and keeps idle keep-alive connections in a small pool,
so a sequence of calls does not pay a TCP handshake each. Responses that stream (NDJSON exec
events, file downloads) hold their connection until they are read to the end or closed.
"""

from __future__ import annotations

import http.client
import json
import os
import socket
import threading
import urllib.parse
from typing import Any, BinaryIO, Iterable, Iterator, Mapping

from .errors import ConnectionFailed, HoltError, error_for

DEFAULT_API_URL = "http://127.0.0.1:7070"

# Seconds a single socket read or write may block. Operations that restore or save VMs (create,
# fork, snapshot, hibernate, wake) can take a while on a cold template, hence the generous default.
DEFAULT_TIMEOUT = 300.0

# Bytes per read and per send when files move: large enough to keep the connection busy,
# small enough that memory use stays flat whatever the file's size.
CHUNK_SIZE = 1 << 20

_POOL_SIZE = 8

Body = bytes | str | BinaryIO | Iterable[bytes] | None


class Response:
    """An answer whose body has not been read yet. Read it with :meth:`read`, :meth:`iter_chunks`
    or :meth:`iter_lines`, or use it as a context manager; its connection goes back to the pool
    once the body is read to the end, and is dropped if it is closed early."""

    def __init__(self, client: "Client", conn: http.client.HTTPConnection, raw: http.client.HTTPResponse):
        self._client = client
        self._conn: http.client.HTTPConnection | None = conn
        self.raw = raw
        self.status = raw.status
        self.headers = raw.headers

    def read(self) -> bytes:
        try:
            data = self.raw.read()
        except (OSError, http.client.HTTPException) as e:
            self._drop()
            raise ConnectionFailed(f"read answer: {e}") from e
        self._release()
        return data

    def json(self) -> Any:
        data = self.read()
        if not data:
            return None
        try:
            return json.loads(data)
        except ValueError as e:
            raise HoltError(f"answer is not JSON: {data[:200]!r}", code="bad_response", status=self.status) from e

    def iter_chunks(self, size: int = CHUNK_SIZE) -> Iterator[bytes]:
        """The body in pieces of at most ``size`` bytes, as they arrive."""
        try:
            while True:
                try:
                    chunk = self.raw.read1(size)
                except (OSError, http.client.HTTPException) as e:
                    raise ConnectionFailed(f"read answer: {e}") from e
                if not chunk:
                    break
                yield chunk
        except BaseException:
            self._drop()
            raise
        self._release()

    def iter_lines(self) -> Iterator[bytes]:
        """The body line by line (without the newline), each as soon as it is complete."""
        try:
            while True:
                try:
                    line = self.raw.readline()
                except (OSError, http.client.HTTPException) as e:
                    raise ConnectionFailed(f"read answer: {e}") from e
                if not line:
                    break
                line = line.rstrip(b"\r\n")
                if line:
                    yield line
        except BaseException:
            self._drop()
            raise
        self._release()

    def close(self) -> None:
        """Abandons the rest of the body; the connection is closed, not reused."""
        self._drop()

    def __enter__(self) -> "Response":
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._conn is not None:
            self._drop()

    def _release(self) -> None:
        if self._conn is not None:
            conn, self._conn = self._conn, None
            if not self.raw.isclosed():
                # Drained by read1/readline: let http.client see the end so the connection is idle.
                try:
                    self.raw.read()
                except (OSError, http.client.HTTPException):
                    conn.close()
                    return
            if self.raw.will_close:
                conn.close()
            else:
                self._client._give_back(conn)

    def _drop(self) -> None:
        if self._conn is not None:
            conn, self._conn = self._conn, None
            conn.close()


class Client:
    """A connection to one Holt API with one API key.

    ``api_url`` defaults to ``$HOLT_API_URL`` (else http://127.0.0.1:7070) and ``api_key`` to
    ``$HOLT_API_KEY``. ``timeout`` is how long one socket read or write may block, in seconds.
    A Client is safe to share between threads.
    """

    def __init__(self, api_key: str | None = None, api_url: str | None = None, *, timeout: float = DEFAULT_TIMEOUT):
        self.api_url = (api_url or os.environ.get("HOLT_API_URL") or DEFAULT_API_URL).rstrip("/")
        self.api_key = api_key if api_key is not None else os.environ.get("HOLT_API_KEY")
        self.timeout = timeout
        parts = urllib.parse.urlsplit(self.api_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"api_url must be an http:// or https:// URL, not {self.api_url!r}")
        self._scheme = parts.scheme
        self._host = parts.hostname
        self._port = parts.port
        self._prefix = parts.path.rstrip("/")
        self._pool: list[http.client.HTTPConnection] = []
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"Client(api_url={self.api_url!r})"

    # Requests ----------------------------------------------------------------------------------

    def request(
        self,
        method: str,
        path: str,
        *,
        query: Mapping[str, Any] | Iterable[tuple[str, Any]] | None = None,
        json_body: Any = None,
        body: Body = None,
        content_length: int | None = None,
        headers: Mapping[str, str] | None = None,
        timeout: float | None | bool = False,
    ) -> Response:
        """Sends a request and answers the response with its body unread. An error status raises
        the HoltError for the API's error code.

        ``body`` may be bytes, str, a binary file object or an iterable of bytes; a file or an
        iterable is streamed with ``content_length`` if given, else with chunked encoding.
        ``timeout`` overrides the client's socket timeout (``None``: wait forever).
        """
        target = self._prefix + path
        if query:
            items = query.items() if isinstance(query, Mapping) else query
            pairs = [(k, _query_value(v)) for k, v in items if v is not None]
            if pairs:
                target += "?" + urllib.parse.urlencode(pairs, quote_via=urllib.parse.quote)
        hdrs = {"Accept": "application/json", "User-Agent": "holt-python/0.1"}
        if self.api_key:
            hdrs["Authorization"] = f"Bearer {self.api_key}"
        if json_body is not None:
            body = json.dumps(json_body).encode()
            hdrs["Content-Type"] = "application/json"
        elif body is not None:
            hdrs["Content-Type"] = "application/octet-stream"
        if isinstance(body, str):
            body = body.encode()
        chunked = False
        if isinstance(body, bytes):
            hdrs["Content-Length"] = str(len(body))
        elif body is not None:
            if content_length is not None:
                hdrs["Content-Length"] = str(content_length)
            else:
                chunked = True
        elif method in ("POST", "PUT", "PATCH"):
            hdrs["Content-Length"] = "0"
        if headers:
            hdrs.update(headers)
        sock_timeout = self.timeout if timeout is False else timeout

        # A pooled connection may have been closed by the server while idle; that shows as a
        # reset or an empty answer before any byte of the response. Such a request is sent again
        # once on a fresh connection, when its body can be replayed.
        replayable = body is None or isinstance(body, bytes)
        for attempt in (0, 1):
            conn, reused = self._take(sock_timeout)
            try:
                conn.request(method, target, body=body, headers=hdrs, encode_chunked=chunked)
                raw = conn.getresponse()
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError) as e:
                conn.close()
                if reused and replayable and attempt == 0:
                    continue
                raise ConnectionFailed(f"{method} {target}: {e}") from e
            except (OSError, http.client.HTTPException) as e:
                conn.close()
                raise ConnectionFailed(f"{method} {target}: {_describe(e, self.api_url)}") from e
            break
        response = Response(self, conn, raw)
        if raw.status >= 400:
            raise self._error(response)
        return response

    def call(self, method: str, path: str, **kwargs: Any) -> Any:
        """Sends a request and answers its decoded JSON body (None for an empty body)."""
        return self.request(method, path, **kwargs).json()

    def templates(self) -> list[dict]:
        """The templates sandboxes can be created from: ``[{"name": ..., "built": ...}]``."""
        return self.call("GET", "/v1/templates")["templates"]

    # Connections -------------------------------------------------------------------------------

    def _take(self, timeout: float | None) -> tuple[http.client.HTTPConnection, bool]:
        with self._lock:
            conn = self._pool.pop() if self._pool else None
        if conn is not None:
            conn.timeout = timeout
            if conn.sock is not None:
                conn.sock.settimeout(timeout)
            return conn, True
        cls = http.client.HTTPSConnection if self._scheme == "https" else http.client.HTTPConnection
        conn = cls(self._host, self._port, timeout=timeout, blocksize=CHUNK_SIZE)
        return conn, False

    def _give_back(self, conn: http.client.HTTPConnection) -> None:
        with self._lock:
            if len(self._pool) < _POOL_SIZE:
                self._pool.append(conn)
                return
        conn.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass

    def close(self) -> None:
        """Closes the idle connections."""
        with self._lock:
            pool, self._pool = self._pool, []
        for conn in pool:
            conn.close()

    @staticmethod
    def _error(response: Response) -> HoltError:
        status = response.status
        try:
            data = response.read()
        except HoltError:
            data = b""
        code, message = None, None
        try:
            err = json.loads(data).get("error", {})
            code, message = err.get("code"), err.get("message")
        except (ValueError, AttributeError):
            pass
        if not message:
            text = data.decode("utf-8", "replace").strip()[:500]
            message = text or f"HTTP {status} {response.raw.reason}"
        return error_for(code, message, status)


def _query_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    return str(v)


def _describe(e: BaseException, url: str) -> str:
    if isinstance(e, ConnectionRefusedError):
        return f"connection refused by {url}: is holt-sandboxd running?"
    if isinstance(e, socket.timeout):
        return "timed out waiting for the service"
    return str(e) or type(e).__name__


_default_client: Client | None = None
_default_lock = threading.Lock()


def default_client() -> Client:
    """The Client built from HOLT_API_URL and HOLT_API_KEY, made on first use and shared.
    It is rebuilt if either variable changed since."""
    global _default_client
    url = (os.environ.get("HOLT_API_URL") or DEFAULT_API_URL).rstrip("/")
    key = os.environ.get("HOLT_API_KEY")
    with _default_lock:
        c = _default_client
        if c is None or c.api_url != url or c.api_key != key:
            c = _default_client = Client()
        return c


def resolve_client(client: Client | None, api_key: str | None, api_url: str | None) -> Client:
    if client is not None:
        return client
    if api_key is None and api_url is None:
        return default_client()
    return Client(api_key=api_key, api_url=api_url)
