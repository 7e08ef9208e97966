#!/usr/bin/env bash
# Builds Holt's guest templates: a kernel, an initramfs holding the agent, and one root
# filesystem image per template, each cached under a hash of its recipe.
#
#   infra/images/build.sh --data-dir DIR --agent PATH [--prune] [TEMPLATE ...]
#   infra/images/build.sh --list
#
# With no TEMPLATE, every templates/*.conf is built. A second run with nothing changed does no
# work and says the templates are up to date. Runs as root (mmdebstrap, device nodes).
#
# Layout of DIR/images, format 1 (docs/images.md says more):
#
#   kernel-<hash>/                 vmlinuz, config, lib/modules/<release>/, kernel-version, package
#   initramfs-<hash>/              initrd.img, modules.txt
#   rootfs-<template>-<hash>/      rootfs.ext4 (raw, sparse ext4), packages.txt
#   <template>/manifest.json       what the VM engine reads; written last, atomically
#   logs/<artifact>.log            the full output of the last build of each artifact
#   .lock                          flock(1)ed by every run: one build of a data dir at a time
#   .tmp-*                         artifacts being built; renamed into place only when complete
#   .cache/                        apt's answer about the kernel and binaries' sha256, remembered
#
# Every artifact directory also holds recipe.txt: the inputs whose sha256 is its <hash>. An
# artifact directory that exists is complete; one is never changed after it is renamed into
# place, so a VM may keep using it (old ones stay until --prune).
#
# manifest.json, format 1, one JSON object:
#   format          1
#   template        the template's name
#   kernel          absolute path of vmlinuz
#   initrd          absolute path of initrd.img
#   rootfs          absolute path of rootfs.ext4
#   rootfs_format   "raw"
#   kernel_version  the kernel release, e.g. "6.1.0-57-cloud-amd64"
#   recipe_hash     sha256 over the three artifacts' hashes: changes whenever any of them does
#   built_at        when the manifest was written, ISO-8601 UTC
set -euo pipefail

# The script is one brace group that ends in exit, so bash has read all of it before it runs
# any of it: editing the file while a build runs cannot break that build.
{

MANIFEST_FORMAT=1

HOLT_IMAGES_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
export HOLT_IMAGES_DIR
# shellcheck source=lib/common.sh
source "$HOLT_IMAGES_DIR/lib/common.sh"
# shellcheck source=lib/kernel.sh
source "$HOLT_IMAGES_DIR/lib/kernel.sh"
# shellcheck source=lib/initramfs.sh
source "$HOLT_IMAGES_DIR/lib/initramfs.sh"
# shellcheck source=lib/rootfs.sh
source "$HOLT_IMAGES_DIR/lib/rootfs.sh"

usage() {
  cat << EOF
Usage: $0 --data-dir DIR --agent PATH [--prune] [TEMPLATE ...]
       $0 --list

Builds the guest kernel, the initramfs (with the agent PATH) and the root filesystem of each
TEMPLATE (default: all of them) into DIR/images, and writes DIR/images/<template>/manifest.json.
Artifacts whose recipe did not change are reused.

  --data-dir DIR  Holt's data directory (default: \$HOLT_DATA_DIR)
  --agent PATH    the static holt-agent binary to put into the initramfs
  --prune         afterwards, delete artifacts that no manifest refers to
  --list          list the templates and exit
EOF
}

list_templates() {
  local file name
  for file in "$HOLT_IMAGES_DIR"/templates/*.conf; do
    [ -f "$file" ] || continue
    name=${file##*/}
    echo "${name%.conf}"
  done
}

# ---- arguments ----

data_dir=${HOLT_DATA_DIR:-}
agent=
prune=0
templates=()
while [ $# -gt 0 ]; do
  case "$1" in
    --data-dir) data_dir=${2:?--data-dir needs a directory}; shift 2 ;;
    --data-dir=*) data_dir=${1#*=}; shift ;;
    --agent) agent=${2:?--agent needs a path}; shift 2 ;;
    --agent=*) agent=${1#*=}; shift ;;
    --prune) prune=1; shift ;;
    --list)
      for name in $(list_templates); do
        rootfs_parse_template "$HOLT_IMAGES_DIR/templates/$name.conf" > /dev/null ||
          die "template $name is malformed"
        printf '%-20s %s\n' "$name" "$TPL_DESCRIPTION"
      done
      exit 0
      ;;
    -h | --help) usage; exit 0 ;;
    -*) usage >&2; die "unknown option $1" ;;
    *) templates+=("$1"); shift ;;
  esac
done

[ -n "$data_dir" ] || { usage >&2; die "no --data-dir given (and HOLT_DATA_DIR is not set)"; }
[ -n "$agent" ] || { usage >&2; die "no --agent given"; }
[ -f "$agent" ] || die "agent binary $agent does not exist (build it first: make build)"
agent=$(realpath -- "$agent")
[ "$(id -u)" -eq 0 ] || die "must run as root (mmdebstrap and device nodes need it)"
for tool in apt-get apt-cache dpkg-deb depmod modprobe cpio mmdebstrap mkfs.ext4 useradd flock; do
  command -v "$tool" > /dev/null || die "$tool is missing: run infra/install-deps.sh"
done
[ -x "$BUSYBOX" ] || die "$BUSYBOX is missing: run infra/install-deps.sh (busybox-static)"

if [ ${#templates[@]} -eq 0 ]; then
  mapfile -t templates < <(list_templates)
  [ ${#templates[@]} -gt 0 ] || die "no templates in $HOLT_IMAGES_DIR/templates"
fi
for name in "${templates[@]}"; do
  [ -f "$HOLT_IMAGES_DIR/templates/$name.conf" ] ||
    die "no template $name (there is no templates/$name.conf; templates: $(list_templates | paste -sd ' '))"
  problem=$(rootfs_parse_template "$HOLT_IMAGES_DIR/templates/$name.conf") ||
    die "template $name: $problem"
done

# ---- the data directory, locked ----

mkdir -p "$data_dir/images"
images=$(realpath -- "$data_dir/images")
# Paths go into JSON as they are: refuse the characters that would need escaping there.
case "$images" in
  *[[:cntrl:]]* | *[\"\\]*) die "the data directory's path holds a quote, backslash or control character" ;;
esac
mkdir -p "$images/logs" "$images/.cache"
HOLT_SHA256_CACHE="$images/.cache"
exec 9> "$images/.lock"
if ! flock -n 9; then
  say "waiting for another build of $images to finish"
  flock 9
fi
run_start=$(now_us)
# Set once anything is built or written.
changed=0

# The temporary directory of the artifact being built, if any; removed on any exit.
building=
trap 'remove_tree "$building"' EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# Leftovers of builds that were killed (the lock says none is running now).
for dir in "$images"/.tmp-*; do
  [ -e "$dir" ] || continue
  say "removing the unfinished build ${dir##*/}"
  remove_tree "$dir"
done

# Makes a fresh temporary sibling for artifact $1 and sets TMP to it and STEP_LOG to its log.
begin_artifact() {
  TMP=$(mktemp -d "$images/.tmp-$1.XXXXXX")
  chmod 0755 "$TMP"
  building=$TMP
  changed=1
  STEP_LOG="$images/logs/$1.log"
  : > "$STEP_LOG"
}

# Renames the finished temporary directory into place as artifact $1.
finish_artifact() {
  mv -T -- "$TMP" "$images/$1"
  building=
}

# ---- kernel ----

HOLT_SCOPE=kernel
kernel_hash=
kernel_dir=
# Resolves the kernel package and sets kernel_hash and kernel_dir.
resolve_kernel() {
  kernel_resolve "$images/.cache" || return 1
  export KERNEL_PACKAGE KERNEL_PACKAGE_VERSION KERNEL_DEB_SHA256 KERNEL_VERSION
  kernel_hash=$(kernel_recipe | stdin_sha256)
  kernel_dir="$images/kernel-$kernel_hash"
}
# apt-get update fails as a whole when any one source does, also one that has no kernel.
update_package_lists() {
  apt-get update -qq || say "apt-get update reported errors (see above); going on with what it got"
}
if ! resolve_kernel; then
  say "apt does not know $KERNEL_METAPACKAGE: updating the package lists"
  update_package_lists
  resolve_kernel || die "apt cannot resolve $KERNEL_METAPACKAGE to a kernel package"
fi
if [ ! -f "$kernel_dir/vmlinuz" ]; then
  start=$(now_us)
  begin_artifact "kernel-$kernel_hash"
  if ! run_step fetch "apt-get download $KERNEL_PACKAGE=$KERNEL_PACKAGE_VERSION" \
    kernel_download "$TMP"; then
    # The mirror drops superseded kernels: newer package lists may name one it still has.
    say "retrying with fresh package lists"
    update_package_lists
    rm -f "$TMP"/*.deb
    resolve_kernel || die "apt cannot resolve $KERNEL_METAPACKAGE to a kernel package"
    if [ ! -f "$kernel_dir/vmlinuz" ]; then
      run_step fetch "apt-get download $KERNEL_PACKAGE=$KERNEL_PACKAGE_VERSION" \
        kernel_download "$TMP" || die "fetch: cannot download $KERNEL_PACKAGE"
    fi
  fi
  if [ ! -f "$kernel_dir/vmlinuz" ]; then
    run_step unpack "dpkg-deb -x, depmod" kernel_unpack "$TMP" ||
      die "unpack: cannot unpack $KERNEL_PACKAGE"
    kernel_recipe > "$TMP/recipe.txt"
    finish_artifact "kernel-$kernel_hash"
    say "built $KERNEL_VERSION in $(elapsed_since "$start"): vmlinuz $(size_report "$kernel_dir/vmlinuz")"
  fi
fi
kernel_version=$(< "$kernel_dir/kernel-version")

# ---- initramfs ----

HOLT_SCOPE=initramfs
initramfs_hash=$(initramfs_recipe "$kernel_hash" "$agent" | stdin_sha256)
initramfs_dir="$images/initramfs-$initramfs_hash"
if [ ! -f "$initramfs_dir/initrd.img" ]; then
  start=$(now_us)
  begin_artifact "initramfs-$initramfs_hash"
  run_step cpio "busybox, modules, /init, agent ($INITRAMFS_COMPRESSION)" \
    initramfs_build "$TMP" "$kernel_dir" "$agent" || die "cpio: cannot build the initramfs"
  initramfs_recipe "$kernel_hash" "$agent" > "$TMP/recipe.txt"
  finish_artifact "initramfs-$initramfs_hash"
  say "built in $(elapsed_since "$start"): initrd.img $(size_report "$initramfs_dir/initrd.img");" \
    "modules: $(sed 's|.*/||; s|\.ko$||' "$initramfs_dir/modules.txt" | paste -sd ' ')"
fi

# ---- root filesystems and manifests ----

# Writes DIR/images/<template>/manifest.json for template $1 (root filesystem $2, recipe hash
# $3) atomically. Returns 1 without writing when the manifest already says all of it.
write_manifest() {
  local dir="$images/$1" body current=
  body="{\"format\":$MANIFEST_FORMAT,\"template\":$(json_string "$1")"
  body+=",\"kernel\":$(json_string "$kernel_dir/vmlinuz")"
  body+=",\"initrd\":$(json_string "$initramfs_dir/initrd.img")"
  body+=",\"rootfs\":$(json_string "$2"),\"rootfs_format\":\"raw\""
  body+=",\"kernel_version\":$(json_string "$kernel_version"),\"recipe_hash\":\"$3\""
  [ -f "$dir/manifest.json" ] && current=$(< "$dir/manifest.json")
  [ "${current%%,\"built_at\":*}" = "$body" ] && return 1
  # Called from an if, so errexit is off here: every step checks for itself.
  mkdir -p "$dir" || die "cannot create $dir"
  printf '%s,"built_at":"%s"}\n' "$body" "$(date -u +%Y-%m-%dT%H:%M:%SZ)" \
    > "$dir/manifest.json.tmp" || die "cannot write $dir/manifest.json.tmp"
  sync -- "$dir/manifest.json.tmp" || die "cannot sync $dir/manifest.json.tmp"
  mv -f -- "$dir/manifest.json.tmp" "$dir/manifest.json" || die "cannot rename into $dir/manifest.json"
}

for name in "${templates[@]}"; do
  HOLT_SCOPE=$name
  template="$HOLT_IMAGES_DIR/templates/$name.conf"
  rootfs_hash=$(rootfs_recipe "$template" | stdin_sha256)
  rootfs_dir="$images/rootfs-$name-$rootfs_hash"
  if [ ! -f "$rootfs_dir/rootfs.ext4" ]; then
    start=$(now_us)
    rootfs_parse_template "$template"
    begin_artifact "rootfs-$name-$rootfs_hash"
    # The installed tree is only an intermediate: keep it in memory. Writing tens of thousands
    # of files to disk and deleting them again took longer than the installation itself on a
    # busy machine; unmounting frees them at once (and remove_tree unmounts it after a failure).
    mkdir "$TMP/root"
    mount -t tmpfs -o mode=0755 holt-staging "$TMP/root"
    if ! run_step "rootfs" "mmdebstrap $TPL_SUITE/$TPL_VARIANT (${TPL_PACKAGES[*]})" \
      rootfs_debootstrap "$template" "$TMP/root"; then
      complaints=$(rootfs_apt_complaints "$STEP_LOG")
      if [ -n "$complaints" ]; then
        die "template $name, step rootfs (mmdebstrap): apt cannot install: $complaints" \
          "(fix $template; full log: $STEP_LOG)"
      fi
      die "template $name, step rootfs (mmdebstrap) failed; full log: $STEP_LOG"
    fi
    run_step rootfs "finalize (hostname, hosts, resolv.conf, user, no machine-id or caches)" \
      rootfs_finalize "$template" "$TMP/root" "$rootfs_hash" ||
      die "template $name, step rootfs (finalize) failed; full log: $STEP_LOG"
    dpkg-query --admindir="$TMP/root/var/lib/dpkg" -W -f '${Package} ${Version}\n' \
      > "$TMP/packages.txt"
    run_step rootfs "mkfs.ext4 -d (+$TPL_FREE_MIB MiB free)" \
      rootfs_mkfs "$template" "$TMP/root" "$TMP/rootfs.ext4" "$rootfs_hash" ||
      die "template $name, step rootfs (mkfs.ext4) failed; full log: $STEP_LOG"
    umount "$TMP/root"
    rmdir "$TMP/root"
    rootfs_recipe "$template" > "$TMP/recipe.txt"
    finish_artifact "rootfs-$name-$rootfs_hash"
    say "rootfs built in $(elapsed_since "$start"): $(wc -l < "$rootfs_dir/packages.txt")" \
      "packages, rootfs.ext4 $(size_report "$rootfs_dir/rootfs.ext4")"
  fi

  recipe_hash=$(printf 'kernel %s\ninitramfs %s\nrootfs %s\n' \
    "$kernel_hash" "$initramfs_hash" "$rootfs_hash" | stdin_sha256)
  if write_manifest "$name" "$rootfs_dir/rootfs.ext4" "$recipe_hash"; then
    say "manifest: $images/$name/manifest.json (recipe ${recipe_hash:0:12})"
    changed=1
  fi
done

# ---- pruning ----

HOLT_SCOPE=images
if [ "$prune" -eq 1 ]; then
  declare -A referenced=()
  for manifest in "$images"/*/manifest.json; do
    [ -f "$manifest" ] || continue
    while read -r path; do
      referenced[${path%/*}]=1
    done < <(grep -o -E '"(kernel|initrd|rootfs)":"[^"]+"' "$manifest" | cut -d'"' -f4)
  done
  rm -f "$images"/.cache/sha256-*
  for dir in "$images"/kernel-* "$images"/initramfs-* "$images"/rootfs-*; do
    [ -d "$dir" ] || continue
    if [ -z "${referenced[$dir]:-}" ]; then
      say "prune: removing ${dir##*/} (no manifest refers to it)"
      remove_tree "$dir"
      rm -f "$images/logs/${dir##*/}.log"
    fi
  done
fi

if [ "$changed" -eq 0 ]; then
  say "up to date: ${templates[*]} ($(elapsed_since "$run_start"))"
else
  say "done in $(elapsed_since "$run_start")"
fi
exit 0
}
