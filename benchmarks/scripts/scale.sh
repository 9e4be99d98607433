#!/usr/bin/env bash
# How serving and the Redis store grow with the catalog, in one run: for each catalog size, a
# marketplace of that many SKUs (one simulated day, one node per 100 SKUs, at least 40) is
# generated, imported and batched (the nightly job's wall time and peak resident memory are
# read); `sellable run --role batch` opens its epoch on Redis (the batch
# view published there, the speed view caught up) and `sellable run --role serve` answers from
# it, holding no SKU; the serve process's resident memory is read from /proc after start and
# after the requests; availability is asked for REQUESTS (sku, country) pairs one at a time
# (client-side p50/p99 and requests/s); Redis's memory per SKU is read from INFO for the
# published epoch, then for the whole day folded into a speed view. Every figure is printed with
# its ratio to the first (smallest) size: the baseline of the run.
# Usage: benchmarks/scripts/scale.sh [SKUS...]   (default 50000 500000; REQUESTS=2000;
#   PROFILE=release for an optimised build)
set -euo pipefail
cd "$(dirname "$0")/../.."
sizes=("$@"); [ ${#sizes[@]} -eq 0 ] && sizes=(50000 500000)
requests=${REQUESTS:-2000}
source benchmarks/scripts/common.sh scale
rss_mb() { awk '/VmRSS/ {printf "%.0f", $2 / 1024}' "/proc/$1/status"; }
used() { cli info memory | awk -F: '/^used_memory:/ {print $2}' | tr -d '\r'; }

results="$out/results.tsv"
# a run stopped early stops the roles it started and deletes the size's namespace
namespace=""; pid=""; batch_pid=""
trap 'set +e; kill $pid $batch_pid 2>/dev/null; [ -z "$namespace" ] || forget_namespace "$namespace"' EXIT
for skus in "${sizes[@]}"; do
  dir="$out/$skus"; nodes=$(( skus / 100 > 40 ? skus / 100 : 40 ))
  # each step's log is kept in $dir; a failed step stops the run with its log
  step() { local log=$1; shift; "$@" 2>"$dir/$log.log" || { echo "scale: $* failed:"; tail -5 "$dir/$log.log"; exit 1; }; }
  mkdir -p "$dir"
  step gen "$bin" gen --out "$dir/gen" --skus "$skus" --nodes "$nodes" --days 1
  step import "$bin" lake import --lake "$dir/lake" --from "$dir/gen"
  # the nightly job, its wall time and peak resident memory (read from /proc while it runs)
  started=$(date +%s.%N); "$bin" batch --lake "$dir/lake" 2>"$dir/batch.log" & nightly_pid=$!; nightly_mb=0
  while kill -0 "$nightly_pid" 2>/dev/null; do
    mb=$(awk '/VmHWM/ {printf "%.0f", $2 / 1024}' "/proc/$nightly_pid/status" 2>/dev/null || true); [ -n "$mb" ] && nightly_mb=$mb
    sleep 0.5
  done
  wait "$nightly_pid" || { echo "scale: the nightly job failed:"; tail -5 "$dir/batch.log"; exit 1; }
  nightly_s=$(awk -v start="$started" -v end="$(date +%s.%N)" 'BEGIN {printf "%.0f", end - start}')
  namespace="sellable-bench-scale-$skus"; roles=(--lake "$dir/lake" --redis "$url" --namespace "$namespace" --stream "$namespace-events")
  # UNLINK frees in the background: wait until Redis has freed it all, or "before" counts it
  clear_namespace() {
    forget_namespace "$namespace"
    until [ "$(cli info memory | awk -F: '/^lazyfree_pending_objects:/ {print $2}' | tr -d '\r')" = 0 ]; do sleep 0.5; done
  }
  clear_namespace
  before=$(used)
  started=$(date +%s)
  "$bin" run --role batch --workers 1 "${roles[@]}" 2>"$dir/batch-role.log" & batch_pid=$!
  until grep -q "caught up" "$dir/batch-role.log"; do
    kill -0 "$batch_pid" 2>/dev/null || { echo "scale: the batch role stopped:"; tail -5 "$dir/batch-role.log"; exit 1; }
    sleep 1
  done
  epoch_s=$(( $(date +%s) - started ))
  batch_hwm=$(awk '/VmHWM/ {printf "%.0f", $2 / 1024}' "/proc/$batch_pid/status")
  published=$(( ($(used) - before) / skus ))
  listen=127.0.0.1:$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  "$bin" run --role serve "${roles[@]}" --listen "$listen" 2>"$dir/serve.log" & pid=$!
  for _ in $(seq 1 600); do curl -sf "http://$listen/healthz" >/dev/null && break; sleep 0.5; done
  rss_start=$(rss_mb "$pid")
  latency=$(python3 - "$listen" "$skus" "$requests" <<'PY'
import http.client, os, random, sys, time
listen, skus, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
# the simulator's names: SKU-000000 on, nodes in these countries
skus = [f"SKU-{index:06}" for index in range(skus)]
countries = ["DE", "FR", "IT", "ES", "NL", "US"]
rng = random.Random(7)
host, port = listen.split(":")
connection = http.client.HTTPConnection(host, int(port))
times = []
began = time.perf_counter()
for _ in range(count):
    path = f"/v1/availability/{rng.choice(skus)}?region={rng.choice(countries)}&qty=1"
    start = time.perf_counter()
    connection.request("GET", path, headers={"Authorization": f"Bearer {os.environ['SELLABLE_API_KEY']}"})
    response = connection.getresponse(); response.read()
    assert response.status == 200, (path, response.status)
    times.append(time.perf_counter() - start)
elapsed = time.perf_counter() - began
times.sort()
print(f"{times[len(times) // 2] * 1000:.2f} {times[int(len(times) * 0.99)] * 1000:.2f} {count / elapsed:.0f}")
PY
)
  rss_end=$(rss_mb "$pid")
  kill "$pid" "$batch_pid"; wait "$pid" "$batch_pid" 2>/dev/null || true; pid=""; batch_pid=""
  clear_namespace
  before=$(used)
  step empty-batch "$bin" batch --lake "$dir/lake" --asof 0
  step fold "$bin" fold --lake "$dir/lake" --redis "$url" --namespace "$namespace"
  per_sku=$(( ($(used) - before) / skus ))
  clear_namespace
  echo -e "$skus\t$nodes\t$nightly_s\t$nightly_mb\t$epoch_s\t$batch_hwm\t$rss_start\t$rss_end\t$latency\t$published\t$per_sku" | tr ' ' '\t' >> "$results"
done
python3 - "$results" "$profile" <<'PY'
import sys
rows = [line.split("\t") for line in open(sys.argv[1]).read().split("\n") if line]
base = rows[0]
ratio = lambda value, base: f"{float(value) / float(base):.2f}x" if float(base) else ""
print(f"profile {sys.argv[2]}; ratios against the first size")
print(f"{'skus':>10} {'nodes':>7} {'nightly s':>9} {'nightly MB':>10} {'epoch s':>8} {'batch MB':>9} {'serve MB':>9} {'after MB':>9} {'p50 ms':>8} {'p99 ms':>8} {'req/s':>7} {'epoch B/sku':>11} {'day B/sku':>10}")
widths = [10, 7, 9, 10, 8, 9, 9, 9, 8, 8, 7, 11, 10]
for row in rows:
    print(" ".join(f"{value:>{width}}" for value, width in zip(row, widths)))
    print(" ".join(f"{ratio(value, first) if index > 1 else '':>{width}}" for index, (value, first, width) in enumerate(zip(row, base, widths))))
PY
