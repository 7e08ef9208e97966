#!/usr/bin/env bash
# The holt CLI against the real platform (the `platform` CTest fixture): what a user types.
set -euo pipefail
holt=$1
. "$2/env"
fail() { echo "FAIL: $*" >&2; exit 1; }

sbx=$("$holt" sandbox create -t base --memory 256 -q)
trap '"$holt" sandbox kill "$sbx" >/dev/null 2>&1 || true' EXIT

# A streamed exec prints as the command runs and exits with the command's code.
set +e
out=$("$holt" sandbox exec "$sbx" -c 'echo one; echo two >&2; exit 7' 2>/tmp/holt-cli-e2e.err)
code=$?
set -e
[ "$code" -eq 7 ] || fail "exec exited $code, not 7"
[ "$out" = one ] || fail "stdout was '$out'"
grep -qx two /tmp/holt-cli-e2e.err || fail "stderr did not carry 'two'"

# Files: a 20 MiB file round-trips byte for byte.
head -c $((20 * 1024 * 1024)) /dev/urandom > /tmp/holt-cli-e2e.bin
"$holt" sandbox cp /tmp/holt-cli-e2e.bin "$sbx:/root/blob"
"$holt" sandbox cp "$sbx:/root/blob" /tmp/holt-cli-e2e.back
cmp /tmp/holt-cli-e2e.bin /tmp/holt-cli-e2e.back || fail "cp round trip differs"
rm -f /tmp/holt-cli-e2e.*

# JSON for scripts, and the error of an unknown sandbox.
"$holt" sandbox ls --json | python3 -c "import json,sys; d=json.load(sys.stdin); assert any(s['id']=='$sbx' for s in d['sandboxes']), d"
if "$holt" sandbox exec sbx-doesnotexist -- true 2>/tmp/holt-cli-e2e.err; then fail "exec on a missing sandbox succeeded"; fi
grep -q not_found /tmp/holt-cli-e2e.err || fail "no not_found error: $(cat /tmp/holt-cli-e2e.err)"
rm -f /tmp/holt-cli-e2e.err
"$holt" sandbox kill "$sbx" >/dev/null
echo "cli e2e: ok"
