"""Drives Petrel's registry with the unchanged MLflow client (mlflow-skinny 3.17).

`services/registry/tests/mlflow.rs` runs this with MLFLOW_TRACKING_URI pointing at a
registry it started, then checks the same runs and versions through Petrel's /api/v1. Every
call asserts what MLflow's own server would answer; the first failed assertion ends the script
with a traceback and a non-zero status. What the Rust side needs to check afterwards goes to
the JSON file named by PETREL_MLFLOW_RESULT.
"""

import hashlib
import json
import os
import tempfile
import time
from contextlib import contextmanager

import mlflow
from mlflow import MlflowClient
from mlflow.entities import Dataset, DatasetInput, InputTag, Metric, Param, RunTag
from mlflow.exceptions import MlflowException

client = MlflowClient()
timings = {}


@contextmanager
def timed(name):
    start = time.monotonic()
    yield
    timings[name] = round((time.monotonic() - start) * 1000, 1)


def expect_error(code, fn, *args, **kwargs):
    """Calls fn and checks that it fails with MLflow error `code`."""
    try:
        fn(*args, **kwargs)
    except MlflowException as e:
        assert e.error_code == code, f"{fn.__name__}: expected {code}, got {e.error_code}: {e}"
        assert "Traceback" not in str(e) and "petrel_" not in str(e), str(e)
        return e
    raise AssertionError(f"{fn.__name__}{args} should have failed with {code}")


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# --- Experiments -------------------------------------------------------------------------
with timed("experiments"):
    default = client.get_experiment("0")
    assert default.name == "Default" and default.lifecycle_stage == "active", default
    name = os.environ.get("PETREL_MLFLOW_EXPERIMENT", "mlflow-client")
    exp = mlflow.set_experiment(name)
    assert exp.name == name and exp.experiment_id not in ("", "0"), exp
    assert exp.artifact_location == f"mlflow-artifacts:/{exp.experiment_id}", exp
    assert mlflow.set_experiment(name).experiment_id == exp.experiment_id
    assert client.get_experiment_by_name(name).experiment_id == exp.experiment_id
    assert client.get_experiment_by_name("no such experiment") is None
    expect_error("RESOURCE_ALREADY_EXISTS", client.create_experiment, name)
    client.set_experiment_tag(exp.experiment_id, "team", "petrel")
    assert client.get_experiment(exp.experiment_id).tags["team"] == "petrel"
    found = client.search_experiments(filter_string=f"name = '{name}'")
    assert [e.experiment_id for e in found] == [exp.experiment_id], found
    exp_id = exp.experiment_id

# --- Runs: params, metrics, tags, statuses ------------------------------------------------
runs = []
with timed("runs"):
    base = int(time.time() * 1000)
    for i, (lr, acc) in enumerate([("0.01", 0.95), ("0.1", 0.85), ("0.001", 0.97)]):
        with mlflow.start_run(run_name=f"run-{i}") as run:
            mlflow.log_param("lr", lr)
            mlflow.log_params({"epochs": 10, "batch_size": 32})
            for step in range(5):
                mlflow.log_metric("loss", 1.0 / (step + 1), step=step, timestamp=base + step)
            mlflow.log_metric("accuracy", acc)
            mlflow.log_metrics({"precision": acc - 0.01, "recall": acc - 0.02})
            mlflow.set_tag("x", "z" if i == 1 else "y")
            mlflow.set_tags({"team": "petrel", "i": str(i)})
            # Params are immutable: the same value again is fine, another is an error.
            mlflow.log_param("lr", lr)
            e = expect_error("INVALID_PARAMETER_VALUE", mlflow.log_param, "lr", "0.5")
            assert "Changing param values is not allowed" in str(e), str(e)
        runs.append(run.info.run_id)
    assert all(len(r) == 32 for r in runs), runs

    r = client.get_run(runs[0])
    assert r.info.status == "FINISHED", r.info
    assert r.info.run_name == "run-0" and r.data.tags["mlflow.runName"] == "run-0", r.info
    assert r.info.experiment_id == exp_id
    assert r.info.end_time >= r.info.start_time > 0, r.info
    assert r.info.lifecycle_stage == "active"
    assert r.info.artifact_uri == f"mlflow-artifacts:/{exp_id}/{runs[0]}/artifacts", r.info
    assert r.data.params == {"lr": "0.01", "epochs": "10", "batch_size": "32"}, r.data.params
    assert r.data.metrics["loss"] == 0.2, r.data.metrics  # the highest step wins
    assert r.data.metrics["accuracy"] == 0.95
    assert r.data.tags["x"] == "y" and r.data.tags["team"] == "petrel", r.data.tags

    failed = mlflow.start_run(run_name="doomed")
    mlflow.end_run(status="FAILED")
    assert client.get_run(failed.info.run_id).info.status == "FAILED"
    killed = client.create_run(exp_id, run_name="killed", tags={"x": "k"})
    assert killed.info.status == "RUNNING"
    client.set_terminated(killed.info.run_id, "KILLED")
    assert client.get_run(killed.info.run_id).info.status == "KILLED"
    client.update_run(killed.info.run_id, name="renamed")
    assert client.get_run(killed.info.run_id).data.tags["mlflow.runName"] == "renamed"

    with mlflow.start_run(run_name="parent") as parent:
        with mlflow.start_run(run_name="child", nested=True) as child:
            pass
    got = client.get_run(child.info.run_id)
    assert got.data.tags["mlflow.parentRunId"] == parent.info.run_id, got.data.tags

    deleted = client.create_run(exp_id, run_name="deleted")
    client.delete_run(deleted.info.run_id)
    assert client.get_run(deleted.info.run_id).info.lifecycle_stage == "deleted"
    expect_error("INVALID_PARAMETER_VALUE", client.log_param, deleted.info.run_id, "a", "b")
    client.restore_run(deleted.info.run_id)
    client.delete_tag(killed.info.run_id, "x")
    assert "x" not in client.get_run(killed.info.run_id).data.tags
    expect_error("RESOURCE_DOES_NOT_EXIST", client.get_run, "0" * 32)
    expect_error("RESOURCE_DOES_NOT_EXIST", client.log_metric, "f" * 32, "m", 1.0)

# --- log_batch: 1,000 metrics with params and tags -----------------------------------------
with timed("log_batch_1000"):
    with mlflow.start_run(run_name="batch") as batch:
        ts = int(time.time() * 1000)
        metrics = [Metric(f"m{i % 10}", float(i), ts + i, i // 10) for i in range(1000)]
        params = [Param(f"p{i}", str(i)) for i in range(50)]
        tags = [RunTag(f"t{i}", "v") for i in range(50)]
        client.log_batch(batch.info.run_id, metrics=metrics, params=params, tags=tags)
    b = client.get_run(batch.info.run_id)
    assert len(b.data.params) == 50 and b.data.tags["t49"] == "v", b.data
    assert b.data.metrics["m3"] == 993.0, b.data.metrics  # step 99 of key m3
    expect_error(
        "INVALID_PARAMETER_VALUE",
        client.log_batch,
        batch.info.run_id,
        params=[Param("p1", "another")],
    )

# --- Latest values: the highest step wins, whenever it was logged --------------------------
with timed("latest_metric"):
    with mlflow.start_run(run_name="latest") as latest:
        client.log_metric(latest.info.run_id, "late", 1.0, timestamp=ts, step=5)
        client.log_metric(latest.info.run_id, "late", 9.0, timestamp=ts + 10, step=2)
        client.log_metric(latest.info.run_id, "late", 0.5, timestamp=ts - 10, step=5)
    # step 5 beats step 2; at step 5 the later timestamp wins.
    assert client.get_run(latest.info.run_id).data.metrics["late"] == 1.0
    low = client.search_runs([exp_id], "metrics.late < 2")
    assert [h.info.run_id for h in low] == [latest.info.run_id], low
    assert len(client.search_runs([exp_id], "metrics.late > 2")) == 0

# --- Dataset inputs: logged, shown on the run, searched -----------------------------------
with timed("log_inputs"):
    train = Dataset("penguins", "d1g3st", "local", '{"uri": "data/penguins.csv"}', schema='{"x": 1}')
    held = Dataset("penguins-test", "e2f4", "local", '{"uri": "data/test.csv"}')
    client.log_inputs(latest.info.run_id, [
        DatasetInput(train, [InputTag("mlflow.data.context", "training")]),
        DatasetInput(held, [InputTag("mlflow.data.context", "evaluation")]),
    ])
    # The same dataset again changes nothing.
    client.log_inputs(latest.info.run_id, [DatasetInput(train, [InputTag("mlflow.data.context", "x")])])
    got = client.get_run(latest.info.run_id).inputs.dataset_inputs
    assert [(d.dataset.name, d.dataset.digest, d.dataset.schema) for d in got][0] == (
        "penguins", "d1g3st", '{"x": 1}'), got
    assert {d.dataset.name: d.tags[0].value for d in got} == {
        "penguins": "training", "penguins-test": "evaluation"}, got
    used = client.search_runs([exp_id], "datasets.name = 'penguins' and datasets.context = 'training'")
    assert [h.info.run_id for h in used] == [latest.info.run_id], used
    assert len(client.search_runs([exp_id], "dataset.digest = 'nope'")) == 0

# --- Metric history, whole and paged ------------------------------------------------------
with timed("metric_history"):
    hist = client.get_metric_history(runs[0], "loss")
    assert [(m.step, m.value, m.timestamp) for m in hist] == [
        (s, 1.0 / (s + 1), base + s) for s in range(5)
    ], hist
    full = client.get_metric_history(batch.info.run_id, "m3")
    assert [m.step for m in full] == list(range(100)), [m.step for m in full]
    store = client._tracking_client.store
    page = store.get_metric_history(batch.info.run_id, "m3", max_results=30)
    paged = list(page)
    while page.token:
        page = store.get_metric_history(
            batch.info.run_id, "m3", max_results=30, page_token=page.token
        )
        paged.extend(page)
    assert [m.value for m in paged] == [m.value for m in full], "pages must add up"

# --- Search: filter, order_by, paging -----------------------------------------------------
with timed("search_runs"):
    hits = client.search_runs(
        [exp_id],
        "metrics.accuracy > 0.9 and params.lr = '0.01' and tags.x = 'y' "
        "and attributes.status = 'FINISHED'",
        order_by=["metrics.accuracy DESC"],
    )
    assert [h.info.run_id for h in hits] == [runs[0]], hits
    ranked = client.search_runs(
        [exp_id], "metrics.accuracy > 0.8", order_by=["metrics.accuracy DESC"]
    )
    assert [h.info.run_id for h in ranked] == [runs[2], runs[0], runs[1]], ranked
    oldest = client.search_runs([exp_id], "params.lr != ''", order_by=["attributes.start_time"])
    assert [h.info.run_id for h in oldest] == runs, oldest
    like = client.search_runs([exp_id], "params.lr LIKE '0.0%' and tags.team ILIKE 'PET%'")
    assert {h.info.run_id for h in like} == {runs[0], runs[2]}, like
    bad = client.search_runs([exp_id], "attributes.status != 'FINISHED'")
    assert {h.info.status for h in bad} <= {"FAILED", "KILLED", "RUNNING"}, bad
    assert failed.info.run_id in {h.info.run_id for h in bad}
    by_id = client.search_runs([exp_id], f"attributes.run_id IN ('{runs[1]}', '{runs[2]}')")
    assert {h.info.run_id for h in by_id} == {runs[1], runs[2]}
    everything = client.search_runs([exp_id])
    first = client.search_runs([exp_id], max_results=3)
    assert len(first) == 3 and first.token, first.token
    rest = client.search_runs([exp_id], max_results=1000, page_token=first.token)
    assert [r.info.run_id for r in list(first) + list(rest)] == [
        r.info.run_id for r in everything
    ]
    listed = mlflow.search_runs([exp_id], output_format="list", order_by=["metrics.accuracy DESC"])
    assert listed[0].info.run_id == runs[2]
    for filter_string in [
        "metrics.accuracy >>> 1",
        "metrics.accuracy > 0.9 or params.lr = '0.01'",
        "params.lr = 0.01",
        "nonsense.key = 'x'",
    ]:
        expect_error("INVALID_PARAMETER_VALUE", client.search_runs, [exp_id], filter_string)
    expect_error("INVALID_PARAMETER_VALUE", client.search_runs, [exp_id], order_by=["metrics.a UP"])

# --- Artifacts through the mlflow-artifacts proxy -----------------------------------------
work = tempfile.mkdtemp()
with timed("artifacts"):
    small = os.path.join(work, "notes.txt")
    with open(small, "w") as f:
        f.write("hello from mlflow\n")
    tree = os.path.join(work, "tree")
    os.makedirs(os.path.join(tree, "sub"))
    for rel in ["a.csv", "sub/b.json"]:
        with open(os.path.join(tree, rel), "w") as f:
            f.write(rel)
    big = os.path.join(work, "big.bin")
    with open(big, "wb") as f:
        f.write(os.urandom(6 * 1024 * 1024 + 123))
    big_sha = sha256(big)

    run0 = runs[0]
    client.log_artifact(run0, small)
    client.log_artifacts(run0, tree, artifact_path="data")
    client.log_dict(run0, {"lr": 0.01, "layers": [8, 8]}, "config/params.json")
    client.log_artifact(run0, big, artifact_path="blobs")
    client.log_text(run0, "artifact_path: model\nflavors: {}\n", "model/MLmodel")
    with mlflow.start_run(run_id=runs[2]):
        mlflow.log_text("artifact_path: model\nflavors: {}\n", "model/MLmodel")
        mlflow.log_dict({"fluent": True}, "fluent.json")

    top = {(a.path, a.is_dir) for a in client.list_artifacts(run0)}
    assert top == {
        ("blobs", True),
        ("config", True),
        ("data", True),
        ("model", True),
        ("notes.txt", False),
    }, top
    data = client.list_artifacts(run0, "data")
    assert [(a.path, a.is_dir) for a in data] == [("data/a.csv", False), ("data/sub", True)]
    blobs = client.list_artifacts(run0, "blobs")
    assert blobs[0].file_size == os.path.getsize(big), blobs

    out = os.path.join(work, "out")
    got_big = mlflow.artifacts.download_artifacts(
        run_id=run0, artifact_path="blobs/big.bin", dst_path=out
    )
    assert sha256(got_big) == big_sha, "the multi-MB file must round-trip byte for byte"
    got_tree = mlflow.artifacts.download_artifacts(run_id=run0, artifact_path="data", dst_path=out)
    with open(os.path.join(got_tree, "sub", "b.json")) as f:
        assert f.read() == "sub/b.json"
    assert mlflow.artifacts.load_dict(f"runs:/{run0}/config/params.json") == {
        "lr": 0.01,
        "layers": [8, 8],
    }
    assert mlflow.artifacts.load_text(f"runs:/{run0}/notes.txt") == "hello from mlflow\n"
    odd = "plots/confusion matrix (1) é.txt"
    client.log_text(runs[1], "odd", odd)
    assert [a.path for a in client.list_artifacts(runs[1], "plots")] == [odd]
    assert mlflow.artifacts.load_text(f"runs:/{runs[1]}/{odd}") == "odd"

# --- Model registry -----------------------------------------------------------------------
model = os.environ.get("PETREL_MLFLOW_MODEL", "mlflow-penguins")
with timed("registry"):
    rm = client.create_registered_model(model, description="registered from mlflow")
    assert rm.name == model and rm.description == "registered from mlflow", rm
    expect_error("RESOURCE_ALREADY_EXISTS", client.create_registered_model, model)

    v1 = mlflow.register_model(f"runs:/{runs[0]}/model", model)
    assert v1.version == "1" and v1.status == "READY" and v1.run_id == runs[0], v1
    assert v1.source == f"mlflow-artifacts:/{exp_id}/{runs[0]}/artifacts/model", v1.source
    v2 = client.create_model_version(
        model, f"mlflow-artifacts:/{exp_id}/{runs[2]}/artifacts/model", run_id=runs[2]
    )
    assert v2.version == "2" and v2.status == "READY", v2
    other = "mlflow-other"
    v1_other = mlflow.register_model(f"runs:/{runs[2]}/model", other)
    assert v1_other.version == "1", v1_other

    got = client.get_registered_model(model)
    assert [v.version for v in got.latest_versions] == ["2"], got.latest_versions
    assert client.get_model_version(model, "1").run_id == runs[0]
    expect_error("RESOURCE_DOES_NOT_EXIST", client.get_registered_model, "no-such-model")
    expect_error("RESOURCE_DOES_NOT_EXIST", client.get_model_version, model, "9")

    client.set_registered_model_alias(model, "champion", "2")
    champion = client.get_model_version_by_alias(model, "champion")
    assert champion.version == "2" and "champion" in champion.aliases, champion
    assert client.get_registered_model(model).aliases == {"champion": "2"}
    client.delete_registered_model_alias(model, "champion")
    expect_error("RESOURCE_DOES_NOT_EXIST", client.get_model_version_by_alias, model, "champion")
    client.set_registered_model_alias(model, "champion", "1")
    assert client.get_model_version_by_alias(model, "champion").version == "1"
    expect_error("INVALID_PARAMETER_VALUE", client.set_registered_model_alias, model, "latest", "1")
    expect_error("RESOURCE_DOES_NOT_EXIST", client.set_registered_model_alias, model, "a", "7")

    names = [m.name for m in client.search_registered_models(filter_string="name LIKE 'mlflow-%'")]
    assert names == sorted([model, other]), names  # by name, as MLflow orders them
    exact = client.search_registered_models(filter_string=f"name = '{model}'")
    assert [m.name for m in exact] == [model]
    versions = client.search_model_versions(f"name='{model}'")
    assert sorted(v.version for v in versions) == ["1", "2"], versions
    by_run = client.search_model_versions(f"run_id='{runs[0]}'")
    assert [(v.name, v.version) for v in by_run] == [(model, "1")], by_run
    by_run_both = client.search_model_versions(f"run_id='{runs[2]}'")
    assert {(v.name, v.version) for v in by_run_both} == {(model, "2"), (other, "1")}
    expect_error("INVALID_PARAMETER_VALUE", client.search_model_versions, "name = 'x' or 1")

    # Tags of registered models and versions: set, shown, searched, deleted.
    client.set_registered_model_tag(model, "team", "petrel")
    client.set_model_version_tag(model, "2", "validated", "yes")
    tagged = client.create_registered_model("mlflow-tagged", tags={"team": "other", "tier": "1"})
    assert tagged.tags == {"team": "other", "tier": "1"}, tagged.tags
    assert client.get_registered_model(model).tags == {"team": "petrel"}
    assert client.get_model_version(model, "2").tags == {"validated": "yes"}
    by_tag = client.search_registered_models(filter_string="tags.team = 'petrel'")
    assert [m.name for m in by_tag] == [model], by_tag
    # MLflow 3's prompt filter (`tags.mlflow.prompt.is_prompt != 'true'`) keeps untagged models.
    assert {m.name for m in client.search_registered_models()} >= {model, other, "mlflow-tagged"}
    validated = client.search_model_versions(f"name = '{model}' and tags.validated = 'yes'")
    assert [v.version for v in validated] == ["2"], validated
    client.delete_model_version_tag(model, "2", "validated")
    assert client.get_model_version(model, "2").tags == {}
    client.delete_registered_model_tag(model, "team")
    assert client.get_registered_model(model).tags == {}
    expect_error("RESOURCE_DOES_NOT_EXIST", client.delete_registered_model_tag, model, "team")
    expect_error("RESOURCE_DOES_NOT_EXIST", client.set_model_version_tag, model, "9", "k", "v")

    # A models:/ URI resolves through the registry and downloads through the proxy.
    fetched = mlflow.artifacts.download_artifacts(
        f"models:/{model}@champion", dst_path=os.path.join(work, "m")
    )
    assert os.path.exists(os.path.join(fetched, "MLmodel")), os.listdir(fetched)

result = {
    "experiment_id": exp_id,
    "experiment_name": name,
    "runs": runs,
    "batch_run": batch.info.run_id,
    "killed_run": killed.info.run_id,
    "parent_run": parent.info.run_id,
    "child_run": child.info.run_id,
    "model": model,
    "big_artifact": f"{exp_id}/{runs[0]}/artifacts/blobs/big.bin",
    "big_sha256": big_sha,
    "big_size": os.path.getsize(big),
    "timings_ms": timings,
}
with open(os.environ["PETREL_MLFLOW_RESULT"], "w") as f:
    json.dump(result, f)
print(json.dumps(timings))
