#!/usr/bin/env python3
"""holt-proxy beside nginx, in front of the same small static backend, driven by wrk.

    bench/proxy_bench.py [--bin build/bin] [--duration 10] [--connections 64] [--workers 1]

Runs, in one go and one after another: wrk against the backend directly, through holt-proxy and
through nginx configured as an equivalent reverse proxy (HTTP/1.1 and kept-alive connections to
the backend, no access log, the same number of worker threads/processes). Prints one JSON line
per target: requests per second and p50/p99 latency. Everything listens on 127.0.0.1; each wrk run
is bounded by --duration. Needs nginx and wrk (infra/install-deps.sh) and a built tree.
"""

import argparse
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

DOMAIN = "holt.bench"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port, what, timeout=30):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"proxy_bench: {what} did not listen on port {port}")


def nginx(workdir, name, workers, server_block):
    prefix = os.path.join(workdir, name)
    os.makedirs(os.path.join(prefix, "logs"), exist_ok=True)
    conf = os.path.join(prefix, "nginx.conf")
    with open(conf, "w") as f:
        f.write(f"""daemon off;
worker_processes {workers};
pid {prefix}/nginx.pid;
error_log {prefix}/logs/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {prefix}/body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
    keepalive_requests 100000;
{server_block}
}}
""")
    return subprocess.Popen(["nginx", "-p", prefix, "-c", conf], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)


def parse_ms(text):
    value, unit = re.match(r"([\d.]+)(us|ms|s)", text).groups()
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


def cpu_seconds(pid):
    """User and system CPU time of process `pid` and its children processes (nginx workers)."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        # fields[1] is the parent pid; fields[11] and [12] are utime and stime.
        if int(entry) == pid or int(fields[1]) == pid:
            total += (int(fields[11]) + int(fields[12])) / tick
    return total


def run_wrk(url, host, args):
    out = subprocess.run(
        ["wrk", "-t", str(args.threads), "-c", str(args.connections), "-d", f"{args.duration}s",
         "--latency", "-H", f"Host: {host}", url],
        capture_output=True, text=True, timeout=args.duration + 60).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    p50 = parse_ms(re.search(r"\s50%\s+(\S+)", out).group(1))
    p99 = parse_ms(re.search(r"\s99%\s+(\S+)", out).group(1))
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    socket_errors = re.search(r"Socket errors: (.*)", out)
    return {"requests_per_s": rps, "p50_ms": p50, "p99_ms": p99,
            "non_2xx": int(errors.group(1)) if errors else 0,
            "socket_errors": socket_errors.group(1) if socket_errors else ""}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bin", default="build/bin")
    parser.add_argument("--duration", type=int, default=10, help="seconds per wrk run")
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1, help="wrk threads")
    parser.add_argument("--workers", type=int, default=1, help="threads/processes per proxy")
    args = parser.parse_args()
    for tool in ("nginx", "wrk"):
        if not shutil.which(tool):
            raise SystemExit(f"proxy_bench: {tool} is missing (run infra/install-deps.sh)")

    workdir = tempfile.mkdtemp(prefix="holt-proxy-bench-", dir="/tmp")
    os.chmod(workdir, 0o711)
    processes = []
    try:
        # The backend: nginx serving one small static file.
        backend_port = free_port()
        os.makedirs(os.path.join(workdir, "www"))
        with open(os.path.join(workdir, "www", "index.html"), "w") as f:
            f.write("hello from the backend\n" * 4)
        processes.append(nginx(workdir, "backend", 1, f"""
    server {{
        listen 127.0.0.1:{backend_port} reuseport;
        keepalive_timeout 60s;
        location / {{ root {workdir}/www; }}
    }}"""))
        wait_for_port(backend_port, "the backend")

        # nginx as a reverse proxy, with kept-alive upstream connections like holt-proxy's.
        nginx_port = free_port()
        processes.append(nginx(workdir, "nginx-proxy", args.workers, f"""
    upstream backend {{ server 127.0.0.1:{backend_port}; keepalive 64; }}
    server {{
        listen 127.0.0.1:{nginx_port} reuseport;
        keepalive_timeout 60s;
        location / {{
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $host;
            proxy_set_header X-Forwarded-For $remote_addr;
            proxy_set_header X-Forwarded-Proto $scheme;
            proxy_set_header X-Forwarded-Host $host;
        }}
    }}"""))
        wait_for_port(nginx_port, "nginx")

        # holt-proxy, with a private PostgreSQL for its route table.
        url = subprocess.run([os.path.join(args.bin, "holt-postgres"), "--data-dir", workdir,
                              "start"], check=True, capture_output=True,
                             text=True).stdout.strip().splitlines()[-1]
        holt_port = free_port()
        config = os.path.join(workdir, "proxy.yaml")
        with open(config, "w") as f:
            f.write(f"domain: {DOMAIN}\nlisten: 127.0.0.1:{holt_port}\nadmin_listen: off\n"
                    f"workers: {args.workers}\ndatabase_url: \"{url}\"\ndata_dir: {workdir}\n"
                    f"access_log: false\nlimits: {{max_requests_per_connection: 100000}}\n"
                    f"upstream: {{max_idle_per_target: 64}}\n")
        log = open(os.path.join(workdir, "holt-proxy.log"), "w")
        processes.append(subprocess.Popen([os.path.join(args.bin, "holt-proxy"), "--config",
                                           config], stdout=log, stderr=subprocess.STDOUT))
        wait_for_port(holt_port, "holt-proxy")
        subprocess.run(["psql", url, "-qc",
                        f"INSERT INTO proxy.routes (app, target) VALUES "
                        f"('bench', 'http://127.0.0.1:{backend_port}')"], check=True)
        time.sleep(1)  # the NOTIFY-driven reload

        host = "bench." + DOMAIN
        targets = (("direct", backend_port, None), ("holt-proxy", holt_port, processes[2]),
                   ("nginx", nginx_port, processes[1]))
        for name, port, process in targets:
            before = cpu_seconds(process.pid) if process else 0.0
            result = run_wrk(f"http://127.0.0.1:{port}/index.html", host, args)
            if process:
                # CPU the proxy spent per request: steadier than requests/s on a shared machine.
                used = cpu_seconds(process.pid) - before
                requests = result["requests_per_s"] * args.duration
                result["proxy_cpu_us_per_request"] = round(used / requests * 1e6, 2)
            print(json.dumps({"bench": "proxy", "target": name, "workers": args.workers,
                              "connections": args.connections, "duration_s": args.duration,
                              **result}), flush=True)
    finally:
        for p in processes:
            p.send_signal(signal.SIGTERM if p.args[0] != "nginx" else signal.SIGQUIT)
        for p in processes:
            try:
                p.wait(20)
            except subprocess.TimeoutExpired:
                p.kill()
        subprocess.run([os.path.join(args.bin, "holt-postgres"), "--data-dir", workdir, "stop"],
                       capture_output=True)
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
