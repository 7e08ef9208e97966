"""Sandboxes: isolated microVMs created from a template or a snapshot."""

from __future__ import annotations

from typing import Any, Iterable, Mapping, Sequence

from .client import Client, resolve_client
from .errors import NotFound, SandboxGone
from .exec import ExecResult, OutputCallback, Process, check_timeout, consume_events
from .files import Files

# Seconds added to a command's own timeout before the client stops waiting for the service.
_EXEC_GRACE = 30.0
_DEFAULT_EXEC_TIMEOUT = 60.0


def _exec_body(
    cmd: str | Sequence[str],
    env: Mapping[str, str] | None,
    cwd: str | None,
    timeout: float | None,
    stdin: str | bytes | None,
    user: str | None,
) -> dict:
    body: dict[str, Any] = {}
    if isinstance(cmd, str):
        body["cmd"] = cmd
    else:
        body["argv"] = [str(a) for a in cmd]
        if not body["argv"]:
            raise ValueError("exec needs a command: argv is empty")
    if env:
        body["env"] = dict(env)
    if cwd is not None:
        body["cwd"] = cwd
    if user is not None:
        body["user"] = user
    if timeout is not None:
        body["timeout_seconds"] = timeout
    if stdin is not None:
        # TODO(sdk): the API takes stdin as a JSON string, so binary stdin must be UTF-8 here.
        body["stdin"] = stdin.decode("utf-8") if isinstance(stdin, bytes) else stdin
    return body


def _socket_timeout(timeout: float | None) -> float | None:
    if timeout == 0:
        return None  # the command may run forever; so may the wait for it
    return (timeout if timeout is not None else _DEFAULT_EXEC_TIMEOUT) + _EXEC_GRACE


class Sandbox:
    """An isolated microVM. Create one with :meth:`create`, find one with :meth:`connect` or
    :meth:`list`. Used as a context manager, it is killed when the block ends.

    Its attributes mirror the API's Sandbox object as of the last call that answered it:
    ``id``, ``template``, ``state`` ("running", "hibernated" or "killed"), ``vcpus``,
    ``memory_mib``, ``created_at``, ``ttl_seconds``, ``expires_at``, ``on_expire``,
    ``metadata``, ``network``, ``parent_id``, ``snapshot_id``, ``ended_at``, ``end_reason``;
    the whole object is in ``data``.
    """

    def __init__(self, data: dict, client: Client):
        self._client = client
        self.files = Files(self)
        self._update(data)

    def _update(self, data: dict) -> "Sandbox":
        self.data = data
        self.id: str = data["id"]
        self.template: str | None = data.get("template")
        self.state: str | None = data.get("state")
        self.vcpus: int | None = data.get("vcpus")
        self.memory_mib: int | None = data.get("memory_mib")
        self.created_at: str | None = data.get("created_at")
        self.ttl_seconds: int | None = data.get("ttl_seconds")
        self.expires_at: str | None = data.get("expires_at")
        self.on_expire: str | None = data.get("on_expire")
        self.metadata: dict[str, str] = data.get("metadata") or {}
        self.network: dict | None = data.get("network")
        self.parent_id: str | None = data.get("parent_id")
        self.snapshot_id: str | None = data.get("snapshot_id")
        self.ended_at: str | None = data.get("ended_at")
        self.end_reason: str | None = data.get("end_reason")
        return self

    def __repr__(self) -> str:
        return f"Sandbox(id={self.id!r}, template={self.template!r}, state={self.state!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Sandbox) and other.id == self.id

    def __hash__(self) -> int:
        return hash(self.id)

    @property
    def _path(self) -> str:
        return f"/v1/sandboxes/{self.id}"

    # Finding and making sandboxes --------------------------------------------------------------

    @classmethod
    def create(
        cls,
        template: str | None = None,
        *,
        ttl_seconds: int | None = None,
        env: Mapping[str, str] | None = None,
        metadata: Mapping[str, str] | None = None,
        vcpus: int | None = None,
        memory_mib: int | None = None,
        network: Mapping[str, Any] | bool | None = None,
        snapshot_id: str | None = None,
        on_expire: str | None = None,
        api_key: str | None = None,
        api_url: str | None = None,
        client: Client | None = None,
    ) -> "Sandbox":
        """Creates a sandbox from ``template`` (or from the snapshot ``snapshot_id``) and answers
        it once it runs commands.

        ``ttl_seconds``: the sandbox is killed (or hibernated, with ``on_expire="hibernate"``)
        that many seconds from now; None means no expiry. ``env`` is the environment of every
        command. ``network``: None gives no network device; ``True`` or ``{}`` a device with all
        egress denied; ``{"allow_egress": ["1.2.3.0/24"]}`` allows those destinations.
        """
        client = resolve_client(client, api_key, api_url)
        body: dict[str, Any] = {}
        for key, value in (
            ("template", template),
            ("snapshot_id", snapshot_id),
            ("ttl_seconds", ttl_seconds),
            ("on_expire", on_expire),
            ("vcpus", vcpus),
            ("memory_mib", memory_mib),
        ):
            if value is not None:
                body[key] = value
        if env:
            body["env"] = dict(env)
        if metadata:
            body["metadata"] = dict(metadata)
        if network is True:
            body["network"] = {}
        elif network:
            body["network"] = dict(network)
        elif network is not None and network is not False:
            body["network"] = {}
        return cls(client.call("POST", "/v1/sandboxes", json_body=body), client)

    @classmethod
    def connect(
        cls, sandbox_id: str, *, api_key: str | None = None, api_url: str | None = None, client: Client | None = None
    ) -> "Sandbox":
        """The existing sandbox ``sandbox_id``; raises NotFound if this key cannot see it."""
        client = resolve_client(client, api_key, api_url)
        return cls(client.call("GET", f"/v1/sandboxes/{sandbox_id}"), client)

    @classmethod
    def list(
        cls,
        state: str | None = None,
        metadata: Mapping[str, str] | None = None,
        *,
        limit: int | None = None,
        api_key: str | None = None,
        api_url: str | None = None,
        client: Client | None = None,
    ) -> list["Sandbox"]:
        """The tenant's sandboxes, newest first: running and hibernated ones unless ``state``
        says otherwise ("running", "hibernated" or "killed"); with ``metadata``, only those whose
        metadata has every one of these keys and values."""
        client = resolve_client(client, api_key, api_url)
        query: list[tuple[str, Any]] = [("state", state), ("limit", limit)]
        for k, v in (metadata or {}).items():
            query.append((f"metadata[{k}]", v))
        d = client.call("GET", "/v1/sandboxes", query=query)
        return [cls(s, client) for s in d.get("sandboxes", [])]

    # Lifecycle ---------------------------------------------------------------------------------

    def refresh(self) -> "Sandbox":
        """Reloads this sandbox's attributes from the service."""
        return self._update(self._client.call("GET", self._path))

    def kill(self) -> "Sandbox":
        """Kills the sandbox: its VM and disk go. Killing a killed sandbox is not an error."""
        return self._update(self._client.call("DELETE", self._path))

    def set_ttl(self, seconds: int | None) -> "Sandbox":
        """The sandbox now expires ``seconds`` from now; None removes the expiry."""
        return self.update(ttl_seconds=seconds)

    _UNSET: Any = object()

    def update(
        self, *, ttl_seconds: Any = _UNSET, on_expire: str | None = None, metadata: Mapping[str, str] | None = None
    ) -> "Sandbox":
        """Changes the TTL (seconds from now, or None for no expiry), ``on_expire`` or
        ``metadata``; only the arguments given are changed."""
        body: dict[str, Any] = {}
        if ttl_seconds is not Sandbox._UNSET:
            body["ttl_seconds"] = ttl_seconds
        if on_expire is not None:
            body["on_expire"] = on_expire
        if metadata is not None:
            body["metadata"] = dict(metadata)
        return self._update(self._client.call("PATCH", self._path, json_body=body))

    def hibernate(self) -> "Sandbox":
        """Saves the VM to disk and stops it; its files and processes come back on wake."""
        return self._update(self._client.call("POST", f"{self._path}/hibernate"))

    def wake(self) -> "Sandbox":
        """Restores a hibernated sandbox. (exec and file calls wake it by themselves too.)"""
        return self._update(self._client.call("POST", f"{self._path}/wake"))

    def snapshot(self, name: str | None = None) -> "Snapshot":
        """Saves the sandbox as a named snapshot to create sandboxes from; it keeps running."""
        body = {"name": name} if name is not None else {}
        return Snapshot(self._client.call("POST", f"{self._path}/snapshots", json_body=body), self._client)

    def fork(self, count: int = 1) -> list["Sandbox"]:
        """``count`` new sandboxes (1..16), each a copy of this one at this moment."""
        d = self._client.call("POST", f"{self._path}/fork", json_body={"count": count})
        return [Sandbox(s, self._client) for s in d.get("sandboxes", [])]

    def __enter__(self) -> "Sandbox":
        return self

    def __exit__(self, *exc: Any) -> None:
        try:
            self.kill()
        except (NotFound, SandboxGone):
            pass

    # Commands ----------------------------------------------------------------------------------

    def exec(
        self,
        cmd: str | Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
        timeout: float | None = None,
        stdin: str | bytes | None = None,
        user: str | None = None,
        on_stdout: OutputCallback | None = None,
        on_stderr: OutputCallback | None = None,
    ) -> ExecResult:
        """Runs a command and answers its ExecResult (stdout, stderr, exit_code, duration_ms).

        ``cmd`` is a shell command line (run by /bin/sh -c) or an argv list. ``timeout`` is in
        seconds (default: the service's, 60 s; 0: none); a command that runs past it is killed
        and ExecTimeout is raised, carrying the partial result. With ``on_stdout`` or
        ``on_stderr``, output is streamed: each callback gets text as the command writes it.
        A non-zero exit code is not an error; use ``result.check()`` for that.
        """
        body = _exec_body(cmd, env, cwd, timeout, stdin, user)
        sock_timeout = _socket_timeout(timeout)
        if on_stdout is None and on_stderr is None:
            d = self._client.call("POST", f"{self._path}/exec", json_body=body, timeout=sock_timeout)
            return check_timeout(ExecResult.from_json(d), timeout)
        body["stream"] = True
        response = self._client.request(
            "POST",
            f"{self._path}/exec",
            json_body=body,
            headers={"Accept": "application/x-ndjson"},
            timeout=sock_timeout,
        )
        with response:
            return consume_events(response.iter_lines(), on_stdout, on_stderr, timeout=timeout)

    def exec_background(
        self,
        cmd: str | Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
        timeout: float | None = 0,
        stdin: str | bytes | None = None,
        user: str | None = None,
    ) -> Process:
        """Starts a command and answers at once with its Process, to read its output, wait for
        it or signal it later. Unlike :meth:`exec`, the default ``timeout`` is 0 (none)."""
        body = _exec_body(cmd, env, cwd, timeout, stdin, user)
        body["background"] = True
        d = self._client.call("POST", f"{self._path}/exec", json_body=body)
        argv = body.get("argv") or ["/bin/sh", "-c", body["cmd"]]
        return Process(self, int(d["pid"]), argv=argv)

    def processes(self) -> list[Process]:
        """The commands started in the background or streamed, running or finished."""
        d = self._client.call("GET", f"{self._path}/processes")
        return [
            Process(
                self,
                int(p["pid"]),
                argv=p.get("argv") or [],
                running=bool(p.get("running")),
                exit_code=p.get("exit_code"),
                signal_number=p.get("signal"),
            )
            for p in d.get("processes", [])
        ]

    def process(self, pid: int) -> Process:
        """A handle on process ``pid`` of this sandbox, to re-attach to or signal."""
        return Process(self, int(pid))


class Snapshot:
    """A named, saved state of a sandbox, to create new sandboxes from.

    Attributes: ``id``, ``name``, ``sandbox_id``, ``template``, ``vcpus``, ``memory_mib``,
    ``created_at``; the whole object in ``data``.
    """

    def __init__(self, data: dict, client: Client):
        self._client = client
        self.data = data
        self.id: str = data["id"]
        self.name: str | None = data.get("name")
        self.sandbox_id: str | None = data.get("sandbox_id")
        self.template: str | None = data.get("template")
        self.vcpus: int | None = data.get("vcpus")
        self.memory_mib: int | None = data.get("memory_mib")
        self.created_at: str | None = data.get("created_at")

    def __repr__(self) -> str:
        return f"Snapshot(id={self.id!r}, name={self.name!r}, sandbox_id={self.sandbox_id!r})"

    @classmethod
    def list(
        cls, *, api_key: str | None = None, api_url: str | None = None, client: Client | None = None
    ) -> list["Snapshot"]:
        """The tenant's snapshots."""
        client = resolve_client(client, api_key, api_url)
        return [cls(s, client) for s in client.call("GET", "/v1/snapshots").get("snapshots", [])]

    @classmethod
    def get(
        cls, snapshot_id: str, *, api_key: str | None = None, api_url: str | None = None, client: Client | None = None
    ) -> "Snapshot":
        client = resolve_client(client, api_key, api_url)
        return cls(client.call("GET", f"/v1/snapshots/{snapshot_id}"), client)

    def delete(self) -> None:
        """Deletes the snapshot; sandboxes created from it are not affected."""
        self._client.request("DELETE", f"/v1/snapshots/{self.id}").read()

    def create_sandbox(self, **kwargs: Any) -> Sandbox:
        """A new sandbox from this snapshot; takes the keyword arguments of Sandbox.create."""
        kwargs.setdefault("client", self._client)
        return Sandbox.create(snapshot_id=self.id, **kwargs)


class Key:
    """An API key of the tenant. ``key`` (the secret) is set only on the object Keys.create
    answers; listings never carry it."""

    def __init__(self, data: dict):
        self.data = data
        self.id: str = data["id"]
        self.name: str | None = data.get("name")
        self.prefix: str | None = data.get("prefix")
        self.created_at: str | None = data.get("created_at")
        self.revoked_at: str | None = data.get("revoked_at")
        self.key: str | None = data.get("key")

    def __repr__(self) -> str:
        return f"Key(id={self.id!r}, name={self.name!r}, prefix={self.prefix!r})"


class Keys:
    """The API keys of the caller's tenant: ``Keys.create(name)``, ``Keys.list()``,
    ``Keys.revoke(id)``. Each takes ``api_key``/``api_url``/``client`` like Sandbox.create."""

    @staticmethod
    def create(
        name: str | None = None, *, api_key: str | None = None, api_url: str | None = None, client: Client | None = None
    ) -> Key:
        """A new key; its secret is in ``.key`` and is shown only this once."""
        client = resolve_client(client, api_key, api_url)
        body = {"name": name} if name is not None else {}
        return Key(client.call("POST", "/v1/keys", json_body=body))

    @staticmethod
    def list(*, api_key: str | None = None, api_url: str | None = None, client: Client | None = None) -> list[Key]:
        client = resolve_client(client, api_key, api_url)
        return [Key(k) for k in client.call("GET", "/v1/keys").get("keys", [])]

    @staticmethod
    def revoke(
        key_id: str, *, api_key: str | None = None, api_url: str | None = None, client: Client | None = None
    ) -> None:
        """Revokes a key: requests made with it get Unauthorized from then on."""
        client = resolve_client(client, api_key, api_url)
        client.request("DELETE", f"/v1/keys/{key_id}").read()
