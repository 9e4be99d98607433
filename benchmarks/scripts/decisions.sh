#!/usr/bin/env bash
# The decision log under load, in one run: batch availability (BATCH items per request, every item
# a logged decision) against `sellable serve --redis` on the same marketplace, ROUNDS times with
# the decision log off, then on; each time first at a fixed rate of RATE answers/s for SECONDS
# seconds (open loop, benchmarks/scripts/rate.py: latency from each request's scheduled start),
# then as fast as wrk with CONNECTIONS connections goes for SECONDS seconds. Prints every run's
# latency at the fixed rate and answers/s and latency at saturation side by side, with the ratio
# of the p99s with the log to those without, beside the ratio between runs without it (the
# noise), then checks that every decision counted in (sellable_decisions_recorded_total, summed
# over the runs with the log) is in the lake's `decisions` table once the spill directory has
# drained, and that none was lost (sellable_decisions_lost_total).
# The lake is in S3 (moto's server from the setup script's venv), so that it can be made slow: in
# the run with the log, the S3 server is paused (SIGSTOP) for PAUSE seconds while the fixed-rate
# load goes on, and every upload waits for it meanwhile. The S3 server runs at nice 19.
# Usage: benchmarks/scripts/decisions.sh   (SKUS=20000 NODES=200 CONNECTIONS=64 DURATION=60
#   BATCH=50 RATE=20000 PAUSE=20 ROUNDS=2; PROFILE=release for an optimised build)
set -euo pipefail
cd "$(dirname "$0")/../.."
skus=${SKUS:-20000}; nodes=${NODES:-200}; connections=${CONNECTIONS:-64}; seconds=${DURATION:-60}; batch=${BATCH:-50}; rate=${RATE:-20000}; pause=${PAUSE:-20}; rounds=${ROUNDS:-2}
source benchmarks/scripts/common.sh decisions
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
s3_port=$(free_port)
# at the lowest priority: a lake's S3 is not on the serving machine, and here its CPU (receiving
# the uploads) would count against the server's latency as if logging cost it
nice -n 19 .deps/venv/bin/moto_server -H 127.0.0.1 -p "$s3_port" >"$out/moto.log" 2>&1 & moto=$!
pid=""
namespace="sellable-bench-decisions"
trap 'set +e; kill -CONT $moto 2>/dev/null; kill $moto $pid 2>/dev/null; [ -z "$pid" ] || wait $pid 2>/dev/null; forget_namespace "$namespace"' EXIT
until curl -sf -X PUT "http://127.0.0.1:$s3_port/sellable-bench" >/dev/null; do sleep 0.2; done
export AWS_ENDPOINT=http://127.0.0.1:$s3_port AWS_ACCESS_KEY_ID=bench AWS_SECRET_ACCESS_KEY=bench AWS_REGION=us-east-1 AWS_ALLOW_HTTP=true
lake=s3://sellable-bench/lake
command -v wrk >/dev/null || { SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO=sudo; $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq wrk >/dev/null; }
marketplace_ending_now "$lake"
cat >"$out/batch.lua" <<LUA
local skus, countries = $skus, {"DE", "FR", "IT", "ES", "NL", "US"}
-- each wrk thread its own random sequence
local started = 0
function setup(thread) started = started + 1; thread:set("id", started) end
function init(args) math.randomseed(os.time() * 1000 + id) end
local headers = {["Content-Type"] = "application/json", ["Authorization"] = "Bearer $SELLABLE_API_KEY"}
request = function()
  local items = {}
  for i = 1, $batch do items[i] = string.format('{"sku":"SKU-%06d","region":"%s"}', math.random(0, skus - 1), countries[math.random(#countries)]) end
  return wrk.format("POST", "/v1/availability:batch", headers, '{"items":[' .. table.concat(items, ",") .. ']}')
end
function done(summary, latency, requests)
  io.write(string.format("RESULT %d %.1f %d %d %d %d\\n", summary.requests, summary.duration / 1e6,
    latency:percentile(50), latency:percentile(99), latency:percentile(99.9), summary.errors.status))
end
LUA
metric() { curl -sf "http://$listen/metrics" | awk -v name="$1" '$1 == name {print $2}'; }
# run NAME DECISIONS_CONFIG: one serve process, one wrk run; prints wrk's RESULT line
run() {
  forget_namespace "$namespace"
  listen=127.0.0.1:$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  SELLABLE__SERVE__DECISIONS="$2" "$bin" serve --lake "$lake" --redis "$url" --namespace "$namespace" --listen "$listen" 2>"$out/serve-$1.log" & pid=$!
  wait_ready "$listen" "$out/serve-$1.log"
  # with the log: the lake's S3 server paused for a while, 10 s into the fixed-rate load
  [[ $1 == on* ]] && { sleep 10; kill -STOP "$moto"; sleep "$pause"; kill -CONT "$moto"; } &
  python3 benchmarks/scripts/rate.py "$listen" "$skus" "$batch" "$(( rate / batch ))" "$seconds" >"$out/rate-$1"
  wrk -t2 -c"$connections" -d"${seconds}s" -s "$out/batch.lua" "http://$listen" | grep '^RESULT' | cut -d' ' -f2- >"$out/result-$1"
}
recorded=0; lost=0
for round in $(seq 1 "$rounds"); do
  run "off-$round" '{ enabled = false }'
  kill "$pid"; wait "$pid" 2>/dev/null || true
  run "on-$round" "{ enabled = true, spill = \"$out/spill\" }"
  # the requests wrk left in flight are answered (and logged) after it stops
  sleep 2
  recorded=$(( recorded + $(metric sellable_decisions_recorded_total | cut -d. -f1) )); lost=$(( lost + $(metric sellable_decisions_lost_total | cut -d. -f1) ))
  # the last server stays up while its spill directory drains; the others leave theirs to the next
  [ "$round" -lt "$rounds" ] && { kill "$pid"; wait "$pid" 2>/dev/null || true; }
done
# the spill directory drains into the lake (segments close every 5 s)
stored=0
for _ in $(seq 1 240); do
  stored=$("$bin" lake info --lake "$lake" 2>/dev/null | awk '$1 == "decisions" {print $4}')
  [ "${stored:-0}" -ge "$recorded" ] && break; sleep 1
done
kill "$pid"; wait "$pid" 2>/dev/null || true
python3 - "$out" "$batch" "$profile" "$connections" "$seconds" "$recorded" "$lost" "${stored:-0}" "$rate" "$pause" "$rounds" <<'PY'
import statistics, sys
out, batch, profile, connections, seconds, recorded, lost, stored, rate, pause, rounds = sys.argv[1:]
batch, runs = int(batch), [f"{name}-{round}" for round in range(1, int(rounds) + 1) for name in ["off", "on"]]
print(f"profile {profile}; batch availability, {batch} items per request, {seconds} s per run, {rounds} round(s) of a run without the log, then one with it")
def spread(values):
    return max(values) / min(values)
def compare(title, measure):
    """The runs with the log against those without, round by round, beside the spread of the runs
    without it (how far two runs of the same server fall apart: the noise)."""
    off, on = [measure[f"off-{r}"] for r in range(1, int(rounds) + 1)], [measure[f"on-{r}"] for r in range(1, int(rounds) + 1)]
    ratios = ", ".join(f"{b / a:.2f}x" for a, b in zip(off, on))
    noise = f"{spread(off):.2f}x" if len(off) > 1 else "- (one round)"
    print(f"{title}: with the log / without, round by round: {ratios}; median with / median without: {statistics.median(on) / statistics.median(off):.2f}x; without / without (noise): {noise}")
print(f"at a fixed {int(rate):,} answers/s (open loop; with the log, the lake's S3 server paused {pause} s of it):")
print(f"{'run':<14} {'requests':>9} {'2xx':>9} {'p50 ms':>8} {'p99 ms':>8} {'p99.9 ms':>9} {'late starts':>12}")
fixed = {}
for name in runs:
    sent, answered, p50, p99, p999, late = open(f"{out}/rate-{name}").read().split()
    fixed[name] = float(p99)
    print(f"{name:<14} {int(sent):>9,} {int(answered):>9,} {float(p50):>8.2f} {float(p99):>8.2f} {float(p999):>9.2f} {int(late):>12,}")
compare("p99 at the fixed rate", fixed)
print(f"as fast as wrk goes, {connections} connections:")
print(f"{'run':<14} {'answers/s':>10} {'p50 ms':>8} {'p99 ms':>8} {'p99.9 ms':>9} {'non-2xx':>8}")
saturated, answers = {}, {}
for name in runs:
    requests, duration, p50, p99, p999, status = map(float, open(f"{out}/result-{name}").read().split())
    saturated[name], answers[name] = p99, requests * batch / duration
    print(f"{name:<14} {answers[name]:>10,.0f} {p50 / 1000:>8.2f} {p99 / 1000:>8.2f} {p999 / 1000:>9.2f} {status:>8.0f}")
compare("answers/s at saturation", answers)
compare("p99 at saturation", saturated)
print(f"decisions counted in {int(recorded):,}, in the lake's table {int(stored):,}, lost {int(lost)}")
sys.exit(0 if int(recorded) == int(stored) and int(lost) == 0 else 1)
PY
