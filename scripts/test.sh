#!/usr/bin/env bash
# The test command (README, .ci/run): sets up what is missing, then runs every test of the
# workspace against a real Redis, and the architecture checks.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v cargo >/dev/null || { echo "test: cargo not found; install Rust with rustup first" >&2; exit 1; }
scripts/setup.sh
scripts/ensure-redis.sh

# Architecture: one arrow and one datafusion in the graph; the DSL never reaches Redis.
dups=$(cargo tree -d --depth 0 -e normal,build 2>/dev/null | grep -E '^(arrow|datafusion)' || true)
if [ -n "$dups" ]; then echo "test: duplicate arrow/datafusion versions:" >&2; echo "$dups" >&2; exit 1; fi
if cargo tree -p sellable-dsl -e normal 2>/dev/null | grep -q redis; then
  echo "test: sellable-dsl must not depend on redis" >&2; exit 1
fi

cargo test --workspace --locked "$@"
