#!/usr/bin/env bash
# Runs the Holt platform on this host, in the foreground, from a built tree (`make up` calls it):
#   - the private PostgreSQL cluster in the data directory (made on first start; it keeps running
#     after this script ends: `build/bin/holt-postgres stop` stops it);
#   - a first API key, made once and kept in DATA/first-api-key;
#   - holt-sandboxd on HOLT_LISTEN (default 127.0.0.1:7070);
#   - holt-proxy, the edge proxy, for *.HOLT_DOMAIN (default holt.localhost, which resolves to
#     loopback) on HOLT_PROXY_LISTEN (HTTP, default 127.0.0.1:8080) and HOLT_PROXY_HTTPS_LISTEN
#     (HTTPS with a development CA in DATA/proxy/tls, default 127.0.0.1:8443), metrics on
#     HOLT_PROXY_ADMIN_LISTEN (default 127.0.0.1:9090). See docs/proxy.md.
# Ctrl-C stops the services; VMs of live sandboxes are left running and adopted at the next start.
set -euo pipefail

build_dir=${BUILD_DIR:-build}
bin=$build_dir/bin
# The same default as holt::default_data_dir().
if [ -z "${HOLT_DATA_DIR:-}" ]; then
  if [ "$(id -u)" -eq 0 ]; then HOLT_DATA_DIR=/var/lib/holt
  else HOLT_DATA_DIR=${XDG_DATA_HOME:-$HOME/.local/share}/holt; fi
fi
export HOLT_DATA_DIR
listen=${HOLT_LISTEN:-127.0.0.1:7070}
domain=${HOLT_DOMAIN:-holt.localhost}
proxy_listen=${HOLT_PROXY_LISTEN:-127.0.0.1:8080}
proxy_https_listen=${HOLT_PROXY_HTTPS_LISTEN:-127.0.0.1:8443}
proxy_admin_listen=${HOLT_PROXY_ADMIN_LISTEN:-127.0.0.1:9090}

mkdir -p "$HOLT_DATA_DIR"
database_url=${HOLT_DATABASE_URL:-$("$bin/holt-postgres" start)}

key_file=$HOLT_DATA_DIR/first-api-key
if [ ! -s "$key_file" ]; then
  (umask 077 && "$bin/holt-sandboxd" --database-url "$database_url" \
      keys create --tenant default --name first > "$key_file.tmp" && mv "$key_file.tmp" "$key_file")
fi

# The edge proxy runs beside the sandbox service and stops with this script.
"$bin/holt-proxy" --database-url "$database_url" --data-dir "$HOLT_DATA_DIR" --domain "$domain" \
    --listen "$proxy_listen" --https-listen "$proxy_https_listen" \
    --admin-listen "$proxy_admin_listen" --sandbox-api "http://$listen" &
proxy_pid=$!
trap 'kill -TERM $proxy_pid 2>/dev/null || true; wait $proxy_pid 2>/dev/null || true' EXIT

cat <<BANNER
holt: the platform is starting (data in $HOLT_DATA_DIR).
  API:       http://$listen   (docs/api/sandbox.yaml, docs/sandbox.md)
  Proxy:     http://api.$domain:${proxy_listen##*:}, https://api.$domain:${proxy_https_listen##*:}
             (CA: $HOLT_DATA_DIR/proxy/tls/ca.crt), sandbox ports at PORT-SANDBOX_ID.$domain,
             metrics at http://$proxy_admin_listen/metrics   (docs/proxy.md)
  API key:   $(cat "$key_file")   (kept in $key_file)
Try, from another terminal:
  export HOLT_API_URL=http://$listen HOLT_API_KEY=\$(cat $key_file)
  $bin/holt sandbox create --template code-interpreter
  PYTHONPATH=sdk/python python3 -c "from holt import Sandbox; s = Sandbox.create(template='base'); print(s.exec('uname -a').stdout); s.kill()"
Ctrl-C stops it.
BANNER

"$bin/holt-sandboxd" --database-url "$database_url" --listen "$listen" --data-dir "$HOLT_DATA_DIR"
