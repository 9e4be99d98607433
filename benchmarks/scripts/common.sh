# Sourced by the Redis benchmarks, with the name of their output directory: sets up the machine,
# starts Redis at REDIS_URL if none answers, builds `sellable` in PROFILE (default dev) and sets
# profile, url, out (target/bench-<name> or BENCH_DIR, emptied), bin, host, port and `cli`, and an
# API key for the servers it starts (key.sh).
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
