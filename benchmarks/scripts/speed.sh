#!/usr/bin/env bash
# The speed layer in one run, on one Redis:
#  (a) throughput: `sellable fold --stream` with 1 and 2 workers, next to redis-benchmark running
#      EVALSHA of a trivial script and XADD (the ceiling of what Redis itself does per call on
#      this machine); prints events/s and the ratios;
#  (b) end-to-end freshness: benchmarks/scripts/freshness.sh at a steady rate (p50/p99 from XADD
#      to the first answer that shows the event).
# Usage: benchmarks/scripts/speed.sh [EVENTS] [RATE] [SECONDS]   (defaults 200000, 20000 events/s
#   for 10 s; RATE 0 skips (b); PROFILE=release for an optimised build)
set -euo pipefail
cd "$(dirname "$0")/../.."
events=${1:-200000}
rate=${2:-20000}
seconds=${3:-10}
profile=${PROFILE:-dev}
url=${REDIS_URL:-redis://127.0.0.1:6379}
out=${BENCH_DIR:-target/bench-speed}
scripts/setup.sh
REDIS_URL=$url scripts/ensure-redis.sh
cargo build --locked --profile "$profile" --bin sellable
bin=target/$([ "$profile" = dev ] && echo debug || echo "$profile")/sellable
rm -rf "$out" && mkdir -p "$out"
host=$(echo "${url#redis://}" | cut -d: -f1); port=$(echo "${url#redis://}" | cut -d: -f2 | cut -d/ -f1)
cli() { redis-cli -h "$host" -p "$port" "$@"; }

"$bin" gen --out "$out/gen" --skus $((events / 85 + 1)) --nodes 200 --days 7 2>/dev/null
rate() { grep -o '([0-9]* entries/s)' "$1" | tr -dc '0-9'; }
for workers in 1 2; do
  stream="sellable-bench-stream-$workers"; namespace="sellable-bench-$workers"
  cli del "$stream" "$stream:dead" >/dev/null
  "$bin" publish --redis "$url" --stream "$stream" --from "$out/gen/events.parquet" 2>/dev/null
  "$bin" fold --redis "$url" --namespace "$namespace" --stream "$stream" --workers "$workers" --until-idle 1 2>&1 | tail -1 | tee "$out/fold-$workers.log"
  cli del "$stream" "$stream:dead" >/dev/null
  cli --scan --pattern "$namespace:*" | xargs -r -n 1000 redis-cli -h "$host" -p "$port" unlink >/dev/null
done
sha=$(cli script load "return 1")
evalsha=$(redis-benchmark -h "$host" -p "$port" -q -n 200000 -P 64 evalsha "$sha" 0 2>/dev/null | grep -o '[0-9.]* requests per second' | cut -d' ' -f1)
xadd=$(redis-benchmark -h "$host" -p "$port" -q -n 200000 -P 64 xadd sellable-bench-xadd '*' f v 2>/dev/null | grep -o '[0-9.]* requests per second' | cut -d' ' -f1)
cli del sellable-bench-xadd >/dev/null
python3 - "$(rate "$out/fold-1.log")" "$(rate "$out/fold-2.log")" "$evalsha" "$xadd" "$profile" <<'PY'
import sys
one, two, evalsha, xadd, profile = float(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4]), sys.argv[5]
print(f"\nprofile {profile}")
print(f"redis-benchmark EVALSHA trivial, -P 64   {evalsha:>12,.0f} calls/s   (baseline)")
print(f"redis-benchmark XADD, -P 64              {xadd:>12,.0f} calls/s")
print(f"sellable fold --stream, 1 worker         {one:>12,.0f} events/s   {one / evalsha:.3f}x EVALSHA")
print(f"sellable fold --stream, 2 workers        {two:>12,.0f} events/s   {two / evalsha:.3f}x EVALSHA   {two / one:.2f}x 1 worker")
PY
if [ "$rate" != 0 ]; then
  echo
  echo "end-to-end freshness at $rate events/s for $seconds s (benchmarks/scripts/freshness.sh):"
  PROFILE=$profile REDIS_URL=$url BENCH_DIR="$out/freshness" benchmarks/scripts/freshness.sh "$rate" "$seconds" 2>&1 | tail -5
fi
