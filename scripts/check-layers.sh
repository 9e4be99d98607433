#!/usr/bin/env bash
# The layering of docs/ARCHITECTURE.md, checked on the real dependency graph (`cargo tree -e
# normal`, every depth): which sellable-* crates each crate may reach, and which outside crates it
# must never reach. A failure of `cargo tree` itself is a failure of the check.
#   scripts/check-layers.sh              check the workspace
#   scripts/check-layers.sh --self-test  show that the check fails on planted forbidden edges
set -euo pipefail
cd "$(dirname "$0")/.."

# crate | the sellable-* crates it may reach (normal dependencies, any depth) | outside crates it
# must never reach
declare -A allowed forbidden
while IFS='|' read -r crate may never; do
  crate=$(echo $crate); allowed[$crate]=$(echo $may); forbidden[$crate]=$(echo $never)
done <<'TABLE'
sellable-core    |                                           | redis datafusion axum lance
sellable-dsl     |                                           | redis datafusion axum lance xgb
sellable-models  | sellable-core                             | redis datafusion axum lance
sellable-batch   | sellable-core                             |
sellable-speed   | sellable-core                             |
sellable-serving | sellable-core sellable-dsl sellable-models | xgb
sellable-bench   | sellable-core                             | redis reqwest datafusion lance
sellable-lifecycle | sellable-core sellable-batch sellable-speed sellable-serving sellable-dsl sellable-models | xgb
sellable-analytics | sellable-core sellable-batch sellable-serving sellable-dsl sellable-models | xgb redis
TABLE

# check CRATE: reads `cargo tree --prefix none --format {p}` lines of CRATE on stdin; prints
# every violation; fails if there is one or if the input is empty (cargo tree printed nothing)
check() {
  local crate=$1 line name problems=0 seen=0
  while read -r line; do
    [ -z "$line" ] && continue
    seen=1
    name=${line%% *}
    [ "$name" = "$crate" ] && continue
    if [[ $name == sellable* ]] && [[ " ${allowed[$crate]} " != *" $name "* ]]; then
      echo "layers: $crate depends on $name (allowed: ${allowed[$crate]:-no sellable crate})"; problems=1
    fi
    if [[ " ${forbidden[$crate]:-} " == *" $name "* ]]; then
      echo "layers: $crate depends on $name, which it must never reach"; problems=1
    fi
  done
  if [ "$seen" = 0 ]; then echo "layers: no dependency tree for $crate"; return 1; fi
  return $problems
}

if [ "${1:-}" = "--self-test" ]; then
  planted() { printf '%s v0.1.0\n' "$@"; }
  planted sellable-batch sellable-core sellable-speed | check sellable-batch >/dev/null && { echo "layers: self-test: batch -> speed passed" >&2; exit 1; }
  planted sellable-core arrow-array redis | check sellable-core >/dev/null && { echo "layers: self-test: core -> redis passed" >&2; exit 1; }
  planted sellable-serving sellable-models xgb | check sellable-serving >/dev/null && { echo "layers: self-test: serving -> xgb passed" >&2; exit 1; }
  printf '' | check sellable-dsl >/dev/null && { echo "layers: self-test: an empty tree passed" >&2; exit 1; }
  planted sellable-serving sellable-core sellable-dsl sellable-models axum | check sellable-serving || { echo "layers: self-test: a clean tree failed" >&2; exit 1; }
  echo "layers: self-test ok (four planted violations caught, a clean tree passed)"
  exit 0
fi

failed=0
for crate in "${!allowed[@]}"; do
  tree=$(cargo tree -p "$crate" -e normal --prefix none --format '{p}') || { echo "layers: cargo tree -p $crate failed" >&2; exit 1; }
  check "$crate" <<< "$tree" || failed=1
done
# one arrow and one datafusion in the whole graph
dups=$(cargo tree -d --depth 0 -e normal,build) || { echo "layers: cargo tree -d failed" >&2; exit 1; }
if grep -E '^(arrow|datafusion)' <<< "$dups"; then echo "layers: duplicate arrow/datafusion versions (above)"; failed=1; fi
[ "$failed" = 0 ] && echo "layers: ok (${#allowed[@]} crates)"
exit $failed
