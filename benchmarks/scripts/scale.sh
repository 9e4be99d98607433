#!/usr/bin/env bash
# How serving and the speed view grow with the catalog, in one run: for each catalog size, a
# marketplace of that many SKUs (one simulated day, one node per 100 SKUs, at least 40) is
# generated, imported and batched; `sellable serve` (embedded speed view) is started on it and its
# resident memory read from /proc after start and after the requests; availability is asked for
# REQUESTS (sku, country) pairs one at a time (client-side p50/p99 and requests/s); the day's
# events are folded into Redis and Redis's memory per SKU is read from INFO. Every figure is
# printed with its ratio to the first (smallest) size: the baseline of the run.
# Usage: benchmarks/scripts/scale.sh [SKUS...]   (default 20000 200000; REQUESTS=2000;
#   PROFILE=release for an optimised build)
set -euo pipefail
cd "$(dirname "$0")/../.."
sizes=("$@"); [ ${#sizes[@]} -eq 0 ] && sizes=(20000 200000)
requests=${REQUESTS:-2000}
source benchmarks/scripts/common.sh scale
rss_mb() { awk '/VmRSS/ {printf "%.0f", $2 / 1024}' "/proc/$1/status"; }
used() { cli info memory | awk -F: '/^used_memory:/ {print $2}' | tr -d '\r'; }

results="$out/results.tsv"
for skus in "${sizes[@]}"; do
  dir="$out/$skus"; nodes=$(( skus / 100 > 40 ? skus / 100 : 40 ))
  # each step's log is kept in $dir; a failed step stops the run with its log
  step() { local log=$1; shift; "$@" 2>"$dir/$log.log" || { echo "scale: $* failed:"; tail -5 "$dir/$log.log"; exit 1; }; }
  mkdir -p "$dir"
  step gen "$bin" gen --out "$dir/gen" --skus "$skus" --nodes "$nodes" --days 1
  step import "$bin" lake import --lake "$dir/lake" --from "$dir/gen"
  step batch "$bin" batch --lake "$dir/lake"
  listen=127.0.0.1:$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  "$bin" serve --lake "$dir/lake" --listen "$listen" 2>"$dir/serve.log" & pid=$!
  for _ in $(seq 1 600); do curl -sf "http://$listen/healthz" >/dev/null && break; sleep 0.5; done
  rss_start=$(rss_mb "$pid")
  latency=$(python3 - "$listen" "$skus" "$requests" <<'PY'
import http.client, random, sys, time
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
    connection.request("GET", path)
    response = connection.getresponse(); response.read()
    assert response.status == 200, (path, response.status)
    times.append(time.perf_counter() - start)
elapsed = time.perf_counter() - began
times.sort()
print(f"{times[len(times) // 2] * 1000:.2f} {times[int(len(times) * 0.99)] * 1000:.2f} {count / elapsed:.0f}")
PY
)
  rss_end=$(rss_mb "$pid")
  kill "$pid"; wait "$pid" 2>/dev/null || true
  namespace="sellable-bench-scale-$skus"
  cli --scan --pattern "$namespace:*" | xargs -r -n 1000 redis-cli -h "$host" -p "$port" unlink >/dev/null
  before=$(used)
  step empty-batch "$bin" batch --lake "$dir/lake" --asof 0
  step fold "$bin" fold --lake "$dir/lake" --redis "$url" --namespace "$namespace"
  per_sku=$(( ($(used) - before) / skus ))
  cli --scan --pattern "$namespace:*" | xargs -r -n 1000 redis-cli -h "$host" -p "$port" unlink >/dev/null
  echo -e "$skus\t$nodes\t$rss_start\t$rss_end\t$latency\t$per_sku" | tr ' ' '\t' >> "$results"
done
python3 - "$results" "$profile" <<'PY'
import sys
rows = [line.split("\t") for line in open(sys.argv[1]).read().split("\n") if line]
base = rows[0]
ratio = lambda value, base: f"{float(value) / float(base):.2f}x" if float(base) else ""
print(f"profile {sys.argv[2]}; ratios against the first size")
print(f"{'skus':>10} {'nodes':>7} {'rss start MB':>13} {'rss after MB':>13} {'p50 ms':>8} {'p99 ms':>8} {'req/s':>7} {'redis B/sku':>11}")
for row in rows:
    skus, nodes, rss0, rss1, p50, p99, rate, per_sku = row
    print(f"{skus:>10} {nodes:>7} {rss0:>13} {rss1:>13} {p50:>8} {p99:>8} {rate:>7} {per_sku:>11}")
    print(f"{'':>10} {'':>7} {ratio(rss0, base[2]):>13} {ratio(rss1, base[3]):>13} {ratio(p50, base[4]):>8} {ratio(p99, base[5]):>8} {ratio(rate, base[6]):>7} {ratio(per_sku, base[7]):>11}")
PY
