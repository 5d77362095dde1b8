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
    // The version says what it takes and answers.
    assert_eq!(prod.class_names, vec!["Adelie", "Chinstrap", "Gentoo"]);
    let schema = prod
        .input_schema
        .as_ref()
        .expect("the trainer sends the input schema");
    assert_eq!(schema, &petrel_ml::Schema::penguins());
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
    // The data it trained on is the run's dataset input, in the training role.
    assert_eq!(run.inputs.len(), 1, "{:?}", run.inputs);
    assert_eq!(run.inputs[0].name, "penguins");
    assert_eq!(run.inputs[0].digest, data.content_hash);
    assert_eq!(run.inputs[0].tags["mlflow.data.context"], "training");

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

#[tokio::test]
async fn a_sweep_logs_each_trial_as_a_child_run_and_registers_the_best() {
    let dir = std::env::temp_dir().join(format!("petrel-sweep-{}", Uuid::now_v7()));
    std::fs::create_dir_all(&dir).unwrap();
    let spec = dir.join("sweep.json");
    // A learning rate far too small cannot learn in 40 epochs: the sweep must choose 0.05.
    std::fs::write(
        &spec,
        r#"{"grid": {"learning_rate": [1e-5, 0.05], "epochs": [40]}, "folds": 3, "concurrency": 2}"#,
    )
    .unwrap();
    let stack = Stack::start_with(&["--sweep", spec.to_str().unwrap()]).await;
    let data = stack.penguins_dataset().await;
    stack.bus.publish(&stack.bus.envelope(data)).await.unwrap();
    let jobs = stack
        .wait_jobs("the sweep's job to succeed", |jobs| {
            jobs.first()
                .is_some_and(|j| j["status"] == "succeeded" || j["status"] == "failed")
        })
        .await;
    let job = &jobs[0];
    assert_eq!(job["status"], "succeeded", "{job}");
    assert_eq!(
        (job["trials_total"].as_i64(), job["trials_done"].as_i64()),
        (Some(2), Some(2))
    );
    assert_eq!(
        job["cv"]["folds"].as_array().map(Vec::len),
        Some(3),
        "{job}"
    );

    // The registered version is the chosen trial's configuration, with its CV scores.
    let prod = stack
        .registry()
        .get_alias("penguins", "production")
        .await
        .unwrap()
        .expect("production is set");
    assert!(prod.metrics["cv_accuracy_mean"] > 0.9, "{:?}", prod.metrics);
    assert!(prod.metrics.contains_key("cv_accuracy_std"));
    let parent = stack.registry().get_run(prod.run_id).await.unwrap();
    assert_eq!(parent.params["learning_rate"], "0.05");
    assert_eq!(parent.tags["petrel.sweep_trials"], "2");
    assert_eq!(parent.tags["petrel.chosen_trial"], "1");
    assert!(parent.tags["petrel.cv_split"].contains("3-fold"));

    // Each trial is a finished child run, found the way an MLflow user would.
    let (status, exp) = stack
        .mlflow("experiments/search", json!({"filter": "name = 'penguins'"}))
        .await;
    assert_eq!(status, StatusCode::OK, "{exp}");
    let exp_id = exp["experiments"][0]["experiment_id"].clone();
    let (status, found) = stack
        .mlflow(
            "runs/search",
            json!({
                "experiment_ids": [exp_id],
                "filter": format!("tags.mlflow.parentRunId = '{}'", prod.run_id.simple()),
                "order_by": ["metrics.cv_accuracy_mean DESC"],
            }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{found}");
    let runs = found["runs"].as_array().expect("two trial runs");
    assert_eq!(runs.len(), 2, "{found}");
    let tag = |r: &Value, key: &str| {
        r["data"]["tags"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["key"] == key)
            .map(|t| t["value"].as_str().unwrap().to_owned())
    };
    let metric = |r: &Value, key: &str| {
        r["data"]["metrics"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["key"] == key)
            .and_then(|m| m["value"].as_f64())
    };
    assert_eq!(tag(&runs[0], "petrel.chosen").as_deref(), Some("true"));
    assert_eq!(tag(&runs[1], "petrel.chosen").as_deref(), Some("false"));
    assert_eq!(runs[0]["info"]["status"], "FINISHED");
    let (good, bad) = (
        metric(&runs[0], "cv_accuracy_mean").unwrap(),
        metric(&runs[1], "cv_accuracy_mean").unwrap(),
    );
    assert!(good > bad, "{good} vs {bad}");
    assert_eq!(
        runs[0]["data"]["params"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["key"] == "learning_rate")
            .unwrap()["value"],
        "0.05"
    );
    // Every fold's accuracy is in the trial's history, one step per fold.
    let id = runs[0]["info"]["run_id"].as_str().unwrap();
    let (status, history) = stack
        .mlflow_get(&format!(
            "metrics/get-history?run_id={id}&metric_key=cv_fold_accuracy"
        ))
        .await;
    assert_eq!(status, StatusCode::OK, "{history}");
    assert_eq!(
        history["metrics"].as_array().map(Vec::len),
        Some(3),
        "{history}"
    );
    // And each fold's learning curve: the training loss at increasing epochs, ending at the
    // last epoch trained, falling as the trial learned.
    let (status, curve) = stack
        .mlflow_get(&format!(
            "metrics/get-history?run_id={id}&metric_key=fold_2_train_loss"
        ))
        .await;
    assert_eq!(status, StatusCode::OK, "{curve}");
    let points = curve["metrics"].as_array().unwrap();
    assert!(points.len() >= 10, "{curve}");
    let steps: Vec<i64> = points.iter().map(|p| p["step"].as_i64().unwrap()).collect();
    assert!(steps.windows(2).all(|w| w[0] < w[1]), "{steps:?}");
    let loss = |p: &Value| p["value"].as_f64().unwrap();
    assert!(loss(points.last().unwrap()) < loss(&points[0]), "{curve}");

    stack.stop().await;
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn a_bad_sweep_file_stops_the_trainer_at_start() {
    let env = petrel_testkit::TestEnv::new().await;
    let dir = std::env::temp_dir().join(format!("petrel-sweep-{}", Uuid::now_v7()));
    std::fs::create_dir_all(&dir).unwrap();
    let spec = dir.join("sweep.json");
    std::fs::write(&spec, r#"{"grid": {"dropout": [2.0]}}"#).unwrap();
    let args = env.args(
        "petrel-trainer",
        &[
            "--sweep",
            spec.to_str().unwrap(),
            "--registry-url",
            "http://127.0.0.1:9",
        ],
    );
    use clap::Parser as _;
    let err = petrel_trainer::App::build(
        petrel_trainer::Config::parse_from(args),
        tokio_util::sync::CancellationToken::new(),
    )
    .await
    .unwrap_err();
    let msg = format!("{err:#}");
    assert!(
        msg.contains("not a valid sweep") && msg.contains("dropout"),
        "{msg}"
    );
    env.cleanup().await;
    let _ = std::fs::remove_dir_all(dir);
}

/// Trains a bundle on the penguins data here, stores it and registers it as the first version
/// of `model` (which takes `production`), evaluated on data the trainer never sees: only a
/// score on the trainer's own held-out rows can compare a later version with it.
async fn register_champion(
    stack: &Stack,
    model: &str,
    config: &petrel_ml::TrainConfig,
) -> ModelBundle {
    let table = penguins_table();
    let bundle = petrel_ml::train_classifier(&table, config, &mut |_, _| {}).unwrap();
    let store = petrel_store::open(stack.env.artifact_root()).unwrap();
    let uri = store
        .put(
            &format!("champions/{model}/bundle.json"),
            Bytes::from(bundle.to_bytes().unwrap()),
        )
        .await
        .unwrap();
    let registry = stack.registry();
    let run = registry
        .create_run(&petrel_api::registry::CreateRun {
            experiment: model.to_owned(),
            ..Default::default()
        })
        .await
        .unwrap();
    let v = registry
        .create_version(
            model,
            &petrel_api::registry::CreateModelVersion {
                run_id: run.id,
                artifact_uri: uri,
                metrics: [
                    ("test_accuracy".to_owned(), bundle.metrics.test_accuracy),
                    ("n_test".to_owned(), bundle.metrics.n_test as f64),
                ]
                .into(),
                evaluation: Some(petrel_api::registry::Evaluation {
                    dataset_id: Uuid::now_v7(),
                    digest: "sha256:elsewhere".into(),
                    split: "stratified test split 0.2, seed 42".into(),
                    rows: bundle.metrics.n_test as u64,
                }),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(v.aliases, vec!["production"], "{:?}", v.promotion);
    bundle
}

fn penguins_table() -> petrel_ml::Table {
    let bytes = std::fs::read(petrel_testkit::PENGUINS_CSV).unwrap();
    petrel_ml::parse_csv(&bytes, &petrel_ml::Schema::penguins())
        .unwrap()
        .table
}

/// Publishes `data.ready` for the penguins file under `model` and waits for its job.
async fn train_as(stack: &Stack, model: &str) -> Value {
    let mut data = stack.penguins_dataset().await;
    data.name = model.to_owned();
    let env = stack.bus.envelope(data);
    stack.bus.publish(&env).await.unwrap();
    let jobs = stack
        .wait_jobs("the job to finish", |jobs| {
            jobs.iter()
                .any(|j| j["event_id"] == json!(env.id) && j["status"] == "succeeded")
        })
        .await;
    jobs.into_iter()
        .find(|j| j["event_id"] == json!(env.id))
        .unwrap()
}

#[tokio::test]
async fn champion_and_challenger_are_scored_on_the_same_held_out_rows() {
    let stack = Stack::start().await;
    let registry = stack.registry();
    let trainer_config = petrel_ml::TrainConfig::default();
    // What the trainer's model and any champion score on the trainer's held-out rows,
    // computed here with the same split.
    let holdout = petrel_ml::Holdout::of(&penguins_table(), &trainer_config).unwrap();

    // A weak production model (two epochs) evaluated elsewhere: on recorded evaluations the
    // two could not be compared, but on the trainer's held-out rows the new version wins.
    let weak = register_champion(
        &stack,
        "weak",
        &petrel_ml::TrainConfig {
            epochs: 2,
            ..Default::default()
        },
    )
    .await;
    let job = train_as(&stack, "weak").await;
    let expected = holdout.score(&weak.load().unwrap()).unwrap();
    let v2 = registry.get_version("weak", 2).await.unwrap();
    let d = v2.promotion.clone().expect("a decision");
    assert!(d.promoted, "{}", d.reason);
    assert_eq!(v2.aliases, vec!["production"]);
    assert_eq!(d.compared_on.as_deref(), Some("shared holdout"));
    assert_eq!(d.champion_version, Some(1));
    // Exactly the champion's score on those rows, and its own recorded score beside it.
    assert_eq!(d.champion, Some(expected.accuracy));
    assert_eq!(d.champion_recorded, Some(weak.metrics.test_accuracy));
    assert_eq!(d.candidate, Some(v2.metrics["test_accuracy"]));
    assert!(d.candidate > d.champion, "{d:?}");
    assert!(
        d.reason
            .contains(&format!("same {} held-out rows", holdout.len())),
        "{}",
        d.reason
    );
    // The job shows both.
    assert_eq!(job["champion"]["version"], 1);
    assert_eq!(
        job["champion"]["score"]["accuracy"],
        json!(expected.accuracy)
    );
    assert_eq!(job["promotion"]["promoted"], true);
    let run = registry.get_run(v2.run_id).await.unwrap();
    assert!(
        run.tags["petrel.champion"].starts_with("version 1 (production) scored"),
        "{:?}",
        run.tags
    );
    // The alias history keeps the evidence.
    let (status, history) = stack
        .registry_get("/api/v1/models/weak/aliases/production/history")
        .await;
    assert_eq!(status, StatusCode::OK);
    let last = &history["history"][0];
    assert_eq!(last["version"], 2, "{history}");
    assert_eq!(last["evidence"]["compared_on"], "shared holdout");
    assert_eq!(last["evidence"]["champion"], json!(expected.accuracy));

    // A strong production model: the same configuration on the same data scores the same on
    // the same rows, and a margin of 0.01 makes the tie a loss. The new version is registered
    // as the challenger; production stays.
    let strong = register_champion(&stack, "strong", &trainer_config).await;
    let mut policy = registry.get_policy("strong").await.unwrap().unwrap();
    policy.margin = 0.01;
    let (status, body) = stack
        .registry_put(
            "/api/v1/models/strong/policy",
            serde_json::to_value(&policy).unwrap(),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let job = train_as(&stack, "strong").await;
    let v2 = registry.get_version("strong", 2).await.unwrap();
    let d = v2.promotion.clone().unwrap();
    assert!(!d.promoted, "{}", d.reason);
    assert_eq!(d.compared_on.as_deref(), Some("shared holdout"));
    assert_eq!(d.champion, Some(strong.metrics.test_accuracy));
    assert_eq!(d.candidate, d.champion);
    assert_eq!(d.challenger.as_deref(), Some("challenger"));
    assert_eq!(v2.aliases, vec!["challenger"]);
    let prod = registry
        .get_alias("strong", "production")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(prod.version, 1);
    assert_eq!(job["promotion"]["challenger"], "challenger");
    assert_eq!(job["model_version"], 2);

    stack.stop().await;
}

#[tokio::test]
async fn jobs_are_started_followed_and_cancelled_over_http() {
    let stack = Stack::start().await;
    // A reference dataset: the trainer remembers it without training on it.
    let mut data = stack.penguins_dataset().await;
    data.name = "penguins-ref".into();
    data.purpose = petrel_events::payloads::DatasetPurpose::Reference;
    stack
        .bus
        .publish(&stack.bus.envelope(data.clone()))
        .await
        .unwrap();
    stack.wait_consumed(1).await;
    assert!(stack.jobs().await.is_empty());

    // Bad requests say what is wrong.
    let (status, body) = stack
        .trainer_post("/v1/jobs", json!({"dataset": "nope"}))
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("ingest it first"),
        "{body}"
    );
    let (status, body) = stack
        .trainer_post(
            "/v1/jobs",
            json!({"dataset": "penguins-ref", "config": {"epoch": 3}}),
        )
        .await;
    assert!(status.is_client_error(), "{status} {body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("unknown setting \"epoch\""),
        "{body}"
    );
    let (status, body) = stack.trainer_post("/v1/jobs", json!({"config": {}})).await;
    assert!(status.is_client_error(), "{status} {body}");
    let (status, body) = stack
        .trainer_post("/v1/jobs", json!({"dataset": "penguins-ref", "nope": 1}))
        .await;
    assert!(status.is_client_error(), "{status} {body}");
    assert!(stack.jobs().await.is_empty());

    // A job by dataset name, with its own settings, under another model name.
    let ask = json!({
        "dataset": "penguins-ref",
        "model_name": "from-api",
        "config": {"epochs": 50, "hidden_size": 16},
        "client_token": "first",
    });
    let (status, job) = stack.trainer_post("/v1/jobs", ask.clone()).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{job}");
    assert_eq!(job["source"], "api");
    assert_eq!(job["epochs"], 50);
    assert_eq!(job["plan"]["config"]["hidden_size"], 16);
    let id = job["id"].as_str().unwrap().to_owned();
    // The same token again is the same job.
    let (status, again) = stack.trainer_post("/v1/jobs", ask).await;
    assert_eq!(status, StatusCode::OK, "{again}");
    assert_eq!(again["id"], job["id"]);
    let done = stack.wait_job(&id, "succeeded").await;
    assert_eq!(done["model_version"], 1);
    assert_eq!(done["phase"], "succeeded");
    assert!(
        done["started_at"].is_string() && done["finished_at"].is_string(),
        "{done}"
    );
    let v = stack.registry().get_version("from-api", 1).await.unwrap();
    let run = stack.registry().get_run(v.run_id).await.unwrap();
    assert_eq!(run.params["epochs"], "50");
    assert_eq!(run.params["hidden_size"], "16");
    assert_eq!(run.params["dataset_id"], data.dataset_id.to_string());
    // Gradient-boosted trees through the same job API: same bundle, same registration, and
    // the MLP in production scored on the trees' held-out rows.
    let (status, job) = stack
        .trainer_post(
            "/v1/jobs",
            json!({"dataset": "penguins-ref", "model_name": "from-api",
                   "config": {"kind": "gbt", "rounds": 30, "max_depth": 3}}),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{job}");
    let trees = stack
        .wait_job(job["id"].as_str().unwrap(), "succeeded")
        .await;
    assert_eq!(trees["model_version"], 2);
    assert_eq!(trees["champion"]["version"], 1);
    let v2 = stack.registry().get_version("from-api", 2).await.unwrap();
    assert!(
        v2.description
            .as_deref()
            .unwrap()
            .starts_with("gradient-boosted trees (30 rounds, depth 3"),
        "{v2:?}"
    );
    let d = v2.promotion.clone().unwrap();
    assert_eq!(d.compared_on.as_deref(), Some("shared holdout"), "{d:?}");
    let run = stack.registry().get_run(v2.run_id).await.unwrap();
    assert_eq!(run.params["model_kind"], "gbt");
    assert_eq!(run.params["rounds"], "30");
    assert_eq!(run.tags["petrel.model_type"], "forust-gbt");
    let path = v2.artifact_uri.strip_prefix("file://").unwrap();
    let bundle = ModelBundle::from_bytes(&std::fs::read(path).unwrap()).unwrap();
    assert_eq!(bundle.kind(), petrel_ml::ModelKind::Gbt);
    assert_eq!(bundle.metrics.test_accuracy, v2.metrics["test_accuracy"]);
    bundle.load().expect("the trees load for serving");

    // Finished jobs cannot be cancelled.
    let (status, body) = stack
        .trainer_post(&format!("/v1/jobs/{id}/cancel"), json!({}))
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");

    // A long job, cancelled while it trains: it stops, and registers nothing.
    let (status, job) = stack
        .trainer_post(
            "/v1/jobs",
            json!({"dataset_id": data.dataset_id, "model_name": "cancelled", "config": {"epochs": 100000}}),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{job}");
    let id = job["id"].as_str().unwrap().to_owned();
    stack
        .wait_jobs("the long job to train", |jobs| {
            jobs.iter()
                .any(|j| j["id"] == json!(id) && j["epoch"].as_i64().unwrap_or(0) > 0)
        })
        .await;
    let (status, body) = stack
        .trainer_post(&format!("/v1/jobs/{id}/cancel"), json!({}))
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    assert_eq!(body["cancel_requested"], true);
    let ended = stack.wait_job(&id, "cancelled").await;
    assert!(ended["epoch"].as_i64().unwrap() < 100_000, "{ended}");
    assert!(ended["finished_at"].is_string());
    let model = stack.registry().get_model("cancelled").await;
    assert!(model.is_err(), "nothing registered: {model:?}");
    let (status, _) = stack
        .trainer_post(&format!("/v1/jobs/{}/cancel", Uuid::now_v7()), json!({}))
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    stack.stop().await;
}

/// The `fold_1_train_loss` history of a run, as `(step, value)`.
async fn fold_curve(stack: &Stack, run: Uuid) -> Vec<(i64, f64)> {
    let run = stack.registry().get_run(run).await.unwrap();
    run.metrics
        .iter()
        .filter(|m| m.key == "fold_1_train_loss")
        .map(|m| (m.step, m.value))
        .collect()
}

#[tokio::test]
async fn a_sweep_streams_its_trials_while_training_and_a_restart_resumes_it() {
    let mut stack = Stack::start().await;
    let mut data = stack.penguins_dataset().await;
    data.name = "penguins-ref".into();
    data.purpose = petrel_events::payloads::DatasetPurpose::Reference;
    stack.bus.publish(&stack.bus.envelope(data)).await.unwrap();
    stack.wait_consumed(1).await;

    // Trial 0 is quick; trial 1 trains far longer than this test waits.
    let (status, job) = stack
        .trainer_post(
            "/v1/jobs",
            json!({"dataset": "penguins-ref", "model_name": "streamed",
                   "sweep": {"grid": {"epochs": [40, 100000]}, "folds": 2, "concurrency": 1}}),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{job}");
    let id = job["id"].as_str().unwrap().to_owned();
    let running = |j: &Value| {
        j["trials"][0]["status"] == "finished"
            && j["trials_done"] == 1
            && j["trials"][1]["status"] == "running"
            && j["trials"][1]["run_id"].is_string()
    };
    let job = stack
        .wait_job_until(&id, "trial 0 to finish and trial 1 to run", running)
        .await;
    assert_eq!(job["status"], "running", "{job}");
    assert_eq!(job["trials_done"], 1, "{job}");
    assert!(
        job["trials"][0]["cv_accuracy"].as_f64().unwrap() > 0.5,
        "{job}"
    );
    let parent: Uuid = serde_json::from_value(job["run_id"].clone()).expect("the job's run");
    let trial_run =
        |i: usize| -> Uuid { serde_json::from_value(job["trials"][i]["run_id"].clone()).unwrap() };
    let (first, second) = (trial_run(0), trial_run(1));
    let first_finished = job["trials"][0]["finished_at"].clone();

    // While the sweep trains: the parent and trial 1 are running, trial 0 is finished with its
    // scores, and trial 1's learning curve arrives as it trains.
    let reg = stack.registry();
    assert_eq!(
        reg.get_run(parent).await.unwrap().status,
        RunStatus::Running
    );
    let done = reg.get_run(first).await.unwrap();
    assert_eq!(done.status, RunStatus::Finished);
    assert_eq!(done.parent_run_id, Some(parent));
    assert!(done.metrics.iter().any(|m| m.key == "cv_accuracy_mean"));
    let live = reg.get_run(second).await.unwrap();
    assert_eq!(live.status, RunStatus::Running);
    assert_eq!(live.parent_run_id, Some(parent));
    assert_eq!(live.params["epochs"], "100000");
    let deadline = tokio::time::Instant::now() + common::TRAINING_PATIENCE;
    while fold_curve(&stack, second).await.len() < 2 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "trial 1's curve did not stream"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // A redeploy: the old trainer stops within an epoch and leaves the job for the new one,
    // which keeps trial 0 as it finished and trains trial 1 again from its start.
    stack.restart_trainer().await;
    let before = fold_curve(&stack, second).await;
    let job = stack
        .wait_job_until(
            &id,
            "the resumed job to stream trial 1 past the restart",
            |j| j["status"] == "running" && j["phase"] == "sweep" && j["trials_done"] == 1,
        )
        .await;
    assert_eq!(
        job["trials"][0]["finished_at"], first_finished,
        "trial 0 was trained again: {job}"
    );
    assert_eq!(job["run_id"], json!(parent));
    assert_eq!(job["trials"][1]["run_id"], json!(second));
    let deadline = tokio::time::Instant::now() + common::TRAINING_PATIENCE;
    loop {
        let curve = fold_curve(&stack, second).await;
        let newest = |c: &[(i64, f64)]| c.last().map_or(0, |p| p.0);
        if newest(&curve) > newest(&before) {
            // Every point once: the resumed attempt did not write again what was streamed.
            let steps: Vec<i64> = curve.iter().map(|p| p.0).collect();
            assert!(steps.windows(2).all(|w| w[0] < w[1]), "{steps:?}");
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the resumed trial did not stream"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let done = reg.get_run(first).await.unwrap();
    let keys: Vec<(&str, i64)> = done
        .metrics
        .iter()
        .map(|m| (m.key.as_str(), m.step))
        .collect();
    let unique: std::collections::HashSet<_> = keys.iter().collect();
    assert_eq!(
        keys.len(),
        unique.len(),
        "trial 0's points were written twice"
    );

    // Cancelled: the runs left running are closed as killed; the finished trial stays finished.
    let (status, body) = stack
        .trainer_post(&format!("/v1/jobs/{id}/cancel"), json!({}))
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    stack.wait_job(&id, "cancelled").await;
    assert_eq!(reg.get_run(second).await.unwrap().status, RunStatus::Killed);
    assert_eq!(reg.get_run(parent).await.unwrap().status, RunStatus::Killed);
    assert_eq!(
        reg.get_run(first).await.unwrap().status,
        RunStatus::Finished
    );
    assert!(
        reg.get_model("streamed").await.is_err(),
        "nothing registered"
    );

    stack.stop().await;
}
