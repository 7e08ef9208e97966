#!/usr/bin/env python3
"""holt-bench-sandbox: sandbox latency through the API, as JSON lines.

Measures, against a running holt-sandboxd (HOLT_API_URL, HOLT_API_KEY):
  - create latency: the API call until it answers with a sandbox whose agent answers exec,
    sequentially and from 8 concurrent clients;
  - the end-to-end time to create a code-interpreter sandbox, run python3 -c 'print(6*7)' in it
    and kill it;
and, in the same run, `runsc do` (gVisor) running the same one-liner on the host, for comparison.
Every figure is a median (p50) and p99 over the stated number of runs, in milliseconds.
"""

import argparse
import concurrent.futures
import json
import math
import os
import shutil
import subprocess
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "sdk", "python"))

from holt import Sandbox  # noqa: E402

ONE_LINER = "print(6*7)"


def percentile(samples, p):
    ordered = sorted(samples)
    rank = max(1, min(len(ordered), math.ceil(p / 100 * len(ordered))))
    return ordered[rank - 1]


def report(metric, samples, **extra):
    line = {"metric": metric, "unit": "ms", "n": len(samples),
            "p50": round(percentile(samples, 50), 2), "p99": round(percentile(samples, 99), 2)}
    line.update(extra)
    print(json.dumps(line), flush=True)
    return line


def timed_create(template):
    start = time.monotonic()
    sbx = Sandbox.create(template=template, ttl_seconds=600)
    elapsed = (time.monotonic() - start) * 1000
    sbx.kill()
    return elapsed


def one_liner_in_sandbox():
    start = time.monotonic()
    sbx = Sandbox.create(template="code-interpreter", ttl_seconds=600)
    try:
        result = sbx.exec(["python3", "-c", ONE_LINER])
        if result.stdout.strip() != "42":
            raise RuntimeError(f"unexpected output: {result.stdout!r} {result.stderr!r}")
    finally:
        sbx.kill()
    return (time.monotonic() - start) * 1000


def one_liner_in_gvisor(runsc):
    start = time.monotonic()
    # No network: the benchmark sends nothing off the machine.
    out = subprocess.run([runsc, "--network=none", "do", "python3", "-c", ONE_LINER],
                         capture_output=True, text=True, timeout=120)
    if out.returncode != 0 or out.stdout.strip() != "42":
        raise RuntimeError(f"runsc do failed ({out.returncode}): {out.stderr.strip()}")
    return (time.monotonic() - start) * 1000


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--template", default="base", help="template for the create figures")
    parser.add_argument("--creates", type=int, default=100, help="creates per create figure")
    parser.add_argument("--clients", type=int, default=8, help="concurrent clients")
    parser.add_argument("--runs", type=int, default=20, help="runs of the end-to-end one-liner")
    args = parser.parse_args()

    timed_create(args.template)  # the first create of a size makes its template snapshot

    sequential = [timed_create(args.template) for _ in range(args.creates)]
    report("api_create_sequential", sequential, template=args.template)

    with concurrent.futures.ThreadPoolExecutor(args.clients) as pool:
        concurrent_samples = list(pool.map(lambda _: timed_create(args.template),
                                           range(args.creates)))
    report("api_create_concurrent", concurrent_samples, template=args.template,
           clients=args.clients)

    one_liner_in_sandbox()
    holt = report("e2e_python_one_liner_holt",
                  [one_liner_in_sandbox() for _ in range(args.runs)])

    runsc = shutil.which("runsc")
    if runsc is None:
        print(json.dumps({"metric": "e2e_python_one_liner_gvisor", "skipped": "runsc not installed"}))
        return
    one_liner_in_gvisor(runsc)
    gvisor = report("e2e_python_one_liner_gvisor",
                    [one_liner_in_gvisor(runsc) for _ in range(max(5, args.runs // 2))])
    print(json.dumps({"metric": "e2e_python_one_liner_ratio_gvisor_over_holt",
                      "p50_ratio": round(gvisor["p50"] / holt["p50"], 2)}), flush=True)


if __name__ == "__main__":
    main()
