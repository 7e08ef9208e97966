"""Errors raised by the Holt SDK.

Every error the API answers becomes a :class:`HoltError` subclass chosen by the API's stable
error code (falling back to the HTTP status), carrying ``code``, ``message`` and ``status``.
"""

from __future__ import annotations

from typing import Any


class HoltError(Exception):
    """An error answered by the Holt API, or a failure to reach it.

    Attributes:
        code: the API's stable error code (``"not_found"``, ``"sandbox_gone"``, ...).
        message: what failed and why, as the service said it.
        status: the HTTP status, or ``None`` when the service was not reached.
    """

    default_code = "error"

    def __init__(self, message: str, *, code: str | None = None, status: int | None = None):
        super().__init__(message)
        self.code = code or self.default_code
        self.message = message
        self.status = status

    def __str__(self) -> str:
        prefix = f"{self.code} ({self.status})" if self.status else self.code
        return f"{prefix}: {self.message}"


class BadRequest(HoltError):
    """400: malformed request, a missing or wrong-typed field, a value out of range."""

    default_code = "bad_request"


class UnknownTemplate(BadRequest):
    """400: the template named in a create does not exist."""

    default_code = "unknown_template"


class Unauthorized(HoltError):
    """401: no API key, or an unknown or revoked one."""

    default_code = "unauthorized"


class NotFound(HoltError):
    """404: no such sandbox, snapshot, process or key (for this tenant)."""

    default_code = "not_found"


class FileNotFound(NotFound):
    """404: no such path in the sandbox."""

    default_code = "file_not_found"


class Conflict(HoltError):
    """409: the request does not fit the object's state (e.g. a path that exists)."""

    default_code = "conflict"


class SandboxGone(HoltError):
    """410: the sandbox was killed or expired; the message says when and why."""

    default_code = "sandbox_gone"


class PayloadTooLarge(HoltError):
    """413: the request body is over a limit."""

    default_code = "payload_too_large"


class LimitExceeded(HoltError):
    """429: over a tenant or sandbox limit; the message names the limit."""

    default_code = "limit_exceeded"


class InternalError(HoltError):
    """500: the service failed."""

    default_code = "internal"


class Unavailable(HoltError):
    """503: the sandbox's VM did not answer."""

    default_code = "unavailable"


class DiskFull(HoltError):
    """507: the sandbox's own disk is full."""

    default_code = "disk_full"


class ConnectionFailed(HoltError):
    """The service could not be reached, or the connection broke mid-answer (no HTTP status)."""

    default_code = "connection_failed"


class ExecTimeout(HoltError):
    """A command ran past its timeout and was killed.

    ``result`` is the :class:`holt.ExecResult` with the output produced before the kill.
    """

    default_code = "exec_timeout"

    def __init__(self, message: str, result: Any = None):
        super().__init__(message)
        self.result = result


_BY_CODE: dict[str, type[HoltError]] = {
    cls.default_code: cls
    for cls in (
        BadRequest,
        UnknownTemplate,
        Unauthorized,
        NotFound,
        FileNotFound,
        Conflict,
        SandboxGone,
        PayloadTooLarge,
        LimitExceeded,
        InternalError,
        Unavailable,
        DiskFull,
    )
}

_BY_STATUS: dict[int, type[HoltError]] = {
    400: BadRequest,
    401: Unauthorized,
    403: Unauthorized,
    404: NotFound,
    409: Conflict,
    410: SandboxGone,
    413: PayloadTooLarge,
    429: LimitExceeded,
    500: InternalError,
    503: Unavailable,
}


def error_for(code: str | None, message: str, status: int | None) -> HoltError:
    """The HoltError subclass for an API error code (or, for unknown codes, its HTTP status)."""
    cls = _BY_CODE.get(code or "")
    if cls is None and status is not None:
        cls = _BY_STATUS.get(status, HoltError)
    if cls is None:
        cls = HoltError
    return cls(message, code=code or cls.default_code, status=status)
