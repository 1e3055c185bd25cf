#!/bin/bash
# Build the local stand-ins for registry images: a Debian 13 rootfs (debootstrap + docker import) and, on
# top of it, python3.13, postgresql-17 and valkey-server 8 images from Debian's packages. Idempotent: each
# image carries a label with the hash of its inputs, and an image whose label matches is kept.
# Usage: tests/images/build.sh            prints nothing but progress on stderr; image names are in README.md
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
SUITE=trixie
DEBIAN_IMAGE=flagmeter-debian:13
declare -A IMAGES=([python]=flagmeter-python:3.13-trixie [postgres]=flagmeter-postgres:17 [valkey]=flagmeter-valkey:8)
LABEL=org.flagmeter.test-images

dir_hash() {  # of one image's directory plus the rootfs it builds on, so editing one image rebuilds only it
  (cd "$here" && find "$1" -type f -print0 | LC_ALL=C sort -z | xargs -0 sha256sum; echo "$2") | sha256sum | cut -c1-16
}

current() {  # is image $1 built from inputs with hash $2?
  [ "$(docker image inspect -f "{{index .Config.Labels \"$LABEL\"}}" "$1" 2>/dev/null)" = "$2" ]
}

host_mirror() {  # the Debian archive the host itself uses, read from its apt sources
  local codename uri
  codename=$(. /etc/os-release && echo "$VERSION_CODENAME")
  uri=$(awk -v s="$codename" '
    /^URIs:/ { u = $2 }
    /^Suites:/ { for (i = 2; i <= NF; i++) if ($i == s) { print u; exit } }
    /^[ \t]*$/ { u = "" }' /etc/apt/sources.list.d/*.sources 2>/dev/null || true)
  if [ -z "$uri" ]; then
    uri=$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null \
      | awk -v s="$codename" '$1 == "deb" { for (i = 2; i <= NF; i++) if ($i == s) { print $(i - 1); exit } }')
  fi
  [ -n "$uri" ] || { echo "no Debian mirror for $codename in the host's apt sources" >&2; return 1; }
  echo "$uri"
}

build_rootfs() {
  local root
  root=$(mktemp -d /var/tmp/flagmeter-debootstrap.XXXXXX)
  trap 'rm -rf "$root"' RETURN
  echo "debootstrap $SUITE (minbase) ..." >&2
  debootstrap --variant=minbase --include=ca-certificates "$SUITE" "$root" "$(host_mirror)" >"$root.log" 2>&1 \
    || { tail -30 "$root.log" >&2; return 1; }
  rm -f "$root.log"
  rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
  tar -C "$root" -c . | docker import \
    --change "LABEL $LABEL=$rootfs_hash" --change 'ENV LANG=C.UTF-8' --change 'CMD ["bash"]' \
    - "$DEBIAN_IMAGE" >/dev/null
}

rootfs_hash=$( (declare -f host_mirror build_rootfs; echo "$SUITE") | sha256sum | cut -c1-16)
current "$DEBIAN_IMAGE" "$rootfs_hash" || build_rootfs
rootfs_id=$(docker image inspect -f '{{.Id}}' "$DEBIAN_IMAGE")
for name in python postgres valkey; do
  image=${IMAGES[$name]}
  hash=$(dir_hash "$name" "$rootfs_id")
  current "$image" "$hash" && continue
  echo "building $image ..." >&2
  DOCKER_BUILDKIT=1 docker build -q --label "$LABEL=$hash" --build-arg "DEBIAN_IMAGE=$DEBIAN_IMAGE" \
    -t "$image" "$here/$name" >/dev/null
done
