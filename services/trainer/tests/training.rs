//! The trainer end to end with the registry: `data.ready` in, a trained, registered and promoted
//! model out, against the real Postgres and NATS.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::Stack;
use petrel_api::registry::RunStatus;
use petrel_events::Envelope;
use petrel_events::payloads::{DataReady, ModelPromoted, ModelRegistered, subjects};
use petrel_ml::ModelBundle;
use reqwest::StatusCode;
use serde_json::{Value, json};
use uuid::Uuid;

/// Long enough for a missed outbox poke (the relay polls every second) to show up.
const QUIET: Duration = Duration::from_millis(1500);

/// Reads the next two events, `model.registered` and `model.promoted`, in either order.
async fn registered_and_promoted(
    events: &mut common::Events,
) -> (Envelope<ModelRegistered>, Envelope<ModelPromoted>) {
    let mut got = [events.next().await, events.next().await];
    got.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(got[0].0, "model.promoted");
    assert_eq!(got[1].0, "model.registered");
    (
        Envelope::from_bytes(&got[1].1).expect("a model.registered envelope"),
        Envelope::from_bytes(&got[0].1).expect("a model.promoted envelope"),
    )
}

#[tokio::test]
async fn data_ready_trains_registers_and_promotes_once_per_event() {
    let stack = Stack::start().await;
    let mut events = stack.events("model.>").await;
    let data = stack.penguins_dataset().await;
    let env = stack.bus.envelope(data.clone());
    stack.bus.publish(&env).await.unwrap();

    // The registry announces the new version and its promotion.
    let (registered, promoted) = registered_and_promoted(&mut events).await;
    assert_eq!(registered.data.model_name, "penguins");
    assert_eq!(registered.data.version, 1);
    assert_eq!(registered.data.dataset_id, Some(data.dataset_id));
    assert_eq!(promoted.data.model_name, "penguins");
    assert_eq!(promoted.data.alias, "production");
    assert_eq!(promoted.data.version, 1);
    assert_eq!(promoted.data.previous_version, None);
    assert_eq!(promoted.data.artifact_uri, registered.data.artifact_uri);

    // Production is a good model, stored as a loadable bundle in the artifact store.
    let prod = stack
        .registry()
        .get_alias("penguins", "production")
        .await
        .unwrap()
        .expect("production is set");
    assert_eq!(prod.version, 1);
    let accuracy = prod.metrics["test_accuracy"];
    assert!(accuracy >= 0.95, "test accuracy {accuracy}");
    assert_eq!(prod.metrics["n_train"] + prod.metrics["n_test"], 344.0);
    assert_eq!(prod.dataset_id, Some(data.dataset_id));
    let path = prod
        .artifact_uri
        .strip_prefix("file://")
        .expect("a file:// URI");
    assert!(std::path::Path::new(path).starts_with(&stack.env.artifacts));
    let bundle = ModelBundle::from_bytes(&std::fs::read(path).unwrap()).unwrap();
    assert_eq!(bundle.class_names, vec!["Adelie", "Chinstrap", "Gentoo"]);
    assert_eq!(bundle.metrics.test_accuracy, accuracy);
    bundle.load().expect("the bundle loads for serving");

    // The run behind it is finished, with its parameters and metrics.
    let run = stack.registry().get_run(prod.run_id).await.unwrap();
    assert_eq!(run.experiment, "penguins");
    assert_eq!(run.status, RunStatus::Finished);
    assert_eq!(run.params["dataset_id"], data.dataset_id.to_string());
    assert_eq!(run.params["dataset_hash"], data.content_hash);
    assert!(run.metrics.iter().any(|m| m.key == "test_accuracy"));

    // The job shows the outcome.
    let jobs = stack
        .wait_jobs("the job to succeed", |jobs| {
            jobs.first().is_some_and(|j| j["status"] == "succeeded")
        })
        .await;
    assert_eq!(jobs.len(), 1);
    let job = &jobs[0];
    assert_eq!(job["event_id"], json!(env.id));
    assert_eq!(job["dataset_id"], json!(data.dataset_id));
    assert_eq!(job["model_name"], "penguins");
    assert_eq!(job["model_version"], 1);
    assert_eq!(job["run_id"], json!(prod.run_id));
    assert_eq!(job["error"], Value::Null);
    assert_eq!(job["epoch"], job["epochs"]);
    assert_eq!(job["metrics"]["test_accuracy"], json!(accuracy));
    assert_eq!(run.tags["petrel.job_id"], job["id"].as_str().unwrap());
    let (status, one) = stack
        .trainer_get(&format!("/v1/jobs/{}", job["id"].as_str().unwrap()))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(&one, job);

    // The same event again. Published as such, JetStream drops it...
    stack.bus.publish(&env).await.unwrap();
    // ...so deliver it again under another message id, as a redelivery would.
    stack
        .bus
        .publish_raw(
            subjects::DATA_READY,
            Uuid::now_v7(),
            Bytes::from(env.to_bytes().unwrap()),
        )
        .await
        .unwrap();
    stack.wait_consumed(2).await;
    // One job, one version, nothing new announced.
    let jobs = stack.jobs().await;
    assert_eq!(jobs.len(), 1, "{jobs:?}");
    assert_eq!(jobs[0]["status"], "succeeded");
    let model = stack.registry().get_model("penguins").await.unwrap();
    assert_eq!(model.latest_version, Some(1));
    events.assert_quiet(QUIET).await;

    stack.stop().await;
}

#[tokio::test]
async fn a_missing_dataset_fails_its_job_and_the_consumer_goes_on() {
    let stack = Stack::start().await;
    let mut events = stack.events("model.>").await;
    let mut dead = stack.events("deadletter.>").await;
    let good = stack.penguins_dataset().await;

    // One file that is not in the store, one that is not even under its root.
    let missing = DataReady {
        dataset_id: Uuid::now_v7(),
        uri: format!(
            "file://{}/datasets/penguins/missing.csv",
            stack.env.artifacts.display()
        ),
        ..good.clone()
    };
    let foreign = DataReady {
        dataset_id: Uuid::now_v7(),
        uri: "file:///nonexistent/penguins.csv".to_owned(),
        ..good.clone()
    };
    for data in [&missing, &foreign, &good] {
        stack
            .bus
            .publish(&stack.bus.envelope(data.clone()))
            .await
            .unwrap();
    }

    // The good one after them still trains.
    let (registered, promoted) = registered_and_promoted(&mut events).await;
    assert_eq!(registered.data.dataset_id, Some(good.dataset_id));
    assert_eq!(promoted.data.version, 1);

    let jobs = stack
        .wait_jobs("three finished jobs", |jobs| {
            jobs.len() == 3
                && jobs
                    .iter()
                    .all(|j| j["status"] == "succeeded" || j["status"] == "failed")
        })
        .await;
    let job_for = |id: Uuid| {
        jobs.iter()
            .find(|j| j["dataset_id"] == json!(id))
            .unwrap_or_else(|| panic!("no job for {id}: {jobs:?}"))
    };
    for (bad, needle) in [
        (&missing, "does not exist"),
        (&foreign, "not in this store"),
    ] {
        let job = job_for(bad.dataset_id);
        assert_eq!(job["status"], "failed", "{job}");
        let error = job["error"].as_str().expect("a failed job says why");
        assert!(error.contains(needle), "{error}");
        assert_eq!(job["model_version"], Value::Null);
        assert_eq!(job["run_id"], Value::Null);
    }
    let ok = job_for(good.dataset_id);
    assert_eq!(ok["status"], "succeeded");
    assert_eq!(ok["model_version"], 1);
    assert_eq!(ok["error"], Value::Null);

    // Failures are handled, not set aside; and only the good dataset made a version.
    stack.wait_consumed(3).await;
    dead.assert_quiet(QUIET).await;
    events.assert_quiet(Duration::ZERO).await;
    let model = stack.registry().get_model("penguins").await.unwrap();
    assert_eq!(model.latest_version, Some(1));

    stack.stop().await;
}

#[tokio::test]
async fn the_jobs_api_answers_json_and_reports_health() {
    let stack = Stack::start().await;
    assert!(stack.jobs().await.is_empty());

    let (status, body) = stack.trainer_get("/v1/jobs?limit=0").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["error"]["code"], "bad_request");
    let (status, body) = stack.trainer_get("/v1/jobs?limit=abc").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["error"]["code"], "invalid_query");
    let (status, body) = stack
        .trainer_get(&format!("/v1/jobs/{}", Uuid::now_v7()))
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(body["error"]["code"], "not_found");
    let (status, body) = stack.trainer_get("/v1/jobs/not-a-uuid").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["error"]["code"], "invalid_path");
    let (status, body) = stack.trainer_get("/v1/nope").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(body["error"]["code"], "not_found");

    let (status, body) = stack.trainer_get("/healthz").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["status"], "alive");
    let (status, body) = stack.trainer_get("/readyz").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["status"], "ready");

    stack.stop().await;
}
