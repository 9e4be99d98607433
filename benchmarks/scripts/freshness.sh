#!/usr/bin/env bash
# End-to-end freshness: `sellable serve --redis` and `sellable fold --stream --workers 2` run on a
# generated marketplace while the `freshness` driver XADDs RATE background events/s for SECONDS
# and times probes from XADD to the first answer that shows them (p50/p99).
# Usage: benchmarks/scripts/freshness.sh [RATE] [SECONDS]   (PROFILE=release for an optimised build)
set -euo pipefail
cd "$(dirname "$0")/../.."
rate=${1:-20000}
seconds=${2:-10}
http_port=${PORT:-18188}
source benchmarks/scripts/common.sh freshness
cargo build --locked --profile "$profile" -p sellable-bench --features load --bin freshness
dir=target/$([ "$profile" = dev ] && echo debug || echo "$profile")
namespace=sellable-fresh; stream=sellable-fresh-stream
# the namespace and the stream, deleted as the run starts and as it ends
forget() { cli del "$stream" "$stream:dead" >/dev/null; forget_namespace "$namespace:"; }
forget

start=$(( $(date +%s) * 1000 - 7 * 86400000 ))
"$bin" gen --out "$out/gen" --skus 2000 --nodes 100 --days 7 --start "$start" 2>/dev/null
"$bin" lake import --lake "$out/lake" --from "$out/gen" 2>/dev/null
"$bin" batch --lake "$out/lake" 2>/dev/null
"$bin" serve --lake "$out/lake" --redis "$url" --namespace "$namespace" --listen "127.0.0.1:$http_port" 2>"$out/serve.log" &
serve=$!
"$bin" fold --redis "$url" --namespace "$namespace" --stream "$stream" --workers 2 2>"$out/fold.log" &
fold=$!
trap 'set +e; kill $serve $fold 2>/dev/null; wait $serve $fold 2>/dev/null; forget' EXIT
for _ in $(seq 1 100); do curl -sf "http://127.0.0.1:$http_port/healthz" >/dev/null && break; sleep 0.2; done
echo "profile $profile"
"$dir/freshness" "$out/gen" "$url" "$stream" "http://127.0.0.1:$http_port" "$rate" "$seconds"
