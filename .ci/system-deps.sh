#!/bin/sh
# Install the system packages `make run` / `make test` need, when missing. Idempotent.
#   .ci/system-deps.sh run    PostgreSQL and Redis server binaries, python3-venv
#   .ci/system-deps.sh test   the above plus Docker, debootstrap, Chromium, promtool, wrk, the bench's locale
#   .ci/system-deps.sh bench  the `run` set plus wrk (the bench's load generator) and the en_US.UTF-8
#                             locale (its PostgreSQL runs under the postgres image's locale)
# As root it installs with apt; otherwise it prints the commands to run.
set -eu
need=""
has() { command -v "$1" >/dev/null 2>&1; }
want() { need="$need $1"; }

python3 -c 'import ensurepip, venv' 2>/dev/null || want python3-venv
ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1 || has pg_ctl || want postgresql
has redis-server || has valkey-server || want redis-server
locale_missing() { ! locale -a 2>/dev/null | grep -qx 'en_US.utf8'; }
case "${1:-run}" in bench | test) has wrk || want wrk ;; esac
case "${1:-run}" in bench | test) bench_locale=1 ;; *) bench_locale= ;; esac
if [ -n "$bench_locale" ] && locale_missing; then [ -f /usr/share/i18n/locales/en_US ] || want locales; fi
if [ "${1:-run}" = test ]; then
  has dockerd || want docker.io
  has iptables || want iptables
  has debootstrap || want debootstrap
  has chromium || want chromium
  has promtool || want prometheus
  has runuser || want util-linux
  has prometheus-node-exporter || want prometheus-node-exporter
  has prometheus-postgres-exporter || want prometheus-postgres-exporter
  has prometheus-redis-exporter || want prometheus-redis-exporter
fi

if [ -n "$need" ] && [ "$(id -u)" = 0 ]; then
  echo "installing system packages:$need"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q >/dev/null
  # shellcheck disable=SC2086
  apt-get install -y -q --no-install-recommends $need >/dev/null
  # Debian starts the packaged servers; FlagMeter runs its own under .run/, so stop those.
  for unit in postgresql redis-server prometheus prometheus-node-exporter prometheus-postgres-exporter \
      prometheus-redis-exporter; do
    systemctl disable --now "$unit" >/dev/null 2>&1 || service "$unit" stop >/dev/null 2>&1 || true
  done
elif [ -n "$need" ]; then
  echo "missing system packages; install them with:" >&2
  echo "  sudo apt-get install -y$need" >&2
fi

# The bench's PostgreSQL runs under the postgres image's locale (bench/stack.py DATABASE_LOCALE);
# localedef, as that image builds it, whatever /etc/locale.gen holds.
define_locale="localedef -i en_US -c -f UTF-8 -A /usr/share/locale/locale.alias en_US.UTF-8"
if [ -n "$bench_locale" ] && locale_missing; then
  if [ "$(id -u)" = 0 ]; then
    echo "generating the en_US.UTF-8 locale"
    $define_locale || true  # -c: warnings are not failures; the check below is
  fi
  if locale_missing; then
    echo "missing the en_US.UTF-8 locale; generate it with:" >&2
    echo "  sudo $define_locale" >&2
    exit 1
  fi
fi
[ -z "$need" ] || [ "$(id -u)" = 0 ]
