#!/usr/bin/env bash
# Times every layer of the walking skeleton on one generated marketplace, in one run:
#   gen (events/s) → import → batch view → fold into Redis (events/s) and into the embedded store,
# with Redis's own pipelined SET rate measured on the same server as the baseline for the fold.
# Usage: benchmarks/scripts/pipeline.sh [SKUS] [DAYS]   (PROFILE=release for an optimised build)
set -euo pipefail
cd "$(dirname "$0")/../.."
skus=${1:-10000}
days=${2:-7}
source benchmarks/scripts/common.sh pipeline

seconds() { python3 -c "import time; print(time.time())"; }
t0=$(seconds); "$bin" gen --out "$out/gen" --skus "$skus" --nodes $((skus / 25 + 10)) --days "$days" 2>"$out/gen.log"; t1=$(seconds)
cat "$out/gen.log"
"$bin" lake import --lake "$out/lake" --from "$out/gen" 2>&1 | tail -1; t2=$(seconds)
asof=$("$bin" batch --lake "$out/lake" 2>&1 | tee "$out/batch.log" | grep -o 'as of [^ ]*' | cut -d' ' -f3); t3=$(seconds)
tail -1 "$out/batch.log"
# an empty batch view (cutoff before the first event) makes the speed layer fold every event
"$bin" batch --lake "$out/lake" --asof 0 >/dev/null 2>&1
# the fold's namespace, deleted after it, and the baseline's key (redis-benchmark's SET writes
# key:__rand_int__), as the script ends, stopped early or not
forget() { forget_namespace sellable-bench:; cli del 'key:__rand_int__' >/dev/null; }
trap 'set +e; forget' EXIT
"$bin" fold --lake "$out/lake" --redis "$url" --namespace sellable-bench 2>&1 | tail -1 | tee "$out/fold.log"
forget
baseline=$(redis-benchmark -h "$host" -p "$port" -q -n 1000000 -P 512 -t set 2>/dev/null | grep -o '[0-9.]* requests per second' | cut -d' ' -f1)
fold_rate=$(grep -o '([0-9]* events/s)' "$out/fold.log" | tr -dc '0-9')
events=$(grep -o '^gen: [0-9]*' "$out/gen.log" | tr -dc '0-9')
python3 - "$events" "$t0" "$t1" "$t2" "$t3" "$fold_rate" "$baseline" "$profile" <<'PY'
import sys
events, t0, t1, t2, t3, fold, base, profile = sys.argv[1:]
events, t0, t1, t2, t3, fold, base = int(events), float(t0), float(t1), float(t2), float(t3), float(fold), float(base)
print(f"\nprofile {profile}, {events} events")
print(f"gen     {events / (t1 - t0):>12,.0f} events/s   ({t1 - t0:.1f} s)")
print(f"import  {events / (t2 - t1):>12,.0f} events/s   ({t2 - t1:.1f} s)")
print(f"batch   {events / (t3 - t2):>12,.0f} events/s   ({t3 - t2:.1f} s)")
print(f"fold    {fold:>12,.0f} events/s into Redis; redis-benchmark SET -P 512: {base:,.0f}/s; ratio {fold / base:.3f}")
PY
