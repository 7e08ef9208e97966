#!/usr/bin/env bash
# Installs every Debian package Holt needs to build, to build guest images and to run its tests.
# Safe to run again: it only calls apt-get when something is missing.
set -euo pipefail

packages=(
  # build
  build-essential cmake ninja-build ccache pkg-config clang-format
  libboost1.81-dev libboost-json1.81-dev libboost-url1.81-dev libboost-system1.81-dev libboost-filesystem1.81-dev
  libcli11-dev libspdlog-dev libfmt-dev libyaml-cpp-dev libssl-dev
  libgtest-dev libgmock-dev
  # the Python SDK and its tests, the CLI's tests against a fake API
  python3 python3-setuptools python3-wheel curl
  # VMs and guest images
  qemu-system-x86 qemu-utils busybox-static mmdebstrap e2fsprogs cpio kmod xz-utils zstd
  # networking of VMs (libmnl and libnftables: holt_vm sets up namespaces and rules in-process)
  iproute2 nftables libmnl-dev libnftables-dev
  # control database: libpqxx for libs/store, and the server Holt runs as its private cluster
  libpqxx-dev postgresql postgresql-client
  # benchmarks: gVisor's runsc, run beside Holt for comparison; nginx and wrk for the proxy's
  # (bench/proxy_bench.py)
  runsc nginx wrk
  # the proxy's tests make certificates with the openssl tool
  openssl
)

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi

echo "holt: installing ${#missing[@]} Debian packages: ${missing[*]}"
if [ "$(id -u)" -ne 0 ]; then sudo=sudo; else sudo=; fi
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
$sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
