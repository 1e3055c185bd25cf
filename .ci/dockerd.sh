#!/bin/sh
# Start a Docker engine for the tests when none answers; idempotent.
# On a host with a managed docker.service this is a no-op.
set -eu
if docker info >/dev/null 2>&1; then exit 0; fi
if ! command -v dockerd >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ]; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q docker.io iptables >/dev/null
  else
    echo "dockerd missing: sudo apt-get install docker.io" >&2; exit 1
  fi
fi
mkdir -p /var/log/flagmeter-ci
nohup dockerd >/var/log/flagmeter-ci/dockerd.log 2>&1 &
i=0
until docker info >/dev/null 2>&1; do
  i=$((i + 1))
  if [ "$i" -gt 60 ]; then echo "dockerd did not start; see /var/log/flagmeter-ci/dockerd.log" >&2; exit 1; fi
  sleep 1
done
