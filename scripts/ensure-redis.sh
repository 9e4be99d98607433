#!/usr/bin/env bash
# Makes sure a Redis answers at REDIS_URL (default redis://127.0.0.1:6379): starts a local
# redis-server on that port when none does. Installs nothing itself: scripts/setup.sh does.
set -euo pipefail
url=${REDIS_URL:-redis://127.0.0.1:6379}
hostport=${url#redis://}
hostport=${hostport%%/*}
hostport=${hostport##*@}
host=${hostport%%:*}
port=${hostport##*:}
[ "$port" = "$hostport" ] && port=6379
if redis-cli -h "$host" -p "$port" ping >/dev/null 2>&1; then
  exit 0
fi
case "$host" in
  127.0.0.1|localhost|::1) ;;
  *) echo "ensure-redis: no Redis answers at $url, and it is not local: start it yourself" >&2; exit 1 ;;
esac
echo "ensure-redis: starting redis-server on port $port"
redis-server --daemonize yes --bind 127.0.0.1 --port "$port" --save "" --appendonly no \
  --dir "${TMPDIR:-/tmp}" --logfile "${TMPDIR:-/tmp}/sellable-redis-$port.log"
for _ in $(seq 1 50); do
  redis-cli -h "$host" -p "$port" ping >/dev/null 2>&1 && exit 0
  sleep 0.1
done
echo "ensure-redis: redis-server did not answer on port $port; see ${TMPDIR:-/tmp}/sellable-redis-$port.log" >&2
exit 1
