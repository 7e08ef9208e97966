"""Files in a sandbox: read, write, upload, download, list, stat, mkdir, remove, rename.

Uploads and downloads are streams: a file of any size moves in pieces of CHUNK_SIZE bytes and is
never held whole in memory.
"""

from __future__ import annotations

import base64
import os
import stat as stat_module
from dataclasses import dataclass
from typing import TYPE_CHECKING, BinaryIO, Iterable, Iterator

from .client import CHUNK_SIZE
from .errors import FileNotFound

if TYPE_CHECKING:
    from .sandbox import Sandbox


def _name(d: dict, key: str) -> str:
    """A file name or path; one that is not UTF-8 comes as base64 and is decoded the way Python
    decodes such names from the OS (surrogateescape)."""
    if d.get(key) is not None:
        return d[key]
    raw = d.get(key + "_b64")
    return base64.b64decode(raw).decode("utf-8", "surrogateescape") if raw else ""


@dataclass
class FileInfo:
    """A path in a sandbox. ``type`` is "file", "dir", "symlink" or "other"; ``mode`` is the octal
    permission bits as a string ("0644"); ``mtime`` an RFC 3339 time."""

    name: str
    path: str
    type: str
    size: int = 0
    mode: str = ""
    mtime: str = ""

    @property
    def is_dir(self) -> bool:
        return self.type == "dir"

    @property
    def is_file(self) -> bool:
        return self.type == "file"

    @classmethod
    def from_json(cls, d: dict) -> "FileInfo":
        return cls(
            name=_name(d, "name"),
            path=_name(d, "path"),
            type=d.get("type", ""),
            size=int(d.get("size") or 0),
            mode=d.get("mode") or "",
            mtime=d.get("mtime") or "",
        )


def _mode(mode: int | str | None) -> str | None:
    if mode is None or isinstance(mode, str):
        return mode
    return f"{mode:04o}"


class Files:
    """The files of one sandbox: ``sbx.files``. Paths are absolute paths in the guest."""

    def __init__(self, sandbox: "Sandbox"):
        self._sandbox = sandbox

    @property
    def _base(self) -> str:
        return f"/v1/sandboxes/{self._sandbox.id}/files"

    def read(self, path: str) -> bytes:
        """The whole content of a file, as bytes."""
        return self._sandbox._client.request("GET", self._base, query={"path": path}).read()

    def read_text(self, path: str, encoding: str = "utf-8") -> str:
        """The whole content of a file, decoded."""
        return self.read(path).decode(encoding)

    def iter_read(self, path: str, chunk_size: int = CHUNK_SIZE) -> Iterator[bytes]:
        """The content of a file in pieces, as it arrives; for files too big to hold."""
        response = self._sandbox._client.request("GET", self._base, query={"path": path})
        yield from response.iter_chunks(chunk_size)

    def write(
        self,
        path: str,
        data: bytes | str | BinaryIO | Iterable[bytes],
        *,
        mode: int | str | None = None,
        size: int | None = None,
    ) -> FileInfo:
        """Writes ``data`` to ``path`` (replacing it; parent directories are created).

        ``data`` is bytes, str (written as UTF-8), a binary file object or an iterable of bytes;
        the last two are streamed (with ``size`` as Content-Length when given, else chunked).
        ``mode`` is the permission bits (0o755 or "0755"; default 0644).
        """
        response = self._sandbox._client.request(
            "PUT",
            self._base,
            query={"path": path, "mode": _mode(mode)},
            body=data,
            content_length=size,
        )
        return FileInfo.from_json(response.json())

    def upload(self, local_path: str | os.PathLike, remote_path: str, *, mode: int | str | None = None) -> FileInfo:
        """Copies a local file into the sandbox, streaming it. The file keeps its permission bits
        unless ``mode`` says otherwise."""
        with open(local_path, "rb") as f:
            st = os.fstat(f.fileno())
            if mode is None:
                mode = stat_module.S_IMODE(st.st_mode)
            size = st.st_size if stat_module.S_ISREG(st.st_mode) else None
            return self.write(remote_path, f, mode=mode, size=size)

    def download(self, remote_path: str, local: str | os.PathLike | BinaryIO) -> int:
        """Copies a file out of the sandbox, streaming it, to a local path or a writable binary
        file object; answers the number of bytes written. A regular local file appears complete
        or not at all (it is written beside its final name, then renamed)."""
        response = self._sandbox._client.request("GET", self._base, query={"path": remote_path})
        if hasattr(local, "write"):
            return self._copy(response, local)
        local_path = os.fspath(local)
        if os.path.exists(local_path) and not os.path.isfile(local_path):
            with open(local_path, "wb") as f:  # a device or a pipe: no rename
                return self._copy(response, f)
        tmp = f"{local_path}.holt-part-{os.getpid()}"
        try:
            with open(tmp, "wb") as f:
                written = self._copy(response, f)
            os.replace(tmp, local_path)
        except BaseException:
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
            raise
        return written

    @staticmethod
    def _copy(response, f: BinaryIO) -> int:
        written = 0
        try:
            for chunk in response.iter_chunks():
                f.write(chunk)
                written += len(chunk)
        finally:
            response.close()
        return written

    def list(self, path: str = "/") -> list[FileInfo]:
        """The entries of a directory."""
        d = self._sandbox._client.call("GET", f"{self._base}/list", query={"path": path})
        return [FileInfo.from_json(e) for e in d.get("entries", [])]

    def stat(self, path: str) -> FileInfo:
        """What is at ``path``; raises FileNotFound when nothing is."""
        return FileInfo.from_json(self._sandbox._client.call("GET", f"{self._base}/stat", query={"path": path}))

    def exists(self, path: str) -> bool:
        try:
            self.stat(path)
            return True
        except FileNotFound:
            return False

    def mkdir(self, path: str, *, parents: bool = True) -> FileInfo:
        """Makes a directory (and its parents, unless ``parents=False``)."""
        return FileInfo.from_json(
            self._sandbox._client.call("POST", f"{self._base}/mkdir", json_body={"path": path, "parents": parents})
        )

    def remove(self, path: str, *, recursive: bool = False) -> None:
        """Removes a file, or a directory with everything in it when ``recursive=True``."""
        query = {"path": path, "recursive": True if recursive else None}
        self._sandbox._client.request("DELETE", self._base, query=query).read()

    def rename(self, src: str, dst: str) -> FileInfo:
        """Moves ``src`` to ``dst``; answers the FileInfo of the new path."""
        return FileInfo.from_json(
            self._sandbox._client.call("POST", f"{self._base}/rename", json_body={"from": src, "to": dst})
        )
