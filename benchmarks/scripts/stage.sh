# Sourced by the batch benchmarks once `out` is set: empties "$out/results.tsv" and defines
# `stage KEY NAME COMMAND...`, which runs COMMAND under /usr/bin/time with its stderr in
# "$out/KEY-NAME.log" (printed whole if it fails, its last line otherwise) and appends
# "KEY NAME seconds peak_kib" to the results.
results="$out/results.tsv"
: > "$results"

stage() {
  local key=$1 name=$2; shift 2
  /usr/bin/time -f "%e %M" -o "$out/time" "$@" 2> "$out/$key-$name.log" || { cat "$out/$key-$name.log" >&2; exit 1; }
  tail -1 "$out/$key-$name.log" | cut -c1-240
  echo "$key $name $(cat "$out/time")" >> "$results"
}
