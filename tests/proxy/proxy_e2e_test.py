#!/usr/bin/env python3
"""holt-proxy in front of the real platform: holt-sandboxd with real microVMs (the `platform`
CTest fixture of tests/e2e), reached through PORT-SANDBOX.DOMAIN. Standard library only.

    proxy_e2e_test.py BIN_DIR PLATFORM_DIR

An HTTP server started inside a sandbox answers through the proxy; after the sandbox hibernates,
requests through the proxy wake it (one wake for several requests) and are answered.
"""

import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import unittest
import urllib.parse

BIN = PLATFORM_DIR = None
DOMAIN = "holt.test"


def wait_until(predicate, what, timeout):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(0.2)
    raise AssertionError(f"gave up waiting for {what} (last: {last!r})")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def platform_env():
    env = {}
    with open(os.path.join(PLATFORM_DIR, "env")) as f:
        for part in f.read().replace("export ", "").split():
            name, _, value = part.partition("=")
            env[name] = value
    return env


class Api:
    def __init__(self, url, key):
        parsed = urllib.parse.urlsplit(url)
        self.host, self.port, self.key = parsed.hostname, parsed.port, key

    def call(self, method, path, body=None, timeout=300):
        conn = http.client.HTTPConnection(self.host, self.port, timeout=timeout)
        headers = {"Authorization": "Bearer " + self.key, "Content-Type": "application/json"}
        conn.request(method, path, body=json.dumps(body) if body is not None else None,
                     headers=headers)
        r = conn.getresponse()
        data = r.read()
        conn.close()
        if r.status >= 300:
            raise AssertionError(f"{method} {path}: {r.status} {data[:500]!r}")
        return json.loads(data) if data else None


class SandboxPortTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        env = platform_env()
        cls.api = Api(env["HOLT_API_URL"], env["HOLT_API_KEY"])
        cls.key = env["HOLT_API_KEY"]
        database_url = subprocess.run(
            [os.path.join(BIN, "holt-postgres"), "--data-dir", PLATFORM_DIR, "url"],
            check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1]
        cls.dir = tempfile.mkdtemp(prefix="holt-proxy-e2e-", dir="/tmp")
        cls.port, cls.admin_port = free_port(), free_port()
        config = os.path.join(cls.dir, "proxy.yaml")
        with open(config, "w") as f:
            f.write(f"domain: {DOMAIN}\nlisten: 127.0.0.1:{cls.port}\n"
                    f"admin_listen: 127.0.0.1:{cls.admin_port}\n"
                    f"database_url: \"{database_url}\"\ndata_dir: {cls.dir}\n"
                    f"sandbox_api: \"{env['HOLT_API_URL']}\"\n"
                    f"wake: {{timeout_ms: 120000}}\n")
        cls.log = open(os.path.join(cls.dir, "proxy.log"), "w")
        cls.proxy = subprocess.Popen([os.path.join(BIN, "holt-proxy"), "--config", config],
                                     stdout=cls.log, stderr=subprocess.STDOUT)
        wait_until(lambda: cls.metric("holt_proxy_open_connections") is not None,
                   "holt-proxy", 30)

    @classmethod
    def tearDownClass(cls):
        cls.proxy.send_signal(signal.SIGTERM)
        cls.proxy.wait(30)
        cls.log.close()
        if os.environ.get("HOLT_TEST_KEEP"):
            print("kept", cls.dir, file=sys.stderr)
        else:
            shutil.rmtree(cls.dir, ignore_errors=True)

    @classmethod
    def metric(cls, name):
        if cls.proxy.poll() is not None:
            raise AssertionError("holt-proxy exited")
        try:
            conn = http.client.HTTPConnection("127.0.0.1", cls.admin_port, timeout=10)
            conn.request("GET", "/metrics")
            text = conn.getresponse().read().decode()
            conn.close()
        except OSError:
            return None
        for line in text.splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
        return None

    def get(self, sandbox_id, path, key=True, timeout=180):
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        headers = {"Host": f"8000-{sandbox_id}.{DOMAIN}"}
        if key:
            headers["Authorization"] = "Bearer " + self.key
        conn.request("GET", path, headers=headers)
        r = conn.getresponse()
        body = r.read()
        conn.close()
        return r.status, body

    def test_sandbox_port_through_the_proxy_and_wake_on_request(self):
        sandbox = self.api.call("POST", "/v1/sandboxes", {
            "template": "code-interpreter", "ttl_seconds": 900, "network": {"allow_egress": []}})
        sid = sandbox["id"]
        try:
            result = self.api.call("POST", f"/v1/sandboxes/{sid}/exec", {
                "cmd": "mkdir -p /srv && echo hello from $(hostname) > /srv/hello.txt"})
            self.assertEqual(result["exit_code"], 0, result)
            self.api.call("POST", f"/v1/sandboxes/{sid}/exec", {
                "cmd": "cd /srv && exec python3 -m http.server 8000", "background": True,
                "timeout_seconds": 0})

            # Until the server listens the proxy answers 502 with the reason; then 200.
            status, body = wait_until(
                lambda: (lambda r: r if r[0] == 200 else None)(self.get(sid, "/hello.txt")),
                "the sandbox's server through the proxy", 120)
            self.assertTrue(body.startswith(b"hello from"), body)
            self.assertEqual(self.get(sid, "/hello.txt", key=False)[0], 401)

            # Hibernate; three requests at once wake it once and are all answered.
            self.api.call("POST", f"/v1/sandboxes/{sid}/hibernate")
            self.assertEqual(self.api.call("GET", f"/v1/sandboxes/{sid}")["state"], "hibernated")
            wakes_before = self.metric("holt_proxy_wakes_total")
            results = [None] * 3

            def fetch(i):
                results[i] = self.get(sid, "/hello.txt")

            threads = [threading.Thread(target=fetch, args=(i,)) for i in range(3)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(300)
            for status, body in results:
                self.assertEqual(status, 200, body)
                self.assertTrue(body.startswith(b"hello from"), body)
            self.assertEqual(self.metric("holt_proxy_wakes_total") - wakes_before, 1)
            self.assertEqual(self.api.call("GET", f"/v1/sandboxes/{sid}")["state"], "running")
        finally:
            self.api.call("DELETE", f"/v1/sandboxes/{sid}")


if __name__ == "__main__":
    BIN, PLATFORM_DIR = sys.argv[1], sys.argv[2]
    unittest.main(argv=[sys.argv[0]] + sys.argv[3:], verbosity=2)
