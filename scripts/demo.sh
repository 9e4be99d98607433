#!/usr/bin/env bash
# The demo command (README): sets up what is missing, builds, starts a local Redis when none
# answers at REDIS_URL (default redis://127.0.0.1:6379), and runs `sellable demo` as the living
# system on it (the last day of the marketplace replayed at 60x, with nightly cutovers).
# DEMO_EMBEDDED=1 runs it without Redis instead (the speed view in memory, the last day folded at
# start); arguments are passed to `sellable demo` (`--redis URL` names another Redis).
set -euo pipefail
cd "$(dirname "$0")/.."
command -v cargo >/dev/null || { echo "demo: cargo not found; install Rust with rustup first" >&2; exit 1; }
scripts/setup.sh
redis=""
previous=""
for arg in "$@"; do
  case "$previous" in --redis) redis=$arg ;; esac
  case "$arg" in --redis=*) redis=${arg#--redis=} ;; esac
  previous=$arg
done
extra=()
if [ -z "$redis" ] && [ -z "${DEMO_EMBEDDED:-}" ]; then
  redis=${REDIS_URL:-redis://127.0.0.1:6379}
  extra=(--redis "$redis")
fi
[ -n "$redis" ] && REDIS_URL=$redis scripts/ensure-redis.sh
cargo build --locked --bin sellable
exec target/debug/sellable demo "${extra[@]}" "$@"
