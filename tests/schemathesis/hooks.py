"""Schemathesis hooks of the REST API's contract test: how to send an NDJSON body
(`POST /v1/events` takes events one JSON object per line)."""
import json

import schemathesis


@schemathesis.serializer("application/x-ndjson")
def ndjson(ctx, value):
    if isinstance(value, bytes):
        return {"data": value}
    if isinstance(value, str):
        return {"data": value.encode("utf8")}
    items = value if isinstance(value, list) else [value]
    return {"data": "\n".join(json.dumps(item) for item in items).encode("utf8")}
