#!/usr/bin/env bash
# A Debian trixie chroot with GIMP 3 and its Python plug-in support, for the end-to-end test of
# gimp-bridge/ (GIMP 3 is not packaged for this machine's Debian 12). Made once and kept
# outside the clone: $SDHOST_GIMP_ROOT, default ~/.cache/sdhost/gimp-trixie (about 730 MB,
# 3 minutes). Needs root (debootstrap, chroot, mounts). Prints the chroot's path.
set -euo pipefail
root=${SDHOST_GIMP_ROOT:-$HOME/.cache/sdhost/gimp-trixie}
stamp=$root/.sdhost-ready
if [ -f "$stamp" ]; then
  echo "$root"
  exit 0
fi
if [ "$(id -u)" != 0 ]; then
  echo "setup_chroot.sh: needs root for debootstrap and chroot" >&2
  exit 1
fi
command -v debootstrap >/dev/null || {
  apt-get update -q >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q debootstrap >&2
}
rm -rf "$root"
mkdir -p "$(dirname "$root")"
debootstrap --variant=minbase trixie "$root" http://deb.debian.org/debian >&2
cp /etc/resolv.conf "$root/etc/resolv.conf"
mount -t proc proc "$root/proc"
mount -t sysfs sysfs "$root/sys"
mount --bind /dev "$root/dev"
trap 'for m in dev sys proc; do mountpoint -q "$root/$m" && umount "$root/$m"; done' EXIT
chroot "$root" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin DEBIAN_FRONTEND=noninteractive \
  sh -c 'apt-get update -q && apt-get install -y -q --no-install-recommends gimp python3-gi gir1.2-gimp-3.0 && apt-get clean' >&2
touch "$stamp"
echo "$root"
