//! MLflow's REST API on the registry: the real MLflow client (`mlflow-skinny` 3.17, installed
//! once into a virtualenv under the target directory) runs `mlflow_client.py` against a
//! registry on the real Postgres and NATS, then the same runs, versions and aliases are
//! checked through `/api/v1`, the events and the artifact store. A second test covers what
//! the client never sends: malformed requests, path escapes, and batches that must be
//! all-or-nothing.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use common::{Service, TestEnv, TypedClient, start_registry, start_registry_with};
use petrel_api::registry::{CreateRun, RunStatus};
use petrel_events::Envelope;
use petrel_events::payloads::{ModelPromoted, ModelRegistered};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use uuid::Uuid;

/// The MLflow client the test drives: the newest release that installs here.
const MLFLOW_REQUIREMENT: &str = "mlflow-skinny>=3.17,<3.18";
/// How long the client script may take (it takes a few seconds).
const SCRIPT_LIMIT: Duration = Duration::from_secs(300);

/// The Python interpreter of a virtualenv with the MLflow client, made on first use and kept
/// under the target directory for later runs. Fails the test, never skips it, when it cannot
/// be made (no Python 3.10+, no `venv` module, or no way to reach PyPI).
fn mlflow_python() -> PathBuf {
    static PYTHON: OnceLock<PathBuf> = OnceLock::new();
    PYTHON.get_or_init(make_venv).clone()
}

fn has_mlflow(python: &Path) -> bool {
    Command::new(python)
        .args([
            "-c",
            "import sys, mlflow; sys.exit(0 if mlflow.__version__.startswith('3.17') else 1)",
        ])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// A Python of at least 3.10 (what MLflow 3 needs): `PETREL_TEST_PYTHON`, or the newest found.
fn base_python() -> PathBuf {
    let candidates: Vec<String> = match std::env::var("PETREL_TEST_PYTHON") {
        Ok(p) => vec![p],
        Err(_) => [
            "python3.13",
            "python3.12",
            "python3.11",
            "python3.10",
            "python3",
        ]
        .map(String::from)
        .to_vec(),
    };
    for c in &candidates {
        let ok = Command::new(c)
            .args([
                "-c",
                "import sys, venv; sys.exit(0 if sys.version_info >= (3, 10) else 1)",
            ])
            .output()
            .is_ok_and(|o| o.status.success());
        if ok {
            return PathBuf::from(c);
        }
    }
    panic!(
        "the MLflow client test needs Python 3.10 or newer with the venv module (tried \
         {candidates:?}; set PETREL_TEST_PYTHON to choose one)"
    );
}

fn make_venv() -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("mlflow-skinny-3.17-venv");
    let python = dir.join("bin").join("python");
    if has_mlflow(&python) {
        return python;
    }
    let started = Instant::now();
    // Built aside and renamed into place, so an interrupted install is never taken for a
    // finished one, and two test runs racing both end up with a working venv.
    let tmp = dir.with_extension(format!("tmp-{}", Uuid::now_v7().simple()));
    let base = base_python();
    let made = Command::new(&base)
        .args(["-m", "venv"])
        .arg(&tmp)
        .output()
        .expect("python runs");
    assert!(
        made.status.success(),
        "could not make a virtualenv with {base:?}: {}",
        String::from_utf8_lossy(&made.stderr)
    );
    let pip = Command::new(tmp.join("bin").join("python"))
        .args([
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            MLFLOW_REQUIREMENT,
        ])
        .output()
        .expect("pip runs");
    if !pip.status.success() {
        let _ = std::fs::remove_dir_all(&tmp);
        panic!(
            "could not install {MLFLOW_REQUIREMENT:?} from PyPI: the MLflow client test needs \
             network access to PyPI the first time (it keeps the virtualenv in {dir:?} after \
             that).\npip said:\n{}",
            String::from_utf8_lossy(&pip.stderr)
        );
    }
    if std::fs::rename(&tmp, &dir).is_err() {
        // Another run finished first; use its venv.
        let _ = std::fs::remove_dir_all(&tmp);
    }
    assert!(
        has_mlflow(&python),
        "the virtualenv at {dir:?} has no MLflow 3.17"
    );
    eprintln!(
        "installed {MLFLOW_REQUIREMENT} into {dir:?} in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    python
}

fn uuid(hex: &Value) -> Uuid {
    Uuid::try_parse(hex.as_str().expect("a run id")).expect("a run id is a UUID")
}

#[tokio::test]
async fn the_mlflow_client_tracks_runs_and_registers_models_in_petrel() {
    let python = tokio::task::spawn_blocking(mlflow_python)
        .await
        .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()));
    let env = TestEnv::new().await;
    let reg = start_registry(&env).await;
    let mut events = env.events("model.>").await;

    let result_file = env.dir.join("mlflow-result.json");
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/mlflow_client.py");
    let started = Instant::now();
    let run = tokio::process::Command::new(&python)
        .arg(script)
        .env("MLFLOW_TRACKING_URI", &reg.base)
        .env("PETREL_MLFLOW_RESULT", &result_file)
        .env("DO_NOT_TRACK", "true")
        .env("MLFLOW_DISABLE_TELEMETRY", "true")
        .current_dir(&env.dir)
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(SCRIPT_LIMIT, run)
        .await
        .expect("the MLflow client script finishes in time")
        .expect("the MLflow client script starts");
    assert!(
        out.status.success(),
        "the MLflow client script failed ({}):\n--- stdout\n{}\n--- stderr\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let result: Value = serde_json::from_slice(&std::fs::read(&result_file).unwrap()).unwrap();
    eprintln!(
        "the MLflow client script took {:.2} s; its sections (ms): {}",
        started.elapsed().as_secs_f64(),
        result["timings_ms"]
    );

    // The runs MLflow logged are Petrel runs, with their params, metrics and tags.
    let client = reg.client();
    let runs: Vec<Uuid> = result["runs"]
        .as_array()
        .unwrap()
        .iter()
        .map(uuid)
        .collect();
    let run0 = client.get_run(runs[0]).await.unwrap();
    assert_eq!(run0.experiment, result["experiment_name"].as_str().unwrap());
    assert_eq!(run0.name.as_deref(), Some("run-0"));
    assert_eq!(run0.status, RunStatus::Finished);
    assert!(run0.end_time.is_some());
    assert_eq!(run0.params["lr"], "0.01");
    assert_eq!(run0.params["epochs"], "10");
    assert_eq!(run0.tags["x"], "y");
    let losses: Vec<(i64, f64)> = run0
        .metrics
        .iter()
        .filter(|m| m.key == "loss")
        .map(|m| (m.step, m.value))
        .collect();
    assert_eq!(
        losses,
        (0..5)
            .map(|s| (s, 1.0 / (s as f64 + 1.0)))
            .collect::<Vec<_>>()
    );
    assert!(
        run0.metrics
            .iter()
            .any(|m| m.key == "accuracy" && m.value == 0.95)
    );
    let batch = client.get_run(uuid(&result["batch_run"])).await.unwrap();
    assert_eq!(batch.metrics.len(), 1000);
    assert_eq!(batch.params.len(), 50);
    assert!(
        !batch.params.values().any(|v| v == "another"),
        "params stay"
    );
    let killed = client.get_run(uuid(&result["killed_run"])).await.unwrap();
    assert_eq!(killed.status, RunStatus::Killed);
    assert_eq!(killed.name.as_deref(), Some("renamed"));

    // So are the versions and the alias.
    let model = result["model"].as_str().unwrap();
    let v1 = client.get_version(model, 1).await.unwrap();
    assert_eq!(v1.run_id, runs[0]);
    assert!(
        v1.artifact_uri.ends_with("/artifacts/model"),
        "{}",
        v1.artifact_uri
    );
    assert_eq!(
        v1.metrics["accuracy"], 0.95,
        "a version carries its run's metrics"
    );
    assert_eq!(v1.aliases, vec!["champion"]);
    let m = client.get_model(model).await.unwrap();
    assert_eq!(m.latest_version, Some(2));
    assert_eq!(m.description.as_deref(), Some("registered from mlflow"));
    assert_eq!(
        client
            .get_alias(model, "champion")
            .await
            .unwrap()
            .map(|v| v.version),
        Some(1)
    );

    // Registering announced each version, and each alias move was announced: champion to 2,
    // its deletion, then champion to 1. No run had a test accuracy, so nothing took
    // production.
    let mut got = Vec::new();
    for _ in 0..6 {
        got.push(events.next().await);
    }
    let deleted: Vec<_> = got
        .iter()
        .filter(|(s, _)| s == "model.alias_deleted")
        .collect();
    assert_eq!(deleted.len(), 1, "{got:?}");
    events.assert_quiet(Duration::from_millis(1500)).await;
    let registered: Vec<ModelRegistered> = got
        .iter()
        .filter(|(s, _)| s == "model.registered")
        .map(|(_, b)| Envelope::<ModelRegistered>::from_bytes(b).unwrap().data)
        .collect();
    let mut names: Vec<(String, i32)> = registered
        .iter()
        .map(|r| (r.model_name.clone(), r.version))
        .collect();
    names.sort();
    assert_eq!(
        names,
        vec![
            ("mlflow-other".to_owned(), 1),
            (model.to_owned(), 1),
            (model.to_owned(), 2)
        ]
    );
    let first = registered
        .iter()
        .find(|r| r.model_name == model && r.version == 1)
        .unwrap();
    assert_eq!(first.run_id, runs[0]);
    assert_eq!(first.artifact_uri, v1.artifact_uri);
    let promoted: Vec<(String, i32, Option<i32>)> = got
        .iter()
        .filter(|(s, _)| s == "model.promoted")
        .map(|(_, b)| {
            let e = Envelope::<ModelPromoted>::from_bytes(b).unwrap().data;
            assert!(e.reason.starts_with("manual"), "{}", e.reason);
            (e.alias, e.version, e.previous_version)
        })
        .collect();
    assert_eq!(
        promoted,
        vec![
            ("champion".to_owned(), 2, None),
            ("champion".to_owned(), 1, None)
        ]
    );

    // The multi-MB artifact is in the store, whole, with its size and hash recorded.
    let rel = result["big_artifact"].as_str().unwrap();
    let on_disk = env.artifacts.join("mlflow").join(rel);
    let bytes = std::fs::read(&on_disk).unwrap();
    assert_eq!(bytes.len() as u64, result["big_size"].as_u64().unwrap());
    let sha = hex::encode(Sha256::digest(&bytes));
    assert_eq!(sha, result["big_sha256"].as_str().unwrap());
    let pool = sqlx::PgPool::connect(&env.db).await.unwrap();
    let (size, recorded, run_id): (i64, String, Option<Uuid>) = sqlx::query_as(
        "SELECT size_bytes, sha256, run_id FROM registry.artifact_files WHERE path = $1",
    )
    .bind(rel)
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(size as usize, bytes.len());
    assert_eq!(recorded, sha);
    assert_eq!(run_id, Some(runs[0]));
    pool.close().await;

    reg.stop().await;
    env.cleanup().await;
}

/// `(status, body)` of an MLflow call; GET sends `query` as the query string.
async fn call(reg: &Service, method: Method, path: &str, body: Value) -> (StatusCode, Value) {
    let url = format!("/api/2.0/mlflow/{path}");
    if method == Method::GET {
        let query: Vec<(String, String)> = body
            .as_object()
            .unwrap()
            .iter()
            .map(|(k, v)| (k.clone(), v.as_str().map_or(v.to_string(), str::to_owned)))
            .collect();
        let resp = reqwest::Client::new()
            .get(reg.url(&url))
            .query(&query)
            .send()
            .await
            .unwrap();
        let status = resp.status();
        return (status, resp.json().await.unwrap_or(Value::Null));
    }
    reg.send(method, &url, Some(body)).await
}

/// Checks an MLflow error: its status, code, and a message for people, not for Rust.
#[track_caller]
fn assert_mlflow_error(got: &(StatusCode, Value), status: StatusCode, code: &str) -> String {
    assert_eq!(got.0, status, "{}", got.1);
    assert_eq!(got.1["error_code"], code, "{}", got.1);
    let message = got.1["message"].as_str().expect("a message").to_owned();
    assert!(!message.is_empty());
    for leak in ["petrel_", "::", "sqlx", "panicked"] {
        assert!(!message.contains(leak), "{message}");
    }
    message
}

/// Sends a request byte for byte (no client normalises `..` away) and returns the status and
/// the JSON body.
async fn raw(port: u16, method: &str, target: &str, body: &[u8]) -> (u16, Value) {
    let mut conn = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let head = format!(
        "{method} {target} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n",
        body.len()
    );
    conn.write_all(head.as_bytes()).await.unwrap();
    conn.write_all(body).await.unwrap();
    let mut answer = Vec::new();
    conn.read_to_end(&mut answer).await.unwrap();
    let text = String::from_utf8_lossy(&answer);
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP answer: {text}"));
    let json = text
        .split_once("\r\n\r\n")
        .and_then(|(_, b)| serde_json::from_str(b).ok())
        .unwrap_or(Value::Null);
    (status, json)
}

#[tokio::test]
async fn mlflow_calls_share_petrels_rows_refuse_bad_input_and_batch_atomically() {
    let env = TestEnv::new().await;
    let reg = start_registry_with(&env, &["--max-artifact-mb", "1"]).await;

    // A run made through /api/v1 is an MLflow run, by its 32-hex or hyphenated id.
    let v1 = reg
        .client()
        .create_run(&CreateRun {
            experiment: "shared".into(),
            name: Some("from-v1".into()),
            params: [("lr".to_owned(), "0.1".to_owned())].into(),
            ..CreateRun::default()
        })
        .await
        .unwrap();
    let hex = v1.id.simple().to_string();
    let (status, got) = call(&reg, Method::GET, "runs/get", json!({ "run_id": hex })).await;
    assert_eq!(status, StatusCode::OK, "{got}");
    let info = &got["run"]["info"];
    assert_eq!(info["run_id"], hex);
    assert_eq!(info["run_name"], "from-v1");
    assert_eq!(info["status"], "RUNNING");
    assert_eq!(info["lifecycle_stage"], "active");
    let exp_id = info["experiment_id"].as_str().unwrap().to_owned();
    assert_eq!(
        info["artifact_uri"],
        format!("mlflow-artifacts:/{exp_id}/{hex}/artifacts")
    );
    assert_eq!(
        got["run"]["data"]["params"],
        json!([{"key": "lr", "value": "0.1"}])
    );
    let (_, by_dash) = call(
        &reg,
        Method::GET,
        "runs/get",
        json!({ "run_id": v1.id.to_string() }),
    )
    .await;
    assert_eq!(by_dash["run"]["info"]["run_id"], hex);
    let (_, exp) = call(
        &reg,
        Method::GET,
        "experiments/get-by-name",
        json!({ "experiment_name": "shared" }),
    )
    .await;
    assert_eq!(exp["experiment"]["experiment_id"], exp_id);
    let (_, default) = call(
        &reg,
        Method::GET,
        "experiments/get",
        json!({ "experiment_id": "0" }),
    )
    .await;
    assert_eq!(default["experiment"]["name"], "Default");

    // One request of 1,000 metrics, 100 params and 100 tags is one transaction.
    let (status, created) = call(
        &reg,
        Method::POST,
        "runs/create",
        json!({ "experiment_id": exp_id, "run_name": "batch", "start_time": 1_700_000_000_000i64 }),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{created}");
    let run = created["run"]["info"]["run_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let batch = |metric_keys: &str, params: Vec<Value>, tags: Vec<Value>| {
        let metrics: Vec<Value> = (0..1000)
            .map(|i| {
                json!({
                    "key": format!("{metric_keys}{}", i % 10),
                    "value": i as f64,
                    "timestamp": 1_700_000_000_000i64 + i,
                    "step": i / 10,
                })
            })
            .collect();
        json!({ "run_id": run, "metrics": metrics, "params": params, "tags": tags })
    };
    let params: Vec<Value> = (0..100)
        .map(|i| json!({"key": format!("p{i}"), "value": i.to_string()}))
        .collect();
    let tags: Vec<Value> = (0..100)
        .map(|i| json!({"key": format!("t{i}"), "value": "v"}))
        .collect();
    let started = Instant::now();
    let (status, body) = call(
        &reg,
        Method::POST,
        "runs/log-batch",
        batch("m", params, tags),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    eprintln!("log-batch of 1,200 entities: {:?}", started.elapsed());
    let stored = reg
        .client()
        .get_run(Uuid::try_parse(&run).unwrap())
        .await
        .unwrap();
    assert_eq!(stored.metrics.len(), 1000);
    assert_eq!(stored.params.len(), 100);
    assert_eq!(stored.tags.len(), 101, "100 tags and mlflow.runName");
    assert_eq!(stored.start_time.timestamp_millis(), 1_700_000_000_000);

    // A batch that fails on its last param writes none of its 1,000 metrics or its tags.
    let clash = batch(
        "n",
        vec![json!({"key": "p0", "value": "changed"})],
        vec![json!({"key": "late", "value": "x"})],
    );
    let failed = call(&reg, Method::POST, "runs/log-batch", clash).await;
    let msg = assert_mlflow_error(&failed, StatusCode::BAD_REQUEST, "INVALID_PARAMETER_VALUE");
    assert!(
        msg.contains("Changing param values is not allowed"),
        "{msg}"
    );
    let after = reg
        .client()
        .get_run(Uuid::try_parse(&run).unwrap())
        .await
        .unwrap();
    assert_eq!(after.metrics.len(), 1000);
    assert!(!after.tags.contains_key("late"));
    assert_eq!(after.params["p0"], "0");
    assert_eq!(after.params.len(), 100);

    // MLflow's bodies may exceed /api/v1's 512 KiB: 150 params of 6,000 characters is 900 KB.
    let long: Vec<Value> = (0..150)
        .map(|i| json!({"key": format!("long{i}"), "value": "v".repeat(6000)}))
        .collect();
    let (status, body) = call(
        &reg,
        Method::POST,
        "runs/log-batch",
        json!({ "run_id": run, "params": long }),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");

    // Statuses MLflow sets are Petrel statuses.
    let (status, _) = call(
        &reg,
        Method::POST,
        "runs/update",
        json!({ "run_id": run, "status": "KILLED", "end_time": 1_700_000_100_000i64 }),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let killed = reg
        .client()
        .get_run(Uuid::try_parse(&run).unwrap())
        .await
        .unwrap();
    assert_eq!(killed.status, RunStatus::Killed);
    assert_eq!(
        killed.end_time.unwrap().timestamp_millis(),
        1_700_000_100_000
    );

    // Bad requests get MLflow's errors, never a 500.
    let random = Uuid::now_v7().simple().to_string();
    let too_many: Vec<Value> = (0..10_001)
        .map(|i| json!({"key": "k", "value": 1, "timestamp": i}))
        .collect();
    let cases: Vec<(Method, &str, Value, StatusCode, &str)> = vec![
        (
            Method::GET,
            "runs/get",
            json!({ "run_id": random }),
            StatusCode::NOT_FOUND,
            "RESOURCE_DOES_NOT_EXIST",
        ),
        (
            Method::GET,
            "runs/get",
            json!({ "run_id": "nope" }),
            StatusCode::BAD_REQUEST,
            "INVALID_PARAMETER_VALUE",
        ),
        (
            Method::GET,
            "runs/get",
            json!({}),
            StatusCode::BAD_REQUEST,
            "INVALID_PARAMETER_VALUE",
        ),
        (
            Method::POST,
            "experiments/create",
            json!({ "name": "shared" }),
            StatusCode::BAD_REQUEST,
            "RESOURCE_ALREADY_EXISTS",
        ),
        (
            Method::POST,
            "experiments/create",
            json!({ "name": "" }),
            StatusCode::BAD_REQUEST,
            "INVALID_PARAMETER_VALUE",
        ),
        (
            Method::POST,
            "runs/create",
            json!({ "experiment_id": "12345" }),
            StatusCode::NOT_FOUND,
            "RESOURCE_DOES_NOT_EXIST",
        ),
        (
            Method::POST,
            "runs/log-metric",
            json!({ "run_id": run, "key": "m", "value": "abc" }),
            StatusCode::BAD_REQUEST,
            "INVALID_PARAMETER_VALUE",
        ),
        (
            Method::POST,
            "runs/log-metric",
            json!({ "run_id": run, "key": "../m", "value": 1 }),
            StatusCode::BAD_REQUEST,
            "INVALID_PARAMETER_VALUE",
        ),
        (
            Method::POST,
            "runs/log-parameter",
            json!({ "run_id": run, "key": "k", "value": "a\u{0}b" }),
            StatusCode::BAD_REQUEST,
            "INVALID_PARAMETER_VALUE",
        ),
        (
            Method::POST,
            "runs/log-batch",
            json!({ "run_id": run, "metrics": too_many }),
            StatusCode::BAD_REQUEST,
            "INVALID_PARAMETER_VALUE",
        ),
        (
            Method::POST,
            "runs/log-batch",
            json!({ "run_id": run, "metrics": [5] }),
            StatusCode::BAD_REQUEST,
            "INVALID_PARAMETER_VALUE",
        ),
        (
            Method::POST,
            "runs/update",
            json!({ "run_id": run, "status": "SLEEPING" }),
            StatusCode::BAD_REQUEST,
            "INVALID_PARAMETER_VALUE",
        ),
        (
            Method::POST,
            "runs/search",
            json!({ "experiment_ids": [exp_id], "filter": "metrics.a > 1 or metrics.b < 2" }),
            StatusCode::BAD_REQUEST,
            "INVALID_PARAMETER_VALUE",
        ),
        (
            Method::POST,
            "runs/search",
            json!({ "experiment_ids": [exp_id], "filter": "params.x = 'unterminated" }),
            StatusCode::BAD_REQUEST,
            "INVALID_PARAMETER_VALUE",
        ),
        (
            Method::POST,
            "runs/search",
            json!({ "experiment_ids": [exp_id], "order_by": ["metrics.a sideways"] }),
            StatusCode::BAD_REQUEST,
            "INVALID_PARAMETER_VALUE",
        ),
        (
            Method::POST,
            "runs/search",
            json!({ "experiment_ids": [exp_id], "page_token": "garbage" }),
            StatusCode::BAD_REQUEST,
            "INVALID_PARAMETER_VALUE",
        ),
        (
            Method::POST,
            "runs/search",
            json!({ "experiment_ids": ["x"] }),
            StatusCode::BAD_REQUEST,
            "INVALID_PARAMETER_VALUE",
        ),
        (
            Method::GET,
            "metrics/get-history",
            json!({ "run_id": run, "metric_key": "m1", "max_results": "-1" }),
            StatusCode::BAD_REQUEST,
            "INVALID_PARAMETER_VALUE",
        ),
        (
            Method::GET,
            "registered-models/get",
            json!({ "name": "nope" }),
            StatusCode::NOT_FOUND,
            "RESOURCE_DOES_NOT_EXIST",
        ),
        (
            Method::POST,
            "registered-models/create",
            json!({ "name": "a/b" }),
            StatusCode::BAD_REQUEST,
            "INVALID_PARAMETER_VALUE",
        ),
        (
            Method::POST,
            "model-versions/create",
            json!({ "name": "nope", "source": "s", "run_id": run }),
            StatusCode::NOT_FOUND,
            "RESOURCE_DOES_NOT_EXIST",
        ),
        (
            Method::POST,
            "model-versions/create",
            json!({ "name": "nope", "source": "s" }),
            StatusCode::BAD_REQUEST,
            "INVALID_PARAMETER_VALUE",
        ),
        (
            Method::GET,
            "model-versions/get",
            json!({ "name": "nope", "version": "x" }),
            StatusCode::BAD_REQUEST,
            "INVALID_PARAMETER_VALUE",
        ),
        (
            Method::GET,
            "model-versions/search",
            json!({ "filter": "name = " }),
            StatusCode::BAD_REQUEST,
            "INVALID_PARAMETER_VALUE",
        ),
        (
            Method::GET,
            "registered-models/alias",
            json!({ "name": "nope", "alias": "a" }),
            StatusCode::NOT_FOUND,
            "RESOURCE_DOES_NOT_EXIST",
        ),
        (
            Method::GET,
            "no/such/endpoint",
            json!({}),
            StatusCode::NOT_FOUND,
            "ENDPOINT_NOT_FOUND",
        ),
        (
            Method::DELETE,
            "runs/get",
            json!({}),
            StatusCode::METHOD_NOT_ALLOWED,
            "ENDPOINT_NOT_FOUND",
        ),
    ];
    for (method, path, body, status, code) in cases {
        let got = call(&reg, method.clone(), path, body.clone()).await;
        assert_eq!(got.0, status, "{method} {path} {body}: {}", got.1);
        assert_mlflow_error(&got, status, code);
    }
    let (status, text) = reg
        .send_raw(
            Method::POST,
            "/api/2.0/mlflow/runs/create",
            None,
            "{not json",
        )
        .await;
    assert_mlflow_error(
        &(status, text),
        StatusCode::BAD_REQUEST,
        "INVALID_PARAMETER_VALUE",
    );

    // Artifact paths that would leave the artifact root are refused before the disk is
    // touched, however they are spelled.
    let port: u16 = reg.base.rsplit(':').next().unwrap().parse().unwrap();
    let base = "/api/2.0/mlflow-artifacts/artifacts";
    for path in [
        "../../etc/passwd",
        "a/../../../etc/passwd",
        "..%2F..%2Fetc%2Fpasswd",
        "%2e%2e/%2e%2e/etc/passwd",
        "%2E%2E%2Fescape",
        "%252e%252e/escape",
        "/etc/passwd",
        "%2Fetc%2Fpasswd",
        "a/./b",
        "a%5C..%5Cb",
        "nul%00byte",
        "bad%zz",
    ] {
        for method in ["PUT", "GET"] {
            let (status, body) = raw(port, method, &format!("{base}/{path}"), b"x").await;
            assert_eq!(status, 400, "{method} {path}: {body}");
            assert_eq!(
                body["error_code"], "INVALID_PARAMETER_VALUE",
                "{path}: {body}"
            );
        }
    }
    let (status, body) = raw(port, "GET", &format!("{base}?path=..%2Fx"), b"").await;
    assert_eq!(
        (status, body["error_code"].as_str()),
        (400, Some("INVALID_PARAMETER_VALUE"))
    );
    assert!(!env.dir.join("etc").exists() && !env.dir.join("escape").exists());

    // An upload over --max-artifact-mb is refused and leaves nothing behind.
    let big = vec![7u8; 1024 * 1024 + 1];
    let (status, body) = raw(port, "PUT", &format!("{base}/0/big.bin"), &big).await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["message"].as_str().unwrap().contains("limit"),
        "{body}"
    );
    let left: Vec<_> = std::fs::read_dir(env.artifacts.join("mlflow").join("0"))
        .map(|d| d.map(|e| e.unwrap().file_name()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "{left:?}");
    let (status, _) = raw(
        port,
        "PUT",
        &format!("{base}/0/ok%20file.bin"),
        &big[..1024],
    )
    .await;
    assert_eq!(status, 200);
    let (status, listing) = raw(port, "GET", &format!("{base}?path=0"), b"").await;
    assert_eq!(status, 200);
    assert_eq!(
        listing,
        json!({"files": [{"path": "ok file.bin", "is_dir": false, "file_size": 1024}]})
    );
    let (status, missing) = raw(port, "GET", &format!("{base}/0/missing.bin"), b"").await;
    assert_eq!(
        (status, missing["error_code"].as_str()),
        (404, Some("RESOURCE_DOES_NOT_EXIST"))
    );

    // The /api/v1 routes keep their own error shape.
    let (status, v1_err) = reg.send(Method::GET, "/api/v1/runs/nope", None).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(v1_err["error"]["code"], "invalid_path");

    reg.stop().await;
    env.cleanup().await;
}

/// With `--auth on`, the unchanged client authenticates with `MLFLOW_TRACKING_TOKEN`, and is
/// refused without it.
#[tokio::test]
async fn the_mlflow_client_authenticates_with_mlflow_tracking_token() {
    let python = tokio::task::spawn_blocking(mlflow_python)
        .await
        .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()));
    let env = TestEnv::new().await;
    let admin = "admin-token-for-the-mlflow-test";
    let reg = start_registry_with(&env, &["--auth", "on", "--admin-token", admin]).await;
    let http = reqwest::Client::new();
    let issued: Value = http
        .post(reg.url("/api/v1/tokens"))
        .bearer_auth(admin)
        .json(&serde_json::json!({"name": "notebook", "scope": "write"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let token = issued["token"].as_str().unwrap().to_owned();
    let script = r#"
import mlflow, sys
mlflow.set_experiment("secured")
with mlflow.start_run() as run:
    mlflow.log_metric("loss", 0.5, step=1)
print(run.info.run_id)
"#;
    let run = |token: Option<&str>| {
        let mut cmd = tokio::process::Command::new(&python);
        cmd.arg("-c")
            .arg(script)
            .env("MLFLOW_TRACKING_URI", &reg.base)
            .env("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
            .env("DO_NOT_TRACK", "true")
            .env("MLFLOW_DISABLE_TELEMETRY", "true")
            .env_remove("MLFLOW_TRACKING_TOKEN")
            .current_dir(&env.dir)
            .kill_on_drop(true);
        if let Some(t) = token {
            cmd.env("MLFLOW_TRACKING_TOKEN", t);
        }
        cmd.output()
    };
    let ok = tokio::time::timeout(SCRIPT_LIMIT, run(Some(&token)))
        .await
        .unwrap()
        .unwrap();
    assert!(
        ok.status.success(),
        "with a token:\n{}\n{}",
        String::from_utf8_lossy(&ok.stdout),
        String::from_utf8_lossy(&ok.stderr)
    );
    // The last line: MLflow may print its own lines first.
    let stdout = String::from_utf8_lossy(&ok.stdout);
    let run_id = stdout.lines().last().unwrap_or_default().trim().to_owned();
    let stored = reg
        .client()
        .get_run(uuid(&Value::String(run_id)))
        .await
        .unwrap();
    assert_eq!(stored.metrics[0].key, "loss");
    let refused = tokio::time::timeout(SCRIPT_LIMIT, run(None))
        .await
        .unwrap()
        .unwrap();
    assert!(
        !refused.status.success(),
        "writes without a token must fail"
    );
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("UNAUTHENTICATED"), "{stderr}");
    reg.stop().await;
    env.cleanup().await;
}
