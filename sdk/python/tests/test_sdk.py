"""Unit tests of the SDK's HTTP handling against a fake Holt API (no VM, no real service)."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import socket
import tempfile
import threading
import time
import unittest
from unittest import mock

import holt
from holt import (
    BadRequest,
    Client,
    ConnectionFailed,
    ExecTimeout,
    FileNotFound,
    HoltError,
    Keys,
    LimitExceeded,
    NotFound,
    Sandbox,
    SandboxGone,
    Snapshot,
    Unauthorized,
    UnknownTemplate,
)

from fake_server import FakeHolt, Reply, error

KEY = "holt_test_key"


def sandbox_json(sid: str = "sbx-1", **extra) -> dict:
    d = {
        "id": sid,
        "template": "code-interpreter",
        "state": "running",
        "vcpus": 1,
        "memory_mib": 512,
        "created_at": "2026-12-03T19:00:00Z",
        "ttl_seconds": 300,
        "expires_at": "2026-12-03T19:05:00Z",
        "on_expire": "kill",
        "metadata": {},
        "parent_id": None,
        "snapshot_id": None,
        "ended_at": None,
        "end_reason": None,
    }
    d.update(extra)
    return d


class FakeServerTest(unittest.TestCase):
    def setUp(self) -> None:
        self.fake = FakeHolt()
        self.addCleanup(self.fake.close)
        env = mock.patch.dict(os.environ, {"HOLT_API_URL": self.fake.url, "HOLT_API_KEY": KEY})
        env.start()
        self.addCleanup(env.stop)
        self.fake.route("POST", "/v1/sandboxes", lambda rec, m: Reply(201, sandbox_json()))
        self.fake.route("GET", r"/v1/sandboxes/(sbx-[^/]+)", lambda rec, m: Reply(200, sandbox_json(m[1])))
        self.fake.route(
            "DELETE",
            r"/v1/sandboxes/(sbx-[^/]+)",
            lambda rec, m: Reply(200, sandbox_json(m[1], state="killed", end_reason="killed")),
        )

    def sandbox(self) -> Sandbox:
        return Sandbox.create(template="code-interpreter")


class ConfigurationTest(FakeServerTest):
    def test_environment_gives_url_and_bearer_key(self):
        sbx = Sandbox.create(template="code-interpreter", ttl_seconds=300)
        rec = self.fake.last("POST")
        self.assertEqual(rec.headers["authorization"], f"Bearer {KEY}")
        self.assertEqual(rec.headers["content-type"], "application/json")
        self.assertEqual(rec.json(), {"template": "code-interpreter", "ttl_seconds": 300})
        self.assertEqual(sbx.id, "sbx-1")
        self.assertEqual(sbx.state, "running")
        self.assertEqual(sbx.expires_at, "2026-12-03T19:05:00Z")

    def test_explicit_arguments_override_environment(self):
        with mock.patch.dict(os.environ, {"HOLT_API_URL": "http://127.0.0.1:1", "HOLT_API_KEY": "wrong"}):
            Sandbox.create(template="base", api_key="other", api_url=self.fake.url + "/")
        self.assertEqual(self.fake.last().headers["authorization"], "Bearer other")

    def test_default_url(self):
        with mock.patch.dict(os.environ, {}, clear=True):
            c = Client()
        self.assertEqual(c.api_url, "http://127.0.0.1:7070")
        self.assertIsNone(c.api_key)

    def test_url_with_path_prefix(self):
        self.fake.route("GET", "/api/v1/sandboxes/sbx-9", Reply(200, sandbox_json("sbx-9")))
        sbx = Sandbox.connect("sbx-9", api_url=self.fake.url + "/api")
        self.assertEqual(sbx.id, "sbx-9")

    def test_create_sends_every_option(self):
        Sandbox.create(
            template="base",
            ttl_seconds=60,
            env={"A": "1"},
            metadata={"team": "x"},
            vcpus=2,
            memory_mib=1024,
            network={"allow_egress": ["10.0.0.0/8"]},
            on_expire="hibernate",
        )
        self.assertEqual(
            self.fake.last().json(),
            {
                "template": "base",
                "ttl_seconds": 60,
                "on_expire": "hibernate",
                "vcpus": 2,
                "memory_mib": 1024,
                "env": {"A": "1"},
                "metadata": {"team": "x"},
                "network": {"allow_egress": ["10.0.0.0/8"]},
            },
        )
        Sandbox.create(snapshot_id="snap-1", network=True)
        self.assertEqual(self.fake.last().json(), {"snapshot_id": "snap-1", "network": {}})

    def test_issue_example_runs_as_written(self):
        self.fake.route(
            "POST",
            "/v1/sandboxes/sbx-1/exec",
            Reply(200, {"stdout": "3.11.2\n", "stderr": "", "exit_code": 0, "duration_ms": 12.5}),
        )
        example = (
            "from holt import Sandbox\n"
            "sbx = Sandbox.create(template=\"code-interpreter\", ttl_seconds=300)\n"
            "try:\n"
            "    result = sbx.exec(\"python3 -c 'import sys; print(sys.version)'\")\n"
            "    print(result.stdout, result.exit_code)\n"
            "finally:\n"
            "    sbx.kill()\n"
        )
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            exec(compile(example, "issue-4-example", "exec"), {})
        self.assertEqual(out.getvalue(), "3.11.2\n 0\n")
        methods = [(r.method, r.path) for r in self.fake.requests]
        self.assertEqual(
            methods,
            [
                ("POST", "/v1/sandboxes"),
                ("POST", "/v1/sandboxes/sbx-1/exec"),
                ("DELETE", "/v1/sandboxes/sbx-1"),
            ],
        )


class ErrorTest(FakeServerTest):
    def check(self, reply: Reply, cls: type, code: str, status: int) -> HoltError:
        self.fake.route("GET", "/v1/sandboxes/sbx-x", reply)
        with self.assertRaises(cls) as ctx:
            Sandbox.connect("sbx-x")
        e = ctx.exception
        self.assertIsInstance(e, HoltError)
        self.assertEqual(e.code, code)
        self.assertEqual(e.status, status)
        return e

    def test_codes_choose_the_class(self):
        e = self.check(error(404, "not_found", "sandbox sbx-x not found"), NotFound, "not_found", 404)
        self.assertEqual(e.message, "sandbox sbx-x not found")
        self.assertIn("sandbox sbx-x not found", str(e))
        self.check(error(410, "sandbox_gone", "killed at ..."), SandboxGone, "sandbox_gone", 410)
        self.check(error(429, "limit_exceeded", "max 20 sandboxes"), LimitExceeded, "limit_exceeded", 429)
        self.check(error(401, "unauthorized", "revoked key"), Unauthorized, "unauthorized", 401)
        self.check(error(400, "unknown_template", "no template x"), UnknownTemplate, "unknown_template", 400)
        self.check(error(404, "file_not_found", "/x"), FileNotFound, "file_not_found", 404)

    def test_subclasses(self):
        self.assertTrue(issubclass(UnknownTemplate, BadRequest))
        self.assertTrue(issubclass(FileNotFound, NotFound))

    def test_unknown_code_falls_back_to_status(self):
        e = self.check(error(400, "some_new_code", "new"), BadRequest, "some_new_code", 400)
        self.assertEqual(e.message, "new")

    def test_body_that_is_not_json(self):
        e = self.check(Reply(502, b"Bad Gateway from proxy"), HoltError, "error", 502)
        self.assertEqual(e.message, "Bad Gateway from proxy")

    def test_connection_refused(self):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        s.close()
        with self.assertRaises(ConnectionFailed) as ctx:
            Sandbox.connect("sbx-1", api_url=f"http://127.0.0.1:{port}")
        self.assertIsNone(ctx.exception.status)
        self.assertIn("refused", ctx.exception.message)

    def test_bad_url(self):
        with self.assertRaises(ValueError):
            Client(api_url="ftp://x")


class ConnectionTest(FakeServerTest):
    def test_connections_are_reused(self):
        client = Client()
        for _ in range(5):
            Sandbox.connect("sbx-1", client=client)
        self.assertEqual(len({r.client_port for r in self.fake.requests}), 1)

    def test_request_is_sent_again_when_idle_connection_was_closed(self):
        client = Client()
        Sandbox.connect("sbx-1", client=client)
        # The server drops the idle keep-alive connection behind the client's back.
        self.fake.route(
            "GET",
            "/v1/sandboxes/sbx-2",
            lambda rec, m: Reply(200, sandbox_json("sbx-2"), headers={"Connection": "close"}),
        )
        Sandbox.connect("sbx-2", client=client)
        sbx = Sandbox.connect("sbx-1", client=client)
        self.assertEqual(sbx.id, "sbx-1")


class LifecycleTest(FakeServerTest):
    def test_connect_list_and_refresh(self):
        self.fake.route(
            "GET", "/v1/sandboxes", {"sandboxes": [sandbox_json("sbx-2"), sandbox_json("sbx-1")]}
        )
        found = Sandbox.list(state="running", metadata={"team": "a b", "env": "dev"})
        self.assertEqual([s.id for s in found], ["sbx-2", "sbx-1"])
        self.assertEqual(
            self.fake.last().query, {"state": "running", "metadata[team]": "a b", "metadata[env]": "dev"}
        )
        Sandbox.list()
        self.assertEqual(self.fake.last().query, {})
        sbx = Sandbox.connect("sbx-7")
        self.assertEqual(sbx.refresh().id, "sbx-7")

    def test_kill_and_context_manager(self):
        with self.sandbox() as sbx:
            self.assertEqual(sbx.state, "running")
        self.assertEqual(self.fake.last().method, "DELETE")
        self.assertEqual(sbx.state, "killed")
        self.assertEqual(sbx.end_reason, "killed")

    def test_context_manager_tolerates_a_gone_sandbox(self):
        self.fake.route("DELETE", "/v1/sandboxes/sbx-1", error(410, "sandbox_gone", "expired"))
        with self.sandbox():
            pass

    def test_context_manager_kills_on_exception(self):
        with self.assertRaises(RuntimeError):
            with self.sandbox():
                raise RuntimeError("boom")
        self.assertEqual(self.fake.last().method, "DELETE")

    def test_ttl_hibernate_wake_snapshot_fork(self):
        self.fake.route("PATCH", "/v1/sandboxes/sbx-1", lambda rec, m: Reply(200, sandbox_json(**rec.json())))
        self.fake.route("POST", "/v1/sandboxes/sbx-1/hibernate", sandbox_json(state="hibernated"))
        self.fake.route("POST", "/v1/sandboxes/sbx-1/wake", sandbox_json(state="running"))
        self.fake.route(
            "POST",
            "/v1/sandboxes/sbx-1/snapshots",
            Reply(201, {"id": "snap-1", "name": "n", "sandbox_id": "sbx-1"}),
        )
        self.fake.route(
            "POST",
            "/v1/sandboxes/sbx-1/fork",
            lambda rec, m: Reply(
                201, {"sandboxes": [sandbox_json(f"sbx-c{i}", parent_id="sbx-1") for i in range(rec.json()["count"])]}
            ),
        )
        sbx = self.sandbox()
        sbx.set_ttl(600)
        self.assertEqual(self.fake.last().json(), {"ttl_seconds": 600})
        self.assertEqual(sbx.ttl_seconds, 600)
        sbx.set_ttl(None)
        self.assertEqual(self.fake.last().body, b'{"ttl_seconds": null}')
        self.assertEqual(sbx.hibernate().state, "hibernated")
        self.assertEqual(sbx.wake().state, "running")
        snap = sbx.snapshot(name="n")
        self.assertEqual(self.fake.last().json(), {"name": "n"})
        self.assertEqual((snap.id, snap.sandbox_id), ("snap-1", "sbx-1"))
        children = sbx.fork(count=3)
        self.assertEqual([c.id for c in children], ["sbx-c0", "sbx-c1", "sbx-c2"])
        self.assertEqual(children[0].parent_id, "sbx-1")


class ExecTest(FakeServerTest):
    def test_buffered_shell_command(self):
        self.fake.route(
            "POST",
            "/v1/sandboxes/sbx-1/exec",
            Reply(200, {"stdout": "hi\n", "stderr": "w\n", "exit_code": 3, "signal": None, "duration_ms": 7}),
        )
        r = self.sandbox().exec("echo hi", env={"X": "1"}, cwd="/tmp", timeout=5, stdin="in")
        self.assertEqual(
            self.fake.last().json(), {"cmd": "echo hi", "env": {"X": "1"}, "cwd": "/tmp", "timeout_seconds": 5, "stdin": "in"}
        )
        self.assertEqual((r.stdout, r.stderr, r.exit_code, r.duration_ms), ("hi\n", "w\n", 3, 7.0))
        self.assertFalse(r.ok)
        with self.assertRaises(holt.CommandFailed):
            r.check()

    def test_argv(self):
        self.fake.route("POST", "/v1/sandboxes/sbx-1/exec", {"stdout": "", "stderr": "", "exit_code": 0})
        self.sandbox().exec(["ls", "-l", "/"])
        self.assertEqual(self.fake.last().json(), {"argv": ["ls", "-l", "/"]})

    def test_timeout_raises(self):
        self.fake.route(
            "POST",
            "/v1/sandboxes/sbx-1/exec",
            {"stdout": "partial", "stderr": "", "exit_code": None, "signal": 9, "timed_out": True, "duration_ms": 1000},
        )
        with self.assertRaises(ExecTimeout) as ctx:
            self.sandbox().exec("sleep 100", timeout=1)
        self.assertEqual(ctx.exception.result.stdout, "partial")
        self.assertEqual(ctx.exception.result.signal, 9)

    def test_stream_delivers_first_line_before_the_end(self):
        first_seen = threading.Event()
        server_saw_callback = []

        def stream(rec, m):
            yield {"type": "start", "pid": 42}
            yield {"type": "stdout", "data": "first\n"}
            # The command "runs on" until the client has seen its first line.
            server_saw_callback.append(first_seen.wait(5))
            yield {"type": "stderr", "data_b64": "/w=="}  # one byte that is not UTF-8
            yield {"type": "stdout", "data": "second\n"}
            yield {"type": "exit", "exit_code": 0, "signal": None, "timed_out": False, "duration_ms": 3}

        self.fake.route("POST", "/v1/sandboxes/sbx-1/exec", stream)
        out, err = [], []

        def on_stdout(text):
            out.append(text)
            first_seen.set()

        r = self.sandbox().exec("x", on_stdout=on_stdout, on_stderr=err.append)
        self.assertEqual(server_saw_callback, [True])
        self.assertEqual(self.fake.last().json(), {"cmd": "x", "stream": True})
        self.assertEqual(out, ["first\n", "second\n"])
        self.assertEqual(err, ["\ufffd"])
        self.assertEqual((r.stdout, r.exit_code, r.pid), ("first\nsecond\n", 0, 42))

    def test_stream_error_event(self):
        def stream(rec, m):
            yield {"type": "start", "pid": 1}
            yield {"type": "error", "code": "unavailable", "message": "the VM did not answer"}

        self.fake.route("POST", "/v1/sandboxes/sbx-1/exec", stream)
        with self.assertRaises(holt.Unavailable) as ctx:
            self.sandbox().exec("x", on_stdout=print)
        self.assertEqual(ctx.exception.message, "the VM did not answer")

    def test_stream_timeout(self):
        def stream(rec, m):
            yield {"type": "stdout", "data": "a"}
            yield {"type": "exit", "exit_code": None, "signal": 9, "timed_out": True, "duration_ms": 2000}

        self.fake.route("POST", "/v1/sandboxes/sbx-1/exec", stream)
        with self.assertRaises(ExecTimeout) as ctx:
            self.sandbox().exec("x", timeout=2, on_stdout=lambda s: None)
        self.assertEqual(ctx.exception.result.stdout, "a")

    def test_stream_cut_short(self):
        self.fake.route("POST", "/v1/sandboxes/sbx-1/exec", lambda rec, m: iter([{"type": "stdout", "data": "a"}]))
        with self.assertRaises(HoltError):
            self.sandbox().exec("x", on_stdout=lambda s: None)

    def test_background_process(self):
        self.fake.route("POST", "/v1/sandboxes/sbx-1/exec", Reply(201, {"pid": 77}))

        def output(rec, m):
            yield {"type": "stdout", "data": "kept\n"}
            yield {"type": "exit", "exit_code": 0, "signal": None, "timed_out": False, "duration_ms": 1}

        self.fake.route("GET", "/v1/sandboxes/sbx-1/processes/77/output", output)
        self.fake.route("POST", "/v1/sandboxes/sbx-1/processes/77/signal", Reply(204))
        self.fake.route(
            "GET",
            "/v1/sandboxes/sbx-1/processes",
            {"processes": [{"pid": 77, "argv": ["sleep", "9"], "running": True, "exit_code": None, "signal": None}]},
        )
        sbx = self.sandbox()
        proc = sbx.exec_background(["sleep", "9"])
        self.assertEqual(self.fake.last().json(), {"argv": ["sleep", "9"], "timeout_seconds": 0, "background": True})
        self.assertEqual(proc.pid, 77)
        proc.signal("SIGTERM")
        self.assertEqual(self.fake.last().json(), {"signal": "TERM"})
        proc.signal(9)
        self.assertEqual(self.fake.last().json(), {"signal": 9})
        listed = sbx.processes()
        self.assertEqual((listed[0].pid, listed[0].argv, listed[0].running), (77, ["sleep", "9"], True))
        seen = []
        r = proc.output(on_stdout=seen.append)
        self.assertEqual((seen, r.stdout, r.exit_code), (["kept\n"], "kept\n", 0))
        self.assertEqual(proc.wait().exit_code, 0)


class FilesTest(FakeServerTest):
    def setUp(self) -> None:
        super().setUp()
        self.tmp = tempfile.TemporaryDirectory()
        self.addCleanup(self.tmp.cleanup)
        self.fake.route(
            "PUT",
            "/v1/sandboxes/sbx-1/files",
            lambda rec, m: Reply(
                201, {"name": "f", "path": rec.query["path"], "type": "file", "size": rec.body_size, "mode": rec.query.get("mode", "0644")}
            ),
        )

    def test_write_and_read(self):
        sbx = self.sandbox()
        info = sbx.files.write("/a/b.txt", "héllo", mode=0o600)
        rec = self.fake.last()
        self.assertEqual(rec.query, {"path": "/a/b.txt", "mode": "0600"})
        self.assertEqual(rec.body, "héllo".encode())
        self.assertEqual(rec.headers["content-type"], "application/octet-stream")
        self.assertEqual((info.path, info.size, info.is_file), ("/a/b.txt", 6, True))
        self.fake.route("GET", "/v1/sandboxes/sbx-1/files", Reply(200, b"\x00\x01data"))
        self.assertEqual(sbx.files.read("/a/b.txt"), b"\x00\x01data")
        self.assertEqual(self.fake.last().query, {"path": "/a/b.txt"})

    def test_write_from_an_iterable_is_chunked(self):
        self.sandbox().files.write("/x", (bytes([i]) * 1000 for i in range(10)))
        rec = self.fake.last()
        self.assertTrue(rec.chunked)
        self.assertEqual(rec.body_size, 10000)

    def test_upload_streams_with_content_length(self):
        path = os.path.join(self.tmp.name, "big.bin")
        size = 5 * (1 << 20) + 123
        with open(path, "wb") as f:
            f.write(os.urandom(size))
        os.chmod(path, 0o755)
        with open(path, "rb") as f:
            expected = hashlib.sha256(f.read()).hexdigest()
        info = self.sandbox().files.upload(path, "/work/big.bin")
        rec = self.fake.last()
        self.assertFalse(rec.chunked)
        self.assertEqual(rec.headers["content-length"], str(size))
        self.assertEqual((rec.body_size, rec.body_sha256), (size, expected))
        self.assertEqual(rec.query, {"path": "/work/big.bin", "mode": "0755"})
        self.assertEqual(info.size, size)

    def test_upload_does_not_read_the_whole_file(self):
        path = os.path.join(self.tmp.name, "f")
        with open(path, "wb") as f:
            f.write(b"x" * (3 << 20))
        reads = []
        real_open = open

        class Spy(io.BufferedReader):
            def read(self, n=-1):
                reads.append(n)
                return super().read(n)

        with mock.patch("builtins.open", lambda p, m="r", *a, **k: Spy(io.FileIO(p, m)) if m == "rb" else real_open(p, m, *a, **k)):
            self.sandbox().files.upload(path, "/f")
        self.assertTrue(reads and all(0 < n <= holt.client.CHUNK_SIZE for n in reads), reads)

    def test_download(self):
        data = os.urandom(3 * (1 << 20) + 7)
        self.fake.route("GET", "/v1/sandboxes/sbx-1/files", Reply(200, data))
        local = os.path.join(self.tmp.name, "out.bin")
        n = self.sandbox().files.download("/big", local)
        self.assertEqual(n, len(data))
        with open(local, "rb") as f:
            self.assertEqual(f.read(), data)
        buf = io.BytesIO()
        self.sandbox().files.download("/big", buf)
        self.assertEqual(buf.getvalue(), data)
        self.assertEqual(b"".join(self.sandbox().files.iter_read("/big")), data)

    def test_download_of_a_missing_file_leaves_nothing(self):
        self.fake.route("GET", "/v1/sandboxes/sbx-1/files", error(404, "file_not_found", "/nope: no such file"))
        local = os.path.join(self.tmp.name, "out.bin")
        with self.assertRaises(FileNotFound):
            self.sandbox().files.download("/nope", local)
        self.assertEqual(os.listdir(self.tmp.name), [])

    def test_list_stat_mkdir_remove_rename(self):
        entry = {"name": "d", "path": "/d", "type": "dir", "size": 0, "mode": "0755", "mtime": "2026-12-03T19:00:00Z"}
        self.fake.route("GET", "/v1/sandboxes/sbx-1/files/list", {"entries": [entry]})
        self.fake.route("GET", "/v1/sandboxes/sbx-1/files/stat", entry)
        self.fake.route("POST", "/v1/sandboxes/sbx-1/files/mkdir", Reply(201, entry))
        self.fake.route("POST", "/v1/sandboxes/sbx-1/files/rename", entry)
        self.fake.route("DELETE", "/v1/sandboxes/sbx-1/files", Reply(204))
        files = self.sandbox().files
        self.assertTrue(files.list("/")[0].is_dir)
        self.assertEqual(self.fake.last().query, {"path": "/"})
        self.assertEqual(files.stat("/d").mode, "0755")
        self.assertTrue(files.exists("/d"))
        files.mkdir("/d/e")
        self.assertEqual(self.fake.last().json(), {"path": "/d/e", "parents": True})
        files.rename("/d", "/e")
        self.assertEqual(self.fake.last().json(), {"from": "/d", "to": "/e"})
        files.remove("/e", recursive=True)
        self.assertEqual(self.fake.last().query, {"path": "/e", "recursive": "true"})
        files.remove("/f")
        self.assertEqual(self.fake.last().query, {"path": "/f"})
        self.fake.route("GET", "/v1/sandboxes/sbx-1/files/stat", error(404, "file_not_found", "no"))
        self.assertFalse(files.exists("/zz"))


class SnapshotsAndKeysTest(FakeServerTest):
    def test_snapshots(self):
        snap = {"id": "snap-1", "name": "s", "sandbox_id": "sbx-1", "template": "base"}
        self.fake.route("GET", "/v1/snapshots", {"snapshots": [snap]})
        self.fake.route("GET", "/v1/snapshots/snap-1", snap)
        self.fake.route("DELETE", "/v1/snapshots/snap-1", Reply(204))
        self.assertEqual([s.id for s in Snapshot.list()], ["snap-1"])
        s = Snapshot.get("snap-1")
        self.assertEqual(s.name, "s")
        s.create_sandbox(ttl_seconds=10)
        self.assertEqual(self.fake.last().json(), {"snapshot_id": "snap-1", "ttl_seconds": 10})
        s.delete()
        self.assertEqual(self.fake.last().method, "DELETE")

    def test_keys(self):
        self.fake.route("POST", "/v1/keys", Reply(201, {"id": "key-2", "name": "ci", "prefix": "holt_ab", "key": "holt_abc"}))
        self.fake.route("GET", "/v1/keys", {"keys": [{"id": "key-2", "name": "ci", "prefix": "holt_ab", "revoked_at": None}]})
        self.fake.route("DELETE", "/v1/keys/key-2", Reply(204))
        k = Keys.create("ci")
        self.assertEqual((k.id, k.key), ("key-2", "holt_abc"))
        self.assertEqual(self.fake.last().json(), {"name": "ci"})
        self.assertIsNone(Keys.list()[0].key)
        Keys.revoke("key-2")
        self.assertEqual(self.fake.last().path, "/v1/keys/key-2")


if __name__ == "__main__":
    unittest.main()
