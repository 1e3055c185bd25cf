#!/bin/sh
# Install the docker compose v2 and buildx CLI plugins when the docker CLI lacks them; idempotent.
# Debian 12 ships neither, so take the static binaries from Debian 13's packages: apt-get download with a
# throwaway apt config whose sources are the host's own sources with the suite changed to trixie
# (the mirror is never hard-coded), then dpkg -x the binary into the CLI plugin directory.
set -eu
PLUGIN_DIR=${DOCKER_CLI_PLUGIN_DIR:-/usr/local/lib/docker/cli-plugins}
TARGET_SUITE=trixie

missing=""
docker compose version >/dev/null 2>&1 || missing="$missing docker-compose"
docker buildx version >/dev/null 2>&1 || missing="$missing docker-buildx"
[ -z "$missing" ] && exit 0

host_suite=$(. /etc/os-release && echo "${VERSION_CODENAME:?no VERSION_CODENAME in /etc/os-release}")
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/sources.list.d" "$work/lists/partial" "$work/archives/partial" "$work/pkgs"
: >"$work/status"

# Same mirrors, same keyrings, other suite: "bookworm-updates" becomes "trixie-updates" and so on.
retarget() { sed -E "s/(^|[[:space:]])${host_suite}(-[a-z]+)?([[:space:]]|$)/\1${TARGET_SUITE}\2\3/g"; }
for f in /etc/apt/sources.list.d/*.sources; do
  [ -e "$f" ] || continue
  retarget <"$f" >"$work/sources.list.d/$(basename "$f")"
done
for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
  [ -e "$f" ] || continue
  grep -E '^[[:space:]]*deb[[:space:]]' "$f" | retarget >"$work/sources.list.d/$(basename "$f").list" || true
done

cat >"$work/apt.conf" <<EOF
Dir::Etc::SourceList "/dev/null";
Dir::Etc::SourceParts "$work/sources.list.d";
Dir::Etc::Preferences "/dev/null";
Dir::Etc::PreferencesParts "/dev/null";
Dir::State::Lists "$work/lists";
Dir::State::status "$work/status";
Dir::Cache "$work";
Dir::Cache::archives "$work/archives";
APT::Sandbox::User "root";
APT::Architecture "$(dpkg --print-architecture)";
EOF
export APT_CONFIG="$work/apt.conf"
apt-get -q update >"$work/update.log" 2>&1 || { cat "$work/update.log" >&2; exit 1; }
# shellcheck disable=SC2086 # word splitting of the package list is intended
(cd "$work/pkgs" && apt-get -q download $missing >/dev/null)

mkdir -p "$PLUGIN_DIR"
for deb in "$work"/pkgs/*.deb; do
  dpkg -x "$deb" "$work/root"
done
for bin in "$work"/root/usr/libexec/docker/cli-plugins/docker-*; do
  install -m 0755 "$bin" "$PLUGIN_DIR/$(basename "$bin")"
done
docker compose version
docker buildx version
