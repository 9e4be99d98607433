# Sourced by the benchmarks that start a server: an API key with every scope for this run, the
# server admitting it through the configuration's environment layer, and the clients sending it.
SELLABLE_API_KEY="sk_bench_$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')"
SELLABLE__SERVE__KEYS="[{ name = \"bench\", scopes = [\"read\", \"reserve\", \"ingest\", \"admin\"], sha256 = \"$(printf %s "$SELLABLE_API_KEY" | sha256sum | cut -d' ' -f1)\" }]"
export SELLABLE_API_KEY SELLABLE__SERVE__KEYS
