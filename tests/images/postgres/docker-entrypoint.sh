#!/bin/sh
# Initialise PGDATA on first start (superuser POSTGRES_USER with POSTGRES_PASSWORD, database POSTGRES_DB),
# then run postgres as the postgres user, listening on all interfaces with password authentication.
set -eu
if [ "${1#-}" != "$1" ]; then set -- postgres "$@"; fi
[ "$1" = postgres ] || exec "$@"

if [ "$(id -u)" = 0 ]; then
  mkdir -p "$PGDATA" /var/run/postgresql
  chown postgres:postgres "$PGDATA" /var/run/postgresql
  chmod 0700 "$PGDATA"
  exec setpriv --reuid=postgres --regid=postgres --init-groups "$0" "$@"
fi

if [ ! -s "$PGDATA/PG_VERSION" ]; then
  : "${POSTGRES_PASSWORD:?POSTGRES_PASSWORD must be set}"
  user=${POSTGRES_USER:-postgres}
  db=${POSTGRES_DB:-$user}
  pwfile=$(mktemp)
  printf '%s\n' "$POSTGRES_PASSWORD" >"$pwfile"
  # The locale from LANG (en_US.utf8), as the official image's; POSTGRES_INITDB_ARGS may override it,
  # evaluated as the official entrypoint does (so quoted arguments keep their spaces).
  eval 'initdb -D "$PGDATA" --username="$user" --pwfile="$pwfile" --auth-local=trust' \
    '--auth-host=scram-sha-256 '"${POSTGRES_INITDB_ARGS:-}" >/dev/null
  rm -f "$pwfile"
  echo "host all all all scram-sha-256" >>"$PGDATA/pg_hba.conf"
  if [ "$db" != postgres ]; then
    echo "CREATE DATABASE \"$db\";" | postgres --single -D "$PGDATA" -j postgres >/dev/null
  fi
  echo "initialised $PGDATA (user $user, database $db)" >&2
fi
shift
exec postgres -D "$PGDATA" -c listen_addresses='*' "$@"
