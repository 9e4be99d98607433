#!/usr/bin/env bash
# The speed layer in one run, on one Redis:
#  (a) throughput: `sellable fold --stream` with 1 and 2 workers, next to redis-benchmark running
#      EVALSHA of a trivial script and XADD (the ceiling of what Redis itself does per call on
#      this machine); prints events/s and the ratios;
#  (b) end-to-end freshness: benchmarks/scripts/freshness.sh at a steady rate (p50/p99 from XADD
#      to the first answer that shows the event).
# Usage: benchmarks/scripts/speed.sh [EVENTS] [RATE] [SECONDS]   (defaults 200000, 20000 events/s
#   for 10 s; RATE 0 skips (b); PROFILE=release for an optimised build)
#   BASELINE=target/debug/sellable-baseline also folds the same stream with that binary (a build of
#   an earlier commit in the same profile, copied next to this one so that it finds .deps), each
#   run right after the one it is compared with, and prints its rate and the ratio.
set -euo pipefail
cd "$(dirname "$0")/../.."
events=${1:-200000}
rate=${2:-20000}
seconds=${3:-10}
source benchmarks/scripts/common.sh speed

# what the folds and the baselines wrote, deleted as the script ends (each fold's also after it)
trap 'set +e; for name in this baseline; do for workers in 1 2; do forget_namespace "sellable-bench-$name-$workers"; forget_namespace "sellable-bench-stream-$name-$workers"; done; done; cli del sellable-bench-xadd >/dev/null' EXIT
"$bin" gen --out "$out/gen" --skus $((events / 85 + 1)) --nodes 200 --days 7 2>/dev/null
rate() { grep -o '([0-9]* entries/s)' "$1" | tr -dc '0-9'; }
# fold BINARY LABEL WORKERS: the stream folded into a fresh namespace; the last line of its log kept
fold() {
  local binary=$1 label=$2 workers=$3 stream="sellable-bench-stream-$2-$3" namespace="sellable-bench-$2-$3"
  cli del "$stream" "$stream:dead" >/dev/null
  "$bin" publish --redis "$url" --stream "$stream" --from "$out/gen/events.parquet" 2>/dev/null
  "$binary" fold --redis "$url" --namespace "$namespace" --stream "$stream" --workers "$workers" --until-idle 1 2>&1 | tail -1 | tee "$out/fold-$label-$workers.log"
  cli del "$stream" "$stream:dead" >/dev/null
  forget_namespace "$namespace:"
}
for workers in 1 2; do
  fold "$bin" this "$workers"
  if [ -n "${BASELINE:-}" ]; then fold "$BASELINE" baseline "$workers"; fi
done
sha=$(cli script load "return 1")
evalsha=$(redis-benchmark -h "$host" -p "$port" -q -n 200000 -P 64 evalsha "$sha" 0 2>/dev/null | grep -o '[0-9.]* requests per second' | cut -d' ' -f1)
xadd=$(redis-benchmark -h "$host" -p "$port" -q -n 200000 -P 64 xadd sellable-bench-xadd '*' f v 2>/dev/null | grep -o '[0-9.]* requests per second' | cut -d' ' -f1)
baseline_rate() { [ -n "${BASELINE:-}" ] && rate "$out/fold-baseline-$1.log" || echo 0; }
python3 - "$(rate "$out/fold-this-1.log")" "$(rate "$out/fold-this-2.log")" "$evalsha" "$xadd" "$profile" "$(baseline_rate 1)" "$(baseline_rate 2)" <<'PY'
import sys
one, two, evalsha, xadd, profile = float(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4]), sys.argv[5]
base_one, base_two = float(sys.argv[6]), float(sys.argv[7])
print(f"\nprofile {profile}")
print(f"redis-benchmark EVALSHA trivial, -P 64   {evalsha:>12,.0f} calls/s   (baseline)")
print(f"redis-benchmark XADD, -P 64              {xadd:>12,.0f} calls/s")
print(f"sellable fold --stream, 1 worker         {one:>12,.0f} events/s   {one / evalsha:.3f}x EVALSHA")
print(f"sellable fold --stream, 2 workers        {two:>12,.0f} events/s   {two / evalsha:.3f}x EVALSHA   {two / one:.2f}x 1 worker")
for workers, this, base in ((1, one, base_one), (2, two, base_two)):
    if base:
        print(f"baseline fold --stream, {workers} worker(s)      {base:>12,.0f} events/s   this build is {this / base:.2f}x the baseline")
PY
if [ "$rate" != 0 ]; then
  echo
  echo "end-to-end freshness at $rate events/s for $seconds s (benchmarks/scripts/freshness.sh):"
  PROFILE=$profile REDIS_URL=$url BENCH_DIR="$out/freshness" benchmarks/scripts/freshness.sh "$rate" "$seconds" 2>&1 | tail -5
fi
