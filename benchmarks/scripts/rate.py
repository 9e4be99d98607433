"""Open-loop load at a fixed rate: batch availability requests sent on a schedule (request i at
start + i / rate), whatever the server's latency, each timed from its scheduled start so a slow
answer also counts against the requests queued behind it (no coordinated omission).

Usage: rate.py HOST:PORT SKUS BATCH REQUESTS_PER_SECOND SECONDS   (the key in SELLABLE_API_KEY)
Prints: sent answered_2xx p50_ms p99_ms p999_ms late_starts
"""
import http.client
import json
import os
import random
import sys
import threading
import time

listen, skus, batch, rate, seconds = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4]), float(sys.argv[5])
host, port = listen.split(":")
headers = {"Content-Type": "application/json", "Authorization": f"Bearer {os.environ['SELLABLE_API_KEY']}"}
countries = ["DE", "FR", "IT", "ES", "NL", "US"]
total = int(rate * seconds)
lock = threading.Lock()
state = {"next": 0}
latencies, failures, late = [], [0], [0]
start = time.perf_counter() + 0.5


def worker(seed):
    rng = random.Random(seed)
    connection = http.client.HTTPConnection(host, int(port), timeout=30)
    while True:
        with lock:
            index = state["next"]
            state["next"] += 1
        if index >= total:
            return
        scheduled = start + index / rate
        wait = scheduled - time.perf_counter()
        if wait > 0:
            time.sleep(wait)
        elif wait < -0.001:
            with lock:
                late[0] += 1
        items = [{"sku": f"SKU-{rng.randrange(skus):06}", "region": rng.choice(countries)} for _ in range(batch)]
        body = json.dumps({"items": items})
        try:
            connection.request("POST", "/v1/availability:batch", body=body, headers=headers)
            response = connection.getresponse()
            response.read()
            ok = 200 <= response.status < 300
        except (OSError, http.client.HTTPException):
            connection.close()
            connection = http.client.HTTPConnection(host, int(port), timeout=30)
            ok = False
        elapsed = time.perf_counter() - scheduled
        with lock:
            latencies.append(elapsed)
            failures[0] += 0 if ok else 1


threads = [threading.Thread(target=worker, args=(seed,)) for seed in range(48)]
for thread in threads:
    thread.start()
for thread in threads:
    thread.join()
latencies.sort()
at = lambda q: latencies[min(len(latencies) - 1, int(len(latencies) * q))] * 1000
print(len(latencies), len(latencies) - failures[0], f"{at(0.5):.2f}", f"{at(0.99):.2f}", f"{at(0.999):.2f}", late[0])
