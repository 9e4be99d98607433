#!/usr/bin/env bash
# The demo command (README): sets up what is missing, builds, and runs `sellable demo` with the
# embedded speed view (pass --redis redis://127.0.0.1:6379 to use Redis instead).
set -euo pipefail
cd "$(dirname "$0")/.."
command -v cargo >/dev/null || { echo "demo: cargo not found; install Rust with rustup first" >&2; exit 1; }
scripts/setup.sh
previous=""
for arg in "$@"; do
  case "$previous" in --redis) REDIS_URL=$arg scripts/ensure-redis.sh ;; esac
  case "$arg" in --redis=*) REDIS_URL=${arg#--redis=} scripts/ensure-redis.sh ;; esac
  previous=$arg
done
cargo build --locked --bin sellable
exec target/debug/sellable demo "$@"
