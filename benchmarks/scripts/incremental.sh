#!/usr/bin/env bash
# The incremental nightly job against the history: two marketplaces with the same catalog and the
# same events per day, one with 1 day of history before the night, one with 10 (HISTORY). On each:
#   state        sellable batch --full --asof DAY-1   (the night before, which leaves the state)
#   incremental  sellable batch --incremental --asof DAY   (folds the day's events)
#   full         sellable batch --asof DAY   (every event again: the reference, in the same run)
# and prints seconds and peak memory side by side: the incremental night should cost the same
# whatever the history, the full one grows with it.
# Usage: benchmarks/scripts/incremental.sh [EVENTS_PER_DAY]   (default 300000)
#   PROFILE=release for an optimised build (default dev: a cold release build takes 30 to 50
#   minutes on 2 cores). HISTORY="1 10" the days of history compared.
set -euo pipefail
cd "$(dirname "$0")/../.."
per_day=${1:-300000}
profile=${PROFILE:-dev}
out=${BENCH_DIR:-target/bench-incremental}
read -r -a histories <<< "${HISTORY:-1 10}"
scripts/setup.sh
cargo build --locked --profile "$profile" --bin sellable
bin=target/$([ "$profile" = dev ] && echo debug || echo "$profile")/sellable
rm -rf "$out" && mkdir -p "$out"
source benchmarks/scripts/stage.sh

# about 12 events per sku per day at the generator's default rates
skus=$((per_day / 12 + 1))
for history in "${histories[@]}"; do
  dir="$out/$history"
  days=$((history + 1))
  night=$(date -u -d "2026-01-01 + $days days" +%Y-%m-%dT%H:%M:%SZ)
  before=$(date -u -d "2026-01-01 + $history days" +%Y-%m-%dT%H:%M:%SZ)
  echo "== $history day(s) of history, the night of $night"
  "$bin" gen --out "$dir/gen" --skus "$skus" --nodes 200 --days "$days" 2> "$out/$history-gen.log"
  tail -1 "$out/$history-gen.log" | cut -c1-200
  "$bin" lake import --lake "$dir/lake" --from "$dir/gen" 2> "$out/$history-import.log"
  rm -rf "$dir/gen"
  stage "$history" state "$bin" batch --lake "$dir/lake" --full --asof "$before"
  stage "$history" incremental "$bin" batch --lake "$dir/lake" --incremental --asof "$night"
  grep -q "folded the events" "$out/$history-incremental.log" || { echo "the night was not incremental" >&2; exit 1; }
  stage "$history" full "$bin" batch --lake "$dir/lake" --asof "$night"
  "$bin" lake info --lake "$dir/lake" > "$out/$history-info.txt" 2>&1 || true
done

python3 - "$results" "$profile" <<'PY'
import sys
rows = [line.split() for line in open(sys.argv[1]) if line.strip()]
by = {}
for history, stage, seconds, kib in rows:
    by.setdefault(int(history), {})[stage] = (float(seconds), int(kib))
print(f"\nprofile {sys.argv[2]}")
print(f"{'history':>8} {'incremental s':>14} {'peak MiB':>9} {'full s':>8} {'peak MiB':>9} {'full / incremental':>19}")
for history, stages in sorted(by.items()):
    (inc, inc_kib), (full, full_kib) = stages["incremental"], stages["full"]
    print(f"{history:>7}d {inc:>14.1f} {inc_kib / 1024:>9,.0f} {full:>8.1f} {full_kib / 1024:>9,.0f} {full / inc:>19.2f}")
histories = sorted(by)
if len(histories) > 1:
    low, high = histories[0], histories[-1]
    grow = lambda stage: by[high][stage][0] / by[low][stage][0]
    print(f"from {low} to {high} days of history: the incremental night takes {grow('incremental'):.2f}x the time, "
          f"the full night {grow('full'):.2f}x")
PY
