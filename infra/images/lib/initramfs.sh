# The initramfs: busybox, the virtio modules, /init and the Holt agent, as one newc cpio archive.
#
# Artifact directory (initramfs-<hash>/):
#   initrd.img     the archive (compressed as INITRAMFS_COMPRESSION says)
#   modules.txt    the modules it loads, in load order, as paths below lib/modules/<version>/
#
# Inside the archive:
#   /init                          infra/images/initramfs/init
#   /bin/busybox and its applets   from the host's busybox-static
#   /dev/console, /dev/null        device nodes, so the kernel can give /init a console
#   /lib/modules/<version>/...     the modules, at the same paths as in the kernel's tree
#   /etc/holt/modules              their load order, one path a line
#   /etc/holt/kernel-version       the kernel release they belong to
#   /holt/holt-agent               the agent, which /init copies to /run/holt/ of the root fs
#
# The recipe hash covers this file, /init, the module list, the kernel artifact's hash, the
# busybox binary and the agent binary.
# shellcheck shell=bash

BUSYBOX=${BUSYBOX:-/bin/busybox}

# How the archive is compressed: none, gzip or zstd. Measured under TCG (docs/images.md): the
# kernel unpacks an uncompressed archive of a few MiB at least as fast as a compressed one.
INITRAMFS_COMPRESSION=${INITRAMFS_COMPRESSION:-none}

# The recipe, one input per line; its sha256 is the artifact's hash.
#   initramfs_recipe KERNEL_HASH AGENT
initramfs_recipe() {
  echo "initramfs-recipe 1"
  echo "compression $INITRAMFS_COMPRESSION"
  echo "kernel $1"
  echo "agent $(file_sha256_cached "$2")"
  echo "busybox $(file_sha256_cached "$BUSYBOX")"
  echo "init $(file_sha256 "$HOLT_IMAGES_DIR/initramfs/init")"
  echo "modules $(file_sha256 "$HOLT_IMAGES_DIR/initramfs/modules")"
  echo "script lib/initramfs.sh $(file_sha256 "$HOLT_IMAGES_DIR/lib/initramfs.sh")"
}

# Resolves the module list against the kernel tree in $1 (release $2) and prints the module
# files to load, in order, as paths relative to lib/modules/<release>/, each once.
initramfs_resolve_modules() {
  local kroot=$1 release=$2 name flag line path
  local moddir="$kroot/lib/modules/$release/"
  local -A seen=()
  while read -r name flag; do
    case "$name" in '' | '#'*) continue ;; esac
    # -C /dev/null: the host's modprobe.d (blacklists, install commands) is not the guest's.
    if ! modprobe -C /dev/null -d "$kroot" -S "$release" -n "$name" 2> /dev/null; then
      if [ "$flag" = optional ]; then
        echo "note: kernel $release has no module $name (optional, skipped)" >&2
        continue
      fi
      echo "kernel $release has no module $name" >&2
      return 1
    fi
    # One "insmod /path" line per module to load, dependencies first; "builtin x" for built-ins.
    while read -r line; do
      case "$line" in
        insmod\ *)
          path=${line#insmod }
          path=${path%% *}
          path=${path#"$moddir"}
          if [ -z "${seen[$path]:-}" ]; then
            seen[$path]=1
            echo "$path"
          fi
          ;;
      esac
    done < <(modprobe -C /dev/null -d "$kroot" -S "$release" --show-depends "$name")
  done < "$HOLT_IMAGES_DIR/initramfs/modules"
}

# Builds the archive into directory $1 from the kernel artifact in $2 and the agent $3.
initramfs_build() {
  local out=$1 kdir=$2 agent=$3 release stage target path
  release=$(< "$kdir/kernel-version")
  stage="$out/stage"
  mkdir -p "$stage"/{bin,dev,etc/holt,holt,newroot,proc,sys,tmp,run} "$stage/lib/modules/$release"

  cp "$HOLT_IMAGES_DIR/initramfs/init" "$stage/init"
  chmod 0755 "$stage/init"
  # One symlink per applet, all in /bin, made by busybox itself (one process, not hundreds).
  # They point at the path the host's busybox has (/usr/bin/busybox on a merged-/usr host),
  # so that path leads to /bin/busybox in the archive too.
  cp "$BUSYBOX" "$stage/bin/busybox"
  "$BUSYBOX" --install -s "$stage/bin"
  target=$(readlink "$stage/bin/sh")
  if [ "$target" != /bin/busybox ]; then
    mkdir -p "$stage${target%/*}"
    ln -s /bin/busybox "$stage$target"
  fi
  mknod -m 0600 "$stage/dev/console" c 5 1
  mknod -m 0666 "$stage/dev/null" c 1 3

  initramfs_resolve_modules "$kdir" "$release" > "$out/modules.txt" || return 1
  while read -r path; do
    mkdir -p "$stage/lib/modules/$release/${path%/*}"
    cp "$kdir/lib/modules/$release/$path" "$stage/lib/modules/$release/$path"
  done < "$out/modules.txt"
  cp "$out/modules.txt" "$stage/etc/holt/modules"
  echo "$release" > "$stage/etc/holt/kernel-version"

  # Debug information stays on the host (the recipe hashes the unstripped binary): every byte of
  # the archive is unpacked at every cold boot.
  cp "$agent" "$stage/holt/holt-agent"
  if command -v strip > /dev/null; then
    strip --strip-debug "$stage/holt/holt-agent"
  fi
  chmod 0755 "$stage/holt/holt-agent"

  # A reproducible archive: sorted names, one owner, one time stamp.
  find "$stage" -exec touch -h -d @0 {} +
  (cd "$stage" && find . -mindepth 1 -print0 | LC_ALL=C sort -z |
    cpio --quiet --null -o -H newc -R 0:0 --reproducible) > "$out/initrd.cpio"
  case "$INITRAMFS_COMPRESSION" in
    none) mv "$out/initrd.cpio" "$out/initrd.img" ;;
    gzip) gzip -9 -n -c "$out/initrd.cpio" > "$out/initrd.img" && rm "$out/initrd.cpio" ;;
    zstd) zstd -q -19 --rm "$out/initrd.cpio" -o "$out/initrd.img" ;;
    *) echo "unknown INITRAMFS_COMPRESSION $INITRAMFS_COMPRESSION"; return 1 ;;
  esac
  rm -rf "$stage"
}
