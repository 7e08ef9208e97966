# Helpers shared by build.sh and the step scripts: progress lines, timing, hashing, and building
# an artifact in a temporary sibling directory that is renamed into place only on success.
#
# Nothing here shapes an artifact's contents, so this file is not part of any recipe hash.
# shellcheck shell=bash

# The scope of the progress lines printed now: "kernel", "initramfs" or a template name.
HOLT_SCOPE=${HOLT_SCOPE:-images}

# Prints a progress line: "[scope] message".
say() {
  printf '[%s] %s\n' "$HOLT_SCOPE" "$*"
}

# Prints an error line to stderr and exits non-zero.
die() {
  printf '[%s] ERROR: %s\n' "$HOLT_SCOPE" "$*" >&2
  exit 1
}

# Microseconds since the epoch.
now_us() {
  local t=$EPOCHREALTIME
  echo "${t/./}"
}

# Formats the time since a now_us value as seconds with one decimal: "12.3s".
elapsed_since() {
  local ms=$((($(now_us) - $1) / 1000))
  printf '%d.%ds' $((ms / 1000)) $((ms % 1000 / 100))
}

# Runs a build step: prints "[scope] step: what", runs the command with its output appended to
# the log file $STEP_LOG, then prints "[scope] step: done in N.Ns". On failure prints the step,
# the tail of the log and the log's path, and returns the command's status.
#   run_step STEP WHAT FUNCTION [ARG ...]
#
# The function runs in a new bash with errexit and pipefail, which has sourced every lib/*.sh.
# A new process, because bash ignores errexit inside any function that is called from an if,
# && or || context, however deep, and callers of run_step want to test its status.
run_step() {
  local step=$1 what=$2
  shift 2
  local start status=0
  start=$(now_us)
  say "$step: $what"
  printf '\n=== [%s] %s: %s\n=== %s\n' "$HOLT_SCOPE" "$step" "$what" "$*" >> "$STEP_LOG"
  HOLT_SCOPE=$HOLT_SCOPE bash -c '
    set -euo pipefail
    for lib in "$HOLT_IMAGES_DIR"/lib/*.sh; do
      source "$lib"
    done
    "$@"' holt-images-step "$@" >> "$STEP_LOG" 2>&1 < /dev/null || status=$?
  if [ "$status" -ne 0 ]; then
    printf '[%s] %s: FAILED after %s (exit %d); last lines of %s:\n' \
      "$HOLT_SCOPE" "$step" "$(elapsed_since "$start")" "$status" "$STEP_LOG" >&2
    tail -n 15 "$STEP_LOG" | sed 's/^/    /' >&2
    return "$status"
  fi
  say "$step: done in $(elapsed_since "$start")"
}

# sha256 of a file, hex.
file_sha256() {
  local sum
  sum=$(sha256sum -- "$1") || return 1
  echo "${sum%% *}"
}

# sha256 of a large file, remembered in directory $HOLT_SHA256_CACHE (when set) under its path,
# device, inode, size, modification and change times, so an unchanged binary is not read again.
file_sha256_cached() {
  local file=$1 key memo sum
  if [ -z "${HOLT_SHA256_CACHE:-}" ]; then
    file_sha256 "$file"
    return
  fi
  key=$(stat -L -c '%d %i %s %.9Y %.9Z' -- "$file") || return 1
  key=$(printf '%s %s' "$file" "$key" | stdin_sha256)
  memo="$HOLT_SHA256_CACHE/sha256-$key"
  if [ -s "$memo" ]; then
    cat "$memo"
    return
  fi
  sum=$(file_sha256 "$file") || return 1
  mkdir -p "$HOLT_SHA256_CACHE"
  echo "$sum" > "$memo.tmp.$$"
  mv -f "$memo.tmp.$$" "$memo"
  echo "$sum"
}

# sha256 of standard input, hex.
stdin_sha256() {
  local sum
  sum=$(sha256sum) || return 1
  echo "${sum%% *}"
}

# Size of a file in MiB with one decimal, as allocated on disk (sparse files count what they use)
# and as its apparent length.
size_report() {
  local used apparent
  used=$(du -k -- "$1" | cut -f1)
  apparent=$(stat -c %s -- "$1")
  printf '%d.%d MiB on disk, %d.%d MiB apparent' $((used / 1024)) $((used % 1024 * 10 / 1024)) \
    $((apparent / 1048576)) $((apparent % 1048576 * 10 / 1048576))
}

# Removes a directory tree that a build left behind. Never crosses into another file system, so a
# mount that a killed mmdebstrap left inside it (proc, sys, dev) is unmounted, not emptied.
remove_tree() {
  local dir=$1 mnt
  [ -e "$dir" ] || return 0
  # Mount points below dir, deepest first.
  while read -r mnt; do
    umount -l -- "$mnt" 2> /dev/null || true
  done < <(awk -v d="$dir/" 'index($5, d) == 1 { print $5 }' /proc/self/mountinfo | sort -r)
  rm -rf --one-file-system -- "$dir"
}

# Escapes a string for a JSON string literal; the caller makes sure it holds no control
# characters.
json_string() {
  local s=$1
  s=${s//\\/\\\\}
  s=${s//\"/\\\"}
  printf '"%s"' "$s"
}
