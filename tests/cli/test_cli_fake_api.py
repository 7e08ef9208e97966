"""The `holt` binary against a fake Holt API (sdk/python/tests/fake_server.py): the HTTP paths
that the C++ unit tests cannot reach without a server (streamed exec, streamed cp both ways,
errors and exit codes). Run by CTest with HOLT_CLI set to the binary."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tempfile
import threading
import time
import unittest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "sdk", "python", "tests"))

from fake_server import FakeHolt, Reply, error  # noqa: E402

HOLT = os.environ.get("HOLT_CLI", "holt")
SANDBOX = {"id": "sbx-1", "template": "base", "state": "running", "vcpus": 1, "memory_mib": 512,
           "created_at": "t", "expires_at": None, "metadata": {"a": "b"}}


class CliAgainstFakeApiTest(unittest.TestCase):
    def setUp(self) -> None:
        self.fake = FakeHolt()
        self.addCleanup(self.fake.close)
        self.env = dict(os.environ, HOLT_API_URL=self.fake.url, HOLT_API_KEY="holt_k")
        tmp = tempfile.TemporaryDirectory()
        self.addCleanup(tmp.cleanup)
        self.tmp = tmp.name

    def holt(self, *args: str, **kwargs) -> subprocess.CompletedProcess:
        return subprocess.run([HOLT, *args], env=self.env, capture_output=True, timeout=60, **kwargs)

    def test_list_as_table_and_json(self):
        self.fake.route("GET", "/v1/sandboxes", {"sandboxes": [SANDBOX]})
        r = self.holt("sandbox", "ls")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(r.stdout.decode().splitlines()[1].split()[:3], ["sbx-1", "base", "running"])
        self.assertEqual(self.fake.last().headers["authorization"], "Bearer holt_k")
        r = self.holt("sandbox", "ls", "--json")
        self.assertTrue(r.stdout.startswith(b'{"sandboxes":[{"id":"sbx-1"'))

    def test_api_error_prints_code_and_message(self):
        self.fake.route("GET", "/v1/sandboxes/sbx-9", error(404, "not_found", "sandbox sbx-9 not found"))
        r = self.holt("sandbox", "get", "sbx-9")
        self.assertEqual(r.returncode, 1)
        self.assertEqual(r.stderr, b"holt: not_found: sandbox sbx-9 not found\n")

    def test_exec_streams_and_exits_with_the_command_code(self):
        gate = threading.Event()

        def stream(rec, m):
            yield {"type": "start", "pid": 3}
            yield {"type": "stdout", "data": "first\n"}
            gate.wait(10)
            yield {"type": "stderr", "data_b64": "/w=="}
            yield {"type": "exit", "exit_code": 7, "signal": None, "timed_out": False, "duration_ms": 5}

        self.fake.route("POST", "/v1/sandboxes/sbx-1/exec", stream)
        p = subprocess.Popen([HOLT, "sandbox", "exec", "sbx-1", "--", "echo", "hi"], env=self.env,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        start = time.monotonic()
        self.assertEqual(p.stdout.readline(), b"first\n")
        self.assertLess(time.monotonic() - start, 5)
        self.assertIsNone(p.poll())
        gate.set()
        _, err = p.communicate(timeout=30)
        self.assertEqual(p.returncode, 7)
        self.assertEqual(err, b"\xff")
        self.assertEqual(self.fake.last().json(), {"argv": ["echo", "hi"], "stream": True})

    def test_exec_timeout_exits_124(self):
        self.fake.route("POST", "/v1/sandboxes/sbx-1/exec", lambda rec, m: iter(
            [{"type": "exit", "exit_code": None, "signal": 9, "timed_out": True, "duration_ms": 1}]))
        r = self.holt("sandbox", "exec", "sbx-1", "--timeout", "1", "-c", "sleep 9")
        self.assertEqual(r.returncode, 124)

    def test_cp_up_and_down_streams(self):
        data = os.urandom(20 << 20)
        local = os.path.join(self.tmp, "big.bin")
        with open(local, "wb") as f:
            f.write(data)
        self.fake.route("GET", "/v1/sandboxes/sbx-1/files/stat", error(404, "file_not_found", "no"))
        self.fake.route("PUT", "/v1/sandboxes/sbx-1/files", lambda rec, m: Reply(
            201, {"path": rec.query["path"], "size": rec.body_size}))
        r = self.holt("sandbox", "cp", local, "sbx-1:/tmp/big.bin")
        self.assertEqual(r.returncode, 0, r.stderr)
        rec = self.fake.last()
        self.assertFalse(rec.chunked)
        self.assertEqual(rec.headers["content-length"], str(len(data)))
        self.assertEqual(rec.body_sha256, hashlib.sha256(data).hexdigest())
        self.assertEqual(rec.query["path"], "/tmp/big.bin")

        r = self.holt("sandbox", "cp", "-", "sbx-1:/tmp/in.bin", input=data[:3000000])
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertTrue(self.fake.last().chunked)
        self.assertEqual(self.fake.last().body_size, 3000000)

        self.fake.route("GET", "/v1/sandboxes/sbx-1/files", Reply(200, data))
        out = os.path.join(self.tmp, "out.bin")
        r = self.holt("sandbox", "cp", "sbx-1:/tmp/big.bin", out)
        self.assertEqual(r.returncode, 0, r.stderr)
        with open(out, "rb") as f:
            self.assertEqual(f.read(), data)
        r = self.holt("sandbox", "cp", "sbx-1:/tmp/big.bin", "-")
        self.assertEqual(r.stdout, data)

    def test_failed_download_leaves_no_file(self):
        self.fake.route("GET", "/v1/sandboxes/sbx-1/files", error(404, "file_not_found", "/x: no such file"))
        r = self.holt("sandbox", "cp", "sbx-1:/x", os.path.join(self.tmp, "x"))
        self.assertEqual(r.returncode, 1)
        self.assertEqual(r.stderr, b"holt: file_not_found: /x: no such file\n")
        self.assertEqual(os.listdir(self.tmp), [])


if __name__ == "__main__":
    unittest.main()
