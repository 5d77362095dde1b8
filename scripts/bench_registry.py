"""The client side of scripts/bench-registry.sh: the same MLflow REST API 2.0 calls, timed
against one server (Petrel's registry or `mlflow server`), printed as one JSON line.

    python scripts/bench_registry.py URL [--runs N] [--batches 10] [--singles 300]
"""

import argparse
import http.client
import json
import os
import random
import statistics
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
import urllib.parse
import uuid

parser = argparse.ArgumentParser()
parser.add_argument("url")
parser.add_argument("--runs", type=int, default=2000)
parser.add_argument("--batches", type=int, default=10)
parser.add_argument("--singles", type=int, default=300)
parser.add_argument("--searches", type=int, default=20)
parser.add_argument("--scratch", default="/tmp",
                    help="a directory on the servers' filesystem, for the disk-speed ceiling")
parser.add_argument("--artifact-mb", type=int, default=256,
                    help="size of the artifact uploaded through the mlflow-artifacts proxy (0: skip)")
parser.add_argument("--after-populate", default=None,
                    help="a shell command run once the search's runs exist (not timed): refreshing "
                         "the database's statistics, as autovacuum or SQLite's ANALYZE would")
parser.add_argument("--populate-threads", type=int, default=4,
                    help="clients creating the search's runs at once (the search itself is timed alone)")
args = parser.parse_args()
u = urllib.parse.urlparse(args.url)
conn = http.client.HTTPConnection(u.hostname, u.port, timeout=120)
local = threading.local()


def call(method, path, body=None):
    """One API call on this thread's keep-alive connection. A server may close a connection
    that sat idle (uvicorn does after 5 s, for example while other threads populate runs): the
    call then reconnects once and is sent again."""
    if getattr(local, "conn", None) is None:
        local.conn = conn if threading.current_thread() is threading.main_thread() else \
            http.client.HTTPConnection(u.hostname, u.port, timeout=120)
    data = json.dumps(body).encode() if body is not None else None
    headers = {"Content-Type": "application/json"} if data else {}
    for attempt in range(2):
        try:
            local.conn.request(method, "/api/2.0/mlflow/" + path, body=data, headers=headers)
            resp = local.conn.getresponse()
            break
        except (BrokenPipeError, ConnectionResetError, http.client.RemoteDisconnected):
            if attempt:
                raise
            local.conn.close()
            local.conn = http.client.HTTPConnection(u.hostname, u.port, timeout=120)
    text = resp.read()
    if resp.status != 200:
        raise SystemExit(f"{method} {path}: {resp.status} {text[:300]!r}")
    return json.loads(text or b"{}")


exp = call("POST", "experiments/create", {"name": f"bench-{uuid.uuid4().hex[:8]}"})["experiment_id"]
now = int(time.time() * 1000)
run = call("POST", "runs/create", {"experiment_id": exp, "start_time": now})["run"]["info"]["run_id"]

# Batched writes: `batches` requests of 1,000 metric points, three times; median of the rates.
rates = []
step = 0
for _ in range(3):
    bodies = []
    for _ in range(args.batches):
        metrics = [{"key": "loss", "value": random.random(), "timestamp": now, "step": step + i} for i in range(1000)]
        step += 1000
        bodies.append({"run_id": run, "metrics": metrics})
    t = time.perf_counter()
    for b in bodies:
        call("POST", "runs/log-batch", b)
    rates.append(args.batches * 1000 / (time.perf_counter() - t))

# Single metric writes: one point a request.
lat = []
for i in range(args.singles):
    t = time.perf_counter()
    call("POST", "runs/log-metric", {"run_id": run, "key": "acc", "value": random.random(), "timestamp": now, "step": i})
    lat.append((time.perf_counter() - t) * 1000)
lat.sort()

# Search: `runs` runs with a metric and a param, then a filtered, ordered search.
def populate(count):
    for _ in range(count):
        r = call("POST", "runs/create", {"experiment_id": exp, "start_time": now})["run"]["info"]["run_id"]
        call("POST", "runs/log-batch", {
            "run_id": r,
            "metrics": [{"key": "accuracy", "value": random.random(), "timestamp": now, "step": 0}],
            "params": [{"key": "lr", "value": random.choice(["0.01", "0.001"])}],
        })


t = time.perf_counter()
threads = max(1, args.populate_threads)
shares = [args.runs // threads + (1 if i < args.runs % threads else 0) for i in range(threads)]
with ThreadPoolExecutor(threads) as pool:
    list(pool.map(populate, shares))
populate_s = time.perf_counter() - t
if args.after_populate:
    subprocess.run(args.after_populate, shell=True, check=True)
search = []
for _ in range(args.searches):
    t = time.perf_counter()
    got = call("POST", "runs/search", {
        "experiment_ids": [exp],
        "filter": "metrics.accuracy > 0.9 and params.lr = '0.01'",
        "order_by": ["metrics.accuracy DESC"],
        "max_results": 100,
    })
    search.append((time.perf_counter() - t) * 1000)
    assert all(float(next(m["value"] for m in r["data"]["metrics"] if m["key"] == "accuracy")) > 0.9 for r in got.get("runs", []))
search.sort()

# Artifact upload through the proxy (`mlflow.log_artifact` with a tracking server), against
# the disk's own speed: the same bytes written to a file on the same filesystem and synced,
# as a server must before it answers 200 for a durable upload (bench_registry_ceilings.py).
from bench_registry_ceilings import file_sync, put_artifact, socket_to_disk  # noqa: E402


upload_mb_s = disk_mb_s = socket_disk_mb_s = socket_sha_mb_s = None
if args.artifact_mb:
    blob = os.urandom(args.artifact_mb << 20)
    times, disk = [], []
    for i in range(3):
        times.append(put_artifact(args.url, exp, run, f"blob{i}.bin", blob))
        disk.append(file_sync(blob, args.scratch))
    upload_mb_s = args.artifact_mb / statistics.median(times)
    disk_mb_s = args.artifact_mb / statistics.median(disk)
    socket_disk_mb_s = args.artifact_mb / statistics.median(
        socket_to_disk(blob, args.scratch) for _ in range(3))
    socket_sha_mb_s = args.artifact_mb / statistics.median(
        socket_to_disk(blob, args.scratch, checksum=True) for _ in range(3))

print(json.dumps({
    "batched_points_per_s": statistics.median(rates),
    "single_write_ms_p50": lat[len(lat) // 2],
    "single_write_ms_p99": lat[int(len(lat) * 0.99) - 1],
    "runs": args.runs,
    "populate_s": populate_s,
    "search_ms_p50": search[len(search) // 2],
    "search_hits": len(got.get("runs", [])),
    "artifact_mb": args.artifact_mb,
    "upload_mb_s": upload_mb_s,
    "disk_mb_s": disk_mb_s,
    "socket_disk_mb_s": socket_disk_mb_s,
    "socket_disk_sha256_mb_s": socket_sha_mb_s,
}))
