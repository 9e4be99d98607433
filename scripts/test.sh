#!/usr/bin/env bash
# The test command (README, .ci/run): sets up what is missing, checks the layering of the crates
# (scripts/check-layers.sh, its own self-test first), then runs every test of the workspace
# against a real Redis.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v cargo >/dev/null || { echo "test: cargo not found; install Rust with rustup first" >&2; exit 1; }
scripts/setup.sh
scripts/ensure-redis.sh
scripts/check-layers.sh --self-test
scripts/check-layers.sh
cargo test --workspace --locked "$@"
