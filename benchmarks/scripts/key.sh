# Sourced by the benchmarks that start a server: an API key with every scope for this run, the
# server admitting it through the configuration's environment layer, and the clients sending it.
# The key's rate is set far above any load these scripts offer, its limiter still on every
# request's path: at the default (50,000/s) a fast machine's single availability got 429s,
# cheaper than answers, which the rates would have counted.
SELLABLE_API_KEY="sk_bench_$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')"
SELLABLE__SERVE__KEYS="[{ name = \"bench\", scopes = [\"read\", \"reserve\", \"ingest\", \"admin\"], sha256 = \"$(printf %s "$SELLABLE_API_KEY" | sha256sum | cut -d' ' -f1)\" }]"
SELLABLE__SERVE__LIMITS="{ rate_per_key = 10000000 }"
export SELLABLE_API_KEY SELLABLE__SERVE__KEYS SELLABLE__SERVE__LIMITS
