"""Queries a live `sellable serve --flight` as analysts do, with the ADBC Flight SQL driver and
with pyarrow.flight, and checks every answer against what the Rust test knows of the lake and of
the REST answers it gave. Usage: check.py URI KEY EXPECTED_JSON. Exits 1 on the first mismatch."""
import json
import sys

import adbc_driver_flightsql
import adbc_driver_flightsql.dbapi as flight_sql
import adbc_driver_manager
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.flight as flight

uri, key, expected = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])


def check(condition, what):
    if not condition:
        print(f"FAILED: {what}")
        sys.exit(1)
    print(f"ok: {what}")


# ADBC, the key as a bearer header
connection = flight_sql.connect(uri, db_kwargs={adbc_driver_flightsql.DatabaseOptions.AUTHORIZATION_HEADER.value: f"Bearer {key}"})
objects = connection.adbc_get_objects(depth="tables").read_all().to_pylist()
tables = {t["table_name"] for c in objects for s in (c["catalog_db_schemas"] or []) for t in (s["db_schema_tables"] or [])}
check(set(expected["counts"]) | {"live"} <= tables, f"schema discovery lists the tables {sorted(expected['counts'])} (got {sorted(tables)})")
info = connection.adbc_get_info()
check(info.get("vendor_name") == "sellable", f"GetSqlInfo names the server ({info.get('vendor_name')})")
schema = connection.adbc_get_table_schema("events")
check("sku" in schema.names and "qty" in schema.names, "the schema of events")

cursor = connection.cursor()
for table, count in expected["counts"].items():
    cursor.execute(f"SELECT COUNT(*) AS n FROM {table}")
    got = cursor.fetchone()[0]
    check(got == count, f"{table} holds {count} rows (got {got})")

cursor.execute("SELECT COUNT(*) AS n, SUM(qty) AS q FROM events WHERE sku = ?", parameters=(expected["sku"],))
n, q = cursor.fetchone()
check((n, q) == (expected["sku_events"], expected["sku_qty"]), f"a prepared statement with a parameter: {expected['sku']} has {n} events, qty {q}")

# the feature store as one of its versions holds it
cursor.execute(f"SELECT COUNT(*) FROM features_at({expected['features_version']})")
got = cursor.fetchone()[0]
check(got == expected["counts"]["features"], f"features_at({expected['features_version']}) holds {got} rows")
try:
    cursor.execute("SELECT COUNT(*) FROM features_at('latest')")
    check(False, "features_at with a wrong argument is refused")
except adbc_driver_manager.Error as error:
    check("features_at takes one dataset version" in str(error), "features_at with a wrong argument is refused, saying how to call it")

# the live table: the merged view per sku×node, read from Redis at query time
cursor.execute("SELECT node, atp FROM live WHERE sku = ? ORDER BY node", parameters=(expected["sku"],))
live = {node: atp for node, atp in cursor.fetchall()}
check(live == expected["live"], f"live: {expected['sku']} per node as the fold of the lake's events ({live})")
cursor.execute("SELECT COUNT(*) FROM live")
rows = cursor.fetchone()[0]
check(rows == expected["live_rows"], f"live: every sku×node of the catalog ({rows})")
cursor.execute(f"EXPLAIN SELECT atp FROM live WHERE sku = '{expected['sku']}'")
plan = " ".join(str(row) for row in cursor.fetchall())
check("FilterExec" not in plan, "live: the filter on sku is pushed into the read (no filter left in the plan)")

# a streamed answer of over a million rows, read batch by batch
repeat = expected["repeat"]
cursor.execute(f"SELECT e.qty FROM events e CROSS JOIN range({repeat}) r")
rows, total, batches = 0, 0, 0
for batch in cursor.fetch_record_batch():
    rows += batch.num_rows
    total += pc.sum(batch.column(0)).as_py() or 0
    batches += 1
check(rows == expected["counts"]["events"] * repeat and rows >= 1_000_000, f"{rows:,} rows streamed")
check(total == expected["qty_sum"] * repeat and batches > 1, f"in {batches} batches, the sum of qty as in the lake")

# the decisions the REST answers of the test left
cursor.execute("SELECT request_id, decision, units FROM decisions WHERE request_id LIKE 'flight-%' ORDER BY request_id")
logged = {row[0]: [row[1], row[2]] for row in cursor.fetchall()}
check(logged == expected["decisions"], f"the decisions table holds the {len(expected['decisions'])} answers given over REST")
# the worked queries of docs/analytics.md each run (the last with the SKU as both parameters)
queries = json.load(open(__file__.replace("check.py", "queries.json")))
for name, sql in queries.items():
    parameters = (expected["sku"], expected["sku"]) if "?" in sql else None
    cursor.execute(sql, parameters=parameters)
    rows = cursor.fetchall()
    check(rows is not None, f"{name}: {len(rows)} row(s)")
cursor.close()
connection.close()

# a key that is not known, and no key at all, are refused
try:
    bad = flight_sql.connect(uri, db_kwargs={adbc_driver_flightsql.DatabaseOptions.AUTHORIZATION_HEADER.value: "Bearer sk_wrong"})
    bad.cursor().execute("SELECT 1")
    check(False, "an unknown key is refused")
except adbc_driver_manager.Error as error:
    check("UNAUTHENTICATED" in str(error).upper() or "not known" in str(error), f"an unknown key is refused ({type(error).__name__})")


# pyarrow.flight: the handshake with basic credentials, then a Flight SQL statement by hand
def field(number, data):
    length, varint = len(data), b""
    while True:
        byte = length & 0x7F
        length >>= 7
        varint += bytes([byte | (0x80 if length else 0)])
        if not length:
            break
    return bytes([(number << 3) | 2]) + varint + data


def statement(sql):
    command = field(1, sql.encode())
    return field(1, b"type.googleapis.com/arrow.flight.protocol.sql.CommandStatementQuery") + field(2, command)


client = flight.FlightClient(uri)
try:
    client.authenticate_basic_token("analyst", "not-the-key")
    check(False, "a wrong password is refused")
except flight.FlightUnauthenticatedError:
    check(True, "a wrong password is refused")
descriptor = flight.FlightDescriptor.for_command(statement("SELECT sku, SUM(qty) AS qty FROM events GROUP BY sku ORDER BY sku"))
try:
    client.get_flight_info(descriptor)
    check(False, "a call without a key is refused")
except flight.FlightUnauthenticatedError:
    check(True, "a call without a key is refused")
header = client.authenticate_basic_token("analyst", key)
options = flight.FlightCallOptions(headers=[header])
info = client.get_flight_info(descriptor, options)
table = client.do_get(info.endpoints[0].ticket, options).read_all()
check(table.num_rows == expected["skus_with_events"], f"pyarrow.flight: {table.num_rows} SKUs with events")
check(pc.sum(table.column("qty")).as_py() == expected["qty_sum"], "pyarrow.flight: the sum of qty as in the lake")

# past its time a query is cancelled with a clear error, while another client's queries are
# answered meanwhile
import threading
import time

slow = flight.FlightDescriptor.for_command(statement("SELECT COUNT(*) FROM range(1000) a CROSS JOIN range(1000000000000) b"))
outcome = {}


def run_slow():
    other = flight.FlightClient(uri)
    other_options = flight.FlightCallOptions(headers=[other.authenticate_basic_token("analyst", key)])
    try:
        info = other.get_flight_info(slow, other_options)
        other.do_get(info.endpoints[0].ticket, other_options).read_all()
        outcome["error"] = None
    except flight.FlightError as error:
        outcome["error"] = str(error)


slow_client = threading.Thread(target=run_slow)
slow_client.start()
answered = 0
while slow_client.is_alive():
    info = client.get_flight_info(descriptor, options)
    answered += client.do_get(info.endpoints[0].ticket, options).read_all().num_rows == expected["skus_with_events"]
    time.sleep(0.1)
slow_client.join()
check(outcome["error"] is not None and "past its" in outcome["error"], f"a query past its time is cancelled: {str(outcome['error'])[:80]}")
check(answered >= 1, f"another client's queries were answered meanwhile ({answered})")
info = client.get_flight_info(descriptor, options)
check(client.do_get(info.endpoints[0].ticket, options).read_all().num_rows == expected["skus_with_events"], "the server answers the next query")

# past its memory a query is cancelled with a clear error (a join whose build side is larger)
large = flight.FlightDescriptor.for_command(statement("SELECT COUNT(*) FROM range(20000000) a JOIN range(10) b ON a.value = b.value"))
try:
    info = client.get_flight_info(large, options)
    client.do_get(info.endpoints[0].ticket, options).read_all()
    check(False, "a query past its memory is cancelled")
except (flight.FlightError, pa.ArrowInvalid) as error:  # pyarrow maps RESOURCE_EXHAUSTED to ArrowInvalid
    check("more memory than it may take" in str(error), f"a query past its memory is cancelled: {str(error)[:80]}")
info = client.get_flight_info(descriptor, options)
check(client.do_get(info.endpoints[0].ticket, options).read_all().num_rows == expected["skus_with_events"], "and the next one")
print("all checks passed")
