#!/usr/bin/env python3
"""Helper for scripts/bench-drift.sh: generate data, time Evidently and `petrel drift`.

  bench_drift.py generate ROWS DIR        write DIR/reference.csv, DIR/current.csv, DIR/schema.json
  bench_drift.py run ROWS DIR PETREL REPEAT  time both on DIR's files and print one JSON line
  bench_drift.py show                     format that JSON line (stdin) as a table row

Timings exclude CSV parsing on both sides. Evidently: the median of `Report([DataDriftPreset()])
.run(current, reference)` on `Dataset`s built beforehand (so `pd.read_csv` and
`Dataset.from_pandas` are excluded). Petrel: the median of the `timing_ms.drift` that
`petrel drift --json` reports (building the sorted samples and every statistic; file reading
and parsing excluded); the median wall time of the whole process is reported too.
"""

import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

NUMERIC = ["num_a", "num_b", "num_c", "num_d"]
CATEGORICAL = ["cat_e", "cat_f"]

# Evidently's drift rule per stattest display name (legacy/calculations/stattests).
RULES = {
    "K-S p_value": lambda v, t: v <= t,
    "chi-square p_value": lambda v, t: v < t,
    "Z-test p_value": lambda v, t: v < t,
    "Wasserstein distance (normed)": lambda v, t: v >= t,
    "Jensen-Shannon distance": lambda v, t: v >= t,
}


def frame(rng, n, drifted):
    df = pd.DataFrame({
        "num_a": rng.normal(0.0, 1.0, n),
        "num_b": rng.normal(5.0 + (0.5 if drifted else 0.0), 2.0, n),
        "num_c": np.round(rng.lognormal(1.0, 0.6, n), 2),
        "num_d": rng.integers(0, 100, n).astype(float),
        "cat_e": rng.choice(["e0", "e1", "e2", "e3"], n, p=[0.4, 0.3, 0.2, 0.1]),
        "cat_f": rng.choice(["f0", "f1", "f2"], n, p=[0.3, 0.3, 0.4] if drifted else [0.5, 0.3, 0.2]),
    })
    # About 1% missing in one numeric and one categorical column.
    df.loc[rng.random(n) < 0.01, "num_a"] = np.nan
    df.loc[rng.random(n) < 0.01, "cat_e"] = None
    return df


def generate(rows, out):
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(rows)
    frame(rng, rows, False).to_csv(out / "reference.csv", index=False)
    frame(rng, rows, True).to_csv(out / "current.csv", index=False)
    schema = {"features": [{"name": c, "kind": "numeric"} for c in NUMERIC]
              + [{"name": c, "kind": "categorical"} for c in CATEGORICAL],
              "target": "label"}
    (out / "schema.json").write_text(json.dumps(schema))


def evidently_run(ref_df, cur_df):
    from evidently import DataDefinition, Dataset, Report
    from evidently.presets import DataDriftPreset
    dd = DataDefinition(numerical_columns=NUMERIC, categorical_columns=CATEGORICAL)
    ref = Dataset.from_pandas(ref_df, data_definition=dd)
    cur = Dataset.from_pandas(cur_df, data_definition=dd)
    t = time.perf_counter()
    snap = Report([DataDriftPreset()]).run(cur, ref)
    elapsed = time.perf_counter() - t
    decisions, share = {}, None
    for m in snap.dict()["metrics"]:
        cfg = m["config"]
        if cfg["type"].endswith("ValueDrift"):
            decisions[cfg["column"]] = {
                "method": cfg["method"], "score": m["value"], "threshold": cfg["threshold"],
                "drifted": bool(RULES[cfg["method"]](m["value"], cfg["threshold"]))}
        elif cfg["type"].endswith("DriftedColumnsCount"):
            share = m["value"]["share"]
    return elapsed, decisions, share


def run(rows, d, petrel, repeat):
    d = Path(d)
    ref_df = pd.read_csv(d / "reference.csv")
    cur_df = pd.read_csv(d / "current.csv")
    # Warm-up on a slice, so imports and first-call caches are not timed.
    evidently_run(ref_df.head(200), cur_df.head(200))
    ev_times, ev = [], None
    for _ in range(repeat):
        t, decisions, share = evidently_run(ref_df, cur_df)
        ev_times.append(t)
        ev = (decisions, share)
    cmd = [petrel, "drift", str(d / "reference.csv"), str(d / "current.csv"),
           "--schema", str(d / "schema.json"), "--preset", "evidently", "--json"]
    pt_drift, pt_wall, report = [], [], None
    for _ in range(repeat):
        t = time.perf_counter()
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        pt_wall.append(time.perf_counter() - t)
        report = json.loads(out)
        pt_drift.append(report["timing_ms"]["drift"] / 1e3)
    ours = {c["column"]: c for c in report["verdict"]["columns"]}
    disagreements = [
        f"{col}: evidently {e['drifted']} ({e['method']} {e['score']}) petrel "
        f"{ours[col]['drifted']} ({ours[col]['method']} {ours[col]['score']})"
        for col, e in ev[0].items() if e["drifted"] != ours[col]["drifted"]]
    ev_dataset = ev[1] is not None and ev[1] >= 0.5
    if ev_dataset != report["verdict"]["drifted"]:
        disagreements.append(f"dataset: evidently {ev_dataset} petrel {report['verdict']['drifted']}")
    result = {
        "rows": rows,
        "evidently_s": statistics.median(ev_times),
        "petrel_drift_s": statistics.median(pt_drift),
        "petrel_wall_s": statistics.median(pt_wall),
        "ratio": statistics.median(ev_times) / statistics.median(pt_drift),
        "columns_drifted": sorted(c for c, e in ev[0].items() if e["drifted"]),
        "methods": {c: e["method"] for c, e in ev[0].items()},
        "agree": not disagreements,
        "disagreements": disagreements,
    }
    print(json.dumps(result))


def show(line):
    """One aligned table row from the JSON line `run` printed."""
    r = json.loads(line)
    agree = "agree" if r["agree"] else "DISAGREE: " + "; ".join(r["disagreements"])
    drifted = ", ".join(r["columns_drifted"])
    print(f"{r['rows']:9d}  {r['evidently_s']:12.3f}  {r['petrel_drift_s'] * 1e3:15.2f}  "
          f"{r['petrel_wall_s']:13.3f}  {r['ratio']:7.0f}x  {agree} (drifted: {drifted})")


if __name__ == "__main__":
    if sys.argv[1] == "show":
        show(sys.stdin.read())
    elif sys.argv[1] == "generate":
        generate(int(sys.argv[2]), sys.argv[3])
    elif sys.argv[1] == "run":
        run(int(sys.argv[2]), sys.argv[3], sys.argv[4], int(sys.argv[5]))
    else:
        sys.exit(f"unknown command {sys.argv[1]}")
