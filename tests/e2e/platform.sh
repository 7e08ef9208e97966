#!/usr/bin/env bash
# A running Holt platform for end-to-end tests of the clients (SDK, CLI): a private PostgreSQL
# cluster and holt-sandboxd on a free loopback port, with their own state under DIR (images come
# from the usual data directory). CTest runs `start` and `stop` as a fixture.
#
#   platform.sh start DIR BIN_DIR   writes DIR/env (HOLT_API_URL, HOLT_API_KEY) once it answers
#   platform.sh stop DIR BIN_DIR    stops the service, kills its VMs, stops the cluster, removes DIR
set -euo pipefail
command=$1 dir=$2 bin=$3

case $command in
start)
  rm -rf "$dir" && mkdir -p "$dir" && chmod 711 "$dir"
  url=$("$bin/holt-postgres" --data-dir "$dir" start | tail -1)
  port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  key=$("$bin/holt-sandboxd" --database-url "$url" keys create --tenant e2e 2>/dev/null)
  setsid "$bin/holt-sandboxd" --listen "127.0.0.1:$port" --database-url "$url" \
      --run-dir "$dir/run" >"$dir/sandboxd.log" 2>&1 < /dev/null &
  echo $! > "$dir/sandboxd.pid"
  for _ in $(seq 600); do
    if curl -sf "http://127.0.0.1:$port/healthz" >/dev/null 2>&1; then
      printf 'export HOLT_API_URL=http://127.0.0.1:%s HOLT_API_KEY=%s\n' "$port" "$key" > "$dir/env"
      exit 0
    fi
    kill -0 "$(cat "$dir/sandboxd.pid")" 2>/dev/null || { tail -20 "$dir/sandboxd.log"; exit 1; }
    sleep 0.2
  done
  echo "holt-sandboxd did not answer in 120 s"; tail -20 "$dir/sandboxd.log"; exit 1
  ;;
stop)
  if [ -f "$dir/sandboxd.pid" ]; then
    pid=$(cat "$dir/sandboxd.pid")
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 150); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
    kill -KILL "$pid" 2>/dev/null || true
  fi
  # A stopped service leaves its sandboxes' VMs running for the next start; these go.
  pkill -KILL -f "$dir/run" || true
  "$bin/holt-postgres" --data-dir "$dir" stop >/dev/null 2>&1 || true
  rm -rf "$dir"
  ;;
esac
