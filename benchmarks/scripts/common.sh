# Sourced by the Redis benchmarks, with the name of their output directory: sets up the machine,
# starts Redis at REDIS_URL if none answers, builds `sellable` in PROFILE (default dev) and sets
# profile, url, out (target/bench-<name> or BENCH_DIR, emptied), bin, host, port and `cli`, and an
# API key for the servers it starts (key.sh); defines `wait_ready`, `marketplace_ending_now` and
# `forget_namespace`. The scripts that write to Redis delete what they wrote as they end, stopped
# early or not.
profile=${PROFILE:-dev}
url=${REDIS_URL:-redis://127.0.0.1:6379}
out=${BENCH_DIR:-target/bench-$1}
scripts/setup.sh
REDIS_URL=$url scripts/ensure-redis.sh
cargo build --locked --profile "$profile" --bin sellable
# BIN: another build of `sellable` to measure instead (an earlier commit's, for a before/after
# pair on the same machine)
bin=${BIN:-target/$([ "$profile" = dev ] && echo debug || echo "$profile")/sellable}
rm -rf "$out" && mkdir -p "$out"
host=$(echo "${url#redis://}" | cut -d: -f1); port=$(echo "${url#redis://}" | cut -d: -f2 | cut -d/ -f1)
cli() { redis-cli -h "$host" -p "$port" "$@"; }
source benchmarks/scripts/key.sh
# Deletes every key of the namespace $1 from the Redis at $url. The scripts that serve clear
# theirs as they start and as they end: a run's reservation records are kept a day, and a Redis
# left holding a run's hundreds of thousands of keys slows whatever uses it next.
forget_namespace() {
  [ -n "$1" ] || { echo "forget_namespace: no namespace given" >&2; return 1; }
  cli --scan --pattern "$1*" | xargs -r -n 1000 redis-cli -h "$host" -p "$port" unlink >/dev/null
}
# Waits until the server at $1 is ready (`/readyz` grade fresh or bounded_stale), for 300 s at
# most; else stops the run, with the end of its log ($2): figures of a server that answers
# conservatively would measure another path.
wait_ready() {
  for _ in $(seq 1 600); do
    curl -sf "http://$1/readyz" | grep -qE '"grade":"(fresh|bounded_stale)"' && return 0; sleep 0.5
  done
  echo "the server at $1 was not ready after 300 s; the end of $2:" >&2
  tail -n 5 "$2" >&2
  exit 1
}
# Generates a marketplace of $skus SKUs and $nodes nodes whose two days of events end now, imports
# it into the lake $1 and builds its batch view as of now, as the nightly job of `sellable run`
# dates it: the generator lets a few events arrive after its end (late past any lateness), and
# the latest arrival, the default cutoff, would date the view days ahead of the clock. Logs under
# $out.
marketplace_ending_now() {
  local now; now=$(date +%s)000
  "$bin" gen --out "$out/gen" --skus "$skus" --nodes "$nodes" --days 2 --start $(( now - 2 * 86400000 )) 2>"$out/gen.log"
  "$bin" lake import --lake "$1" --from "$out/gen" 2>"$out/import.log"
  "$bin" batch --lake "$1" --asof "$now" 2>"$out/batch.log"
}
