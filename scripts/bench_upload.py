"""Artifact uploads through the mlflow-artifacts proxy, Petrel's registry and `mlflow server`
side by side, against the machine's ceilings, interleaved: scripts/bench-registry.sh.

    python scripts/bench_upload.py PETREL_URL MLFLOW_URL --scratch DIR [--mb 256] [--rounds 5]

Each round uploads the same random bytes once to each server (the order alternating per round)
and measures three ceilings on the same filesystem: the bytes written to a file and synced; the
bytes through a loopback socket into a synced file; the same with a SHA-256 of every chunk
computed on a second thread (what a server that records a checksum per file must also do).
Before each measurement the disk's dirty pages are flushed (`sync`) and the writeback waited
for, so no measurement pays for the one before it. Prints one JSON line of medians.
"""
import argparse
import http.client
import json
import os
import statistics
import time
import urllib.parse
import uuid

import bench_registry_ceilings as ceilings

parser = argparse.ArgumentParser()
parser.add_argument("petrel")
parser.add_argument("mlflow")
parser.add_argument("--scratch", required=True)
parser.add_argument("--mb", type=int, default=256)
parser.add_argument("--rounds", type=int, default=5)
args = parser.parse_args()


def settle():
    """Flushes dirty pages and waits (up to 20 s) until the kernel reports few left."""
    os.sync()
    deadline = time.time() + 20
    while time.time() < deadline:
        with open("/proc/meminfo") as f:
            dirty = next(int(l.split()[1]) for l in f if l.startswith("Dirty:"))
        if dirty < 16 * 1024:
            return
        time.sleep(0.2)


def api(base, path, body):
    u = urllib.parse.urlparse(base)
    c = http.client.HTTPConnection(u.hostname, u.port, timeout=60)
    c.request("POST", "/api/2.0/mlflow/" + path, body=json.dumps(body), headers={"Content-Type": "application/json"})
    r = c.getresponse()
    text = r.read()
    if r.status != 200:
        raise SystemExit(f"{base} {path}: {r.status} {text[:200]!r}")
    return json.loads(text)


def target(base):
    exp = api(base, "experiments/create", {"name": f"upload-{uuid.uuid4().hex[:8]}"})["experiment_id"]
    run = api(base, "runs/create", {"experiment_id": exp, "start_time": int(time.time() * 1000)})["run"]["info"]["run_id"]
    return base, exp, run


def upload(t, blob, i):
    base, exp, run = t
    return ceilings.put_artifact(base, exp, run, f"blob{i}.bin", blob)


blob = os.urandom(args.mb << 20)
servers = {"petrel": target(args.petrel), "mlflow": target(args.mlflow)}
times = {k: [] for k in ["petrel", "mlflow", "disk", "socket", "socket_sha256"]}
for i in range(args.rounds):
    order = ["petrel", "mlflow"] if i % 2 == 0 else ["mlflow", "petrel"]
    for name in order:
        settle()
        times[name].append(upload(servers[name], blob, i))
    settle()
    times["disk"].append(ceilings.file_sync(blob, args.scratch))
    settle()
    times["socket"].append(ceilings.socket_to_disk(blob, args.scratch))
    settle()
    times["socket_sha256"].append(ceilings.socket_to_disk(blob, args.scratch, checksum=True))
print(json.dumps({k + "_mb_s": args.mb / statistics.median(v) for k, v in times.items()} | {"mb": args.mb, "rounds": args.rounds}))
