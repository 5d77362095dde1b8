"""The MLflow side of scripts/bench-serve.sh: a scikit-learn MLP on penguins, the same layer
size and iterations as Petrel's, saved as an MLflow model for `mlflow models serve`, and the
request bodies (dataframe_records, as MLflow clients send them) for 1 and 1000 rows."""

import argparse
import json
import pathlib
import shutil

import mlflow.sklearn
import pandas as pd
from sklearn.compose import ColumnTransformer
from sklearn.impute import SimpleImputer
from sklearn.neural_network import MLPClassifier
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler

parser = argparse.ArgumentParser()
parser.add_argument("--data", required=True)
parser.add_argument("--out", required=True)
args = parser.parse_args()
out = pathlib.Path(args.out)
shutil.rmtree(out, ignore_errors=True)
out.mkdir(parents=True)

frame = pd.read_csv(args.data, na_values=["NA", ""])
target = "species"
numeric = ["bill_length_mm", "bill_depth_mm", "flipper_length_mm", "body_mass_g", "year"]
categorical = ["island", "sex"]
features = frame[categorical[:1] + numeric[:4] + categorical[1:] + numeric[4:]]
model = Pipeline(
    [
        (
            "prep",
            ColumnTransformer(
                [
                    ("num", make_pipeline(SimpleImputer(strategy="median"), StandardScaler()), numeric),
                    (
                        "cat",
                        make_pipeline(
                            SimpleImputer(strategy="most_frequent"),
                            OneHotEncoder(handle_unknown="ignore"),
                        ),
                        categorical,
                    ),
                ]
            ),
        ),
        ("mlp", MLPClassifier(hidden_layer_sizes=(32,), max_iter=200, random_state=42)),
    ]
)
model.fit(features, frame[target])
mlflow.sklearn.save_model(model, str(out / "model"), serialization_format="cloudpickle")
records = json.loads(features.to_json(orient="records"))
for n in (1, 1000):
    rows = [records[i % len(records)] for i in range(n)]
    (out / f"records-{n}.json").write_text(json.dumps({"dataframe_records": rows}))
print(f"saved {out / 'model'}")
