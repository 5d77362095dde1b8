//! The registry's HTTP API and the events it publishes, against the real Postgres and NATS.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::{
    Service, TestEnv, ThrowawayNats, TypedClient, assert_error, eventually, start_registry,
};
use petrel_api::registry::{
    CreateModelVersion, CreateRun, Evaluation, LogBatch, LogMetrics, MetricInput, ModelVersion,
    PromotionPolicy, Run, RunStatus,
};
use petrel_events::Envelope;
use petrel_events::payloads::{ModelPromoted, ModelRegistered};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use uuid::Uuid;

/// How long to listen for an event that must not come. The relay publishes within milliseconds
/// of a commit (and polls every second), so this comfortably covers a missed poke.
const QUIET: Duration = Duration::from_millis(1500);

async fn new_run(reg: &Service, experiment: &str) -> Run {
    reg.client()
        .create_run(&CreateRun {
            experiment: experiment.to_owned(),
            ..CreateRun::default()
        })
        .await
        .unwrap()
}

/// Registers a version for `run` with the given test accuracy, checking the status code.
/// The held-out data the tests' versions are evaluated on, unless they say otherwise.
fn penguins_eval(rows: u64) -> Evaluation {
    Evaluation {
        dataset_id: Uuid::from_u128(42),
        digest: "sha256:penguins".into(),
        split: "stratified test split 0.2, seed 42".into(),
        rows,
    }
}

async fn register(
    reg: &Service,
    model: &str,
    run: Uuid,
    test_accuracy: Option<f64>,
    expect: StatusCode,
) -> ModelVersion {
    register_on(
        reg,
        model,
        run,
        test_accuracy,
        Some(penguins_eval(69)),
        expect,
    )
    .await
}

async fn register_on(
    reg: &Service,
    model: &str,
    run: Uuid,
    test_accuracy: Option<f64>,
    evaluation: Option<Evaluation>,
    expect: StatusCode,
) -> ModelVersion {
    let mut metrics = BTreeMap::from([("train_accuracy".to_owned(), 0.99)]);
    if let Some(acc) = test_accuracy {
        metrics.insert("test_accuracy".to_owned(), acc);
    }
    let body = CreateModelVersion {
        run_id: run,
        artifact_uri: format!("file:///models/{run}/bundle.json"),
        dataset_id: Some(Uuid::now_v7()),
        metrics,
        description: None,
        evaluation,
        ..CreateModelVersion::default()
    };
    let (status, v) = reg
        .send(
            Method::POST,
            &format!("/api/v1/models/{model}/versions"),
            Some(serde_json::to_value(&body).unwrap()),
        )
        .await;
    assert_eq!(status, expect, "{v}");
    serde_json::from_value(v).unwrap()
}

fn registered(bytes: &[u8]) -> Envelope<ModelRegistered> {
    Envelope::from_bytes(bytes).expect("a model.registered envelope")
}

fn promoted(bytes: &[u8]) -> Envelope<ModelPromoted> {
    Envelope::from_bytes(bytes).expect("a model.promoted envelope")
}

#[tokio::test]
async fn runs_keep_params_metrics_and_are_idempotent_per_client_token() {
    let env = TestEnv::new().await;
    let reg = start_registry(&env).await;

    let create = json!({
        "experiment": "penguins",
        "name": "first",
        "params": {"epochs": "200", "learning_rate": "0.01"},
        "tags": {"owner": "tests"},
        "client_token": "job-1",
    });
    let (status, first) = reg
        .send(Method::POST, "/api/v1/runs", Some(create.clone()))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{first}");
    let first: Run = serde_json::from_value(first).unwrap();
    assert_eq!(first.experiment, "penguins");
    assert_eq!(first.name.as_deref(), Some("first"));
    assert_eq!(first.status, RunStatus::Running);
    assert_eq!(first.params["epochs"], "200");
    assert_eq!(first.params["learning_rate"], "0.01");
    assert_eq!(first.tags["owner"], "tests");

    // GET returns what was stored.
    let got = reg.client().get_run(first.id).await.unwrap();
    assert_eq!(got, first);

    // The experiment was created on the way.
    let (status, exp) = reg
        .send(Method::GET, "/api/v1/experiments/penguins", None)
        .await;
    assert_eq!(status, StatusCode::OK, "{exp}");
    assert_eq!(exp["id"], json!(first.experiment_id));

    // The same token returns the same run, with 200 instead of 201.
    let (status, again) = reg.send(Method::POST, "/api/v1/runs", Some(create)).await;
    assert_eq!(status, StatusCode::OK, "{again}");
    assert_eq!(again["id"], json!(first.id));

    // Another token (or none) is another run.
    let (status, other) = reg
        .send(
            Method::POST,
            "/api/v1/runs",
            Some(json!({"experiment": "penguins", "client_token": "job-2"})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{other}");
    assert_ne!(other["id"], json!(first.id));
    let untokened = new_run(&reg, "penguins").await;
    assert_ne!(untokened.id, first.id);

    // Metrics, with history per key.
    let logged = reg
        .client()
        .log_metrics(
            first.id,
            &LogMetrics {
                metrics: vec![
                    MetricInput {
                        key: "loss".into(),
                        value: 0.9,
                        step: 0,
                    },
                    MetricInput {
                        key: "loss".into(),
                        value: 0.3,
                        step: 1,
                    },
                    MetricInput {
                        key: "test_accuracy".into(),
                        value: 0.97,
                        step: 0,
                    },
                ],
            },
        )
        .await
        .unwrap();
    assert_eq!((logged.run_id, logged.logged), (first.id, 3));
    let run = reg.client().get_run(first.id).await.unwrap();
    let metrics: Vec<(&str, f64, i64)> = run
        .metrics
        .iter()
        .map(|m| (m.key.as_str(), m.value, m.step))
        .collect();
    assert_eq!(
        metrics,
        vec![
            ("loss", 0.9, 0),
            ("loss", 0.3, 1),
            ("test_accuracy", 0.97, 0)
        ]
    );
    assert_eq!(
        reg.client().get_run(first.id).await.unwrap().metrics.len(),
        3
    );

    // Finishing a run stamps its end.
    let done = reg
        .client()
        .update_run(first.id, RunStatus::Finished)
        .await
        .unwrap();
    assert_eq!(done.status, RunStatus::Finished);
    assert!(done.end_time.is_some());

    reg.stop().await;
    env.cleanup().await;
}

#[tokio::test]
async fn a_batch_writes_metrics_params_and_tags_at_once_and_params_never_change() {
    let env = TestEnv::new().await;
    let reg = start_registry(&env).await;
    let run = new_run(&reg, "batches").await;
    let batch = LogBatch {
        metrics: vec![MetricInput {
            key: "loss".into(),
            value: 0.5,
            step: 3,
        }],
        params: BTreeMap::from([("hidden_size".to_owned(), "32".to_owned())]),
        tags: BTreeMap::from([
            ("petrel.chosen".to_owned(), "false".to_owned()),
            ("mlflow.runName".to_owned(), "trial-0".to_owned()),
        ]),
    };
    let logged = reg.client().log_batch(run.id, &batch).await.unwrap();
    assert_eq!((logged.run_id, logged.logged), (run.id, 1));
    // The same params again change nothing; a tag moves; MLflow's run name tag names the run.
    let again = LogBatch {
        metrics: Vec::new(),
        tags: BTreeMap::from([("petrel.chosen".to_owned(), "true".to_owned())]),
        ..batch.clone()
    };
    reg.client().log_batch(run.id, &again).await.unwrap();
    let got = reg.client().get_run(run.id).await.unwrap();
    assert_eq!(got.params["hidden_size"], "32");
    assert_eq!(got.tags["petrel.chosen"], "true");
    assert_eq!(got.name.as_deref(), Some("trial-0"));
    assert_eq!(got.metrics.len(), 1);
    assert_eq!((got.metrics[0].step, got.metrics[0].value), (3, 0.5));

    // Another value for a param is a 409 naming it, and nothing of that batch is written.
    let r = reg
        .send(
            Method::POST,
            &format!("/api/v1/runs/{}/batch", run.id),
            Some(json!({
                "metrics": [{"key": "loss", "value": 0.1, "step": 4}],
                "params": {"hidden_size": "64"},
                "tags": {"petrel.chosen": "false"},
            })),
        )
        .await;
    assert_error(&r, StatusCode::CONFLICT, "conflict");
    assert!(
        r.1["error"]["message"]
            .as_str()
            .unwrap()
            .contains("hidden_size"),
        "{}",
        r.1
    );
    let after = reg.client().get_run(run.id).await.unwrap();
    assert_eq!(after.metrics.len(), 1);
    assert_eq!(after.tags["petrel.chosen"], "true");
    // Unknown fields, an unknown run and a bad value are refused in the API's words.
    let r = reg
        .send(
            Method::POST,
            &format!("/api/v1/runs/{}/batch", run.id),
            Some(json!({"metric": []})),
        )
        .await;
    assert_error(&r, StatusCode::UNPROCESSABLE_ENTITY, "invalid_json");
    let missing = Uuid::now_v7();
    let r = reg
        .send(
            Method::POST,
            &format!("/api/v1/runs/{missing}/batch"),
            Some(json!({"tags": {"a": "b"}})),
        )
        .await;
    assert_error(&r, StatusCode::NOT_FOUND, "not_found");
    let r = reg
        .send(
            Method::POST,
            &format!("/api/v1/runs/{}/batch", run.id),
            Some(json!({"params": {"": "x"}})),
        )
        .await;
    assert_error(&r, StatusCode::UNPROCESSABLE_ENTITY, "invalid");

    reg.stop().await;
    env.cleanup().await;
}

#[tokio::test]
async fn registering_versions_announces_them_and_promotes_the_best() {
    let env = TestEnv::new().await;
    let reg = start_registry(&env).await;
    let mut events = env.events("model.>").await;
    let model = "penguins";

    // v1: the first version with a test accuracy takes `production`.
    let run1 = new_run(&reg, model).await;
    let v1 = register(&reg, model, run1.id, Some(0.90), StatusCode::CREATED).await;
    assert_eq!(v1.version, 1);
    assert_eq!(v1.run_id, run1.id);
    assert_eq!(v1.aliases, vec!["production"]);

    let mut got = [events.next().await, events.next().await];
    got.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(got[0].0, "model.promoted");
    assert_eq!(got[1].0, "model.registered");
    let reg1 = registered(&got[1].1);
    assert_eq!(reg1.source, "petrel/registry");
    assert_eq!(reg1.data.model_name, model);
    assert_eq!(reg1.data.version, 1);
    assert_eq!(reg1.data.run_id, run1.id);
    assert_eq!(reg1.data.artifact_uri, v1.artifact_uri);
    assert_eq!(reg1.data.dataset_id, v1.dataset_id);
    assert_eq!(reg1.data.metrics["test_accuracy"], 0.90);
    let pro1 = promoted(&got[0].1);
    assert_eq!(pro1.data.model_name, model);
    assert_eq!(pro1.data.alias, "production");
    assert_eq!(pro1.data.version, 1);
    assert_eq!(pro1.data.previous_version, None);
    assert_eq!(pro1.data.artifact_uri, v1.artifact_uri);
    assert!(pro1.data.reason.starts_with("auto"), "{}", pro1.data.reason);
    assert_ne!(pro1.id, reg1.id);
    events.assert_quiet(QUIET).await;

    // v2 is worse: registered as the challenger, but production stays on v1.
    let run2 = new_run(&reg, model).await;
    let v2 = register(&reg, model, run2.id, Some(0.80), StatusCode::CREATED).await;
    assert_eq!(v2.version, 2);
    assert_eq!(v2.aliases, vec!["challenger"]);
    let decision = v2.promotion.as_ref().unwrap();
    assert_eq!(decision.challenger.as_deref(), Some("challenger"));
    assert_eq!(decision.compared_on.as_deref(), Some("same evaluation"));
    let mut got = [events.next().await, events.next().await];
    got.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(got[1].0, "model.registered");
    assert_eq!(registered(&got[1].1).data.version, 2);
    assert_eq!(got[0].0, "model.promoted");
    let challenger = promoted(&got[0].1);
    assert_eq!(
        (challenger.data.alias.as_str(), challenger.data.version),
        ("challenger", 2)
    );
    events.assert_quiet(QUIET).await;
    let prod = reg.client().get_alias(model, "production").await.unwrap();
    assert_eq!(prod.map(|v| v.version), Some(1));

    // v3 ties the champion: ties go to the newer version.
    let run3 = new_run(&reg, model).await;
    let v3 = register(&reg, model, run3.id, Some(0.90), StatusCode::CREATED).await;
    assert_eq!(v3.version, 3);
    assert_eq!(v3.aliases, vec!["production"]);
    let mut got = [events.next().await, events.next().await];
    got.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(got[1].0, "model.registered");
    assert_eq!(registered(&got[1].1).data.version, 3);
    assert_eq!(got[0].0, "model.promoted");
    let pro3 = promoted(&got[0].1);
    assert_eq!(pro3.data.version, 3);
    assert_eq!(pro3.data.previous_version, Some(1));
    events.assert_quiet(QUIET).await;

    // v4 is better still.
    let run4 = new_run(&reg, model).await;
    let v4 = register(&reg, model, run4.id, Some(0.97), StatusCode::CREATED).await;
    assert_eq!(v4.aliases, vec!["production"]);
    let mut got = [events.next().await, events.next().await];
    got.sort_by(|a, b| a.0.cmp(&b.0));
    let pro4 = promoted(&got[0].1);
    assert_eq!(
        (pro4.data.version, pro4.data.previous_version),
        (4, Some(3))
    );
    events.assert_quiet(QUIET).await;

    // A version without test accuracy never takes production.
    let run5 = new_run(&reg, model).await;
    let v5 = register(&reg, model, run5.id, None, StatusCode::CREATED).await;
    assert!(v5.aliases.is_empty());
    let (subject, _) = events.next().await;
    assert_eq!(subject, "model.registered");
    events.assert_quiet(QUIET).await;

    // Registering a run again returns its version, and announces nothing.
    let again = register(&reg, model, run1.id, Some(0.99), StatusCode::OK).await;
    assert_eq!(again.version, 1);
    assert_eq!(
        again.metrics["test_accuracy"], 0.90,
        "the first version is kept"
    );
    events.assert_quiet(QUIET).await;

    // The model and its versions.
    let m = reg.client().get_model(model).await.unwrap();
    assert_eq!(m.latest_version, Some(5));
    assert_eq!(
        m.aliases,
        BTreeMap::from([("challenger".to_owned(), 2), ("production".to_owned(), 4)])
    );
    let (status, list) = reg
        .send(
            Method::GET,
            &format!("/api/v1/models/{model}/versions"),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let numbers: Vec<i64> = list["versions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["version"].as_i64().unwrap())
        .collect();
    assert_eq!(numbers, vec![5, 4, 3, 2, 1]);
    assert_eq!(reg.client().get_version(model, 2).await.unwrap(), v2);
    let (status, models) = reg.send(Method::GET, "/api/v1/models", None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(models["models"][0]["name"], model);

    reg.stop().await;
    env.cleanup().await;
}

#[tokio::test]
async fn aliases_move_by_hand_and_keep_their_history() {
    let env = TestEnv::new().await;
    let reg = start_registry(&env).await;
    let mut events = env.events("model.>").await;
    let model = "iris";
    let run1 = new_run(&reg, model).await;
    register(&reg, model, run1.id, Some(0.90), StatusCode::CREATED).await;
    let run2 = new_run(&reg, model).await;
    let v2 = register(&reg, model, run2.id, Some(0.95), StatusCode::CREATED).await;
    assert_eq!(v2.aliases, vec!["production"]);

    // Two registrations and two automatic promotions.
    for _ in 0..4 {
        events.next().await;
    }

    // Roll production back to v1.
    let v1 = reg
        .client()
        .set_alias(model, "production", 1)
        .await
        .unwrap();
    assert_eq!(v1.version, 1);
    assert_eq!(v1.aliases, vec!["production"]);
    let (subject, bytes) = events.next().await;
    assert_eq!(subject, "model.promoted");
    let moved = promoted(&bytes);
    assert_eq!(moved.data.alias, "production");
    assert_eq!(moved.data.version, 1);
    assert_eq!(moved.data.previous_version, Some(2));
    assert_eq!(moved.data.artifact_uri, v1.artifact_uri);
    assert!(
        moved.data.reason.starts_with("manual"),
        "{}",
        moved.data.reason
    );
    let prod = reg.client().get_alias(model, "production").await.unwrap();
    assert_eq!(prod.map(|v| v.version), Some(1));

    // Setting it to where it already is changes nothing and announces nothing.
    reg.client()
        .set_alias(model, "production", 1)
        .await
        .unwrap();
    events.assert_quiet(QUIET).await;

    // Any alias name can be set; a new one has no previous version.
    let staged = reg.client().set_alias(model, "staging", 2).await.unwrap();
    assert_eq!(staged.aliases, vec!["staging"]);
    let moved = promoted(&events.next().await.1);
    assert_eq!(
        (
            moved.data.alias.as_str(),
            moved.data.version,
            moved.data.previous_version
        ),
        ("staging", 2, None)
    );

    // History, newest first.
    let (status, history) = reg
        .send(
            Method::GET,
            &format!("/api/v1/models/{model}/aliases/production/history"),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{history}");
    let moves: Vec<(Value, Value)> = history["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| (h["version"].clone(), h["previous_version"].clone()))
        .collect();
    assert_eq!(
        moves,
        vec![
            (json!(1), json!(2)),
            (json!(2), json!(1)),
            (json!(1), Value::Null),
        ]
    );

    // Deleting an alias: 204, then it is gone, and the deletion is in the history.
    let (status, _) = reg
        .send(
            Method::DELETE,
            &format!("/api/v1/models/{model}/aliases/staging"),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (subject, _) = events.next().await;
    assert_eq!(subject, "model.alias_deleted");
    assert!(
        reg.client()
            .get_alias(model, "staging")
            .await
            .unwrap()
            .is_none()
    );
    let (_, history) = reg
        .send(
            Method::GET,
            &format!("/api/v1/models/{model}/aliases/staging/history"),
            None,
        )
        .await;
    assert_eq!(history["history"][0]["version"], Value::Null);
    assert_eq!(history["history"][0]["previous_version"], 2);

    // Errors.
    let unknown = reg
        .send(
            Method::GET,
            &format!("/api/v1/models/{model}/aliases/nope"),
            None,
        )
        .await;
    assert_error(&unknown, StatusCode::NOT_FOUND, "not_found");
    let unknown_model = reg
        .send(Method::GET, "/api/v1/models/nope/aliases/production", None)
        .await;
    assert_error(&unknown_model, StatusCode::NOT_FOUND, "not_found");
    let no_version = reg
        .send(
            Method::PUT,
            &format!("/api/v1/models/{model}/aliases/production"),
            Some(json!({"version": 99})),
        )
        .await;
    assert_error(&no_version, StatusCode::NOT_FOUND, "not_found");
    let bad_name = reg
        .send(
            Method::PUT,
            &format!("/api/v1/models/{model}/aliases/bad%20alias!"),
            Some(json!({"version": 1})),
        )
        .await;
    assert_error(&bad_name, StatusCode::UNPROCESSABLE_ENTITY, "invalid");
    let delete_missing = reg
        .send(
            Method::DELETE,
            &format!("/api/v1/models/{model}/aliases/staging"),
            None,
        )
        .await;
    assert_error(&delete_missing, StatusCode::NOT_FOUND, "not_found");
    // None of the failures moved anything.
    let prod = reg.client().get_alias(model, "production").await.unwrap();
    assert_eq!(prod.map(|v| v.version), Some(1));
    events.assert_quiet(QUIET).await;

    reg.stop().await;
    env.cleanup().await;
}

#[tokio::test]
async fn bad_requests_get_json_errors() {
    let env = TestEnv::new().await;
    let reg = start_registry(&env).await;
    let mut events = env.events("model.>").await;

    // Not JSON at all.
    let r = reg
        .send_raw(
            Method::POST,
            "/api/v1/runs",
            Some("application/json"),
            "{not json",
        )
        .await;
    assert_error(&r, StatusCode::BAD_REQUEST, "invalid_json");
    // JSON of the wrong shape.
    let r = reg
        .send(Method::POST, "/api/v1/runs", Some(json!({"name": "x"})))
        .await;
    assert_error(&r, StatusCode::UNPROCESSABLE_ENTITY, "invalid_json");
    // No content type.
    let r = reg
        .send_raw(Method::POST, "/api/v1/runs", None, r#"{"experiment":"e"}"#)
        .await;
    assert_error(
        &r,
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "unsupported_media_type",
    );
    // Blank experiment name.
    let r = reg
        .send(
            Method::POST,
            "/api/v1/runs",
            Some(json!({"experiment": " "})),
        )
        .await;
    assert_error(&r, StatusCode::UNPROCESSABLE_ENTITY, "invalid");

    // Runs that do not exist, and ids that are not ids.
    let missing = Uuid::now_v7();
    let r = reg
        .send(Method::GET, &format!("/api/v1/runs/{missing}"), None)
        .await;
    assert_error(&r, StatusCode::NOT_FOUND, "not_found");
    let r = reg.send(Method::GET, "/api/v1/runs/not-a-uuid", None).await;
    assert_error(&r, StatusCode::BAD_REQUEST, "invalid_path");
    let r = reg
        .send(
            Method::POST,
            &format!("/api/v1/runs/{missing}/metrics"),
            Some(json!({"metrics": [{"key": "loss", "value": 1.0}]})),
        )
        .await;
    assert_error(&r, StatusCode::NOT_FOUND, "not_found");
    let run = new_run(&reg, "e").await;
    let r = reg
        .send(
            Method::POST,
            &format!("/api/v1/runs/{}/metrics", run.id),
            Some(json!({"metrics": [{"key": "", "value": 1.0}]})),
        )
        .await;
    assert_error(&r, StatusCode::UNPROCESSABLE_ENTITY, "invalid");
    assert!(
        reg.client()
            .get_run(run.id)
            .await
            .unwrap()
            .metrics
            .is_empty()
    );

    // A version for a run that does not exist is refused, and nothing is announced.
    let r = reg
        .send(
            Method::POST,
            "/api/v1/models/m/versions",
            Some(json!({"run_id": missing, "artifact_uri": "file:///x", "metrics": {"test_accuracy": 1.0}})),
        )
        .await;
    assert_error(&r, StatusCode::UNPROCESSABLE_ENTITY, "invalid");
    let r = reg
        .send(
            Method::POST,
            "/api/v1/models/m/versions",
            Some(json!({"run_id": run.id, "artifact_uri": " "})),
        )
        .await;
    assert_error(&r, StatusCode::UNPROCESSABLE_ENTITY, "invalid");
    let r = reg.send(Method::GET, "/api/v1/models/m", None).await;
    assert_error(&r, StatusCode::NOT_FOUND, "not_found");
    let r = reg
        .send(Method::GET, "/api/v1/models/m/versions/1", None)
        .await;
    assert_error(&r, StatusCode::NOT_FOUND, "not_found");
    let r = reg
        .send(Method::GET, "/api/v1/experiments/none", None)
        .await;
    assert_error(&r, StatusCode::NOT_FOUND, "not_found");

    // Creating an experiment twice conflicts.
    let r = reg
        .send(
            Method::POST,
            "/api/v1/experiments",
            Some(json!({"name": "x"})),
        )
        .await;
    assert_eq!(r.0, StatusCode::CREATED, "{}", r.1);
    let r = reg
        .send(
            Method::POST,
            "/api/v1/experiments",
            Some(json!({"name": "x"})),
        )
        .await;
    assert_error(&r, StatusCode::CONFLICT, "conflict");

    // Unknown routes and methods.
    let r = reg.send(Method::GET, "/api/v1/nope", None).await;
    assert_error(&r, StatusCode::NOT_FOUND, "not_found");
    let r = reg.send(Method::DELETE, "/api/v1/runs", None).await;
    assert_error(&r, StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed");

    events.assert_quiet(QUIET).await;
    reg.stop().await;
    env.cleanup().await;
}

#[tokio::test]
async fn health_and_readiness() {
    let env = TestEnv::new().await;
    let reg = start_registry(&env).await;
    let (status, body) = reg.send(Method::GET, "/healthz", None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["status"], "alive");
    let (status, body) = reg.send(Method::GET, "/readyz", None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["status"], "ready");
    let base = reg.base.clone();
    reg.stop().await;
    env.cleanup().await;
    // After shutdown, nothing listens any more.
    assert!(reqwest::get(format!("{base}/healthz")).await.is_err());
}

#[tokio::test]
async fn concurrent_runs_with_one_client_token_are_one_run() {
    let env = TestEnv::new().await;
    let reg = start_registry(&env).await;
    let http = reqwest::Client::new();
    // The experiment exists first, so the calls race on the run alone.
    new_run(&reg, "race").await;

    for round in 0..5 {
        let token = format!("job-{round}");
        let calls: Vec<_> = (0..8)
            .map(|k| {
                let req = http.post(reg.url("/api/v1/runs")).json(&json!({
                    "experiment": "race",
                    "name": format!("attempt {k}"),
                    "params": {"attempt": k.to_string()},
                    "client_token": token,
                }));
                tokio::spawn(async move {
                    let resp = req.send().await.unwrap();
                    let status = resp.status();
                    let body: Value = resp.json().await.unwrap();
                    (status, body)
                })
            })
            .collect();
        let mut ids = Vec::new();
        let mut created = 0;
        for call in calls {
            let (status, body) = call.await.unwrap();
            assert!(
                status == StatusCode::CREATED || status == StatusCode::OK,
                "round {round}: {status} {body}"
            );
            if status == StatusCode::CREATED {
                created += 1;
            }
            let run: Run = serde_json::from_value(body).unwrap();
            ids.push(run);
        }
        assert_eq!(
            created, 1,
            "round {round}: exactly one call creates the run"
        );
        let first = &ids[0];
        for run in &ids {
            assert_eq!(run.id, first.id, "round {round}: one run per token");
            // Every caller sees the winner's run, whole: its name and its params.
            assert_eq!(run, first, "round {round}");
            assert_eq!(run.params.len(), 1);
        }
    }

    reg.stop().await;
    env.cleanup().await;
}

#[tokio::test]
async fn nul_and_control_characters_are_refused_naming_the_field() {
    let env = TestEnv::new().await;
    let reg = start_registry(&env).await;
    let mut events = env.events("model.>").await;

    let run = |body: Value| reg.send(Method::POST, "/api/v1/runs", Some(body));
    let refused = |r: &(StatusCode, Value), field: &str| {
        assert_error(r, StatusCode::UNPROCESSABLE_ENTITY, "invalid");
        let msg = r.1["error"]["message"].as_str().unwrap();
        assert!(msg.contains(field), "{field} is not named: {msg}");
    };

    // Runs: every string the client gives.
    refused(&run(json!({"experiment": "e\u{0}"})).await, "experiment");
    refused(
        &run(json!({"experiment": "e", "name": "a\u{0}b"})).await,
        "name",
    );
    refused(
        &run(json!({"experiment": "e", "client_token": "t\u{0}"})).await,
        "client_token",
    );
    refused(
        &run(json!({"experiment": "e", "params": {"lr": "0.1\u{0}"}})).await,
        "params",
    );
    refused(
        &run(json!({"experiment": "e", "params": {"l\u{0}r": "0.1"}})).await,
        "params key",
    );
    refused(
        &run(json!({"experiment": "e", "params": {"l\nr": "0.1"}})).await,
        "params key",
    );
    refused(
        &run(json!({"experiment": "e", "tags": {"owner": "\u{0}"}})).await,
        "tags",
    );
    refused(
        &run(json!({"experiment": "e", "tags": {"\u{0}": "x"}})).await,
        "tags key",
    );
    // A value may hold other control characters: it is free text.
    let (status, ok) = run(json!({"experiment": "e", "params": {"note": "a\tb\nc"}})).await;
    assert_eq!(status, StatusCode::CREATED, "{ok}");
    let ok: Run = serde_json::from_value(ok).unwrap();
    assert_eq!(ok.params["note"], "a\tb\nc");

    // Metrics.
    let r = reg
        .send(
            Method::POST,
            &format!("/api/v1/runs/{}/metrics", ok.id),
            Some(json!({"metrics": [{"key": "lo\u{0}ss", "value": 1.0}]})),
        )
        .await;
    refused(&r, "metric key");
    assert!(
        reg.client()
            .get_run(ok.id)
            .await
            .unwrap()
            .metrics
            .is_empty()
    );

    // Versions.
    let version = |model: &str, body: Value| {
        let path = format!("/api/v1/models/{model}/versions");
        let reg = &reg;
        async move { reg.send(Method::POST, &path, Some(body)).await }
    };
    let good = || json!({"run_id": ok.id, "artifact_uri": "file:///m/bundle.json"});
    let with = |k: &str, v: Value| {
        let mut b = good();
        b[k] = v;
        b
    };
    refused(
        &version("m", with("artifact_uri", json!("file:///m\u{0}"))).await,
        "artifact_uri",
    );
    refused(
        &version("m", with("metrics", json!({"acc\u{0}": 0.9}))).await,
        "metric key",
    );
    refused(
        &version("m", with("description", json!("nice\u{0}"))).await,
        "description",
    );
    refused(&version("m%00", good()).await, "model name");

    // Lookups by a name no one could have stored.
    for (path, field) in [
        ("/api/v1/experiments/e%00", "experiment name"),
        ("/api/v1/models/m%00", "model name"),
        ("/api/v1/models/m%00/versions", "model name"),
        ("/api/v1/models/m%00/versions/1", "model name"),
        ("/api/v1/models/m%00/aliases/production", "model name"),
        (
            "/api/v1/models/m%00/aliases/production/history",
            "model name",
        ),
    ] {
        refused(&reg.send(Method::GET, path, None).await, field);
    }
    refused(
        &reg.send(Method::GET, "/api/v1/models/m/aliases/p%00", None)
            .await,
        "alias",
    );
    refused(
        &reg.send(Method::GET, "/api/v1/models/m/aliases/p%00/history", None)
            .await,
        "alias",
    );
    refused(
        &reg.send(Method::DELETE, "/api/v1/models/m/aliases/p%00", None)
            .await,
        "alias",
    );
    events.assert_quiet(QUIET).await;

    // None of it stored anything: the version registers as the first.
    let (status, v) = version("m", good()).await;
    assert_eq!(status, StatusCode::CREATED, "{v}");
    assert_eq!(v["version"], 1);

    reg.stop().await;
    env.cleanup().await;
}

#[tokio::test]
async fn bodies_and_metrics_are_bounded_so_every_event_fits_nats() {
    let env = TestEnv::new().await;
    let reg = start_registry(&env).await;
    let mut events = env.events("model.>").await;
    let run = new_run(&reg, "big").await;
    let http = reqwest::Client::new();
    let post = |body: String| {
        let req = http
            .post(reg.url("/api/v1/models/big/versions"))
            .header("content-type", "application/json")
            .body(body);
        async move {
            let resp = req.send().await.unwrap();
            let status = resp.status();
            let text = resp.text().await.unwrap();
            let body: Value = serde_json::from_str(&text)
                .unwrap_or_else(|e| panic!("{status}: not JSON ({e}): {text}"));
            (status, body)
        }
    };

    // Over 512 KiB: refused before it is read, with a JSON error.
    let uri = format!("file:///{}", "x".repeat(600 * 1024));
    let body = json!({"run_id": run.id, "artifact_uri": uri}).to_string();
    let r = post(body).await;
    assert_error(&r, StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large");

    // Under the body limit, but 40,000 metrics whose values grow when serialised
    // (`1e15` becomes `1000000000000000.0`): the event would pass the outbox's limit.
    let metrics: serde_json::Map<String, Value> = (0..40_000)
        .map(|k| (format!("{k:x}"), json!(1e15)))
        .collect();
    let body = format!(
        r#"{{"run_id":"{}","artifact_uri":"file:///m","metrics":{}}}"#,
        run.id,
        Value::Object(metrics)
            .to_string()
            .replace("1000000000000000.0", "1e15")
    );
    assert!(body.len() < 512 * 1024, "{} bytes", body.len());
    let r = post(body).await;
    assert_error(&r, StatusCode::UNPROCESSABLE_ENTITY, "invalid");
    assert!(
        r.1["error"]["message"]
            .as_str()
            .unwrap()
            .contains("metrics")
    );
    let long_key =
        json!({"run_id": run.id, "artifact_uri": "file:///m", "metrics": {"k".repeat(257): 1.0}});
    let r = post(long_key.to_string()).await;
    assert_error(&r, StatusCode::UNPROCESSABLE_ENTITY, "invalid");
    events.assert_quiet(QUIET).await;

    // The most a version may carry: 1,000 metrics with 256-byte keys and long values, and a
    // long artifact URI. It is registered and announced.
    let metrics: BTreeMap<String, f64> = (0..1000).map(|k| (format!("{k:0>256}"), 1e15)).collect();
    let uri = format!("file:///{}", "u".repeat(200 * 1024));
    let body = json!({"run_id": run.id, "artifact_uri": uri, "metrics": metrics}).to_string();
    let (status, v) = post(body).await;
    assert_eq!(status, StatusCode::CREATED, "{v}");
    let (subject, bytes) = events.next().await;
    assert_eq!(subject, "model.registered");
    let e = registered(&bytes);
    assert_eq!(e.data.metrics.len(), 1000);
    assert_eq!(e.data.artifact_uri, uri);

    reg.stop().await;
    env.cleanup().await;
}

#[tokio::test]
async fn the_promotion_policy_cannot_be_fooled_by_a_tiny_upload() {
    let env = TestEnv::new().await;
    let reg = start_registry(&env).await;
    let mut events = env.events("model.>").await;
    let model = "penguins";
    // The real model: 0.9855 on 69 held-out rows of penguins.
    let run1 = new_run(&reg, model).await;
    let v1 = register(&reg, model, run1.id, Some(0.9855), StatusCode::CREATED).await;
    assert_eq!(v1.aliases, vec!["production"]);
    let d1 = v1.promotion.as_ref().expect("a decision is recorded");
    assert!(d1.promoted && d1.reason.contains("first version"), "{d1:?}");
    for _ in 0..2 {
        events.next().await;
    }

    // A 10-row upload of other data, whose 2-row test split scores 1.0.
    let tiny = Evaluation {
        dataset_id: Uuid::now_v7(),
        digest: "sha256:tiny".into(),
        split: "stratified test split 0.2, seed 42".into(),
        rows: 2,
    };
    let run2 = new_run(&reg, model).await;
    let v2 = register_on(
        &reg,
        model,
        run2.id,
        Some(1.0),
        Some(tiny.clone()),
        StatusCode::CREATED,
    )
    .await;
    assert!(v2.aliases.is_empty(), "{:?}", v2.aliases);
    let d2 = v2.promotion.as_ref().unwrap();
    assert!(!d2.promoted);
    assert!(d2.reason.contains("2 held-out rows"), "{}", d2.reason);
    assert_eq!(d2.candidate, Some(1.0));
    assert_eq!((d2.champion_version, d2.champion), (Some(1), Some(0.9855)));
    assert_eq!(v2.evaluation.as_ref(), Some(&tiny));
    // The same on enough rows of other data: still not comparable.
    let run3 = new_run(&reg, model).await;
    let other = Evaluation { rows: 500, ..tiny };
    let v3 = register_on(
        &reg,
        model,
        run3.id,
        Some(1.0),
        Some(other),
        StatusCode::CREATED,
    )
    .await;
    assert!(v3.aliases.is_empty());
    assert!(v3.promotion.unwrap().reason.contains("another dataset"));
    let (subject, _) = events.next().await;
    assert_eq!(subject, "model.registered");
    let (subject, _) = events.next().await;
    assert_eq!(subject, "model.registered");
    events.assert_quiet(QUIET).await;
    let prod = reg.client().get_alias(model, "production").await.unwrap();
    assert_eq!(prod.map(|v| v.version), Some(1));

    // A gate: a new model whose first version is below it is registered, not promoted.
    let (status, body) = reg
        .send(
            Method::PUT,
            "/api/v1/models/gated/policy",
            Some(json!({"min_value": 0.95, "min_eval_rows": 50})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let policy: PromotionPolicy = serde_json::from_value(body).unwrap();
    assert_eq!(
        (policy.min_value, policy.min_eval_rows, policy.auto),
        (Some(0.95), 50, true)
    );
    let run4 = new_run(&reg, "gated").await;
    let g1 = register(&reg, "gated", run4.id, Some(0.9), StatusCode::CREATED).await;
    assert!(g1.aliases.is_empty());
    assert!(g1.promotion.unwrap().reason.contains("gate"));
    let run5 = new_run(&reg, "gated").await;
    let g2 = register(&reg, "gated", run5.id, Some(0.97), StatusCode::CREATED).await;
    assert_eq!(g2.aliases, vec!["production"]);
    let (status, body) = reg
        .send(
            Method::PUT,
            "/api/v1/models/gated/policy",
            Some(json!({"margin": -1})),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");

    // The history keeps the evidence of each automatic move.
    let (status, body) = reg
        .send(
            Method::GET,
            "/api/v1/models/gated/aliases/production/history",
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let h = &body["history"][0];
    assert_eq!(h["actor"], "registry");
    assert_eq!(h["evidence"]["candidate"], 0.97);
    reg.stop().await;
    env.cleanup().await;
}

#[tokio::test]
async fn impossible_versions_names_and_uris_are_refused() {
    let env = TestEnv::new().await;
    let reg = start_registry(&env).await;
    let run = new_run(&reg, "m").await;
    // An accuracy of 5.0 would win every comparison forever.
    let (status, body) = reg
        .send(
            Method::POST,
            "/api/v1/models/m/versions",
            Some(json!({"run_id": run.id, "artifact_uri": "file:///m/b.json", "metrics": {"test_accuracy": 5.0}})),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("between 0 and 1")
    );
    for (model, uri) in [
        (" spaced", "file:///models/x/bundle.json"),
        ("m", "../../../../etc/passwd"),
        ("m", "file:///models/%2e%2e/%2e%2e/etc/passwd"),
    ] {
        let (status, body) = reg
            .send(
                Method::POST,
                &format!("/api/v1/models/{}/versions", model.replace(' ', "%20")),
                Some(json!({"run_id": run.id, "artifact_uri": uri, "metrics": {}})),
            )
            .await;
        assert_eq!(
            status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{model} {uri}: {body}"
        );
        let message = body["error"]["message"].as_str().unwrap();
        assert!(!message.contains("struct"), "{message}");
    }
    // Serde's wording never names our types.
    let (status, body) = reg
        .send(Method::POST, "/api/v1/experiments", Some(json!("x")))
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("a JSON object") && !message.contains("CreateExperiment"),
        "{message}"
    );
    reg.stop().await;
    env.cleanup().await;
}

#[tokio::test]
async fn experiments_are_created_once_and_listed() {
    let env = TestEnv::new().await;
    let reg = start_registry(&env).await;
    let calls = (0..8).map(|_| {
        reg.send(
            Method::POST,
            "/api/v1/experiments",
            Some(json!({"name": "race"})),
        )
    });
    let statuses: Vec<StatusCode> = futures::future::join_all(calls)
        .await
        .into_iter()
        .map(|(s, _)| s)
        .collect();
    assert_eq!(
        statuses
            .iter()
            .filter(|s| **s == StatusCode::CREATED)
            .count(),
        1,
        "{statuses:?}"
    );
    assert_eq!(
        statuses
            .iter()
            .filter(|s| **s == StatusCode::CONFLICT)
            .count(),
        7,
        "{statuses:?}"
    );
    let (status, body) = reg.send(Method::GET, "/api/v1/experiments", None).await;
    assert_eq!(status, StatusCode::OK);
    let names: Vec<&str> = body["experiments"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["name"].as_str().unwrap())
        .collect();
    // MLflow's `Default` experiment always exists.
    assert_eq!(names, ["Default", "race"]);

    // Metric writes answer in constant size, however long the history.
    let run = new_run(&reg, "race").await;
    let mut sizes = Vec::new();
    for batch in 0..5 {
        let metrics: Vec<Value> = (0..1000)
            .map(|i| json!({"key": "loss", "value": 1.0 / f64::from(i + 1), "step": batch * 1000 + i}))
            .collect();
        let (status, body) = reg
            .send(
                Method::POST,
                &format!("/api/v1/runs/{}/metrics", run.id),
                Some(json!({"metrics": metrics})),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body["logged"], 1000);
        sizes.push(body.to_string().len());
    }
    assert!(sizes.windows(2).all(|w| w[0] == w[1]), "{sizes:?}");
    reg.stop().await;
    env.cleanup().await;
}

#[tokio::test]
async fn deleting_an_alias_is_announced() {
    let env = TestEnv::new().await;
    let reg = start_registry(&env).await;
    let mut events = env.events("model.>").await;
    let run = new_run(&reg, "m").await;
    register(&reg, "m", run.id, Some(0.9), StatusCode::CREATED).await;
    for _ in 0..2 {
        events.next().await;
    }
    let (status, body) = reg
        .send(Method::DELETE, "/api/v1/models/m/aliases/production", None)
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT, "{body}");
    let (subject, bytes) = events.next().await;
    assert_eq!(subject, "model.alias_deleted");
    let e = Envelope::<petrel_events::payloads::ModelAliasDeleted>::from_bytes(&bytes).unwrap();
    assert_eq!(
        (e.data.alias.as_str(), e.data.previous_version),
        ("production", 1)
    );
    events.assert_quiet(QUIET).await;
    reg.stop().await;
    env.cleanup().await;
}

#[tokio::test]
async fn versions_keep_their_input_schema_and_class_names() {
    let env = TestEnv::new().await;
    let reg = start_registry(&env).await;
    let run = new_run(&reg, "sig").await;
    let schema = json!({
        "features": [{"name": "x", "kind": "numeric"}, {"name": "c", "kind": "categorical"}],
        "target": "y"
    });
    let body = |schema: Value, classes: Value| {
        json!({
            "run_id": run.id, "artifact_uri": "file:///tmp/petrel-sig/bundle.json",
            "metrics": {"test_accuracy": 0.9}, "input_schema": schema, "class_names": classes
        })
    };
    for (bad_schema, bad_classes, needle) in [
        (
            json!({"features": [], "target": "y"}),
            json!(["a", "b"]),
            "input_schema",
        ),
        (schema.clone(), json!(["a", "a"]), "twice"),
        (schema.clone(), json!(["a", ""]), "empty"),
    ] {
        let r = reg
            .send(
                Method::POST,
                "/api/v1/models/sig/versions",
                Some(body(bad_schema, bad_classes)),
            )
            .await;
        assert_error(&r, StatusCode::UNPROCESSABLE_ENTITY, "invalid");
        assert!(
            r.1["error"]["message"].as_str().unwrap().contains(needle),
            "{}",
            r.1
        );
    }
    let (status, v) = reg
        .send(
            Method::POST,
            "/api/v1/models/sig/versions",
            Some(body(schema.clone(), json!(["no", "yes"]))),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{v}");
    assert_eq!(v["class_names"], json!(["no", "yes"]));
    assert_eq!(v["input_schema"]["features"][1]["name"], "c");
    let (_, again) = reg
        .send(Method::GET, "/api/v1/models/sig/versions/1", None)
        .await;
    assert_eq!(again["input_schema"], v["input_schema"]);
    reg.stop().await;
    env.cleanup().await;
}

#[tokio::test]
async fn runs_record_the_datasets_they_read_in_both_apis() {
    use petrel_api::registry::{DatasetInput, LogInputs};
    let env = TestEnv::new().await;
    let reg = start_registry(&env).await;
    let run = new_run(&reg, "inputs").await;
    let input = DatasetInput {
        name: "penguins".into(),
        digest: "sha256:9f2c".into(),
        source_type: "petrel-ingest".into(),
        source: r#"{"dataset_id": "x"}"#.into(),
        schema: Some("{}".into()),
        profile: None,
        tags: BTreeMap::from([("mlflow.data.context".into(), "training".into())]),
    };
    let req = LogInputs {
        inputs: vec![input.clone()],
    };
    let logged = reg.client().log_inputs(run.id, &req).await.unwrap();
    assert_eq!(logged.inputs, vec![input.clone()]);
    // The same dataset again changes nothing.
    let again = reg.client().log_inputs(run.id, &req).await.unwrap();
    assert_eq!(again.inputs.len(), 1);
    // MLflow's API shows the same input.
    let (status, body) = reg
        .send(
            Method::GET,
            &format!("/api/2.0/mlflow/runs/get?run_id={}", run.id.simple()),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let d = &body["run"]["inputs"]["dataset_inputs"][0];
    assert_eq!(d["dataset"]["digest"], "sha256:9f2c", "{body}");
    assert_eq!(d["tags"][0]["value"], "training", "{body}");
    let r = reg
        .send(
            Method::POST,
            &format!("/api/v1/runs/{}/inputs", run.id),
            Some(
                json!({"inputs": [{"name": "", "digest": "d", "source_type": "s", "source": "x"}]}),
            ),
        )
        .await;
    assert_error(&r, StatusCode::UNPROCESSABLE_ENTITY, "invalid");
    let r = reg
        .send(
            Method::POST,
            &format!("/api/v1/runs/{}/inputs", Uuid::now_v7()),
            Some(json!({"inputs": []})),
        )
        .await;
    assert_error(&r, StatusCode::NOT_FOUND, "not_found");
    reg.stop().await;
    env.cleanup().await;
}

#[tokio::test]
async fn a_run_may_belong_to_a_parent_run() {
    let env = TestEnv::new().await;
    let reg = start_registry(&env).await;
    let parent = new_run(&reg, "sweep").await;
    let child = reg
        .client()
        .create_run(&CreateRun {
            experiment: "sweep".into(),
            name: Some("trial-0".into()),
            parent_run_id: Some(parent.id),
            ..CreateRun::default()
        })
        .await
        .unwrap();
    assert_eq!(child.parent_run_id, Some(parent.id));
    // MLflow clients see the nesting through MLflow's own tag.
    assert_eq!(
        child.tags.get("mlflow.parentRunId"),
        Some(&parent.id.simple().to_string())
    );
    assert_eq!(
        reg.client().get_run(child.id).await.unwrap().parent_run_id,
        Some(parent.id)
    );
    assert_eq!(parent.parent_run_id, None);
    let r = reg
        .send(
            Method::POST,
            "/api/v1/runs",
            Some(json!({"experiment": "sweep", "parent_run_id": Uuid::now_v7()})),
        )
        .await;
    assert_error(&r, StatusCode::UNPROCESSABLE_ENTITY, "invalid");
    reg.stop().await;
    env.cleanup().await;
}

#[tokio::test]
async fn models_and_versions_carry_tags() {
    let env = TestEnv::new().await;
    let reg = start_registry(&env).await;
    let run = new_run(&reg, "m").await;
    register(&reg, "m", run.id, Some(0.9), StatusCode::CREATED).await;

    let (status, body) = reg
        .send(
            Method::PUT,
            "/api/v1/models/m/tags/team",
            Some(json!({"value": "petrel"})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["tags"], json!({"team": "petrel"}));
    let (status, body) = reg
        .send(
            Method::PUT,
            "/api/v1/models/m/versions/1/tags/validated%20by",
            Some(json!({"value": "alice"})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["tags"], json!({"validated by": "alice"}));
    // A new value replaces the old one; reads show the tags.
    reg.send(
        Method::PUT,
        "/api/v1/models/m/tags/team",
        Some(json!({"value": "ml"})),
    )
    .await;
    let (_, model) = reg.send(Method::GET, "/api/v1/models/m", None).await;
    assert_eq!(model["tags"], json!({"team": "ml"}));
    let (_, version) = reg
        .send(Method::GET, "/api/v1/models/m/versions/1", None)
        .await;
    assert_eq!(version["tags"], json!({"validated by": "alice"}));

    let (status, body) = reg
        .send(
            Method::DELETE,
            "/api/v1/models/m/versions/1/tags/validated%20by",
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["tags"], json!({}));
    let r = reg
        .send(
            Method::DELETE,
            "/api/v1/models/m/versions/1/tags/validated%20by",
            None,
        )
        .await;
    assert_error(&r, StatusCode::NOT_FOUND, "not_found");
    let r = reg
        .send(
            Method::PUT,
            "/api/v1/models/m/versions/9/tags/a",
            Some(json!({"value": "b"})),
        )
        .await;
    assert_error(&r, StatusCode::NOT_FOUND, "not_found");
    let r = reg
        .send(
            Method::PUT,
            "/api/v1/models/nope/tags/a",
            Some(json!({"value": "b"})),
        )
        .await;
    assert_error(&r, StatusCode::NOT_FOUND, "not_found");
    let long = "k".repeat(251);
    let r = reg
        .send(
            Method::PUT,
            &format!("/api/v1/models/m/tags/{long}"),
            Some(json!({"value": "b"})),
        )
        .await;
    assert_error(&r, StatusCode::UNPROCESSABLE_ENTITY, "invalid");
    let r = reg
        .send(
            Method::PUT,
            "/api/v1/models/m/tags/a",
            Some(json!({"valeu": "b"})),
        )
        .await;
    assert_error(&r, StatusCode::UNPROCESSABLE_ENTITY, "invalid_json");
    reg.stop().await;
    env.cleanup().await;
}

#[tokio::test]
async fn with_auth_on_writes_need_a_write_token_and_tokens_are_scoped() {
    use clap::Parser;
    let env = TestEnv::new().await;
    let admin = "admin-token-0123456789";
    let args = env.args_without_store(
        "petrel-registry",
        &[
            "--auth",
            "on",
            "--auth-reads",
            "token",
            "--admin-token",
            admin,
        ],
    );
    let cancel = tokio_util::sync::CancellationToken::new();
    let app =
        petrel_registry::App::build(petrel_registry::Config::parse_from(args), cancel.clone())
            .await
            .unwrap();
    let reg = Service::spawn("the registry", app.port(), cancel, app.run());
    let http = reqwest::Client::new();
    let call = |method: Method, path: &str, token: Option<&str>, body: Option<Value>| {
        let mut req = http.request(method, reg.url(path));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        async move {
            let resp = req.send().await.unwrap();
            let status = resp.status();
            (status, resp.json::<Value>().await.unwrap_or(Value::Null))
        }
    };
    let exp = json!({"name": "secured"});
    let (status, body) = call(Method::POST, "/api/v1/experiments", None, Some(exp.clone())).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    assert_eq!(body["error"]["code"], "unauthorized");
    let (status, _) = call(
        Method::POST,
        "/api/v1/experiments",
        Some("nope"),
        Some(exp.clone()),
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    // Only an admin issues tokens.
    let mut tokens = BTreeMap::new();
    for scope in ["read", "write"] {
        let (status, body) = call(
            Method::POST,
            "/api/v1/tokens",
            Some(admin),
            Some(json!({"name": format!("{scope}-bot"), "scope": scope})),
        )
        .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        tokens.insert(scope, body["token"].as_str().unwrap().to_owned());
    }
    let (status, _) = call(
        Method::POST,
        "/api/v1/tokens",
        Some(&tokens["write"]),
        Some(json!({"name": "x", "scope": "admin"})),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    // A read token reads but does not write; a write token writes.
    let (status, body) = call(
        Method::POST,
        "/api/v1/experiments",
        Some(&tokens["read"]),
        Some(exp.clone()),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("scope write")
    );
    let (status, _) = call(
        Method::POST,
        "/api/v1/experiments",
        Some(&tokens["write"]),
        Some(exp),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED);
    let (status, _) = call(Method::GET, "/api/v1/experiments", None, None).await;
    assert_eq!(
        status,
        StatusCode::UNAUTHORIZED,
        "reads are protected with --auth-reads token"
    );
    let (status, body) = call(
        Method::GET,
        "/api/v1/experiments",
        Some(&tokens["read"]),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        body["experiments"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["name"] == "secured"),
        "{body}"
    );
    // The typed client carries a token too.
    let client =
        petrel_api::registry::RegistryClient::new(&reg.base).with_token(Some(&tokens["write"]));
    assert!(
        client
            .create_run(&CreateRun {
                experiment: "secured".into(),
                ..CreateRun::default()
            })
            .await
            .is_ok()
    );
    assert!(
        !format!("{client:?}").contains(&tokens["write"]),
        "a token in Debug output"
    );
    // Listing shows no secret; revoking takes effect at once.
    let (_, list) = call(Method::GET, "/api/v1/tokens", Some(admin), None).await;
    assert!(!list.to_string().contains(&tokens["write"]));
    let id = list
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "write-bot")
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let (status, _) = call(
        Method::DELETE,
        &format!("/api/v1/tokens/{id}"),
        Some(admin),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, _) = call(
        Method::POST,
        "/api/v1/experiments",
        Some(&tokens["write"]),
        Some(json!({"name": "again"})),
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    // Health stays open.
    let (status, _) = call(Method::GET, "/healthz", None, None).await;
    assert_eq!(status, StatusCode::OK);
    reg.stop().await;
    env.cleanup().await;
}

#[tokio::test]
async fn a_version_registered_while_nats_is_down_is_announced_once_when_it_is_back() {
    use async_nats::jetstream::consumer::{DeliverPolicy, pull::OrderedConfig};
    use futures::StreamExt;
    let mut env = TestEnv::new().await;
    let mut nats = ThrowawayNats::start().await;
    env.services_nats_url = nats.url();
    let reg = start_registry(&env).await;
    let run = new_run(&reg, "m").await;
    nats.stop();
    // The write is durable in Postgres with its event in the outbox: a 201 while NATS is down.
    let v = register(&reg, "m", run.id, Some(0.9), StatusCode::CREATED).await;
    assert_eq!(v.version, 1);
    nats.restart().await;
    let client = async_nats::connect(nats.url()).await.unwrap();
    let js = async_nats::jetstream::new(client);
    let ns = petrel_events::Namespace::new(Some(&env.prefix));
    let subject = ns.subject("model.registered");
    let count = || async {
        let Ok(stream) = js.get_stream(ns.stream_name()).await else {
            return 0;
        };
        let Ok(consumer) = stream
            .create_consumer(OrderedConfig {
                filter_subject: subject.clone(),
                deliver_policy: DeliverPolicy::All,
                ..Default::default()
            })
            .await
        else {
            return 0;
        };
        let mut messages = consumer.messages().await.unwrap();
        let mut n = 0;
        while let Ok(Some(Ok(m))) =
            tokio::time::timeout(Duration::from_millis(500), messages.next()).await
        {
            let e = registered(&m.payload);
            assert_eq!((e.data.model_name.as_str(), e.data.version), ("m", 1));
            n += 1;
        }
        n
    };
    eventually("the event published after the outage", || async {
        (count().await >= 1).then_some(())
    })
    .await;
    // The relay keeps running; give it time to (wrongly) publish again, then count.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(count().await, 1, "published exactly once");
    reg.stop().await;
    env.cleanup().await;
}
