# The guest kernel: Debian's cloud kernel, fetched as one .deb and unpacked, never installed.
#
# Artifact directory (kernel-<hash>/):
#   vmlinuz                      the kernel image
#   config                       its build configuration
#   lib/modules/<version>/       every module of the package, with modules.dep made by depmod
#   kernel-version               one line: the kernel release, e.g. 6.1.0-57-cloud-amd64
#   package                      one line: "<package> <version> <sha256 of the .deb>"
#
# The recipe hash covers this file and the resolved package (name, version, .deb sha256), so a
# new kernel in the host's package lists makes a new kernel artifact (and a new initramfs).
# shellcheck shell=bash

KERNEL_METAPACKAGE=linux-image-cloud-amd64

# Asks apt (the host's package lists) which real package the metapackage depends on now.
# Sets KERNEL_PACKAGE, KERNEL_PACKAGE_VERSION, KERNEL_DEB_SHA256 and KERNEL_VERSION.
#
# apt-cache takes about a second here (the machine's apt config disables apt's own cache), so the
# answer is remembered in $1 keyed by the size and time of every package list and apt source:
# unchanged lists give the same answer.
kernel_resolve() {
  local memo_dir=$1 lists etc key memo line
  eval "$(apt-config shell lists Dir::State::lists/d etc Dir::Etc/d)"
  key=$({
    echo "$KERNEL_METAPACKAGE"
    stat -c '%n %s %Y' -- "${lists}"* "${etc}"sources.list* "${etc}"sources.list.d/* \
      "${etc}"preferences* "${etc}"preferences.d/* 2> /dev/null || true
  } | stdin_sha256)
  memo="$memo_dir/kernel-resolve-$key"
  if [ -s "$memo" ]; then
    read -r KERNEL_PACKAGE KERNEL_PACKAGE_VERSION KERNEL_DEB_SHA256 < "$memo"
  else
    KERNEL_PACKAGE=$(apt-cache depends "$KERNEL_METAPACKAGE" 2> /dev/null |
      awk '$1 == "Depends:" && $2 ~ /^linux-image-/ { print $2; exit }') || true
    [ -n "$KERNEL_PACKAGE" ] || return 1
    KERNEL_PACKAGE_VERSION=
    KERNEL_DEB_SHA256=
    while read -r line; do
      case "$line" in
        Version:\ *) KERNEL_PACKAGE_VERSION=${line#Version: } ;;
        SHA256:\ *) KERNEL_DEB_SHA256=${line#SHA256: } ;;
      esac
    done < <(apt-cache show --no-all-versions "$KERNEL_PACKAGE" 2> /dev/null)
    [ -n "$KERNEL_PACKAGE_VERSION" ] && [ -n "$KERNEL_DEB_SHA256" ] || return 1
    rm -f "$memo_dir"/kernel-resolve-*
    echo "$KERNEL_PACKAGE $KERNEL_PACKAGE_VERSION $KERNEL_DEB_SHA256" > "$memo.tmp"
    mv -f "$memo.tmp" "$memo"
  fi
  KERNEL_VERSION=${KERNEL_PACKAGE#linux-image-}
}

# The recipe of the resolved kernel, one input per line; its sha256 is the artifact's hash.
kernel_recipe() {
  echo "kernel-recipe 1"
  echo "package $KERNEL_PACKAGE $KERNEL_PACKAGE_VERSION $KERNEL_DEB_SHA256"
  echo "script lib/kernel.sh $(file_sha256 "$HOLT_IMAGES_DIR/lib/kernel.sh")"
}

# Downloads the resolved package into directory $1.
kernel_download() {
  local dir=$1
  # -o APT::Sandbox::User=root: the download directory is not readable by apt's _apt user.
  (cd "$dir" && apt-get download -q -o APT::Sandbox::User=root \
    "$KERNEL_PACKAGE=$KERNEL_PACKAGE_VERSION") || return 1
  kernel_deb "$dir" || return 1
  [ "$(file_sha256 "$KERNEL_DEB")" = "$KERNEL_DEB_SHA256" ] ||
    { echo "sha256 of $KERNEL_DEB differs from the package lists"; return 1; }
}

# Sets KERNEL_DEB to the one .deb in directory $1.
kernel_deb() {
  local debs=("$1"/*.deb)
  if [ "${#debs[@]}" -ne 1 ] || [ ! -f "${debs[0]}" ]; then
    echo "expected exactly one .deb in $1, found: ${debs[*]}"
    return 1
  fi
  KERNEL_DEB=${debs[0]}
}

# Unpacks the downloaded package in $1 into the artifact layout in $1 and removes the rest.
kernel_unpack() {
  local dir=$1
  kernel_deb "$dir" || return 1
  dpkg-deb -x "$KERNEL_DEB" "$dir/unpacked"
  [ -f "$dir/unpacked/boot/vmlinuz-$KERNEL_VERSION" ] ||
    { echo "the package has no boot/vmlinuz-$KERNEL_VERSION"; return 1; }
  [ -d "$dir/unpacked/lib/modules/$KERNEL_VERSION" ] ||
    { echo "the package has no lib/modules/$KERNEL_VERSION"; return 1; }
  mv "$dir/unpacked/boot/vmlinuz-$KERNEL_VERSION" "$dir/vmlinuz"
  mv "$dir/unpacked/boot/config-$KERNEL_VERSION" "$dir/config"
  mkdir -p "$dir/lib/modules"
  mv "$dir/unpacked/lib/modules/$KERNEL_VERSION" "$dir/lib/modules/"
  rm -rf "$dir/unpacked" "$KERNEL_DEB"
  # The package ships no modules.dep (its postinst makes it): make it for this tree.
  depmod -b "$dir" "$KERNEL_VERSION"
  echo "$KERNEL_VERSION" > "$dir/kernel-version"
  echo "$KERNEL_PACKAGE $KERNEL_PACKAGE_VERSION $KERNEL_DEB_SHA256" > "$dir/package"
}
