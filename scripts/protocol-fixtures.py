#!/usr/bin/env python3
"""Writes the request bodies the predictor's protocol tests read, with real pandas.

MLflow clients build their bodies from a pandas DataFrame (`to_json`/`to_dict`), so the tests
parse what pandas really writes: its float formatting, `null` for NaN and None, the `index` of
the split orient. Run it again after changing the chosen rows:

    python3 -m venv /tmp/pdvenv && /tmp/pdvenv/bin/pip install 'pandas<3'
    /tmp/pdvenv/bin/python scripts/protocol-fixtures.py
"""

import json
import pathlib

import pandas as pd

ROOT = pathlib.Path(__file__).resolve().parent.parent
OUT = ROOT / "services" / "predictor" / "tests" / "fixtures"

# Rows 0 and 160 (a Gentoo) and 300 (a Chinstrap) are complete; row 3 is NA except island and
# year; row 8 lacks only sex. An explicit None in an object column (row 1) shows that pandas
# writes it as null too.
frame = pd.read_csv(ROOT / "data" / "penguins.csv").iloc[[0, 1, 3, 8, 160, 300]]
features = frame.drop(columns=["species"])
features.loc[features.index[1], "sex"] = None
OUT.mkdir(parents=True, exist_ok=True)


def write(name, text):
    (OUT / name).write_text(text + "\n")


# What MLflow's own client sends (`mlflow.models.utils` wraps `to_dict(orient="split")`) and what
# users write with `to_json`; the index is pandas' row labels (0, 1, 3, 8, 160, 300).
write("split.json", '{"dataframe_split": %s}' % features.to_json(orient="split"))
write("records.json", '{"dataframe_records": %s}' % features.to_json(orient="records"))
# The MLflow 1.x bodies, unwrapped, sent with `format=pandas-split` / `format=pandas-records`.
write("raw-split.json", features.to_json(orient="split"))
write("raw-records.json", features.to_json(orient="records"))
# Column-oriented `inputs` as `{column: [values...]}`, and `instances` as a list of records.
columns = json.loads(features.to_json(orient="split"))
by_column = {c: [row[i] for row in columns["data"]] for i, c in enumerate(columns["columns"])}
write("inputs-columns.json", json.dumps({"inputs": by_column}))
write("instances-records.json", '{"instances": %s}' % features.to_json(orient="records"))
# CSV as `to_csv` writes it, with the index column pandas adds by default (an empty header).
write("frame.csv", features.to_csv().rstrip("\n"))
# Open Inference Protocol V2, one tensor per column as a pandas codec writes it: object columns
# as BYTES, floats as FP64 (NaN as null), integers as INT64.
V2_TYPES = {"object": "BYTES", "float64": "FP64", "int64": "INT64"}
write(
    "v2-columns.json",
    json.dumps(
        {
            "id": "fixture-1",
            "inputs": [
                {
                    "name": c,
                    "shape": [len(features)],
                    "datatype": V2_TYPES[str(features[c].dtype)],
                    "data": by_column[c],
                }
                for c in features.columns
            ],
        }
    ),
)
# The species of each row, for tests that check the model's answers.
write("species.json", json.dumps(frame["species"].tolist()))
