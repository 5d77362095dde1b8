"""The pandas side of scripts/bench-ingest.sh, and the driver of ingest's side.

    bench_ingest.py pandas FILE CHECKS_JSON REPEAT OUT_DIR
    bench_ingest.py ingest MODE FILE CHECKS_JSON INGEST_URL INGEST_PID REPEAT OUT_DIR
    bench_ingest.py show FILE OUT_DIR

pandas: `read_csv` (the default C engine, and the multi-threaded pyarrow engine) then the
checks ingest runs, written as a pandas user would: ranges and categories reject rows,
missing shares per column, duplicate rows among the accepted ones, and the per-column summary
of ingest's report (count, missing share, min, max, mean, p05..p95, distinct, top 10).
Writing the accepted rows out is timed separately (ingest always stores them).

ingest: `POST /v1/datasets` by `path` (hashed, validated and stored from where it lies) and a
streamed multipart upload with curl (spooled to disk while hashed, then validated and stored),
each under a fresh dataset name. Ingest's resident memory is sampled every 20 ms.
"""

import json
import os
import statistics
import subprocess
import sys
import threading
import time
import urllib.request

import pandas as pd

QUANTILES = [0.05, 0.25, 0.5, 0.75, 0.95]
SCHEMA = {
    "features": [
        {"name": "island", "kind": "categorical"},
        {"name": "bill_length_mm", "kind": "numeric"},
        {"name": "bill_depth_mm", "kind": "numeric"},
        {"name": "flipper_length_mm", "kind": "numeric"},
        {"name": "body_mass_g", "kind": "numeric"},
        {"name": "sex", "kind": "categorical"},
        {"name": "year", "kind": "numeric"},
    ],
    "target": "species",
}


def pandas_checks(path, checks, engine):
    """Returns (seconds, accepted, duplicates, frame of accepted rows)."""
    start = time.perf_counter()
    df = pd.read_csv(path, engine=engine)
    numeric = [f["name"] for f in SCHEMA["features"] if f["kind"] == "numeric"]
    rejected = pd.Series(False, index=df.index)
    for col in numeric:
        if not pd.api.types.is_numeric_dtype(df[col]):
            coerced = pd.to_numeric(df[col], errors="coerce")
            rejected |= df[col].notna() & coerced.isna()
            df[col] = coerced
    for col, rule in checks["columns"].items():
        values = df[col]
        if "min" in rule:
            rejected |= values < rule["min"]
        if "max" in rule:
            rejected |= values > rule["max"]
        if "categories" in rule:
            rejected |= values.notna() & ~values.isin(rule["categories"])
    accepted = df[~rejected]
    problems = []
    if rejected.mean() > checks.get("max_rejected_share", 0.1):
        problems.append("too many rejected rows")
    for col, rule in checks["columns"].items():
        if "max_missing_share" in rule and accepted[col].isna().mean() > rule["max_missing_share"]:
            problems.append(f"{col} misses too many values")
    duplicates = int(accepted.duplicated().sum())
    if duplicates / max(len(accepted), 1) > checks.get("max_duplicate_share", 1.0):
        problems.append("too many duplicates")
    summary = {}
    for col in numeric:
        s = accepted[col]
        summary[col] = {
            "count": int(s.count()),
            "missing": float(s.isna().mean()),
            "min": float(s.min()),
            "max": float(s.max()),
            "mean": float(s.mean()),
            "quantiles": [float(q) for q in s.quantile(QUANTILES)],
        }
    for col in ["island", "sex", "species"]:
        s = accepted[col]
        summary[col] = {
            "count": int(s.count()),
            "missing": float(s.isna().mean()),
            "distinct": int(s.nunique()),
            "top": s.value_counts().head(10).to_dict(),
        }
    seconds = time.perf_counter() - start
    return seconds, len(accepted), duplicates, accepted, problems


class RssSampler:
    """The largest resident set of a process while it runs."""

    def __init__(self, pid):
        self.pid, self.peak, self.stop = pid, 0, threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self):
        while not self.stop.is_set():
            with open(f"/proc/{self.pid}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        self.peak = max(self.peak, int(line.split()[1]) * 1024)
            time.sleep(0.02)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join()


def post_json(url, body):
    req = urllib.request.Request(
        url, json.dumps(body).encode(), {"Content-Type": "application/json"}, method="POST"
    )
    try:
        with urllib.request.urlopen(req, timeout=3600) as r:
            return r.status, json.load(r)
    except urllib.error.HTTPError as e:
        return e.code, json.load(e)


def ingest_path(url, name, checks):
    return post_json(
        f"{url}/v1/datasets",
        {"name": name, "schema": SCHEMA, "path": "penguins.csv", "checks": checks},
    )


def ingest_upload(url, name, checks, path, spec_file):
    with open(spec_file, "w") as f:
        json.dump({"name": name, "schema": SCHEMA, "checks": checks}, f)
    out = subprocess.run(
        ["curl", "-s", "-w", "\n%{http_code}", "-F", f"spec=@{spec_file};type=application/json",
         "-F", f"file=@{path}", f"{url}/v1/datasets/upload"],
        check=True, capture_output=True, text=True,
    ).stdout
    body, code = out.rsplit("\n", 1)
    return int(code), json.loads(body)


def save(out_dir, name, record):
    with open(os.path.join(out_dir, f"{name}.json"), "w") as f:
        json.dump(record, f)


def run_pandas(path, checks_file, repeat, out_dir):
    checks = json.load(open(checks_file))
    for engine in ["c", "pyarrow"]:
        times = []
        for _ in range(repeat):
            seconds, accepted, duplicates, frame, problems = pandas_checks(path, checks, engine)
            times.append(seconds)
        save(out_dir, f"pandas-{engine}", {
            "label": f"pandas read_csv({engine}) + checks", "median_s": statistics.median(times),
            "accepted": accepted, "duplicates": duplicates, "problems": problems,
        })
    start = time.perf_counter()
    frame.to_csv(os.path.join(out_dir, "pandas-accepted.csv"), index=False)
    save(out_dir, "pandas-write", {"seconds": time.perf_counter() - start})
    os.remove(os.path.join(out_dir, "pandas-accepted.csv"))
    import resource
    save(out_dir, "pandas-memory",
         {"peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024})


def run_ingest(mode, path, checks_file, url, pid, repeat, out_dir):
    checks = json.load(open(checks_file))
    times, peaks = [], []
    for i in range(repeat):
        name = f"bench-{mode}-{int(time.time() * 1000)}-{i}"
        with RssSampler(pid) as rss:
            start = time.perf_counter()
            if mode == "path":
                status, body = ingest_path(url, name, checks)
            else:
                status, body = ingest_upload(url, name, checks, path,
                                             os.path.join(out_dir, "spec.json"))
            seconds = time.perf_counter() - start
        assert status in (200, 201, 422), (status, body)
        times.append(seconds)
        peaks.append(rss.peak)
    report = body["report"]
    save(out_dir, f"petrel-{mode}", {
        "label": f"petrel ingest ({mode})", "median_s": statistics.median(times),
        "peak_rss": max(peaks), "accepted": report["accepted"],
        "duplicates": report["duplicates"], "status": body["dataset"]["status"],
    })


def show(path, out_dir):
    size = os.path.getsize(path)
    rows = sum(1 for _ in open(path, "rb")) - 1
    load = lambda name: json.load(open(os.path.join(out_dir, f"{name}.json")))
    results = [load(n) for n in ["pandas-c", "pandas-pyarrow", "petrel-path", "petrel-upload"]]
    print(f"file: {path}, {size / 2**30:.2f} GiB ({size / 1e6:,.0f} MB), {rows:,} rows")
    pandas, petrel = results[1], results[2]
    print(
        f"accepted rows: pandas {pandas['accepted']:,}, petrel {petrel['accepted']:,} "
        f"({'agree' if pandas['accepted'] == petrel['accepted'] else 'DISAGREE'}); "
        f"duplicates: pandas {pandas['duplicates']:,}, petrel {petrel['duplicates']:,}; "
        f"petrel status {petrel['status']}"
    )
    best = min(r["median_s"] for r in results[:2])
    print(f"{'':38} {'median_s':>9} {'rows/s':>12} {'MB/s':>8} {'peak_rss_MB':>12} {'x best pandas':>14}")
    for r in results:
        t = r["median_s"]
        rss = f"{r['peak_rss'] / 1e6:.0f}" if "peak_rss" in r else "-"
        print(f"{r['label']:38} {t:9.2f} {rows / t:12,.0f} {size / 1e6 / t:8.1f} {rss:>12} {best / t:14.2f}")
    print(f"(pandas writing the accepted rows with to_csv would add {load('pandas-write')['seconds']:.1f} s; "
          f"ingest's times include storing the file and its accepted rows; pandas' peak resident "
          f"memory {load('pandas-memory')['peak_rss'] / 1e6:,.0f} MB)")


def main():
    command, args = sys.argv[1], sys.argv[2:]
    if command == "pandas":
        path, checks_file, repeat, out_dir = args
        run_pandas(path, checks_file, int(repeat), out_dir)
    elif command == "ingest":
        mode, path, checks_file, url, pid, repeat, out_dir = args
        run_ingest(mode, path, checks_file, url, int(pid), int(repeat), out_dir)
    elif command == "show":
        show(*args)
    else:
        sys.exit(f"unknown command {command}")


if __name__ == "__main__":
    main()
