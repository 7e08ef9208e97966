# Root filesystems: a template's Debian packages, installed by mmdebstrap into a directory and
# turned into a raw, sparse ext4 image by mkfs.ext4 -d (nothing is mounted).
#
# Artifact directory (rootfs-<template>-<hash>/):
#   rootfs.ext4    the image (raw ext4, label holt-root, UUID taken from the recipe hash)
#   packages.txt   the installed packages, "name version" a line
#
# A template file (templates/<name>.conf) holds "key = value" lines; blank lines and lines that
# start with "#" are ignored. Keys:
#   description     one line for people (required)
#   suite           Debian suite (default bookworm)
#   variant         mmdebstrap variant: minbase, apt, essential, required, important (default minbase)
#   packages        space-separated Debian package names; the key may repeat
#   free_space_mib  free space the image has beyond its contents (default 512)
#   hostname        the guest's host name (default: the template's name)
#
# The recipe hash covers the template file and this file; not the versions apt picks, so a
# template is rebuilt when its recipe changes, not when Debian publishes an update.
# shellcheck shell=bash

# Debian mirrors, not part of the recipe (a closer mirror gives the same packages).
DEBIAN_MIRROR=${HOLT_DEBIAN_MIRROR:-http://deb.debian.org/debian}
DEBIAN_SECURITY_MIRROR=${HOLT_DEBIAN_SECURITY_MIRROR:-http://deb.debian.org/debian-security}

# Reads template file $1 into TPL_NAME, TPL_DESCRIPTION, TPL_SUITE, TPL_VARIANT, TPL_PACKAGES (array),
# TPL_FREE_MIB and TPL_HOSTNAME. Prints what is wrong and returns 1 on a malformed file.
rootfs_parse_template() {
  local file=$1 name lineno=0 line key value pkg
  name=${file##*/}
  name=${name%.conf}
  if ! [[ "$name" =~ ^[a-z0-9][a-z0-9-]*$ ]]; then
    echo "$file: a template's name is lower-case letters, digits and dashes"
    return 1
  fi
  TPL_NAME=$name
  TPL_DESCRIPTION=''
  TPL_SUITE=bookworm
  TPL_VARIANT=minbase
  TPL_FREE_MIB=512
  TPL_HOSTNAME=$name
  TPL_PACKAGES=()
  while IFS= read -r line || [ -n "$line" ]; do
    lineno=$((lineno + 1))
    [[ "$line" =~ ^[[:space:]]*(#.*)?$ ]] && continue
    if ! [[ "$line" =~ ^[[:space:]]*([a-z_]+)[[:space:]]*=[[:space:]]*(.*[^[:space:]])[[:space:]]*$ ]]; then
      echo "$file:$lineno: expected \"key = value\": $line"
      return 1
    fi
    key=${BASH_REMATCH[1]} value=${BASH_REMATCH[2]}
    case "$key" in
      description) TPL_DESCRIPTION=$value ;;
      suite) TPL_SUITE=$value ;;
      variant) TPL_VARIANT=$value ;;
      hostname) TPL_HOSTNAME=$value ;;
      free_space_mib) TPL_FREE_MIB=$value ;;
      packages)
        for pkg in $value; do
          if ! [[ "$pkg" =~ ^[a-z0-9][a-z0-9+.-]+$ ]]; then
            echo "$file:$lineno: not a Debian package name: $pkg"
            return 1
          fi
          TPL_PACKAGES+=("$pkg")
        done
        ;;
      *)
        echo "$file:$lineno: unknown key \"$key\""
        return 1
        ;;
    esac
  done < "$file"
  [ -n "$TPL_DESCRIPTION" ] || { echo "$file: no description"; return 1; }
  [[ "$TPL_SUITE" =~ ^[a-z]+$ ]] || { echo "$file: bad suite $TPL_SUITE"; return 1; }
  case "$TPL_VARIANT" in
    minbase | apt | essential | required | important) ;;
    *) echo "$file: unsupported variant $TPL_VARIANT"; return 1 ;;
  esac
  [[ "$TPL_FREE_MIB" =~ ^[0-9]+$ ]] || { echo "$file: free_space_mib is not a number"; return 1; }
  [[ "$TPL_HOSTNAME" =~ ^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$ ]] ||
    { echo "$file: bad hostname $TPL_HOSTNAME"; return 1; }
}

# The recipe of template file $1, one input per line; its sha256 is the artifact's hash.
rootfs_recipe() {
  echo "rootfs-recipe 1"
  local name=${1##*/}
  echo "template ${name%.conf} $(file_sha256 "$1")"
  echo "script lib/rootfs.sh $(file_sha256 "$HOLT_IMAGES_DIR/lib/rootfs.sh")"
}

# Installs the packages of template file $1 into the new directory $2.
rootfs_debootstrap() {
  local root=$2 includes check=()
  rootfs_parse_template "$1"
  includes=$(IFS=,; echo "${TPL_PACKAGES[*]}")
  # mmdebstrap installs the template's packages only after the essential ones, about a minute
  # in. Asking apt to resolve them as soon as its lists are there makes a misspelt name fail
  # within seconds. (The names were checked against a strict pattern: safe in a shell string.)
  if [ ${#TPL_PACKAGES[@]} -gt 0 ]; then
    check=(--extract-hook="APT_CONFIG=\"\$MMDEBSTRAP_APT_CONFIG\" apt-get --simulate --quiet \
install ${TPL_PACKAGES[*]} > /dev/null")
  fi
  # merged-usr: /usr is merged with directory symlinks, as debootstrap does, instead of by the
  # usrmerge package, which would pull perl into every image. eatmydata: dpkg skips fsync.
  # Documentation, manual pages and translations are left out (copyright files stay); apt's
  # package lists and caches are removed by mmdebstrap's own clean-up.
  mmdebstrap --mode=root --format=directory --variant="$TPL_VARIANT" \
    --hook-dir=/usr/share/mmdebstrap/hooks/merged-usr \
    --hook-dir=/usr/share/mmdebstrap/hooks/eatmydata \
    ${includes:+--include="$includes"} "${check[@]}" \
    --dpkgopt='path-exclude=/usr/share/man/*' \
    --dpkgopt='path-exclude=/usr/share/info/*' \
    --dpkgopt='path-exclude=/usr/share/doc/*' \
    --dpkgopt='path-include=/usr/share/doc/*/copyright' \
    --dpkgopt='path-exclude=/usr/share/locale/*' \
    --dpkgopt='path-include=/usr/share/locale/locale.alias' \
    "$TPL_SUITE" "$root" \
    "deb $DEBIAN_MIRROR $TPL_SUITE main" \
    "deb $DEBIAN_MIRROR $TPL_SUITE-updates main" \
    "deb $DEBIAN_SECURITY_MIRROR $TPL_SUITE-security main" < /dev/null
}

# Prints the names of the packages that apt said it cannot install, from mmdebstrap's log $1,
# on one line: packages it does not know, then "X (depends: Y but it is not installable)".
rootfs_apt_complaints() {
  sed -n -E \
    -e "s/^E: Unable to locate package ([^ ]*).*$/\1/p" \
    -e "s/^E: Package '([^']*)' has no installation candidate.*/\1/p" \
    -e "s/^E: Couldn't find any package by (glob|regex) '([^']*)'.*/\2/p" \
    -e "s/^ *([a-z0-9][a-z0-9+.-]*) : (Depends|PreDepends|Conflicts|Breaks): (.*)$/\1 (\L\2\E: \3)/p" \
    "$1" | awk '!seen[$0]++' | paste -sd ' '
}

# Makes the tree $2 that template file $1 installed a Holt guest: identity files, the
# unprivileged user, no caches, no per-machine state. $3 is the recipe hash, kept in
# /etc/holt/image.
rootfs_finalize() {
  local root=$2 hash=$3 f
  rootfs_parse_template "$1"
  [ -x "$root/bin/sh" ] || { echo "$root has no /bin/sh"; return 1; }

  echo "$TPL_HOSTNAME" > "$root/etc/hostname"
  cat > "$root/etc/hosts" << EOF
127.0.0.1	localhost
127.0.1.1	$TPL_HOSTNAME
::1	localhost ip6-localhost ip6-loopback
ff02::1	ip6-allnodes
ff02::2	ip6-allrouters
EOF
  rm -f "$root/etc/resolv.conf"
  cat > "$root/etc/resolv.conf" << 'EOF'
# Placeholder. The Holt agent writes the guest's resolvers here when its network is set up;
# a guest without a network has none.
EOF

  # The unprivileged user (the host's useradd, working inside the tree).
  useradd --root "$root" --create-home --uid 1000 --user-group --shell /bin/bash \
    --comment "Holt user" user
  chmod 0755 "$root/home/user"

  # Per-machine state must not be baked into a template that every guest shares.
  : > "$root/etc/machine-id"
  rm -f "$root/var/lib/dbus/machine-id"
  rm -f "$root/var/lib/systemd/random-seed" "$root/var/lib/urandom/random-seed" \
    "$root/var/lib/random-seed"

  # Caches, package lists and logs of the installation.
  rm -rf "$root"/var/cache/apt/* "$root"/var/cache/debconf/*-old "$root"/var/lib/apt/lists/*
  mkdir -p "$root/var/lib/apt/lists/partial" "$root/var/cache/apt/archives/partial"
  for f in "$root"/var/log/*.log "$root"/var/log/apt/*; do
    [ -f "$f" ] && : > "$f"
  done
  rm -rf "$root/tmp/"* "$root/var/tmp/"*

  mkdir -p "$root/etc/holt"
  cat > "$root/etc/holt/image" << EOF
template=$TPL_NAME
rootfs_hash=$hash
suite=$TPL_SUITE
EOF
}

# Writes the tree $2 into the sparse ext4 image $3 with the free space template file $1 asks
# for; $4 is the recipe hash, from which the file system's UUID and directory hash seed are taken.
rootfs_mkfs() {
  local root=$2 image=$3 hash=$4 used_kib files size_mib uuid seed
  rootfs_parse_template "$1"
  used_kib=$(du -sk --one-file-system "$root" | cut -f1)
  files=$(find "$root" -xdev | wc -l)
  # Contents + 10 % for ext4's metadata and block rounding + the free space, in whole 64 MiB.
  size_mib=$(((used_kib * 11 / 10 / 1024 + TPL_FREE_MIB + 63) / 64 * 64))
  uuid="${hash:0:8}-${hash:8:4}-4${hash:13:3}-8${hash:17:3}-${hash:20:12}"
  seed="${hash:32:8}-${hash:40:4}-4${hash:45:3}-8${hash:49:3}-${hash:52:12}"
  echo "contents $used_kib KiB in $files files; image $size_mib MiB"
  truncate -s "${size_mib}M" "$image"
  # One inode per 8 KiB leaves room for many small files (pip and npm installs). The inode
  # tables and journal are initialised now, so the guest kernel never zeroes them lazily into
  # every VM's overlay.
  mkfs.ext4 -q -F -L holt-root -U "$uuid" -m 0 -i 8192 \
    -E "lazy_itable_init=0,lazy_journal_init=0,root_owner=0:0,hash_seed=$seed" \
    -d "$root" "$image"
}
