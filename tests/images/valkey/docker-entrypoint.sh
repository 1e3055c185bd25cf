#!/bin/sh
# Run valkey-server as the valkey user. Protected mode is off as in the official image: the container's
# network is the boundary, and other containers must be able to connect without a password.
set -eu
if [ "${1#-}" != "$1" ] || [ "${1%.conf}" != "$1" ]; then set -- valkey-server "$@"; fi
[ "$1" = valkey-server ] || exec "$@"

if [ "$(id -u)" = 0 ]; then
  chown valkey:valkey /data
  exec setpriv --reuid=valkey --regid=valkey --init-groups "$0" "$@"
fi
case " $* " in
  *" --protected-mode "*) ;;
  *) set -- "$@" --protected-mode no ;;
esac
exec "$@"
