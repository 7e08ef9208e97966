"""Holt: isolated microVMs as an API.

    from holt import Sandbox
    with Sandbox.create(template="code-interpreter", ttl_seconds=300) as sbx:
        print(sbx.exec("python3 -c 'print(6*7)'").stdout)

The API URL and key come from HOLT_API_URL (default http://127.0.0.1:7070) and HOLT_API_KEY,
unless ``api_url=`` and ``api_key=`` (or a ``client=``) are given.
"""

from .client import Client
from .errors import (
    BadRequest,
    Conflict,
    ConnectionFailed,
    DiskFull,
    ExecTimeout,
    FileNotFound,
    HoltError,
    InternalError,
    LimitExceeded,
    NotFound,
    PayloadTooLarge,
    SandboxGone,
    Unauthorized,
    Unavailable,
    UnknownTemplate,
)
from .exec import CommandFailed, ExecResult, Process
from .files import FileInfo, Files
from .sandbox import Key, Keys, Sandbox, Snapshot

__version__ = "0.1.0"

__all__ = [
    "BadRequest",
    "Client",
    "CommandFailed",
    "Conflict",
    "ConnectionFailed",
    "ExecResult",
    "ExecTimeout",
    "FileInfo",
    "FileNotFound",
    "Files",
    "HoltError",
    "InternalError",
    "Key",
    "Keys",
    "LimitExceeded",
    "NotFound",
    "PayloadTooLarge",
    "Process",
    "Sandbox",
    "SandboxGone",
    "Snapshot",
    "Unauthorized",
    "Unavailable",
    "DiskFull",
    "UnknownTemplate",
]
