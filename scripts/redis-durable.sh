#!/usr/bin/env bash
# Starts redis-server in the foreground with the persistence the speed layer's exactly-once
# guarantee needs across Redis crashes, repairing a torn append-only file first.
#
#   scripts/redis-durable.sh DIR [redis-server options…]     e.g. --port 6380 --bind 127.0.0.1
#
# - Every write is in the append-only file, fsynced, before Redis answers it (appendfsync always).
# - A crash (SIGKILL, OOM kill, power loss) in the middle of a write can leave the file's last
#   command torn. A Lua script or transaction that writes several keys is stored as
#   MULTI … EXEC, and Redis 7's own repair of a torn file (aof-load-truncated yes, the default)
#   keeps such a block's MULTI when it cuts off the tail: the next restart then loses every write
#   acknowledged after the first one, or replays the torn block with them. This script refuses
#   that repair (aof-load-truncated no) and uses redis-check-aof instead, which drops the torn
#   block whole. See docs/operations.md, "Redis persistence".
#
# `exec`s redis-server: signals reach it, and its process id is this script's.
set -euo pipefail
if [ $# -lt 1 ]; then
  echo "usage: $0 DIR [redis-server options…]" >&2
  exit 2
fi
dir=$1
shift
mkdir -p "$dir"
command -v redis-check-aof >/dev/null || {
  echo "redis-durable: redis-check-aof is missing (it comes with redis-server; on Debian, package redis-tools)" >&2
  exit 1
}
manifest="$dir/appendonlydir/appendonly.aof.manifest"
if [ -f "$manifest" ] && ! check=$(redis-check-aof "$manifest" 2>&1); then
  echo "redis-durable: the append-only file in $dir is torn; dropping its incomplete last write:" >&2
  echo "$check" | grep -v '^$' | tail -n 3 | sed 's/^/redis-durable:   /' >&2
  # --fix asks before it truncates
  if ! fixed=$(echo y | redis-check-aof --fix "$manifest" 2>&1); then
    echo "$fixed" >&2
    echo "redis-durable: redis-check-aof could not repair $manifest; not starting" >&2
    exit 1
  fi
  echo "$fixed" | grep -i 'truncat\|shrink' | sed 's/^/redis-durable:   /' >&2 || true
fi
exec redis-server --dir "$dir" --appendonly yes --appendfsync always --aof-load-truncated no "$@"
