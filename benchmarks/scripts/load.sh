#!/usr/bin/env bash
# The REST API under load, beside Redis itself, in one run: a marketplace of SKUS SKUs and NODES
# nodes whose events end now is generated, imported and batched; `sellable serve --redis` serves it
# with a live model (MODEL=0: without one); wrk drives CONNECTIONS connections for SECONDS seconds
# per scenario with random SKUs and countries: single availability, batch availability (BATCH items
# per request; rates per item too), and reservations (one line, random keys, 10 s TTL: 201s while
# units last, then 409s, both through the hold script; wrk counts the 409s as non-2xx), the
# reservations again with FEW connections (the rate they reach at a lower latency), with the 201s
# and 409s apart, single availability at 2 connections, and `GET /healthz`: the server answering
# with no work, the ceiling of any answer beside wrk on these cores. `redis-benchmark` GET with
# the same connection count on the same Redis is the baseline: every rate is printed with its
# ratio to it. Then each target is offered at its fixed
# rate, open loop (wrk's `delay`: every request at its slot of a schedule, whatever the answers
# before it took): single availability at the GET rate, batch availability at 5 times it in
# items, reservations at each of RESERVE_RATES (10,000/s), each kept or not (at least 97% of the rate
# answered, at most 1% of the requests sent late), with its latencies. Each scenario's p50 and
# p99 are also read from the server's own latency histogram, beside the client's. Each scenario
# starts once the decision log has written the one before's decisions to the lake (how long that
# took is printed too).
# Usage: benchmarks/scripts/load.sh   (SKUS=20000 NODES=200 CONNECTIONS=64 FEW=32 DURATION=15 BATCH=50;
#   MODEL=1; PACED=1 RESERVE_RATES="10000"; PROFILE=release for an optimised build; wrk is installed from Debian's packages if missing)
set -euo pipefail
cd "$(dirname "$0")/../.."
skus=${SKUS:-20000}; nodes=${NODES:-200}; connections=${CONNECTIONS:-64}; few=${FEW:-32}; seconds=${DURATION:-15}; batch=${BATCH:-50}
source benchmarks/scripts/common.sh load
if ! command -v wrk >/dev/null; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO=sudo
  $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq wrk >/dev/null
fi
namespace="sellable-bench-load"
forget_namespace "$namespace"
marketplace_ending_now "$out/lake"
# the live model, as the demo has one: trained on a marketplace of the demo's size (its default
# 1,000 SKUs, 40 nodes, a week), so that every answer scores its nodes as in production; MODEL=0
# serves without one (every answer then holds back the static safety stock, degraded)
models=$out/models
if [ "${MODEL:-1}" != 0 ]; then
  "$bin" gen --out "$out/train-gen" 2>"$out/train.log"
  "$bin" lake import --lake "$out/train-lake" --from "$out/train-gen" 2>>"$out/train.log"
  "$bin" batch --lake "$out/train-lake" --every-day 2026-01-02..2026-01-07 2>>"$out/train.log"
  "$bin" trainset --lake "$out/train-lake" --from 2026-01-02T00:00:00Z --to 2026-01-07T00:00:00Z 2>>"$out/train.log"
  printf 'validation_days = 1\ntest_days = 1\nablation = false\n' >"$out/train.toml"
  "$bin" train --lake "$out/train-lake" --models "$models" --config "$out/train.toml" --promote 2>>"$out/train.log"
fi
listen=127.0.0.1:$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
"$bin" serve --lake "$out/lake" --models "$models" --redis "$url" --namespace "$namespace" --listen "$listen" 2>"$out/serve.log" & pid=$!
trap 'set +e; kill $pid 2>/dev/null; wait $pid 2>/dev/null; forget_namespace "$namespace"' EXIT
wait_ready "$listen" "$out/serve.log"

# the request mix of each scenario, and latency percentiles (µs) and counts at the end. wrk shares
# the 2 cores with the server, so a request costs it as little as it can: each request is its
# random SKU and region put between the parts of a text wrk.format made once (formatting each
# request anew cost wrk about as much as half an answer). SKU names are made once, at the start,
# for up to 100,000 SKUs, and past that as each is sent: a table of a million names made wrk's
# garbage collector stop its thread for about 100 ms now and then, which every scenario's p99.9
# (and the p99 of some) showed as the server's
cat >"$out/common.lua" <<LUA
local count, countries = $skus, {"DE", "FR", "IT", "ES", "NL", "US"}
auth = "Bearer $SELLABLE_API_KEY"
-- each wrk thread its own number, random sequence and order ids (seeded alike, two threads would
-- send the same keys, and the second of each pair would wait for the first's answer)
local started, all = 0, {}
function setup(thread) started = started + 1; thread:set("id", started); all[started] = thread end
local skus = {}
local function name(i) return string.format("SKU-%06d", i - 1) end
function init(args)
  math.randomseed(os.time() * 1000 + id)
  if count <= 100000 then for i = 1, count do skus[i] = name(i) end end
  prepare()
end
function sku()
  local i = math.random(count)
  return skus[i] or name(i)
end
function country() return countries[math.random(#countries)] end
-- the text of a request to path up to its Content-Length's value (the body's length and the
-- body follow)
function post(path)
  local text = wrk.format("POST", path, {["Content-Type"] = "application/json", ["Authorization"] = auth}, "-")
  local head = text:sub(1, text:find("\r\n\r\n", 1, true) - 1):gsub("\r\nContent%-Length: %d+", "")
  return head .. "\r\nContent-Length: "
end
-- at a fixed rate (RATE requests/s over the run's THREADS threads, open loop): each request waits
-- for the next free slot of its thread's schedule, whatever the answers before it took; a slot
-- that finds no connection free until more than 2 ms after its time is late (the rate was not
-- kept: the latencies of the run then leave out the waits of the late requests)
local rate, threads = tonumber(os.getenv("RATE") or ""), tonumber(os.getenv("THREADS") or "1")
late = 0
if rate then
  local ffi = require("ffi")
  ffi.cdef("typedef struct { long sec; long nsec; } load_time; int clock_gettime(int, load_time *);")
  local clock = ffi.new("load_time")
  local function now() ffi.C.clock_gettime(1, clock); return tonumber(clock.sec) * 1000 + tonumber(clock.nsec) / 1e6 end
  local interval, slot = 1000 * threads / rate, nil
  function delay()
    local at = now()
    slot = slot or at
    local wait = slot - at
    if wait < -2 then late = late + 1 end
    slot = slot + interval
    return math.max(0, math.floor(wait + 0.5))
  end
end
function done(summary, latency, requests)
  local errors = summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout
  local behind = 0
  for _, thread in ipairs(all) do behind = behind + thread:get("late") end
  io.write(string.format("RESULT %d %.1f %d %d %d %d %d %d\n", summary.requests, summary.duration / 1e6,
    latency:percentile(50), latency:percentile(99), latency:percentile(99.9), summary.errors.status, errors, behind))
end
LUA
cat >"$out/single.lua" <<'LUA'
dofile(os.getenv("COMMON"))
local head, middle, tail
function prepare()
  local text = wrk.format("GET", "/v1/availability/{SKU}?region={REGION}&qty=1", {["Authorization"] = auth})
  local sku_at, region_at = text:find("{SKU}", 1, true), text:find("{REGION}", 1, true)
  head, middle, tail = text:sub(1, sku_at - 1), text:sub(sku_at + 5, region_at - 1), text:sub(region_at + 8)
end
request = function() return head .. sku() .. middle .. country() .. tail end
LUA
# the server answering with no work: GET /healthz (no key, no Redis, no decision), the same
# headers as single availability's, through the same lanes, HTTP stack and middleware: the most
# any answer of this server can reach beside wrk on these cores
cat >"$out/ceiling.lua" <<'LUA'
dofile(os.getenv("COMMON"))
local text
function prepare() text = wrk.format("GET", "/healthz", {["Authorization"] = auth}) end
request = function() return text end
LUA
cat >"$out/batch.lua" <<LUA
dofile(os.getenv("COMMON"))
local head
function prepare() head = post("/v1/availability:batch") end
request = function()
  local items = {}
  for i = 1, $batch do items[i] = '{"sku":"' .. sku() .. '","region":"' .. country() .. '"}' end
  local body = '{"items":[' .. table.concat(items, ",") .. ']}'
  return head .. #body .. "\r\n\r\n" .. body
end
LUA
cat >"$out/reserve.lua" <<'LUA'
dofile(os.getenv("COMMON"))
local head, run, counter = nil, nil, 0
function prepare() head = post("/v1/reservations"); run = os.time() .. "-" .. id .. "-" .. math.random(1e9) end
request = function()
  counter = counter + 1
  local body = '{"order_id":"load-' .. run .. '-' .. counter .. '","ttl_s":10,"lines":[{"sku":"' .. sku() .. '","region":"' .. country() .. '","qty":1}]}'
  return head .. #body .. "\r\n\r\n" .. body
end
LUA
threads=2
# waits until every decision logged so far is in the lake (at most 600 s), so that no scenario
# is measured while the server still writes the one before's decisions to the lake; how many
# there were and how long it took go to drain-<scenario>
drain() {
  local name=$1 started metrics recorded done_
  started=$(date +%s%N)
  while :; do
    metrics=$(curl -sf "http://$listen/metrics")
    recorded=$(echo "$metrics" | awk '$1 == "sellable_decisions_recorded_total" {print int($2)}')
    # stored, or lost (a full queue): either way nothing more will reach the lake
    done_=$(echo "$metrics" | awk '$1 == "sellable_decisions_stored_total" || $1 == "sellable_decisions_lost_total" {sum += $2} END {print int(sum)}')
    { [ -z "$recorded" ] || [ "$done_" -ge "$recorded" ]; } && break
    [ $(( ($(date +%s%N) - started) / 1000000000 )) -ge 600 ] && break
    sleep 0.5
  done
  echo "${recorded:-0} ${done_:-0} $(( ($(date +%s%N) - started) / 1000000 ))" >"$out/drain-$name"
}
# each scenario between two reads of the server's latency histogram (metrics-<scenario>-{0,1})
# (at the fixed rate $4 when given: RATE)
run() {
  local name=$1 script=$2 conns=$3
  drain "$name"
  curl -sf "http://$listen/metrics" >"$out/metrics-$name-0"
  RATE=${4:-} THREADS=$threads COMMON="$out/common.lua" wrk -t$threads -c"$conns" -d"${seconds}s" -s "$out/$script.lua" "http://$listen" | grep '^RESULT' | cut -d' ' -f2-
  curl -sf "http://$listen/metrics" >"$out/metrics-$name-1"
}
redis_rate=$(redis-benchmark -h "$host" -p "$port" -c "$connections" -n 400000 -t get -q | tr '\r' '\n' | awk '/requests per second/ {print $2}' | tail -1)
single=$(run single single "$connections"); batched=$(run batch batch "$connections"); reserved=$(run reserve reserve "$connections")
reserved_few=$(run reserve-few reserve "$few")
# light load (2 connections): the server's own latency, with no queue in front of it
light=$(run light single 2)
ceiling=$(run ceiling ceiling "$connections")
# each target offered at its fixed rate (PACED=0: not): single availability at the GET rate,
# batch availability at 5 times it in items, reservations at each of RESERVE_RATES; one line per
# run: its name, the rate offered, whether per item, then wrk's result
paced=""
if [ "${PACED:-1}" != 0 ]; then
  single_rate=$(python3 -c "print(round($redis_rate))"); batch_rate=$(python3 -c "print(round($redis_rate * 5 / $batch))")
  paced="paced-single $single_rate 1 $(run paced-single single "$connections" "$single_rate")"
  paced+=$'\n'"paced-batch $batch_rate $batch $(run paced-batch batch "$connections" "$batch_rate")"
  for reserve_rate in ${RESERVE_RATES:-10000}; do
    paced+=$'\n'"paced-reserve-$reserve_rate $reserve_rate 1 $(run "paced-reserve-$reserve_rate" reserve "$connections" "$reserve_rate")"
  done
fi
python3 - "$single" "$batched" "$reserved" "$redis_rate" "$batch" "$profile" "$skus" "$nodes" "$connections" "$out" "$light" "$reserved_few" "$few" "$paced" "$ceiling" <<'PY'
import re, sys
single, batched, reserved, redis_rate, batch, profile, skus, nodes, connections, out, light, reserved_few, few, paced, ceiling = sys.argv[1:]
paced = [line.split(" ", 3) for line in paced.split("\n") if line]
redis_rate, batch = float(redis_rate), int(batch)
print(f"profile {profile}; {skus} SKUs, {nodes} nodes, {connections} connections; ratios against redis-benchmark GET ({redis_rate:,.0f}/s)")
print(f"{'scenario':<24} {'rate/s':>10} {'ratio':>7} {'p50 ms':>8} {'p99 ms':>8} {'p99.9 ms':>9} {'non-2xx':>8} {'errors':>7}")
def row(name, line, per=1):
    requests, duration, p50, p99, p999, status, errors, _ = map(float, line.split())
    rate = requests / duration * per
    print(f"{name:<24} {rate:>10,.0f} {rate / redis_rate:>6.2f}x {p50 / 1000:>8.2f} {p99 / 1000:>8.2f} {p999 / 1000:>9.2f} {status:>8.0f} {errors:>7.0f}")
row("single availability", single)
row(f"batch ({batch} items), requests", batched)
row(f"batch, items", batched, batch)
row("reservations (201|409)", reserved)
row(f"reservations, {few} conns", reserved_few)
row("single, 2 connections", light)
row("ceiling (/healthz)", ceiling)
print(f"{'redis-benchmark GET':<24} {redis_rate:>10,.0f} {1:>6.2f}x")
# single availability against the ceiling: the share of the HTTP-only rate left after its own work
rate = lambda line: float(line.split()[0]) / float(line.split()[1])
print(f"single availability at {rate(single) / rate(ceiling):.2f}x the ceiling; the ceiling at {rate(ceiling) / redis_rate:.2f}x GET")
# the targets offered at fixed rates: kept when at least 97% of the offered rate was answered, at
# most 1% of the requests went out late (their latencies then leave out how late) and the p99 is
# within the target's (single availability 2 ms, reservations 10 ms)
if paced:
    print(f"\nat fixed rates (open loop, {connections} connections): each target offered at its rate")
    print(f"{'scenario':<24} {'offered/s':>10} {'answered/s':>10} {'late':>6} {'p50 ms':>8} {'p99 ms':>8} {'p99.9 ms':>9} {'non-2xx':>8}  verdict")
    targets = {"paced-single": ("single availability", "1.0x GET, p99 under 2 ms", 2_000), "paced-batch": (f"batch ({batch} items), items", "5x GET in items", None)}
    for scenario, offered, per, line in paced:
        name, target, most = targets.get(scenario, ("reservations (201|409)", "p99 under 10 ms", 10_000))
        requests, duration, p50, p99, p999, status, errors, late = map(float, line.split())
        offered, answered = float(offered) * float(per), requests / duration * float(per)
        kept = answered >= 0.97 * offered and late <= 0.01 * requests and (most is None or p99 < most)
        print(f"{name:<24} {offered:>10,.0f} {answered:>10,.0f} {late / max(requests, 1):>6.1%} {p50 / 1000:>8.2f} {p99 / 1000:>8.2f} {p999 / 1000:>9.2f} {status:>8.0f}  {'kept' if kept else 'not kept'} ({target})")
# the reservations that held units (201), apart from those refused for want of them (409)
for name, line in [("reservations", reserved), (f"reservations, {few} conns", reserved_few)]:
    requests, duration, _, _, _, status, *_ = map(float, line.split())
    print(f"{name}: {(requests - status) / duration:,.0f}/s held (201), {status / duration:,.0f}/s refused (409 or other non-2xx)")

# the decision log's writing to the lake, waited for before each scenario: the decisions the
# scenario before logged, and how long after it they were all in the lake (segments close every
# 5 s, so at least that)
# (the last scenario has no drain after it: its decisions are not reported)
order = [("single", "single availability"), ("batch", "batch"), ("reserve", "reservations"), ("reserve-few", f"reservations, {few} conns"), ("light", "single, 2 connections"), ("ceiling", "ceiling")]
order += [(scenario, f"{scenario.removeprefix('paced-')} at {offered}/s") for scenario, offered, _, _ in paced]
drains = [tuple(map(int, open(f"{out}/drain-{scenario}").read().split())) for scenario, _ in order]
for (_, name), (before, _, _), (recorded, written, ms) in zip(order, drains, drains[1:]):
    left = "" if written >= recorded else f" (gave up waiting: {recorded - written:,} not written)"
    print(f"decision log after {name}: {recorded - before:,} decisions, in the lake {ms / 1000:.1f} s after it{left}")

# how many single-SKU reads went to Redis together, on average (sellable_gathered_reads)
def metric(path, name):
    for line in open(path):
        if line.startswith(name + " "):
            return float(line.split()[1])
    return 0.0
# requests the door refused (rate, load shedding, timeouts: sellable_http_refused_total by
# reason), which wrk counts as non-2xx answers; a scenario with any measured some refusals
def refused(scenario):
    def counts(path):
        found = {}
        for line in open(path):
            match = re.match(r'sellable_http_refused_total\{reason="([^"]+)"\} (\S+)', line)
            if match:
                found[match.group(1)] = float(match.group(2))
        return found
    before, after = counts(f"{out}/metrics-{scenario}-0"), counts(f"{out}/metrics-{scenario}-1")
    return {reason: after[reason] - before.get(reason, 0) for reason in after if after[reason] > before.get(reason, 0)}
for scenario, _ in order:
    if refusals := refused(scenario):
        print(f"WARNING {scenario}: the door refused " + ", ".join(f"{count:,.0f} ({reason})" for reason, count in sorted(refusals.items())))
for name, scenario, line in [("single availability", "single", single), ("single, 2 connections", "light", light)]:
    before, after = f"{out}/metrics-{scenario}-0", f"{out}/metrics-{scenario}-1"
    reads = metric(after, "sellable_gathered_reads_count") - metric(before, "sellable_gathered_reads_count")
    asks = metric(after, "sellable_gathered_reads_sum") - metric(before, "sellable_gathered_reads_sum")
    if reads:
        print(f"{name}: {asks / reads:.1f} requests per read of Redis, {reads / float(line.split()[1]):,.0f} reads/s")

# the same latencies as the server measured them: the bucket of its histogram
# (sellable_http_request_duration_seconds) that holds each percentile, from the counts the
# scenario added; the client's figure should fall in (or next to) it
def buckets(path, route, method):
    counts = {}
    pattern = re.compile(r'sellable_http_request_duration_seconds_bucket\{(.*)\} (\S+)')
    for line in open(path):
        match = pattern.match(line)
        if match and f'route="{route}"' in match.group(1) and f'method="{method}"' in match.group(1):
            bound = re.search(r'le="([^"]+)"', match.group(1)).group(1)
            counts[bound] = counts.get(bound, 0) + float(match.group(2))
    return counts
def server(scenario, route, method, q):
    """The bucket (lower, upper) holding the q-quantile of what the scenario added."""
    before, after = buckets(f"{out}/metrics-{scenario}-0", route, method), buckets(f"{out}/metrics-{scenario}-1", route, method)
    added = sorted(((float(b), after[b] - before.get(b, 0)) for b in after), key=lambda pair: pair[0])
    total = added[-1][1] if added else 0
    lower = 0.0
    for bound, count in added:
        if total and count >= q * total:
            return lower * 1000, bound * 1000
        lower = bound
    return None
def compare(client_ms, bucket):
    if bucket is None:
        return f"{'-':>12} {'':>6}"
    lower, upper = bucket
    # within the bucket, or no further than the next bucket either side
    agrees = lower / 1.5 <= client_ms <= upper * 1.5
    return f"{lower:>5.1f}-{upper:<6.1f} {'agrees' if agrees else 'apart':>6}"
print("\nthe server's histogram: the bucket (ms) holding each percentile, and whether the client's figure falls in it or the next")
print(f"{'scenario':<24} {'client p50':>10} {'server p50':>12} {'':>6} {'client p99':>10} {'server p99':>12}")
for name, line, scenario, route, method in [("single availability", single, "single", "/v1/availability/{sku}", "GET"),
                                            ("batch, requests", batched, "batch", "/v1/availability:batch", "POST"),
                                            ("reservations", reserved, "reserve", "/v1/reservations", "POST"),
                                            (f"reservations, {few} conns", reserved_few, "reserve-few", "/v1/reservations", "POST"),
                                            ("single, 2 connections", light, "light", "/v1/availability/{sku}", "GET")]:
    _, _, p50, p99, *_ = map(float, line.split())
    print(f"{name:<24} {p50 / 1000:>10.2f} {compare(p50 / 1000, server(scenario, route, method, 0.5))} {p99 / 1000:>10.2f} {compare(p99 / 1000, server(scenario, route, method, 0.99))}")
PY
