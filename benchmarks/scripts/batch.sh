#!/usr/bin/env bash
# The batch layer at growing lake sizes, in one run: for each size, generate a marketplace of about
# that many events over 7 days, then time and measure the peak memory (max RSS) of
#   import   sellable lake import           (events into the Lance lake)
#   nightly  sellable batch --asof DAY-7    (batch view + every feature of features.sql, DataFusion)
#   trainset sellable trainset (last day)   (labels, features, batch view at the cutoff + replay of the day after it)
# and print events/s per stage, so that the growth with size is visible.
# Usage: benchmarks/scripts/batch.sh [EVENTS...]   (default 1000000 5000000 20000000)
#   PROFILE=dev for the debug build (much slower DataFusion); default release (a cold release
#   build takes 30 to 50 minutes on 2 cores, once). --memory-mb bounds DataFusion.
#   BASELINE=target/release/sellable-baseline also runs the nightly job and the training set with
#   that binary (a release build of an earlier commit, copied next to this one so that it finds
#   .deps) on the same lake, right after, and prints its seconds and the ratio side by side.
#   BALLISTA=1 also runs the nightly job with --engine ballista (a standalone Ballista scheduler and
#   executor in the process) on the same lake, and prints it beside the local engine's.
set -euo pipefail
cd "$(dirname "$0")/../.."
sizes=("${@:-1000000 5000000 20000000}")
read -r -a sizes <<< "${sizes[*]}"
profile=${PROFILE:-release}
out=${BENCH_DIR:-target/bench-batch}
scripts/setup.sh
cargo build --locked --profile "$profile" --bin sellable
bin=target/$([ "$profile" = dev ] && echo debug || echo "$profile")/sellable
mkdir -p "$out"
source benchmarks/scripts/stage.sh

for size in "${sizes[@]}"; do
  dir="$out/$size"
  rm -rf "$dir" && mkdir -p "$dir"
  echo "== $size events"
  stage "$size" gen "$bin" gen --out "$dir/gen" --skus $((size / 85 + 1)) --nodes 200 --days 7
  events=$(grep -o '^gen: [0-9]*' "$out/$size-gen.log" | tr -dc '0-9')
  sed -i "s/^$size gen /$events gen /" "$results"
  stage "$size" import "$bin" lake import --lake "$dir/lake" --from "$dir/gen"
  stage "$size" nightly "$bin" batch --lake "$dir/lake" --asof 2026-01-07T00:00:00Z
  if [ -n "${BASELINE:-}" ]; then
    stage "$size" baseline "$BASELINE" batch --lake "$dir/lake" --asof 2026-01-07T00:00:00Z
  fi
  if [ -n "${BALLISTA:-}" ]; then
    stage "$size" ballista "$bin" batch --lake "$dir/lake" --asof 2026-01-07T00:00:00Z --engine ballista
  fi
  stage "$size" trainset "$bin" trainset --lake "$dir/lake" --from 2026-01-07T00:00:00Z --to 2026-01-08T00:00:00Z
  if [ -n "${BASELINE:-}" ]; then
    stage "$size" baseline-trainset "$BASELINE" trainset --lake "$dir/lake" --from 2026-01-07T00:00:00Z --to 2026-01-08T00:00:00Z
  fi
  sed -i "s/^$size /$events /" "$results"
  rm -rf "$dir/gen"
done

python3 - "$results" "$profile" <<'PY'
import sys, collections
rows = [line.split() for line in open(sys.argv[1]) if line.strip()]
by_size = collections.OrderedDict()
for events, stage, seconds, kib in rows:
    by_size.setdefault(int(events), {})[stage] = (float(seconds), int(kib))
print(f"\nprofile {sys.argv[2]}")
print(f"{'events':>11} {'stage':>9} {'seconds':>8} {'events/s':>11} {'peak MiB':>9} {'s per M events':>15}")
first = None
for events, stages in by_size.items():
    for stage in ("import", "nightly", "trainset"):
        seconds, kib = stages[stage]
        per_million = seconds / events * 1e6
        print(f"{events:>11,} {stage:>9} {seconds:>8.1f} {events / seconds:>11,.0f} {kib / 1024:>9,.0f} {per_million:>15.2f}")
        baseline = {"nightly": "baseline", "trainset": "baseline-trainset"}.get(stage)
        if baseline in stages:
            base, base_kib = stages[baseline]
            print(f"{events:>11,} {'baseline':>9} {base:>8.1f} {events / base:>11,.0f} {base_kib / 1024:>9,.0f} {base / events * 1e6:>15.2f}"
                  f"   {stage} is {base / seconds:.2f}x the baseline's speed")
        if stage == "nightly" and "ballista" in stages:
            other, other_kib = stages["ballista"]
            print(f"{events:>11,} {'ballista':>9} {other:>8.1f} {events / other:>11,.0f} {other_kib / 1024:>9,.0f} {other / events * 1e6:>15.2f}"
                  f"   Ballista standalone takes {other / seconds:.2f}x the local engine's time")
print("(growth is linear when 's per M events' stays flat as the lake grows)")
PY
