#!/usr/bin/env bash
# Flight SQL beside DataFusion in-process, in one run: a marketplace of SKUS SKUs over DAYS days is
# generated and imported; `flight-bench` serves its lake over Flight SQL in-process and times a
# SELECT of ROWS rows and a group-by on events through Flight and in-process, RUNS times each way
# in turn, printing the median run's rows/s and MB/s and the ratio (the protocol's cost).
# Usage: benchmarks/scripts/flight.sh   (SKUS=2000 DAYS=7 ROWS=10000000 RUNS=3; PROFILE=release
#   for an optimised build)
set -euo pipefail
cd "$(dirname "$0")/../.."
skus=${SKUS:-2000}; days=${DAYS:-7}; rows=${ROWS:-10000000}; runs=${RUNS:-3}; profile=${PROFILE:-dev}
out=${BENCH_DIR:-target/bench-flight}
scripts/setup.sh
# the whole workspace's binaries: the same features as every other build (no rebuild of DataFusion)
cargo build --locked --profile "$profile" --workspace --bins
dir=target/$([ "$profile" = dev ] && echo debug || echo "$profile")
rm -rf "$out" && mkdir -p "$out"
"$dir/sellable" gen --out "$out/gen" --skus "$skus" --nodes 100 --days "$days" 2>"$out/gen.log"
"$dir/sellable" lake import --lake "$out/lake" --from "$out/gen" 2>"$out/import.log"
echo "profile $profile"
"$dir/flight-bench" "$out/lake" "$rows" "$runs"
