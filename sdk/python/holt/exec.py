"""Commands in a sandbox: results, NDJSON event streams and background processes."""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Iterable

from .errors import ExecTimeout, HoltError, error_for

if TYPE_CHECKING:
    from .client import Response
    from .sandbox import Sandbox

OutputCallback = Callable[[str], Any]


@dataclass
class ExecResult:
    """What a finished command left: its output, exit code and how long it ran.

    ``exit_code`` is None when the command was killed by a signal (then ``signal`` is set).
    """

    stdout: str = ""
    stderr: str = ""
    exit_code: int | None = None
    signal: int | None = None
    timed_out: bool = False
    duration_ms: float = 0.0
    pid: int | None = None

    @property
    def ok(self) -> bool:
        """True when the command exited with status 0."""
        return self.exit_code == 0

    def check(self) -> "ExecResult":
        """Raises CommandFailed unless the command exited with status 0; answers self."""
        if not self.ok:
            raise CommandFailed(self)
        return self

    @classmethod
    def from_json(cls, d: dict) -> "ExecResult":
        return cls(
            stdout=output_text(d, "stdout"),
            stderr=output_text(d, "stderr"),
            exit_code=d.get("exit_code"),
            signal=d.get("signal"),
            timed_out=bool(d.get("timed_out")),
            duration_ms=float(d.get("duration_ms") or 0),
            pid=d.get("pid"),
        )


class CommandFailed(HoltError):
    """Raised by :meth:`ExecResult.check` for a command that did not exit with status 0."""

    default_code = "command_failed"

    def __init__(self, result: ExecResult):
        how = f"exit code {result.exit_code}" if result.exit_code is not None else f"signal {result.signal}"
        tail = result.stderr.strip().splitlines()[-1:] if result.stderr else []
        super().__init__(f"command failed with {how}" + (f": {tail[0]}" if tail else ""))
        self.result = result


def output_text(d: dict, key: str) -> str:
    """Output under ``key``, or under ``key + "_b64"`` when it was not UTF-8: then decoded, its
    invalid sequences replaced."""
    if d.get(key) is not None:
        return d[key]
    raw = d.get(key + "_b64")
    if raw is None:
        return ""
    return base64.b64decode(raw).decode("utf-8", "replace")


def event_data(event: dict) -> str:
    """The output text of a stdout/stderr event (see output_text)."""
    return output_text(event, "data")


def consume_events(
    lines: Iterable[bytes],
    on_stdout: OutputCallback | None,
    on_stderr: OutputCallback | None,
    *,
    timeout: float | None = None,
) -> ExecResult:
    """Reads NDJSON exec events to the end, calls the callbacks with output as it arrives and
    answers the result. An ``error`` event raises its HoltError; a timed-out command raises
    ExecTimeout carrying the result."""
    out: list[str] = []
    err: list[str] = []
    result: ExecResult | None = None
    pid = None
    for line in lines:
        try:
            event = json.loads(line)
        except ValueError as e:
            raise HoltError(f"exec stream: line is not JSON: {line[:200]!r}", code="bad_response") from e
        kind = event.get("type")
        if kind == "stdout":
            text = event_data(event)
            out.append(text)
            if on_stdout:
                on_stdout(text)
        elif kind == "stderr":
            text = event_data(event)
            err.append(text)
            if on_stderr:
                on_stderr(text)
        elif kind == "start":
            pid = event.get("pid")
        elif kind == "exit":
            result = ExecResult.from_json(event)
            result.pid = pid
        elif kind == "error":
            raise error_for(event.get("code"), event.get("message") or "exec failed", None)
        # Unknown event types are skipped: newer services may add some.
    if result is None:
        raise HoltError("exec stream ended before the command's exit event", code="connection_failed")
    result.stdout = "".join(out)
    result.stderr = "".join(err)
    if result.timed_out:
        raise ExecTimeout(_timeout_message(timeout), result)
    return result


def check_timeout(result: ExecResult, timeout: float | None) -> ExecResult:
    if result.timed_out:
        raise ExecTimeout(_timeout_message(timeout), result)
    return result


def _timeout_message(timeout: float | None) -> str:
    after = f" after {timeout:g}s" if timeout else ""
    return f"command killed: it ran past its timeout{after}"


@dataclass
class Process:
    """A command started with :meth:`Sandbox.exec_background` (or listed by
    :meth:`Sandbox.processes`). ``running``, ``exit_code`` and ``signal`` are as of the last
    listing; :meth:`wait` and :meth:`output` give the final result."""

    sandbox: "Sandbox" = field(repr=False)
    pid: int
    argv: list[str] = field(default_factory=list)
    running: bool = True
    exit_code: int | None = None
    signal_number: int | None = None

    def output(self, on_stdout: OutputCallback | None = None, on_stderr: OutputCallback | None = None) -> ExecResult:
        """Re-attaches to the process: delivers the output kept so far, then live output, to the
        callbacks, until it exits; answers its result (with all the output kept)."""
        response: "Response" = self.sandbox._client.request(
            "GET",
            f"/v1/sandboxes/{self.sandbox.id}/processes/{self.pid}/output",
            headers={"Accept": "application/x-ndjson"},
            timeout=None,
        )
        with response:
            result = consume_events(response.iter_lines(), on_stdout, on_stderr)
        self.running = False
        self.exit_code, self.signal_number = result.exit_code, result.signal
        return result

    def wait(self) -> ExecResult:
        """Blocks until the process exits; answers its result."""
        return self.output()

    def signal(self, sig: str | int = "TERM") -> None:
        """Sends a signal (a name such as "TERM", "KILL", "INT", or a number) to its process group."""
        if isinstance(sig, str) and sig.upper().startswith("SIG"):
            sig = sig[3:]
        self.sandbox._client.request(
            "POST",
            f"/v1/sandboxes/{self.sandbox.id}/processes/{self.pid}/signal",
            json_body={"signal": sig.upper() if isinstance(sig, str) else int(sig)},
        ).read()

    def kill(self) -> None:
        """Sends SIGKILL."""
        self.signal("KILL")
