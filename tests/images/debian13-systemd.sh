#!/bin/sh
# Build the Debian 13 (trixie) systemd image Molecule boots as a "fresh host".
# Prints the image tag. The tag carries a hash of this script, so a second run
# is a no-op and any change here builds a new image.
#   FLAGMETER_DEBIAN13_VARIANT=docker  also preinstalls docker.io + compose, for
#   scenarios of roles that only need Docker to be there.
# The packages the roles install are downloaded into the image's apt cache, so
# converging needs no mirror and stays fast.
set -eu

variant=${FLAGMETER_DEBIAN13_VARIANT:-base}
hash=$(cat "$0" | sha256sum | cut -c1-12)
tag="flagmeter-debian13-systemd:${variant}-${hash}"
if docker image inspect "$tag" >/dev/null 2>&1; then echo "$tag"; exit 0; fi

if [ "$variant" = docker ]; then
  # One layer on the base image, installed from the .debs already in its apt cache.
  base=$(FLAGMETER_DEBIAN13_VARIANT=base sh "$0")
  docker build -q -t "$tag" - >&2 <<DOCKERFILE
FROM $base
RUN printf '#!/bin/sh\\nexit 101\\n' >/usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d \\
 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \\
    docker.io docker-cli docker-compose iptables ca-certificates python3-yaml \\
 && rm /usr/sbin/policy-rc.d
DOCKERFILE
  echo "$tag"
  exit 0
fi

# The mirror is whatever this machine's apt uses; never hard-coded.
mirror=$(sed -n 's/^URIs:[[:space:]]*//p' /etc/apt/sources.list.d/*.sources 2>/dev/null | grep -v security | head -n1)
if [ -z "$mirror" ]; then
  mirror=$(awk '$1 == "deb" && $0 !~ /security/ { print $2; exit }' /etc/apt/sources.list)
fi
command -v debootstrap >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -q debootstrap >&2

# What the roles install, and python3-aiohttp for the site scenario's Coolify stand-in
# (tests/coolify_standin/); cached as .debs, not installed.
cached="docker.io docker-cli docker-compose containerd runc tini iptables nftables fail2ban python3-systemd
 unattended-upgrades apt-listchanges systemd-timesyncd openssh-server e2fsprogs curl ca-certificates
 python3-yaml python3-requests python3-aiohttp"
base="systemd,systemd-sysv,python3,python3-apt,dbus,procps,iproute2,util-linux,mount,kmod,sudo"

root=$(mktemp -d /var/tmp/debian13-rootfs.XXXXXX)
chmod 755 "$root"
trap 'umount -l "$root/proc" 2>/dev/null || true; rm -rf "$root"' EXIT
debootstrap --variant=minbase --include="$base" trixie "$root" "$mirror" >&2

cat >"$root/etc/apt/sources.list.d/debian.sources" <<SRC
Types: deb
URIs: $mirror
Suites: trixie trixie-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
: >"$root/etc/apt/sources.list"
mount -t proc proc "$root/proc"
chroot "$root" apt-get update -q >&2
# shellcheck disable=SC2086
chroot "$root" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends --download-only $cached >&2
umount "$root/proc"

# A container is no machine: no getty, no udev settling, no kernel module loading.
for unit in getty.target systemd-udevd.service systemd-udev-trigger.service systemd-modules-load.service \
  sys-kernel-config.mount sys-kernel-debug.mount sys-kernel-tracing.mount systemd-firstboot.service; do
  ln -sf /dev/null "$root/etc/systemd/system/$unit"
done
# The rootfs is no tmpfs: keep boot-time cleaning of /tmp from racing the first converge.
ln -sf /dev/null "$root/etc/tmpfiles.d/tmp.conf"
: >"$root/etc/machine-id"
echo "flagmeter-test" >"$root/etc/hostname"

tar -C "$root" -c . | docker import \
  -c 'CMD ["/lib/systemd/systemd"]' \
  -c 'ENV container=docker' \
  - "$tag" >&2
echo "$tag"
