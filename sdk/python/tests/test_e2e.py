"""End-to-end tests of the SDK against a running holt-sandboxd with real VMs.

They run only when HOLT_API_URL and HOLT_API_KEY are set (otherwise every test is skipped, and
running this file as a script exits with 77, CTest's "skipped"):

    HOLT_API_URL=http://127.0.0.1:7070 HOLT_API_KEY=holt_... \\
        python3 -m unittest discover -s sdk/python/tests -p test_e2e.py -v

HOLT_E2E_TEMPLATE picks the template (default code-interpreter).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import sys
import tempfile
import threading
import time
import unittest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from holt import Sandbox, SandboxGone, NotFound  # noqa: E402

CONFIGURED = bool(os.environ.get("HOLT_API_URL") and os.environ.get("HOLT_API_KEY"))
TEMPLATE = os.environ.get("HOLT_E2E_TEMPLATE", "code-interpreter")

ISSUE_EXAMPLE = """\
from holt import Sandbox
sbx = Sandbox.create(template="code-interpreter", ttl_seconds=300)
try:
    result = sbx.exec("python3 -c 'import sys; print(sys.version)'")
    print(result.stdout, result.exit_code)
finally:
    sbx.kill()
"""


@unittest.skipUnless(CONFIGURED, "set HOLT_API_URL and HOLT_API_KEY to run against a real holt-sandboxd")
class EndToEndTest(unittest.TestCase):
    def sandbox(self, **kwargs) -> Sandbox:
        kwargs.setdefault("template", TEMPLATE)
        kwargs.setdefault("ttl_seconds", 600)
        kwargs.setdefault("metadata", {"test": "sdk-e2e"})
        sbx = Sandbox.create(**kwargs)
        self.addCleanup(self._kill, sbx)
        return sbx

    @staticmethod
    def _kill(sbx: Sandbox) -> None:
        with contextlib.suppress(NotFound, SandboxGone):
            sbx.kill()

    def test_issue_example_as_written(self):
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            exec(compile(ISSUE_EXAMPLE, "issue-4-example", "exec"), {})
        version, _, code = out.getvalue().rstrip("\n").rpartition(" ")
        self.assertEqual(code, "0")
        self.assertRegex(version, r"^3\.\d+\.\d+")

    def test_upload_and_download_100_mib(self):
        sbx = self.sandbox()
        size = 100 * (1 << 20)
        with tempfile.TemporaryDirectory() as tmp:
            src = os.path.join(tmp, "src.bin")
            digest = hashlib.sha256()
            with open(src, "wb") as f:
                for _ in range(size // (1 << 20)):
                    block = os.urandom(1 << 20)
                    digest.update(block)
                    f.write(block)
            info = sbx.files.upload(src, "/tmp/big.bin")
            self.assertEqual(info.size, size)
            guest = sbx.exec("sha256sum /tmp/big.bin", timeout=120)
            self.assertEqual(guest.stdout.split()[0], digest.hexdigest())
            dst = os.path.join(tmp, "dst.bin")
            self.assertEqual(sbx.files.download("/tmp/big.bin", dst), size)
            back = hashlib.sha256()
            with open(dst, "rb") as f:
                while block := f.read(1 << 20):
                    back.update(block)
            self.assertEqual(back.hexdigest(), digest.hexdigest())

    def test_streamed_exec_delivers_first_line_before_the_end(self):
        sbx = self.sandbox()
        lines: list[tuple[float, str]] = []
        start = time.monotonic()
        result = sbx.exec(
            "echo first; sleep 3; echo second",
            on_stdout=lambda text: lines.append((time.monotonic() - start, text)),
        )
        end = time.monotonic() - start
        self.assertEqual(result.exit_code, 0)
        self.assertEqual(result.stdout, "first\nsecond\n")
        self.assertTrue(lines and lines[0][1].startswith("first"), lines)
        self.assertLess(lines[0][0], end - 2.0, f"first line at {lines[0][0]:.2f}s, end at {end:.2f}s")

    def test_fork_children_diverge(self):
        parent = self.sandbox()
        parent.files.write("/root/state.txt", "parent")
        children = parent.fork(count=2)
        for c in children:
            self.addCleanup(self._kill, c)
        self.assertEqual(len(children), 2)
        for i, c in enumerate(children):
            self.assertEqual(c.parent_id, parent.id)
            self.assertEqual(c.files.read_text("/root/state.txt"), "parent")
            c.files.write("/root/state.txt", f"child{i}")
        self.assertEqual(parent.files.read_text("/root/state.txt"), "parent")
        self.assertEqual([c.files.read_text("/root/state.txt") for c in children], ["child0", "child1"])
        ids = [parent.exec("cat /proc/sys/kernel/random/uuid").stdout] + [
            c.exec("cat /proc/sys/kernel/random/uuid").stdout for c in children
        ]
        self.assertEqual(len(set(ids)), 3)

    def test_hibernate_and_wake_keep_a_file_and_a_process(self):
        sbx = self.sandbox()
        sbx.files.write("/root/keep.txt", "kept across hibernate")
        proc = sbx.exec_background("sleep 600")
        self.assertEqual(sbx.hibernate().state, "hibernated")
        self.assertEqual(sbx.refresh().state, "hibernated")
        self.assertEqual(sbx.wake().state, "running")
        self.assertEqual(sbx.files.read_text("/root/keep.txt"), "kept across hibernate")
        running = [p.pid for p in sbx.processes() if p.running]
        self.assertIn(proc.pid, running)

    def test_exec_and_files_wake_a_hibernated_sandbox(self):
        sbx = self.sandbox()
        sbx.files.write("/root/a.txt", "a")
        sbx.hibernate()
        self.assertEqual(sbx.exec("cat /root/a.txt").stdout, "a")
        self.assertEqual(sbx.refresh().state, "running")


if __name__ == "__main__":
    if not CONFIGURED:
        print("test_e2e: HOLT_API_URL and HOLT_API_KEY are not set; skipped", file=sys.stderr)
        sys.exit(77)
    unittest.main()
